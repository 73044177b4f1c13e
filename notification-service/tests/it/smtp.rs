//! The SMTP mailer against an SMTP sink run by the test: plain, STARTTLS and implicit TLS.
//! The TLS sessions use a self-signed certificate for `localhost` and `127.0.0.1` that only
//! these tests trust, so no network and no real mail server are involved.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use notification_service::mailer::{self, Email, MailError, Mailer, SmtpMailer};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use uuid::Uuid;

use crate::support::*;

/// The sink's certificate: self-signed, not a CA, for `localhost` and `127.0.0.1`, valid
/// from 2000 to 9999. A test fixture; trusted nowhere but in these tests.
const TEST_CERT_PEM: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBfjCCASOgAwIBAgIUV4+f3tfdiRFG2AWKLNdvZ7xjxEwwCgYIKoZIzj0EAwIw\n\
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTAwMDEwMTAwMDAwMFoYDzk5OTkxMjMx\n\
MjM1OTU5WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO\n\
PQMBBwNCAAQ6fMVlfF0tnrrDJcJpoNCAIdlFkR/BRQ04+pQFxj6UMWJmSF4VtpyQ\n\
fqj0lxb/kzRTfUmdf0W3i0jCNWY3pZs/o1EwTzAMBgNVHRMBAf8EAjAAMA4GA1Ud\n\
DwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAaBgNVHREEEzARgglsb2Nh\n\
bGhvc3SHBH8AAAEwCgYIKoZIzj0EAwIDSQAwRgIhAIeITSZsg13AxFTrgNuTt1Fe\n\
j+tuoHh9C1+BTauTg18kAiEA/67Dw1bu7Dsi5O7ZNAyVHyRBIDeKpWBmVGdqU0B7\n\
XSw=\n\
-----END CERTIFICATE-----\n";

/// The private key of [`TEST_CERT_PEM`] (P-256, PKCS #8). A test fixture, public on purpose.
const TEST_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJ6TRj9jy9yTah56G\n\
G+nSTW+PqxayY5X5k+t7IT1H6bahRANCAAQ6fMVlfF0tnrrDJcJpoNCAIdlFkR/B\n\
RQ04+pQFxj6UMWJmSF4VtpyQfqj0lxb/kzRTfUmdf0W3i0jCNWY3pZs/\n\
-----END PRIVATE KEY-----\n";

/// The user and password the TLS tests log in with.
const USER: &str = "ada";
const PASSWORD: &str = "s3cret w@rd";
/// `AUTH PLAIN`'s argument for them: base64 of `\0ada\0s3cret w@rd`.
const AUTH_PLAIN: &str = "AGFkYQBzM2NyZXQgd0ByZA==";

/// What the sink logs when a TLS handshake fails, and when a session ends.
const HANDSHAKE_FAILED: &str = "(TLS handshake failed)";
const CLOSED: &str = "(closed)";

/// One message as the sink received it.
#[derive(Debug, Default)]
struct Received {
    mail_from: String,
    rcpt_to: Vec<String>,
    data: String,
    /// The `AUTH PLAIN` argument of the session, if it logged in.
    auth: Option<String>,
    /// Whether the session was encrypted when the message came.
    encrypted: bool,
}

/// How the sink secures its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkTls {
    /// Plain text; STARTTLS is not offered.
    None,
    /// Offers STARTTLS and upgrades when asked.
    Starttls,
    /// TLS from the first byte (`smtps`).
    Implicit,
}

/// One command as the sink saw it: its first word, upper case, and whether the session was
/// encrypted at the time; or a [`HANDSHAKE_FAILED`] or [`CLOSED`] event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Command {
    verb: String,
    encrypted: bool,
}

/// A running sink: its port, the messages it accepted and every command it saw.
struct Sink {
    port: u16,
    inbox: mpsc::Receiver<Received>,
    log: Arc<Mutex<Vec<Command>>>,
}

impl Sink {
    /// Everything logged so far, in order: commands and events.
    fn log(&self) -> Vec<Command> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The commands received so far, in order, without the events.
    fn commands(&self) -> Vec<Command> {
        let mut log = self.log();
        log.retain(|c| ![HANDSHAKE_FAILED, CLOSED].contains(&c.verb.as_str()));
        log
    }

    /// The verbs and events logged so far.
    fn verbs(&self) -> Vec<String> {
        self.log().into_iter().map(|c| c.verb).collect()
    }

    /// Waits until a session has ended, then returns every verb logged.
    async fn verbs_once_closed(&self) -> Vec<String> {
        eventually("the SMTP session has ended", move || async move {
            let verbs = self.verbs();
            verbs.iter().any(|v| v == CLOSED).then_some(verbs)
        })
        .await
    }

    /// The next accepted message.
    async fn next_message(&mut self) -> Received {
        tokio::time::timeout(DEADLINE, self.inbox.recv())
            .await
            .expect("a message within the deadline")
            .expect("the sink is running")
    }
}

/// A byte stream the sink can speak SMTP over: a TCP connection, or TLS on top of one.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A plain sink that answers `reply_to_data` after each message body.
async fn smtp_sink(reply_to_data: &'static str) -> (u16, mpsc::Receiver<Received>) {
    let sink = start_sink(SinkTls::None, reply_to_data).await;
    (sink.port, sink.inbox)
}

/// A minimal SMTP server on a random port: enough of RFC 5321 (plus STARTTLS and
/// `AUTH PLAIN`, which it accepts from anyone) for one client sending plain-text messages.
/// Each accepted message goes into the inbox. `reply_to_data` is the reply after a message
/// body.
async fn start_sink(tls: SinkTls, reply_to_data: &'static str) -> Sink {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, inbox) = mpsc::channel(16);
    let log = Arc::new(Mutex::new(Vec::new()));
    let acceptor = acceptor();
    let sessions_log = log.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, tx, log) = (acceptor.clone(), tx.clone(), sessions_log.clone());
            tokio::spawn(async move {
                session(socket, tls, acceptor, reply_to_data, tx, &log).await;
                note(&log, CLOSED, false);
            });
        }
    });
    Sink { port, inbox, log }
}

fn note(log: &Mutex<Vec<Command>>, verb: &str, encrypted: bool) {
    log.lock().unwrap_or_else(|p| p.into_inner()).push(Command {
        verb: verb.to_owned(),
        encrypted,
    });
}

/// One SMTP session on `socket`.
async fn session(
    socket: TcpStream,
    tls: SinkTls,
    acceptor: TlsAcceptor,
    reply_to_data: &'static str,
    tx: mpsc::Sender<Received>,
    log: &Mutex<Vec<Command>>,
) {
    let mut encrypted = tls == SinkTls::Implicit;
    let stream: Box<dyn Stream> = if encrypted {
        match acceptor.accept(socket).await {
            Ok(stream) => Box::new(stream),
            Err(_) => return note(log, HANDSHAKE_FAILED, false),
        }
    } else {
        Box::new(socket)
    };
    let mut conn = BufReader::new(stream);
    let mut auth = None;
    let mut current = Received::default();
    if reply(&mut conn, "220 sink ESMTP ready\r\n").await.is_err() {
        return;
    }
    while let Some(line) = read_line(&mut conn).await {
        let upper = line.to_ascii_uppercase();
        note(log, upper.split(' ').next().unwrap_or(""), encrypted);
        let answer: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            let starttls = if tls == SinkTls::Starttls && !encrypted {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            format!("250-sink\r\n{starttls}250 AUTH PLAIN\r\n")
        } else if upper == "STARTTLS" && tls == SinkTls::Starttls && !encrypted {
            if reply(&mut conn, "220 go ahead\r\n").await.is_err() {
                return;
            }
            // The client waits for the 220 before its handshake: nothing is buffered.
            match acceptor.accept(conn.into_inner()).await {
                Ok(stream) => conn = BufReader::new(Box::new(stream)),
                Err(_) => return note(log, HANDSHAKE_FAILED, false),
            }
            encrypted = true;
            continue;
        } else if let Some(argument) = upper.strip_prefix("AUTH PLAIN ") {
            auth = Some(line[line.len() - argument.len()..].to_owned());
            "235 2.7.0 accepted\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            current.mail_from = line[10..].trim().to_owned();
            "250 OK\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            current.rcpt_to.push(line[8..].trim().to_owned());
            "250 OK\r\n".into()
        } else if upper == "DATA" {
            if reply(&mut conn, "354 end with <CRLF>.<CRLF>\r\n")
                .await
                .is_err()
            {
                return;
            }
            while let Some(data_line) = read_line(&mut conn).await {
                if data_line == "." {
                    break;
                }
                current.data.push_str(&data_line);
                current.data.push('\n');
            }
            let mut done = std::mem::take(&mut current);
            done.auth = auth.clone();
            done.encrypted = encrypted;
            if reply_to_data.starts_with('2') {
                let _ = tx.send(done).await;
            }
            reply_to_data.into()
        } else if upper == "QUIT" {
            let _ = reply(&mut conn, "221 bye\r\n").await;
            return;
        } else {
            "250 OK\r\n".into()
        };
        if reply(&mut conn, &answer).await.is_err() {
            return;
        }
    }
}

/// The next line without its line ending; `None` at the end of the stream or on an error.
async fn read_line(conn: &mut BufReader<Box<dyn Stream>>) -> Option<String> {
    let mut line = String::new();
    match conn.read_line(&mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
    }
}

/// Writes `text` and flushes it (a TLS stream holds writes back until flushed).
async fn reply(conn: &mut BufReader<Box<dyn Stream>>, text: &str) -> std::io::Result<()> {
    conn.write_all(text.as_bytes()).await?;
    conn.flush().await
}

/// The sink's TLS side: [`TEST_CERT_PEM`] with the ring provider rustls already uses.
fn acceptor() -> TlsAcceptor {
    let cert = CertificateDer::from_pem_slice(TEST_CERT_PEM.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(TEST_KEY_PEM.as_bytes()).unwrap();
    let provider = tokio_rustls::rustls::crypto::ring::default_provider();
    let config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// Client TLS parameters that expect a certificate for `name` and trust the sink's one
/// besides the bundled roots.
fn trusting_the_sink(name: &str) -> TlsParameters {
    TlsParameters::builder(name.to_owned())
        .add_root_certificate(Certificate::from_pem(TEST_CERT_PEM.as_bytes()).unwrap())
        .build()
        .unwrap()
}

fn mailer(port: u16) -> SmtpMailer {
    tls_mailer(port, Tls::None, None)
}

fn tls_mailer(port: u16, tls: Tls, credentials: Option<Credentials>) -> SmtpMailer {
    SmtpMailer::new(
        "127.0.0.1",
        port,
        tls,
        credentials,
        Duration::from_secs(10),
        "Shop <notifications@shop.example>".parse().unwrap(),
    )
}

fn login() -> Option<Credentials> {
    Some(Credentials::new(USER.to_owned(), PASSWORD.to_owned()))
}

fn email() -> Email {
    Email {
        notification_id: Uuid::now_v7(),
        to: "ada@example.com".into(),
        subject: "s".into(),
        body: "b".into(),
    }
}

#[tokio::test]
async fn an_order_confirmation_reaches_the_smtp_server_with_a_stable_message_id() {
    let (port, mut inbox) = smtp_sink("250 queued\r\n").await;
    let app = TestApp::spawn_with(&[], Some(Arc::new(mailer(port)))).await;
    let order = Uuid::now_v7();
    let r = app.deliver(&msg_id(), &paid(order, now())).await;
    assert_eq!(r.status(), 202);
    assert_eq!(app.worker.drain().await.unwrap(), 1);

    let message = tokio::time::timeout(DEADLINE, inbox.recv())
        .await
        .unwrap()
        .unwrap();
    let notification = &app.notifications().await[0];
    assert_eq!(notification.status, Status::Sent);
    assert_eq!(message.mail_from, "<notifications@shop.example>");
    assert_eq!(message.rcpt_to, ["<ada@example.com>"]);
    assert_eq!((message.auth, message.encrypted), (None, false));
    let id = notification.id;
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
    let email = email();
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

#[tokio::test]
async fn implicit_tls_encrypts_the_login_and_the_message_from_the_first_byte() {
    let mut sink = start_sink(SinkTls::Implicit, "250 queued\r\n").await;
    let mailer = tls_mailer(
        sink.port,
        Tls::Wrapper(trusting_the_sink("127.0.0.1")),
        login(),
    );
    mailer.send(&email()).await.unwrap();

    let message = sink.next_message().await;
    assert!(message.encrypted);
    assert_eq!(message.auth.as_deref(), Some(AUTH_PLAIN));
    assert_eq!(message.rcpt_to, ["<ada@example.com>"]);
    let commands = sink.commands();
    assert!(commands.iter().all(|c| c.encrypted), "{commands:?}");
    assert!(commands.iter().any(|c| c.verb == "AUTH"), "{commands:?}");
}

#[tokio::test]
async fn starttls_encrypts_before_the_login_and_the_message() {
    let mut sink = start_sink(SinkTls::Starttls, "250 queued\r\n").await;
    let mailer = tls_mailer(
        sink.port,
        Tls::Required(trusting_the_sink("localhost")),
        login(),
    );
    mailer.send(&email()).await.unwrap();

    let message = sink.next_message().await;
    assert!(message.encrypted);
    assert_eq!(message.auth.as_deref(), Some(AUTH_PLAIN));
    let commands = sink.commands();
    let in_clear: Vec<_> = commands
        .iter()
        .filter(|c| !c.encrypted)
        .map(|c| c.verb.as_str())
        .collect();
    assert_eq!(in_clear, ["EHLO", "STARTTLS"], "{commands:?}");
    let encrypted: Vec<_> = commands
        .iter()
        .filter(|c| c.encrypted)
        .map(|c| c.verb.as_str())
        .collect();
    assert_eq!(
        encrypted[..5],
        ["EHLO", "AUTH", "MAIL", "RCPT", "DATA"],
        "{commands:?}"
    );
}

#[tokio::test]
async fn required_tls_sends_no_login_without_starttls_or_a_trusted_certificate() {
    let bundled_roots_only = || TlsParameters::new("127.0.0.1".to_owned()).unwrap();
    let cases = [
        (
            "no STARTTLS offered",
            SinkTls::None,
            Tls::Required(trusting_the_sink("127.0.0.1")),
        ),
        (
            "untrusted, STARTTLS",
            SinkTls::Starttls,
            Tls::Required(bundled_roots_only()),
        ),
        (
            "untrusted, implicit",
            SinkTls::Implicit,
            Tls::Wrapper(bundled_roots_only()),
        ),
        (
            "another name",
            SinkTls::Implicit,
            Tls::Wrapper(trusting_the_sink("mail.example")),
        ),
    ];
    for (case, sink_tls, tls) in cases {
        let sink = start_sink(sink_tls, "250 queued\r\n").await;
        let err = tls_mailer(sink.port, tls, login())
            .send(&email())
            .await
            .unwrap_err();
        assert!(matches!(err, MailError::Transient(_)), "{case}: {err:?}");
        let verbs = sink.verbs_once_closed().await;
        assert!(
            verbs
                .iter()
                .all(|v| ["EHLO", "STARTTLS", "QUIT", HANDSHAKE_FAILED, CLOSED]
                    .contains(&v.as_str())),
            "{case}: {verbs:?}"
        );
        if sink_tls != SinkTls::None {
            assert!(
                verbs.iter().any(|v| v == HANDSHAKE_FAILED),
                "{case}: {verbs:?}"
            );
        }
    }
}

#[tokio::test]
async fn smtp_url_tls_modes_reach_the_transport() {
    let dir = tempfile::tempdir().unwrap();
    let mailer_for = |url: String| {
        let settings = config(&dir, &["--smtp-url", &url]).validate().unwrap();
        mailer::from_settings(&settings.mailer, settings.mail_from.clone())
    };

    // Plain smtp:// stays plain (Mailpit in docker-compose).
    let mut sink = start_sink(SinkTls::None, "250 queued\r\n").await;
    mailer_for(format!("smtp://127.0.0.1:{}", sink.port))
        .send(&email())
        .await
        .unwrap();
    assert!(!sink.next_message().await.encrypted);

    // smtps:// and tls=required insist on TLS with the bundled roots, which do not include
    // the sink's certificate: the handshake is tried and fails before anything else is said.
    for (sink_tls, url) in [
        (SinkTls::Implicit, "smtps://ada:s3cret@127.0.0.1:PORT"),
        (
            SinkTls::Starttls,
            "smtp://ada:s3cret@127.0.0.1:PORT?tls=required",
        ),
    ] {
        let sink = start_sink(sink_tls, "250 queued\r\n").await;
        let url = url.replace("PORT", &sink.port.to_string());
        let err = mailer_for(url.clone()).send(&email()).await.unwrap_err();
        assert!(matches!(err, MailError::Transient(_)), "{url}: {err:?}");
        let verbs = sink.verbs_once_closed().await;
        assert!(
            verbs.iter().any(|v| v == HANDSHAKE_FAILED),
            "{url}: {verbs:?}"
        );
        assert!(
            !verbs.iter().any(|v| v == "AUTH" || v == "MAIL"),
            "{url}: {verbs:?}"
        );
    }
}
