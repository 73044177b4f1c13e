//! `run` itself, as the binary and the launcher call it: serves on the given listener and,
//! once cancelled, drains in-flight work and returns.

use notification_service::{run, Store};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn run_serves_webhooks_and_on_cancel_finishes_the_send_in_flight_and_returns_ok() {
    test_support::init_test_logging();
    let dir = tempfile::tempdir().unwrap();
    // Slow sends, so the one under way when we cancel has to be waited for.
    let config = config(&dir, &["--mailer-delay", "500ms"]);
    let database_url = config.database_url.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(run(config, listener, shutdown.clone()));

    let http = reqwest::Client::new();
    eventually("the service serves", || async {
        let r = http.get(format!("{base}/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let r = webhook_common::client::signed_event_request(
        &http,
        format!("{base}/webhooks/orders"),
        &[secret()],
        &msg_id(),
        &paid(Uuid::now_v7(), now()),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    eventually("the worker has taken the job", || async {
        let all = all_notifications(&http, &base).await;
        (all.len() == 1 && all[0].attempts == 1).then_some(())
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(DEADLINE, service)
        .await
        .expect("run must return after cancellation")
        .unwrap()
        .unwrap();

    // The send under way at cancellation was finished and recorded, not abandoned.
    let store = Store::connect(&database_url, 1).await.unwrap();
    let status: String = sqlx::query_scalar("SELECT status FROM notifications")
        .fetch_one(store.sqlite_pool().unwrap())
        .await
        .unwrap();
    assert_eq!(status, "sent");
    store.close().await;
}
