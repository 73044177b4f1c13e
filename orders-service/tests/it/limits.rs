//! Limits on what a client can make the service do: every error body is JSON (also for
//! rejections no handler sees), a request that trickles in gets 408, and requests beyond the
//! concurrency bound get 503 with `Retry-After`.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::{eventually, json_of, AppOptions, TestApp, DEADLINE};

fn assert_json_error(status: u16, content_type: Option<&str>, body: &[u8]) {
    assert_eq!(
        content_type,
        Some("application/json"),
        "status {status}: {}",
        String::from_utf8_lossy(body)
    );
    let value: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
    assert!(value["error"]["code"].is_string(), "{value}");
    assert!(value["error"]["message"].is_string(), "{value}");
}

#[tokio::test]
async fn a_path_that_is_not_utf8_gets_a_json_400() {
    let app = TestApp::spawn(AppOptions::default()).await;
    for path in ["/orders/%FF", "/endpoints/%FF", "/events/%C3%28"] {
        let r = app.admin(reqwest::Method::GET, path).send().await.unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.bytes().await.unwrap();
        assert_eq!(status, 400, "{path}");
        assert_json_error(status, ct.as_deref(), &body);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_too_large_rotate_secret_body_gets_a_json_413() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let id = app
        .create_endpoint("http://127.0.0.1:9/webhook", &["order.paid"])
        .await
        .endpoint
        .id;
    let r = app
        .admin(
            reqwest::Method::POST,
            &format!("/endpoints/{id}/rotate-secret"),
        )
        .header("content-type", "application/json")
        .body(vec![b' '; 128 * 1024])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = r.bytes().await.unwrap();
    assert_eq!(status, 413);
    assert_json_error(status, ct.as_deref(), &body);
    app.stop().await;
}

/// Sends the head of a `POST /orders` announcing a body it never finishes.
async fn start_trickling_order(app: &TestApp) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /orders HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"product",
        app.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn a_request_whose_body_trickles_in_gets_a_json_408() {
    let app = TestApp::spawn(AppOptions {
        extra: vec!["--request-timeout".into(), "1s".into()],
        ..AppOptions::default()
    })
    .await;
    let mut stream = start_trickling_order(&app).await;
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("the service answers a stalled request before the test deadline")
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{text}"
    );
    assert!(text.contains("\"request_timeout\""), "{text}");
    app.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_concurrency_bound_get_a_json_503_with_retry_after() {
    let app = TestApp::spawn(AppOptions {
        extra: vec!["--max-concurrent-requests".into(), "1".into()],
        ..AppOptions::default()
    })
    .await;
    // Holds the only slot: its handler waits for a body that does not come.
    let held = start_trickling_order(&app).await;
    let shed = eventually("a second request is shed", || async {
        let r = app.post_order(crate::support::order_body()).await;
        (r.status() == 503).then_some(r)
    })
    .await;
    assert_eq!(shed.headers()["retry-after"], "1");
    let body = json_of(shed).await;
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    // Health probes are not counted against the bound.
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    drop(held);
    eventually("the slot is free again", || async {
        let r = app.post_order(crate::support::order_body()).await;
        (r.status() == 201).then_some(())
    })
    .await;
    app.stop().await;
}
