//! `kill -9` in the middle of a stream of 500 orders, then restart: every order still yields
//! exactly one email. The stream is concurrent enough that the victim is group-committing
//! (several callers' writes per transaction) when it dies: an acknowledged write was in a
//! committed batch, a batch cut off by the kill was never acknowledged to anyone.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::support::{Demo, Service};

/// How many orders one stream sends.
const ORDERS: usize = 500;
/// Orders in flight at once while streaming: enough that the services' writers commit many
/// writes per transaction, so the kill lands among group commits, not between lone writes.
const CONCURRENCY: usize = 32;

/// Sends `ORDERS` orders with bounded concurrency, counting acknowledgements in `acked`.
/// Returns the ids of the acknowledged orders; requests lost in transit (the service was
/// being killed) are not retried, like a client that gave up.
async fn stream_orders(demo: Arc<Demo>, acked: Arc<AtomicUsize>) -> Vec<String> {
    let mut ids = Vec::with_capacity(ORDERS);
    let mut tasks = JoinSet::new();
    for i in 0..ORDERS {
        if tasks.len() >= CONCURRENCY {
            ids.extend(tasks.join_next().await.unwrap().unwrap());
        }
        let demo = Arc::clone(&demo);
        let acked = Arc::clone(&acked);
        tasks.spawn(async move {
            let order = demo
                .try_create_order(Demo::order_body(&format!("customer-{i}@example.com")))
                .await?;
            acked.fetch_add(1, Ordering::SeqCst);
            Some(order.id.to_string())
        });
    }
    while let Some(id) = tasks.join_next().await {
        ids.extend(id.unwrap());
    }
    ids
}

/// Streams 500 orders, `kill -9`s `victim` once half are acknowledged, restarts it, and checks
/// that every order orders-service committed got exactly one email and nothing else did.
async fn kill_mid_stream(demo: Arc<Demo>, victim: impl Fn(&Demo) -> &Service) {
    let acked = Arc::new(AtomicUsize::new(0));
    let stream = tokio::spawn(stream_orders(Arc::clone(&demo), Arc::clone(&acked)));
    demo.eventually("half of the orders are acknowledged", || {
        let acked = Arc::clone(&acked);
        async move { acked.load(Ordering::SeqCst) >= ORDERS / 2 }
    })
    .await;
    let emails_at_kill = demo.notifications().await.map_or(0, |all| all.len());
    let service = victim(&demo);
    service.kill9();
    let largest = largest_batch(&service.log());
    assert!(
        largest > 1,
        "the victim never committed several writes at once before the kill (largest batch \
         {largest}): the kill did not happen amid group commits"
    );
    service.start();
    demo.wait_healthy(service).await;
    let acknowledged = stream.await.unwrap();
    eprintln!(
        "kill -9 after {} acknowledged orders, with {emails_at_kill} emails recorded; {} of {ORDERS} orders acknowledged in all",
        ORDERS / 2,
        acknowledged.len()
    );

    // Orders whose POST was cut off may or may not have committed: the service's own list is
    // the truth, and it must contain every order it acknowledged.
    let committed = demo.committed_order_ids().await;
    let committed_set: BTreeSet<&String> = committed.iter().collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !committed_set.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged orders missing after the restart: {lost:?}"
    );
    let emails = demo.wait_for_one_sent_email_per_order(&committed).await;
    assert_eq!(
        emails.len(),
        committed.len(),
        "one email per committed order and nothing else"
    );
}

/// The most writes one of the service's commits held, from the writer's debug lines.
fn largest_batch(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("batch committed"))
        .filter_map(|line| {
            let (_, rest) = line.split_once("writes=")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_orders_service_mid_stream_loses_and_duplicates_nothing() {
    let demo = Arc::new(Demo::start().await);
    kill_mid_stream(demo, |d| &d.orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_notification_service_mid_stream_loses_and_duplicates_nothing() {
    let demo = Arc::new(Demo::start().await);
    kill_mid_stream(demo, |d| &d.notifications).await;
}
