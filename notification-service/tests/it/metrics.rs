//! `GET /metrics`: behind the admin token, Prometheus text, and series that follow what the
//! test did. Every test in this binary records into the one process-wide recorder, so the
//! checks compare a scrape before with one after and ask for at least this test's share.

use std::collections::HashMap;

use uuid::Uuid;
use webhook_common::Secret;

use crate::support::*;

/// A scrape: `name{labels}` to value, after checking every sample line's shape.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {line:?} is not a float: {e}"));
        let name = series.split_once('{').map_or(series, |(name, labels)| {
            assert!(labels.ends_with('}'), "labels not closed: {line:?}");
            name
        });
        assert!(
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        samples.insert(series.to_owned(), value);
    }
    samples
}

async fn scrape(app: &TestApp) -> (String, HashMap<String, f64>) {
    let response = app
        .http
        .get(format!("{}/metrics", app.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

/// How much `series` grew from `before` to `after` (absent counts as 0).
fn growth(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
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
    let queued = app.deliver(&id, &paid(Uuid::now_v7(), now())).await;
    assert_eq!(queued.status(), 202);
    let notification: serde_json::Value = queued.json().await.unwrap();
    let notification = notification["notification_id"].as_str().unwrap().to_owned();
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
    app.worker.run_until_idle().await.unwrap();
    assert_eq!(app.mailer.sent().len(), 1);
    let (status, _) = app
        .admin_get(&format!("/notifications/{notification}"))
        .await;
    assert_eq!(status, 200);

    let (text, after) = scrape(&app).await;
    for (series, at_least) in [
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
    ] {
        let grew = growth(&before, &after, series);
        assert!(grew >= at_least, "{series} grew by {grew}:\n{text}");
    }
    // Set by the refresher's first round, which runs as it starts.
    let depth = wait_for("email_queue_depth to be set", || async {
        scrape(&app).await.1.get("email_queue_depth").copied()
    })
    .await;
    assert!(depth >= 0.0, "{depth}");
    assert!(
        !text.contains(&notification) && !text.contains(&id),
        "an id leaked into a label:\n{text}"
    );
}
