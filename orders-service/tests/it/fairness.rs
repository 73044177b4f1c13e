//! A slow or disabled endpoint does not hold up the others: the per-endpoint cap on attempts
//! in flight, pausing a disabled endpoint's deliveries, and deleting an endpoint in batches.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use orders_service::domain::DeliveryStatus;
use orders_service::store::PAUSED_AT;
use serde_json::json;
use uuid::Uuid;

use crate::support::{eventually, AppOptions, Receiver, Reply, TestApp};

/// A receiver that accepts connections and never answers; counts the connections.
async fn hanging_receiver() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    (url, accepted, holder)
}

#[tokio::test]
async fn a_hanging_endpoint_cannot_take_every_dispatch_slot() {
    let (slow_url, accepted, holder) = hanging_receiver().await;
    // The slow endpoint's attempts hang far longer than this test's deadline, so the other
    // endpoint is served in time only if slots are left for it.
    let app = TestApp::spawn(AppOptions {
        extra: [
            "--webhook-timeout",
            "60s",
            "--dispatch-lease",
            "70s",
            "--dispatch-concurrency",
            "8",
            "--dispatch-per-endpoint-concurrency",
            "2",
            "--shutdown-grace",
            "100ms",
        ]
        .map(String::from)
        .to_vec(),
        ..AppOptions::default()
    })
    .await;
    app.create_endpoint(&slow_url, &["order.paid"]).await;
    for _ in 0..12 {
        app.create_order().await;
    }
    eventually("two attempts hang on the slow endpoint", || async {
        (accepted.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;

    let mut fast = Receiver::start(Vec::new()).await;
    let fast_endpoint = app.create_endpoint(&fast.url, &["order.paid"]).await;
    let order = app.create_order().await;
    // (Signed with the endpoint's own generated secret, not the stub's.)
    let got = fast.next().await;
    assert!(
        String::from_utf8_lossy(&got.body).contains(&order.to_string()),
        "{:?}",
        got.body
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "more attempts in flight to one endpoint than its cap"
    );
    let fast_id = fast_endpoint.endpoint.id;
    let delivered = app.deliveries(order).await;
    assert!(delivered
        .iter()
        .any(|d| d.endpoint_id == fast_id && d.status != DeliveryStatus::Failed));
    app.stop().await;
    holder.abort();
}

/// Waits until the order's delivery has `n` attempts and returns it.
async fn wait_for_attempts(app: &TestApp, order: Uuid, n: u32) -> orders_service::domain::Delivery {
    eventually(
        &format!("the delivery of {order} has {n} attempts"),
        || async {
            let d = app.deliveries(order).await.into_iter().next()?;
            (d.attempts >= n && d.status != DeliveryStatus::InFlight).then_some(d)
        },
    )
    .await
}

#[tokio::test]
async fn disabling_an_endpoint_pauses_its_deliveries_and_enabling_makes_them_due_at_once() {
    // Three 503s, then 200s; retries are an hour apart, longer than the test.
    let mut receiver = Receiver::start(vec![Reply::status(503); 3]).await;
    let app = TestApp::spawn(AppOptions {
        schedule: "1h".into(),
        ..AppOptions::default()
    })
    .await;
    let id = app
        .create_endpoint(&receiver.url, &["order.paid"])
        .await
        .endpoint
        .id;
    let mut orders = Vec::new();
    for _ in 0..3 {
        let order = app.place_order(crate::support::order_body()).await;
        wait_for_attempts(&app, order.id, 1).await;
        orders.push(order);
    }
    for _ in 0..3 {
        receiver.next().await;
    }

    app.update_endpoint(id, json!({"enabled": false})).await;
    for order in &orders {
        let d = app.deliveries(order.id).await.remove(0);
        assert_eq!(d.status, DeliveryStatus::Pending);
        assert_eq!(d.next_attempt_at, PAUSED_AT, "not taken out of the due set");
        let event = app.event_of(order).await;
        let shown = &event.deliveries[0];
        assert_eq!(shown.next_attempt_at, None, "{shown:?}");
    }
    assert_eq!(app.store.next_due_at().await.unwrap(), None);

    // Enabled again: due now, not in an hour.
    app.update_endpoint(id, json!({"enabled": true})).await;
    for order in &orders {
        app.wait_for_delivery(order.id, DeliveryStatus::Delivered)
            .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_410_pauses_the_endpoints_other_pending_deliveries() {
    let mut receiver = Receiver::start(vec![Reply::status(503), Reply::status(410)]).await;
    let app = TestApp::spawn(AppOptions {
        schedule: "1h".into(),
        extra: vec!["--dispatch-per-endpoint-concurrency".into(), "1".into()],
        ..AppOptions::default()
    })
    .await;
    app.create_endpoint(&receiver.url, &["order.paid"]).await;
    let waiting = app.create_order().await;
    wait_for_attempts(&app, waiting, 1).await;
    let gone = app.create_order().await;
    app.wait_for_delivery(gone, DeliveryStatus::Failed).await;
    receiver.next().await;
    receiver.next().await;

    let d = app.deliveries(waiting).await.remove(0);
    assert_eq!(d.status, DeliveryStatus::Pending);
    assert_eq!(d.next_attempt_at, PAUSED_AT);
    assert_eq!(app.store.next_due_at().await.unwrap(), None);
    app.stop().await;
}

#[tokio::test]
async fn deleting_an_endpoint_in_batches_removes_every_delivery_and_attempt() {
    let receiver = Receiver::always(Reply::status(500)).await;
    let app = TestApp::spawn(AppOptions {
        schedule: "10ms,10ms".into(),
        ..AppOptions::default()
    })
    .await;
    let id = app
        .create_endpoint(&receiver.url, &["order.paid"])
        .await
        .endpoint
        .id;
    let mut deliveries = Vec::new();
    for _ in 0..5 {
        let order = app.create_order().await;
        deliveries.push(
            app.wait_for_delivery(order, DeliveryStatus::Failed)
                .await
                .id,
        );
    }
    assert_eq!(app.attempts(deliveries[0]).await.len(), 3);

    // Batches of 2: several rounds for the 15 attempts and 5 deliveries.
    assert!(app.store.delete_endpoint(id, 2).await.unwrap());
    for d in &deliveries {
        assert!(app.store.delivery(*d).await.unwrap().is_none());
        assert!(app.attempts(*d).await.is_empty());
    }
    assert!(app.store.endpoint(id).await.unwrap().is_none());
    assert!(!app.store.delete_endpoint(id, 2).await.unwrap());
    app.stop().await;
}
