//! `GET /metrics`: behind the admin token, Prometheus text, and series that follow what the
//! test did. Every test in this binary records into the one process-wide recorder, so the
//! checks compare a scrape before with one after and ask for at least this test's share.

use std::collections::HashMap;

use test_support::metrics::{assert_grew, read_scrape};
use uuid::Uuid;
use webhook_common::Secret;

use crate::support::*;

async fn scrape(app: &TestApp) -> (String, HashMap<String, f64>) {
    let response = app
        .http
        .get(format!("{}/metrics", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    read_scrape(response).await
}

#[tokio::test]
async fn metrics_need_the_admin_token_and_count_webhooks_emails_and_requests_by_route() {
    let app = TestApp::spawn().await;
    // The test drives the worker; the gauge refresher is started as `run` starts it.
    tokio::spawn(app.store.clone().run_queue_gauge(app.shutdown.clone()));

    let (_, before) = scrape(&app).await;
    let anonymous = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let id = msg_id();
    let (status, queued) = app.submit(&id, &paid(Uuid::now_v7(), now())).await;
    assert_eq!((status, queued.status), (202, Outcome::Queued));
    let notification = queued
        .notification_id
        .expect("a queued answer names its job")
        .to_string();
    let again = app.deliver(&id, &paid(Uuid::now_v7(), now())).await;
    assert_eq!(again.status(), 200);
    let forged = app
        .deliver_bytes(
            &msg_id(),
            &paid(Uuid::now_v7(), now()).to_json_bytes(),
            &[Secret::generate()],
        )
        .await;
    assert_eq!(forged.status(), 401);
    app.worker.drain().await.unwrap();
    assert_eq!(app.mailer.sent().len(), 1);
    let (status, _) = app
        .admin_get(&format!("/notifications/{notification}"))
        .await;
    assert_eq!(status, 200);

    let (text, after) = scrape(&app).await;
    assert_grew(
        &before,
        &after,
        &text,
        &[
            (
                r#"webhooks_received_total{event_type="order.paid",outcome="queued"}"#,
                1.0,
            ),
            (
                r#"webhooks_received_total{event_type="order.paid",outcome="duplicate"}"#,
                1.0,
            ),
            (
                r#"webhooks_received_total{event_type="other",outcome="unverified"}"#,
                1.0,
            ),
            ("webhook_processing_seconds_count", 3.0),
            (r#"emails_sent_total{outcome="sent"}"#, 1.0),
            (
                r#"http_requests_total{route="/webhooks/orders",method="POST",status="202"}"#,
                1.0,
            ),
            (
                r#"http_requests_total{route="/webhooks/orders",method="POST",status="401"}"#,
                1.0,
            ),
            (
                r#"http_request_duration_seconds_count{route="/webhooks/orders",method="POST"}"#,
                3.0,
            ),
            (
                r#"http_requests_total{route="/notifications/{id}",method="GET",status="200"}"#,
                1.0,
            ),
            (
                r#"http_requests_total{route="/metrics",method="GET",status="401"}"#,
                1.0,
            ),
        ],
    );
    // Set by the refresher's first round, which runs as it starts.
    let depth = eventually("email_queue_depth is set", || async {
        scrape(&app).await.1.get("email_queue_depth").copied()
    })
    .await;
    assert!(depth >= 0.0, "{depth}");
    assert!(
        !text.contains(&notification) && !text.contains(&id),
        "an id leaked into a label:\n{text}"
    );
}
