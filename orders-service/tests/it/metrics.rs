//! `GET /metrics`: behind the admin token, Prometheus text, and series that follow what the
//! test did. Every test in this binary records into the one process-wide recorder, so the
//! checks compare a scrape before with one after and ask for at least this test's share.

use std::collections::HashMap;

use orders_service::domain::DeliveryStatus;
use test_support::metrics::{assert_grew, growth, read_scrape};

use crate::support::{declined_order_body, eventually, AppOptions, Receiver, TestApp};

async fn scrape(app: &TestApp) -> (String, HashMap<String, f64>) {
    let response = app
        .admin(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    read_scrape(response).await
}

#[tokio::test]
async fn metrics_need_the_admin_token_and_count_orders_deliveries_and_requests_by_route() {
    let receiver = Receiver::start(Vec::new()).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;

    let (_, before) = scrape(&app).await;
    let anonymous = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let paid = app.create_order().await;
    let declined = app.place_order(declined_order_body()).await.id;
    app.wait_for_delivery(paid, DeliveryStatus::Delivered).await;
    app.wait_for_delivery(declined, DeliveryStatus::Delivered)
        .await;
    let read = app
        .http
        .get(app.url(&format!("/orders/{paid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);

    // The dispatcher counts an outcome right after recording it: poll for the count.
    let (text, after) = eventually("the deliveries are counted", || async {
        let (text, after) = scrape(&app).await;
        let delivered = |t| {
            growth(
                &before,
                &after,
                &format!(r#"webhook_deliveries_total{{event_type="{t}",outcome="delivered"}}"#),
            )
        };
        (delivered("order.paid") >= 1.0 && delivered("order.payment_failed") >= 1.0)
            .then_some((text, after))
    })
    .await;

    assert_grew(
        &before,
        &after,
        &text,
        &[
            (r#"orders_created_total{status="paid"}"#, 1.0),
            (r#"orders_created_total{status="payment_failed"}"#, 1.0),
            ("webhook_delivery_attempt_seconds_count", 2.0),
            (
                r#"http_requests_total{route="/orders",method="POST",status="201"}"#,
                2.0,
            ),
            (
                r#"http_request_duration_seconds_count{route="/orders",method="POST"}"#,
                2.0,
            ),
            (
                r#"http_requests_total{route="/orders/{id}",method="GET",status="200"}"#,
                1.0,
            ),
            (
                r#"http_requests_total{route="/metrics",method="GET",status="401"}"#,
                2.0,
            ),
        ],
    );
    for gauge in [
        "webhook_outbox_pending",
        "webhook_outbox_oldest_pending_seconds",
    ] {
        let value = after.get(gauge).copied();
        assert!(
            value.is_some_and(|v| v >= 0.0),
            "{gauge}: {value:?}\n{text}"
        );
    }
    assert!(
        !text.contains(&paid.to_string()),
        "an order id leaked into a label:\n{text}"
    );
    app.stop().await;
}
