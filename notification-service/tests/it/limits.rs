//! Bounds on what one client can hold: request time (slow uploads) and deliveries in
//! progress.

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::support::*;

/// Opens a connection to `app` and sends the head of a webhook POST announcing a body of
/// 1000 bytes, then only its first few bytes: a client trickling its upload.
async fn start_slow_upload(app: &TestApp) -> TcpStream {
    let addr = app.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhooks/orders HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: 1000\r\n\r\n{{\"type\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Reads one HTTP/1.1 response with a `content-length`; returns status, head and body.
async fn read_response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                let status = head[9..12].parse().unwrap();
                return (status, head, buf[end + 4..end + 4 + length].to_vec());
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before a full response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_client_that_trickles_its_body_gets_408_json_and_loses_its_slot() {
    let app = TestApp::spawn_with(&["--request-timeout", "1s"], None).await;
    let mut slow = start_slow_upload(&app).await;
    let (status, head, body) = tokio::time::timeout(DEADLINE, read_response(&mut slow))
        .await
        .expect("the server must end a stalled upload");
    assert_eq!(status, 408, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(app.notifications().await.is_empty());
}

#[tokio::test]
async fn deliveries_beyond_the_concurrency_bound_get_503_with_retry_after() {
    let app = TestApp::spawn_with(
        &[
            "--max-concurrent-requests",
            "1",
            "--request-timeout",
            "60s",
            "--reject-burst",
            "1000",
        ],
        None,
    )
    .await;
    let slow = start_slow_upload(&app).await;
    // Once the slow upload holds the only slot, further deliveries are shed at once.
    let shed = eventually("a delivery is shed", || async {
        let r = app
            .http
            .post(app.intake())
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        (r.status() == 503).then_some(r)
    })
    .await;
    assert!(shed.headers().contains_key("retry-after"));
    assert_error(shed, 503, "overloaded").await;

    // When the slow client goes away, its slot is free again.
    drop(slow);
    eventually("a delivery is accepted", || async {
        let r = app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
        (r.status() == 202).then_some(())
    })
    .await;
}
