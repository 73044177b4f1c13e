//! Restarts, crashed workers, graceful shutdown and the configured subscription across
//! restarts, in process.

use std::sync::Arc;

use clap::Parser as _;
use orders_service::dispatcher::{Dispatcher, DispatcherSettings};
use orders_service::domain::{
    Attempt, AttemptOutcome, DeliveryStatus, NewEvent, Order, OrderStatus,
};
use orders_service::store::{now_ms, ClaimOnCreate, Store};
use orders_service::Config;
use uuid::Uuid;
use webhook_common::{Currency, Money, Secret};

use crate::support::{
    bind_port, eventually, free_port, AppOptions, Receiver, Reply, TestApp, ADMIN_TOKEN,
};

#[tokio::test]
async fn pending_deliveries_survive_a_restart_and_are_delivered() {
    let port = free_port().await;
    let secret = Secret::generate();
    let options = |dir| AppOptions {
        webhook_url: Some(format!("http://127.0.0.1:{port}/webhook")),
        secret: Some(secret.clone()),
        schedule: ["200ms"; 50].join(","),
        dir,
        ..AppOptions::default()
    };
    let first = TestApp::spawn(options(None)).await;
    let mut orders = Vec::new();
    for _ in 0..3 {
        orders.push(first.create_order().await);
    }
    for order in &orders {
        eventually("each delivery has failed once", || async {
            let d = first.deliveries(*order).await.into_iter().next()?;
            (d.attempts >= 1).then_some(())
        })
        .await;
    }
    let dir = first.dir.clone();
    first.stop().await;

    let second = TestApp::spawn(options(Some(dir))).await;
    let mut receiver = Receiver::start_on(
        bind_port(port).await,
        secret,
        Vec::new(),
        Reply::status(200),
    );
    for order in &orders {
        second
            .wait_for_delivery(*order, DeliveryStatus::Delivered)
            .await;
    }
    let mut ids = std::collections::HashSet::new();
    while ids.len() < orders.len() {
        let got = receiver.next().await;
        assert!(got.verified);
        ids.insert(got.id);
    }
    second.stop().await;
}

#[tokio::test]
async fn shutdown_gives_back_the_lease_of_an_attempt_still_in_flight() {
    // A receiver that accepts connections and never answers.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hanging.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    let app = TestApp::spawn(AppOptions {
        webhook_url: Some(format!("http://127.0.0.1:{port}/webhook")),
        secret: Some(Secret::generate()),
        extra: vec![
            "--webhook-timeout".into(),
            "20s".into(),
            "--dispatch-lease".into(),
            "30s".into(),
            "--shutdown-grace".into(),
            "100ms".into(),
        ],
        ..AppOptions::default()
    })
    .await;
    let order = app.create_order().await;
    app.wait_for_delivery(order, DeliveryStatus::InFlight).await;
    let dir = app.dir.clone();
    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("orders.db").display()
    ))
    .await
    .unwrap();
    app.stop().await;

    let delivery = store.deliveries_for_order(order).await.unwrap().remove(0);
    assert_eq!(
        delivery.status,
        DeliveryStatus::Pending,
        "lease not released"
    );
    assert_eq!(
        delivery.attempts, 0,
        "an interrupted attempt is not counted"
    );
    assert!(store.attempts(delivery.id).await.unwrap().is_empty());
    holder.abort();
}

fn settings(lease_ms: u64) -> DispatcherSettings {
    let config = Config::try_parse_from([
        "orders-service",
        "--admin-token",
        ADMIN_TOKEN,
        "--retry-schedule",
        "10ms",
        "--webhook-timeout",
        "1s",
        "--dispatch-lease",
        &format!("{lease_ms}ms"),
        "--allow-private-webhook-targets",
        "--order-rate-limit-per-sec",
        "0",
    ])
    .unwrap();
    DispatcherSettings::from_config(&config)
}

/// A first attempt that the receiver answered with 200.
fn delivered_attempt() -> Attempt {
    Attempt {
        attempt: 1,
        started_at: now_ms(),
        duration_ms: 1,
        status_code: Some(200),
        error_kind: None,
        response_body: None,
        outcome: "delivered".into(),
    }
}

/// Writes an order with its event and deliveries straight through the store.
async fn write_order(store: &Store) -> Uuid {
    write_order_claiming(store, None).await.0
}

/// [`write_order`], asking the order's transaction to claim its delivery; returns the order
/// and the claim it made, if any.
async fn write_order_claiming(
    store: &Store,
    claim: Option<ClaimOnCreate>,
) -> (Uuid, Option<orders_service::store::Claimed>) {
    let id = Uuid::now_v7();
    let event_id = Uuid::now_v7();
    let total = Money::new(1000, Currency::EUR);
    let order = Order {
        id,
        event_id: Some(event_id),
        product_name: "Lamp".into(),
        quantity: 1,
        unit_price: total,
        total,
        customer_email: "ada@example.com".into(),
        status: OrderStatus::Paid,
        failure_reason: None,
        created_at: now_ms(),
    };
    let event = NewEvent {
        id: event_id,
        msg_id: webhook_common::signing::new_message_id(),
        event_type: "order.paid".into(),
        order_id: Some(id),
        payload: br#"{"type":"order.paid"}"#.to_vec(),
        created_at: now_ms(),
    };
    let created = store
        .create_order_claiming(&order, &event, claim)
        .await
        .unwrap();
    assert_eq!(created.deliveries, 1);
    (id, created.claimed)
}

#[tokio::test]
async fn an_order_claims_its_own_delivery_only_below_the_per_endpoint_cap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("o.db").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let secret = Secret::generate();
    store
        .ensure_config_endpoint(
            "test",
            "http://127.0.0.1:9/webhook",
            Some(&secret),
            &["order.paid"],
        )
        .await
        .unwrap();
    let claim = ClaimOnCreate {
        lease_ms: 60_000,
        per_endpoint: 2,
    };

    // Below the cap: the order's own transaction leases its delivery and returns the job,
    // complete (payload, URL, secret) and under a lease the store agrees with.
    let (first, claimed) = write_order_claiming(&store, Some(claim)).await;
    let claimed = claimed.expect("a claim below the cap");
    assert_eq!(claimed.jobs.len(), 1);
    assert!(claimed.unloadable.is_empty());
    let job = &claimed.jobs[0];
    assert_eq!(job.url.as_str(), "http://127.0.0.1:9/webhook");
    assert_eq!(job.secrets.len(), 1);
    assert_eq!(job.attempts, 0);
    assert_eq!(&job.payload[..], br#"{"type":"order.paid"}"#);
    let delivery = store.deliveries_for_order(first).await.unwrap().remove(0);
    assert_eq!(delivery.id, job.delivery_id);
    assert_eq!(delivery.status, DeliveryStatus::InFlight);
    // Nobody else can claim it while the lease lasts.
    assert!(store
        .claim_due(10, 60_000, 10)
        .await
        .unwrap()
        .jobs
        .is_empty());

    // The second still fits; the third finds the endpoint at its cap and stays pending for
    // the dispatcher.
    assert!(write_order_claiming(&store, Some(claim)).await.1.is_some());
    let (third, none) = write_order_claiming(&store, Some(claim)).await;
    assert!(
        none.is_none(),
        "the cap counts deliveries claimed by orders too"
    );
    let delivery = store.deliveries_for_order(third).await.unwrap().remove(0);
    assert_eq!(delivery.status, DeliveryStatus::Pending);

    // The claimed delivery's outcome is recorded like any other claim's.
    let attempt = delivered_attempt();
    assert!(store
        .finish_attempt(job, &attempt, &AttemptOutcome::Delivered, None)
        .await
        .unwrap());
    let delivery = store.deliveries_for_order(first).await.unwrap().remove(0);
    assert_eq!(delivery.status, DeliveryStatus::Delivered);
    assert_eq!(store.attempts(delivery.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_delivery_left_in_flight_by_a_crashed_worker_is_retried_after_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("o.db").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut receiver = Receiver::start(Vec::new()).await;
    store
        .ensure_config_endpoint(
            "test",
            &receiver.url,
            Some(&receiver.secret),
            &["order.paid"],
        )
        .await
        .unwrap();
    let order = write_order(&store).await;

    // A worker claims the delivery and dies without finishing it.
    let crashed = store.claim_due(10, 300, 4).await.unwrap();
    assert_eq!(crashed.jobs.len(), 1);

    let dispatcher = Dispatcher::new(store.clone(), settings(5_000)).unwrap();
    assert_eq!(
        dispatcher.run_once().await.unwrap(),
        0,
        "a live lease must not be taken over"
    );
    eventually("the expired lease is claimed again", || async {
        (dispatcher.run_once().await.unwrap() == 1).then_some(())
    })
    .await;
    assert!(receiver.next().await.verified);
    let delivery = store.deliveries_for_order(order).await.unwrap().remove(0);
    assert_eq!(delivery.status, DeliveryStatus::Delivered);

    assert_eq!(dispatcher.drain().await.unwrap(), 0);
}

#[tokio::test]
async fn a_dead_workers_late_report_is_refused_while_the_new_owner_is_still_sending() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("o.db").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store
        .ensure_config_endpoint(
            "test",
            "http://127.0.0.1:9/webhook",
            Some(&Secret::generate()),
            &["order.paid"],
        )
        .await
        .unwrap();
    let order = write_order(&store).await;

    // The first worker claims with a short lease and stalls; its lease expires and a second
    // worker claims the delivery, which is now in flight under the second claim.
    let mut first = store.claim_due(10, 100, 4).await.unwrap();
    assert_eq!(first.jobs.len(), 1);
    let first_job = first.jobs.remove(0);
    let (id, old_token) = (first_job.delivery_id, first_job.claim_token);
    let second_job = eventually("the expired lease is claimed again", || async {
        store.claim_due(10, 60_000, 4).await.unwrap().jobs.pop()
    })
    .await;
    let new_token = second_job.claim_token;
    assert_eq!(second_job.delivery_id, id);
    assert_ne!(new_token, old_token);

    // The first worker wakes up and reports: refused, nothing recorded, still in flight.
    let attempt = delivered_attempt();
    let recorded = store
        .finish_attempt(&first_job, &attempt, &AttemptOutcome::Delivered, None)
        .await
        .unwrap();
    assert!(!recorded, "a report under an expired claim must be refused");
    let delivery = store.deliveries_for_order(order).await.unwrap().remove(0);
    assert_eq!(delivery.status, DeliveryStatus::InFlight);
    assert_eq!(delivery.attempts, 0);
    assert!(store.attempts(id).await.unwrap().is_empty());
    // Releasing under the old claim does not take the row from its new owner either.
    store.release(id, old_token, 0).await.unwrap();
    assert_eq!(
        store.deliveries_for_order(order).await.unwrap()[0].status,
        DeliveryStatus::InFlight
    );

    // The current owner's report is recorded.
    assert!(store
        .finish_attempt(&second_job, &attempt, &AttemptOutcome::Delivered, None)
        .await
        .unwrap());
    let delivery = store.deliveries_for_order(order).await.unwrap().remove(0);
    assert_eq!(delivery.status, DeliveryStatus::Delivered);
    assert_eq!(store.attempts(id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_delivery_that_fails_to_load_counts_an_attempt_and_is_not_retried_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("o.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    store
        .ensure_config_endpoint(
            "test",
            "http://127.0.0.1:9/webhook",
            Some(&Secret::generate()),
            &["order.paid"],
        )
        .await
        .unwrap();
    let order = write_order(&store).await;
    // A stored secret that no longer parses makes every load of the delivery fail.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("UPDATE endpoints SET secret = 'not a secret'")
        .execute(&pool)
        .await
        .unwrap();

    let dispatcher = Dispatcher::new(store.clone(), settings(5_000)).unwrap();
    assert_eq!(dispatcher.run_once().await.unwrap(), 1);
    // Counted as an attempt (so the schedule ends it as failed) and due again only after a
    // backoff, so the loop cannot spin on it.
    assert_eq!(dispatcher.run_once().await.unwrap(), 0);
    let delivery = store.deliveries_for_order(order).await.unwrap().remove(0);
    assert_eq!(delivery.status, DeliveryStatus::Pending);
    assert_eq!(delivery.attempts, 1);
    assert!(
        delivery.next_attempt_at >= now_ms() + 30_000,
        "due again too soon: {} vs now {}",
        delivery.next_attempt_at,
        now_ms()
    );
    pool.close().await;
}

#[tokio::test]
async fn the_configured_subscription_is_ensured_once_and_follows_a_changed_url() {
    let mut a = Receiver::start(Vec::new()).await;
    let first = TestApp::spawn(AppOptions::to(&a)).await;
    let order = first.create_order().await;
    assert!(a.next().await.verified);
    let endpoint = first
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await
        .endpoint_id;
    let dir = first.dir.clone();
    first.stop().await;

    // Same settings again: the same endpoint, not a second one.
    let again = TestApp::spawn(AppOptions {
        dir: Some(dir.clone()),
        ..AppOptions::to(&a)
    })
    .await;
    let order = again.create_order().await;
    assert!(a.next().await.verified);
    let delivery = again
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    assert_eq!(delivery.endpoint_id, endpoint);
    assert_eq!(again.deliveries(order).await.len(), 1);
    again.stop().await;

    // A new URL and secret update that endpoint.
    let mut b = Receiver::start(Vec::new()).await;
    let moved = TestApp::spawn(AppOptions {
        dir: Some(Arc::clone(&dir)),
        ..AppOptions::to(&b)
    })
    .await;
    let order = moved.create_order().await;
    assert!(b.next().await.verified, "signed with the new secret");
    let delivery = moved
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    assert_eq!(delivery.endpoint_id, endpoint);
    let stored = moved.store.endpoint(endpoint).await.unwrap().unwrap();
    assert_eq!(stored.url, b.url);
    assert!(a.try_next().is_none());
    moved.stop().await;
}

#[tokio::test]
async fn without_a_configured_url_orders_are_stored_but_nothing_is_sent() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let order = app.create_order().await;
    assert!(app.deliveries(order).await.is_empty());
    assert_eq!(app.store.event_msg_ids_by_order().await.unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn two_dispatchers_sharing_one_database_never_claim_the_same_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("o.db").display());
    let store = Store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let mut receiver = Receiver::start(Vec::new()).await;
    store
        .ensure_config_endpoint(
            "test",
            &receiver.url,
            Some(&receiver.secret),
            &["order.paid"],
        )
        .await
        .unwrap();
    for _ in 0..60 {
        write_order(&store).await;
    }
    // Two replicas: separate pools on the same file, draining at the same time.
    let other = Store::connect(&url).await.unwrap();
    let a = Dispatcher::new(store.clone(), settings(5_000)).unwrap();
    let b = Dispatcher::new(other, settings(5_000)).unwrap();
    let (claimed_a, claimed_b) = tokio::join!(a.drain(), b.drain());
    assert_eq!(claimed_a.unwrap() + claimed_b.unwrap(), 60);

    let mut ids = std::collections::HashSet::new();
    for _ in 0..60 {
        let got = receiver.next().await;
        assert!(ids.insert(got.id), "a delivery was sent twice");
    }
    assert!(receiver.try_next().is_none());
    let counts = store.delivery_counts().await.unwrap();
    assert_eq!(counts, [("delivered".to_owned(), 60)]);
}

#[tokio::test]
async fn unsetting_the_webhook_url_disables_the_configured_subscription_and_setting_it_again_enables_it(
) {
    let mut receiver = Receiver::start(Vec::new()).await;
    let first = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = first.create_order().await;
    assert!(receiver.next().await.verified);
    let endpoint = first
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await
        .endpoint_id;
    let dir = first.dir.clone();
    first.stop().await;

    // Started without NOTIFICATION_WEBHOOK_URL: the endpoint from the earlier start is off.
    let unset = TestApp::spawn(AppOptions {
        dir: Some(dir.clone()),
        ..AppOptions::default()
    })
    .await;
    let shown = unset.store.endpoint(endpoint).await.unwrap().unwrap();
    assert!(!shown.enabled);
    assert_eq!(
        shown.disabled_reason.as_deref(),
        Some("NOTIFICATION_WEBHOOK_URL is no longer set")
    );
    let quiet = unset.create_order().await;
    assert!(
        unset.deliveries(quiet).await.is_empty(),
        "no delivery queued"
    );
    assert!(receiver
        .next_within(std::time::Duration::from_millis(300))
        .await
        .is_none());
    unset.stop().await;

    // Set again (same URL): enabled again and delivering.
    let again = TestApp::spawn(AppOptions {
        dir: Some(dir),
        ..AppOptions::to(&receiver)
    })
    .await;
    let shown = again.store.endpoint(endpoint).await.unwrap().unwrap();
    assert!(shown.enabled);
    assert_eq!(shown.disabled_reason, None);
    let order = again.create_order().await;
    assert!(receiver.next().await.verified);
    again
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    again.stop().await;
}
