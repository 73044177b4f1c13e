//! The SMTP mailer against an SMTP sink run by the test.

use std::sync::Arc;
use std::time::Duration;

use notification_service::mailer::{Email, MailError, Mailer, SmtpMailer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::support::*;

/// One message as the sink received it.
#[derive(Debug)]
struct Received {
    mail_from: String,
    rcpt_to: Vec<String>,
    data: String,
}

/// A minimal SMTP server: enough of RFC 5321 for one client sending plain messages. Each
/// message goes into the channel. `reply_to_data` is the reply after the message body.
async fn smtp_sink(reply_to_data: &'static str) -> (u16, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sink ESMTP ready\r\n").await.unwrap();
                let mut current = Received {
                    mail_from: String::new(),
                    rcpt_to: Vec::new(),
                    data: String::new(),
                };
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: &str = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        "250 sink\r\n"
                    } else if upper.starts_with("MAIL FROM:") {
                        current.mail_from = line[10..].trim().to_owned();
                        "250 OK\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        current.rcpt_to.push(line[8..].trim().to_owned());
                        "250 OK\r\n"
                    } else if upper == "DATA" {
                        write
                            .write_all(b"354 end with <CRLF>.<CRLF>\r\n")
                            .await
                            .unwrap();
                        while let Ok(Some(data_line)) = lines.next_line().await {
                            if data_line == "." {
                                break;
                            }
                            current.data.push_str(&data_line);
                            current.data.push('\n');
                        }
                        let done = std::mem::replace(
                            &mut current,
                            Received {
                                mail_from: String::new(),
                                rcpt_to: Vec::new(),
                                data: String::new(),
                            },
                        );
                        if reply_to_data.starts_with('2') {
                            let _ = tx.send(done).await;
                        }
                        reply_to_data
                    } else if upper == "QUIT" {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        break;
                    } else {
                        "250 OK\r\n"
                    };
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, rx)
}

fn mailer(port: u16) -> SmtpMailer {
    SmtpMailer::new(
        "127.0.0.1",
        port,
        None,
        Duration::from_secs(10),
        "Shop <notifications@shop.example>".parse().unwrap(),
    )
}

#[tokio::test]
async fn an_order_confirmation_reaches_the_smtp_server_with_a_stable_message_id() {
    let (port, mut inbox) = smtp_sink("250 queued\r\n").await;
    let app = TestApp::spawn_with(&[], Some(Arc::new(mailer(port)))).await;
    let order = Uuid::now_v7();
    let r = app.deliver(&msg_id(), &paid(order, now())).await;
    assert_eq!(r.status(), 202);
    assert_eq!(app.worker.run_until_idle().await.unwrap(), 1);

    let message = tokio::time::timeout(DEADLINE, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    let notification = &app.notifications().await[0];
    assert_eq!(notification["status"], "sent");
    assert_eq!(message.mail_from, "<notifications@shop.example>");
    assert_eq!(message.rcpt_to, ["<ada@example.com>"]);
    let id = notification["id"].as_str().unwrap();
    for needle in [
        format!("Message-ID: <{id}@notification-service>"),
        "Subject: Order ".to_owned(),
        "confirmed: Mechanical keyboard".to_owned(),
        order.to_string(),
        "Quantity:  2".to_owned(),
        "25.00 EUR".to_owned(),
    ] {
        assert!(
            message.data.contains(&needle),
            "{needle:?} not in\n{}",
            message.data
        );
    }
}

#[tokio::test]
async fn smtp_replies_map_to_transient_and_permanent_failures() {
    let email = Email {
        notification_id: Uuid::now_v7(),
        to: "ada@example.com".into(),
        subject: "s".into(),
        body: "b".into(),
    };
    let (port, _inbox) = smtp_sink("451 try again later\r\n").await;
    let err = mailer(port).send(&email).await.unwrap_err();
    assert!(matches!(err, MailError::Transient(_)), "{err:?}");
    let (port, _inbox) = smtp_sink("554 rejected\r\n").await;
    let err = mailer(port).send(&email).await.unwrap_err();
    assert!(matches!(err, MailError::Permanent(_)), "{err:?}");

    // Nothing listening: a connection failure is worth retrying.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = mailer(port).send(&email).await.unwrap_err();
    assert!(matches!(err, MailError::Transient(_)), "{err:?}");
}
