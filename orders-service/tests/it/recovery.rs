//! Redelivery of one delivery and recovery of an endpoint's failed deliveries by time window.

use orders_service::domain::DeliveryStatus;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::support::{eventually, order_body, AppOptions, Receiver, Reply, TestApp};

#[tokio::test]
async fn a_delivered_event_can_be_redelivered_with_the_same_webhook_id() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.create_order().await;
    let first = receiver.next().await;
    let delivery = app
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;

    let requeued = app.retry_delivery(delivery.id).await;
    assert_eq!(requeued.id, delivery.id);
    let again = receiver.next().await;
    assert_eq!(again.id, first.id, "receivers deduplicate on webhook-id");
    assert_eq!(again.body, first.body);
    assert!(again.verified);
    let done = eventually("the redelivery is recorded", || async {
        let d = app.deliveries(order).await.remove(0);
        (d.status == DeliveryStatus::Delivered && d.attempts == 2).then_some(d)
    })
    .await;
    assert_eq!(app.attempts(done.id).await.len(), 2);

    // An id that names nothing is a 404; one that is not a UUID, a 400 naming it.
    for (id, expected) in [(Uuid::now_v7().to_string(), 404), ("nope".to_owned(), 400)] {
        let (status, body) = app
            .admin_json(Method::POST, &format!("/deliveries/{id}/retry"), None)
            .await;
        assert_eq!(status, expected, "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_dead_lettered_delivery_retried_by_hand_gets_a_fresh_retry_schedule() {
    let mut receiver = Receiver::always(Reply::status(500)).await;
    // Two attempts in all: one retry.
    let app = TestApp::spawn(AppOptions {
        schedule: "20ms".into(),
        ..AppOptions::to(&receiver)
    })
    .await;
    let order = app.create_order().await;
    let dead = app.wait_for_delivery(order, DeliveryStatus::Failed).await;
    assert_eq!(dead.attempts, 2);

    let (status, _) = app
        .admin_json(
            Method::POST,
            &format!("/deliveries/{}/retry", dead.id),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let again = eventually("the redelivery is given up again", || async {
        let d = app.deliveries(order).await.remove(0);
        (d.status == DeliveryStatus::Failed && d.attempts > 2).then_some(d)
    })
    .await;
    // Two more attempts, not one: the schedule started over.
    assert_eq!(again.attempts, 4);
    let numbers: Vec<u32> = app
        .attempts(again.id)
        .await
        .iter()
        .map(|a| a.attempt)
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    for _ in 0..4 {
        receiver.next().await;
    }
    app.stop().await;
}

#[tokio::test]
async fn recover_requeues_the_endpoints_failed_deliveries_in_the_window_only() {
    let mut receiver = Receiver::start(vec![
        Reply::status(500),
        Reply::status(500),
        Reply::status(500),
    ])
    .await;
    // One attempt each: every 500 is final.
    let app = TestApp::spawn(AppOptions {
        schedule: "none".into(),
        ..AppOptions::to(&receiver)
    })
    .await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let order = app.place_order(order_body()).await;
        app.wait_for_delivery(order.id, DeliveryStatus::Failed)
            .await;
        orders.push((order.id, order.created_at));
    }
    for _ in 0..3 {
        receiver.next().await;
    }
    let ms = |text: &str| {
        let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .unwrap();
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap()
    };
    // Each order waited for the previous one's delivery to fail, so their times differ.
    assert!(ms(&orders[0].1) < ms(&orders[1].1) && ms(&orders[1].1) < ms(&orders[2].1));
    let endpoint = app.deliveries(orders[0].0).await[0].endpoint_id;

    // Bounded per call: with a limit of one, one is requeued and more remain.
    let since_ms = ms(&orders[1].1);
    let first_batch = app
        .store
        .recover_endpoint(endpoint, since_ms, i64::MAX, 1)
        .await
        .unwrap();
    assert_eq!((first_batch.requeued, first_batch.more), (1, true));
    let rest = app.recover(endpoint, json!({"since": orders[1].1})).await;
    assert_eq!((rest.requeued, rest.more), (1, false));
    for (id, _) in &orders[1..] {
        app.wait_for_delivery(*id, DeliveryStatus::Delivered).await;
    }
    assert_eq!(
        app.deliveries(orders[0].0).await[0].status,
        DeliveryStatus::Failed,
        "outside the window"
    );

    // A window that ends where the second order begins holds only the first.
    let first = app
        .recover(
            endpoint,
            json!({"since": orders[0].1, "until": orders[1].1}),
        )
        .await;
    assert_eq!((first.requeued, first.more), (1, false));
    app.wait_for_delivery(orders[0].0, DeliveryStatus::Delivered)
        .await;
    for _ in 0..3 {
        receiver.next().await;
    }
    let (status, _) = app
        .admin_json(
            Method::POST,
            &format!("/endpoints/{}/recover", Uuid::now_v7()),
            Some(json!({"since": orders[0].1})),
        )
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}
