//! Receiver downtime, forced redelivery and secret rotation across both services: each ends
//! with exactly one email per order and no webhook rejected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use orders_service::api::orders::OrderResponse;
use serde_json::json;
use webhook_common::Secret;

use crate::support::{attempts, Demo};

async fn create_orders(demo: &Demo, prefix: &str, n: usize) -> Vec<OrderResponse> {
    let mut orders = Vec::with_capacity(n);
    for i in 0..n {
        orders.push(
            demo.create_order(Demo::order_body(&format!("{prefix}-{i}@example.com")))
                .await,
        );
    }
    orders
}

fn ids(orders: &[OrderResponse]) -> Vec<String> {
    orders.iter().map(|o| o.id.to_string()).collect()
}

/// No attempt of any delivery of `orders` was answered 401 (a rejected signature).
async fn assert_no_rejected_attempt(demo: &Demo, orders: &[OrderResponse]) {
    for order in orders {
        for delivery in demo.deliveries_of(order).await {
            for attempt in attempts(&delivery) {
                if attempt.status_code == Some(401) {
                    demo.fail(&format!("a delivery was rejected: {delivery:?}"));
                }
            }
        }
    }
}

#[tokio::test]
async fn orders_taken_while_the_receiver_is_down_are_emailed_once_it_is_back() {
    let demo = Demo::start().await;
    demo.notifications.stop().await;

    let orders = create_orders(&demo, "while-down", 20).await;
    // Every delivery has already failed at least once: the outbox kept the events.
    for order in &orders {
        demo.eventually("a failed delivery attempt is recorded", || async {
            let deliveries = demo.deliveries_of(order).await;
            deliveries.len() == 1
                && deliveries[0].status != "delivered"
                && !attempts(&deliveries[0]).is_empty()
        })
        .await;
    }

    demo.notifications.start();
    demo.wait_healthy(&demo.notifications).await;
    demo.wait_for_one_sent_email_per_order(&ids(&orders)).await;
    for order in &orders {
        let delivery = &demo.deliveries_of(order).await[0];
        assert_eq!(delivery.status, "delivered", "{delivery:?}");
        assert!(
            attempts(delivery).len() >= 2,
            "retried after the outage: {delivery:?}"
        );
    }
}

#[tokio::test]
async fn forced_redelivery_of_delivered_events_sends_no_second_email() {
    let demo = Demo::start().await;
    let orders = create_orders(&demo, "redelivered", 10).await;
    demo.wait_for_one_sent_email_per_order(&ids(&orders)).await;

    for order in &orders {
        let delivery = &demo.deliveries_of(order).await[0];
        demo.eventually("the first delivery is recorded as delivered", || async {
            demo.deliveries_of(order).await[0].status == "delivered"
        })
        .await;
        let id = delivery.id;
        demo.admin_post(&format!("/deliveries/{id}/retry"), json!({}))
            .await;
    }
    // Each redelivery reaches the receiver (a second successful attempt) ...
    for order in &orders {
        demo.eventually("the redelivery is answered", || async {
            let delivery = &demo.deliveries_of(order).await[0];
            delivery.status == "delivered"
                && attempts(delivery)
                    .iter()
                    .filter(|a| a.status_code.is_some_and(|s| (200..300).contains(&s)))
                    .count()
                    >= 2
        })
        .await;
    }
    // ... and is recognised as a duplicate: still one email per order.
    let emails = demo.wait_for_one_sent_email_per_order(&ids(&orders)).await;
    assert_eq!(emails.len(), orders.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_secret_mid_stream_rejects_and_loses_nothing() {
    let demo = Arc::new(Demo::start().await);
    let done = Arc::new(AtomicBool::new(false));
    // A steady stream of orders for the whole rotation.
    let stream = tokio::spawn({
        let demo = Arc::clone(&demo);
        let done = Arc::clone(&done);
        async move {
            let mut orders = Vec::new();
            let mut i = 0;
            while !done.load(Ordering::SeqCst) || orders.len() < 30 {
                orders.push(
                    demo.create_order(Demo::order_body(&format!("rotation-{i}@example.com")))
                        .await,
                );
                i += 1;
            }
            orders
        }
    });

    // 1. The sender rotates: from now on every webhook carries an old and a new signature.
    let endpoint = demo.endpoint_id().await;
    let rotated = demo.rotate_secret(&endpoint).await;
    let new_secret = Secret::parse(&rotated.secret).expect("a whsec_ secret");
    assert_ne!(new_secret, demo.secret);

    // 2. The receiver moves to the new secret only, restarting mid-stream.
    demo.notifications
        .set_env("WEBHOOK_SECRET", &new_secret.expose_whsec());
    demo.notifications.stop().await;
    demo.notifications.start();
    demo.wait_healthy(&demo.notifications).await;

    done.store(true, Ordering::SeqCst);
    let orders = stream.await.unwrap();
    demo.wait_for_one_sent_email_per_order(&ids(&orders)).await;
    assert_no_rejected_attempt(&demo, &orders).await;
}
