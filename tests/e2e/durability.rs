//! `kill -9` in the middle of a stream of orders, then restart: every order still yields
//! exactly one email.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::support::{Demo, Service};

/// How many orders one stream sends.
const ORDERS: usize = 500;
/// Orders in flight at once while streaming.
const CONCURRENCY: usize = 8;

/// Creates orders `range` with bounded concurrency, counting them in `created`; returns ids.
async fn stream_orders(
    demo: Arc<Demo>,
    range: std::ops::Range<usize>,
    created: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut ids = Vec::with_capacity(range.len());
    let mut tasks = JoinSet::new();
    for i in range {
        if tasks.len() >= CONCURRENCY {
            ids.push(tasks.join_next().await.unwrap().unwrap());
        }
        let demo = Arc::clone(&demo);
        let created = Arc::clone(&created);
        tasks.spawn(async move {
            let order = demo
                .create_order(Demo::order_body(&format!("customer-{i}@example.com")))
                .await;
            created.fetch_add(1, Ordering::SeqCst);
            order["id"].as_str().unwrap().to_owned()
        });
    }
    while let Some(id) = tasks.join_next().await {
        ids.push(id.unwrap());
    }
    ids
}

async fn restart_after_kill9(demo: &Demo, service: &Service) {
    service.kill9();
    service.start();
    demo.wait_healthy(service).await;
}

async fn assert_one_email_each(demo: &Demo, ids: &[String]) {
    assert_eq!(ids.len(), ORDERS);
    let emails = demo.wait_for_one_sent_email_per_order(ids).await;
    assert_eq!(emails.len(), ORDERS, "one email per order and nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_orders_service_mid_stream_loses_and_duplicates_nothing() {
    let demo = Arc::new(Demo::start().await);
    let created = Arc::new(AtomicUsize::new(0));
    // The client pauses while orders-service is down (a POST in flight at the kill would leave
    // the client not knowing whether its order exists); the dispatcher is still mid-delivery.
    let mut ids = stream_orders(Arc::clone(&demo), 0..ORDERS / 2, Arc::clone(&created)).await;
    restart_after_kill9(&demo, &demo.orders).await;
    ids.extend(stream_orders(Arc::clone(&demo), ORDERS / 2..ORDERS, created).await);
    assert_one_email_each(&demo, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_notification_service_mid_stream_loses_and_duplicates_nothing() {
    let demo = Arc::new(Demo::start().await);
    let created = Arc::new(AtomicUsize::new(0));
    // Orders keep coming while the receiver dies: orders-service must retry what it missed.
    let stream = tokio::spawn(stream_orders(
        Arc::clone(&demo),
        0..ORDERS,
        Arc::clone(&created),
    ));
    demo.wait_for("half of the orders to be accepted", || {
        let created = Arc::clone(&created);
        async move { created.load(Ordering::SeqCst) >= ORDERS / 2 }
    })
    .await;
    restart_after_kill9(&demo, &demo.notifications).await;
    let ids = stream.await.unwrap();
    assert_one_email_each(&demo, &ids).await;
}
