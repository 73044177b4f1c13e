//! Deliveries that used to get stuck end in a clear state: an attempt abandoned in flight on a
//! disabled endpoint (its worker died), and a delivery that can never be loaded.

use std::time::Duration;

use clap::Parser as _;
use orders_service::dispatcher::{Dispatcher, DispatcherSettings};
use orders_service::domain::{DeliveryStatus, UNLOADABLE};
use orders_service::store::{now_ms, Store, PAUSED_AT};
use orders_service::Config;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{eventually, AppOptions, Receiver, TestApp, ADMIN_TOKEN};

/// A pool of its own on the test instance's database, for what only a crash or a corrupted
/// row can produce.
async fn raw_db(app: &TestApp) -> sqlx::SqlitePool {
    let url = format!("sqlite://{}", app.dir.path().join("orders.db").display());
    sqlx::SqlitePool::connect(&url).await.expect("raw pool")
}

/// Puts delivery `id` in flight under a lease ending at `lease_expires_at`, held by a worker that
/// will never report: what a worker that died mid-attempt leaves behind.
async fn hold_by_a_dead_worker(db: &sqlx::SqlitePool, id: Uuid, lease_expires_at: i64) {
    sqlx::query(
        "UPDATE deliveries SET status = 'in_flight', lease_expires_at = $1, \
         claim_token = 'a-dead-worker' WHERE id = $2",
    )
    .bind(lease_expires_at)
    .bind(id.to_string())
    .execute(db)
    .await
    .expect("update delivery");
}

/// `POST /deliveries/{id}/retry`.
async fn retry(app: &TestApp, id: Uuid) -> (u16, Value) {
    app.admin_json(Method::POST, &format!("/deliveries/{id}/retry"), None)
        .await
}

#[tokio::test]
async fn an_attempt_abandoned_on_a_disabled_endpoint_is_retryable_and_ends_paused() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.create_order().await;
    let first = receiver.next().await;
    let delivery = app
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    let endpoint = delivery.endpoint_id;
    let (status, _) = app
        .admin_json(
            Method::PATCH,
            &format!("/endpoints/{endpoint}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    let db = raw_db(&app).await;

    // A live lease: an attempt may be running, so the row is not reset.
    hold_by_a_dead_worker(&db, delivery.id, now_ms() + 60_000).await;
    let (status, body) = retry(&app, delivery.id).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        app.deliveries(order).await[0].status,
        DeliveryStatus::InFlight
    );

    // Its lease expired: nothing runs, so a manual retry requeues it, paused while its
    // endpoint is disabled.
    hold_by_a_dead_worker(&db, delivery.id, now_ms() - 1).await;
    let requeued = app.retry_delivery(delivery.id).await;
    assert_eq!(requeued.status, "pending");
    assert_eq!(requeued.next_attempt_at, None, "paused: {requeued:?}");

    // Left alone, an abandoned row on a disabled endpoint ends paused too (the dispatcher's
    // next claim sees to it).
    hold_by_a_dead_worker(&db, delivery.id, now_ms() - 1).await;
    eventually("the abandoned attempt is paused", || async {
        let d = app.deliveries(order).await.remove(0);
        (d.status == DeliveryStatus::Pending && d.next_attempt_at == PAUSED_AT).then_some(())
    })
    .await;

    // Enabling the endpoint sends it again, with the same webhook-id.
    let (status, _) = app
        .admin_json(
            Method::PATCH,
            &format!("/endpoints/{endpoint}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(status, 200);
    let again = receiver.next().await;
    assert_eq!(again.id, first.id);
    app.wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    db.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_delivery_that_cannot_be_loaded_is_dead_lettered_with_why_and_retryable_once_fixed() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let (url, secret) = (receiver.url.clone(), receiver.secret.clone());
    let options = || AppOptions {
        webhook_url: Some(url.clone()),
        secret: Some(secret.clone()),
        schedule: "10ms,10ms".into(),
        ..AppOptions::default()
    };
    let app = TestApp::spawn(options()).await;
    let db = raw_db(&app).await;
    sqlx::query("UPDATE endpoints SET secret = 'not a secret'")
        .execute(&db)
        .await
        .expect("corrupt the secret");
    let order = app.create_order().await;

    // The first failure counts as an attempt, and the next one waits at least the
    // load-error backoff, whatever the (short) schedule says.
    let first = eventually("the load failure is recorded", || async {
        app.deliveries(order)
            .await
            .into_iter()
            .find(|d| d.attempts == 1)
    })
    .await;
    assert_eq!(first.status, DeliveryStatus::Pending);
    assert!(first.next_attempt_at >= now_ms() + 30_000, "{first:?}");
    let reason = first.last_error.clone().unwrap_or_default();
    assert!(
        reason.starts_with("the delivery could not be loaded: ")
            && reason.contains("secret")
            && !reason.contains("not a secret"),
        "{reason}"
    );
    let dir = app.dir.clone();
    app.stop().await;

    // The rest of the schedule, by a dispatcher whose backoff is shortened and whose
    // clock is moved on by making the delivery due.
    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("orders.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("UPDATE deliveries SET next_attempt_at = 0")
        .execute(&db)
        .await
        .unwrap();
    let config = Config::try_parse_from([
        "orders-service",
        "--admin-token",
        ADMIN_TOKEN,
        "--retry-schedule",
        "10ms,10ms",
        "--retry-jitter-percent",
        "0",
        "--allow-private-webhook-targets",
        "true",
    ])
    .unwrap();
    let mut settings = DispatcherSettings::from_config(&config);
    settings.load_error_backoff = Duration::ZERO;
    let dispatcher = Dispatcher::new(store.clone(), settings).unwrap();
    let dead = eventually("the delivery is dead-lettered", || async {
        dispatcher.run_once().await.unwrap();
        let d = store.deliveries_for_order(order).await.unwrap().remove(0);
        (d.status == DeliveryStatus::Failed).then_some(d)
    })
    .await;
    assert_eq!(dead.attempts, 3, "the schedule's three attempts: {dead:?}");
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or_default()
            .starts_with("gave up after 3 attempts; last: the delivery could not be loaded: "),
        "{dead:?}"
    );
    let attempts = store.attempts(dead.id).await.unwrap();
    let recorded: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.error_kind.as_deref(), a.outcome.as_str()))
        .collect();
    assert_eq!(
        recorded,
        [
            (1, Some(UNLOADABLE), "retry"),
            (2, Some(UNLOADABLE), "retry"),
            (3, Some(UNLOADABLE), "failed"),
        ]
    );
    assert!(receiver.try_next().is_none(), "nothing was sent");
    store.close().await;

    // The operator sees why in the API, fixes the secret and retries by hand.
    sqlx::query("UPDATE endpoints SET secret = $1")
        .bind(receiver.secret.expose_whsec())
        .execute(&db)
        .await
        .unwrap();
    let app = TestApp::spawn(AppOptions {
        dir: Some(dir),
        ..options()
    })
    .await;
    let event = app.event(dead.event_id).await;
    let shown = &event.deliveries[0];
    assert_eq!(shown.status, "failed");
    assert_eq!(shown.last_error, dead.last_error);
    assert!(dead.last_error.is_some());
    let attempts = shown.attempts.as_deref().expect("attempts are listed");
    assert_eq!(attempts[2].error_kind.as_deref(), Some(UNLOADABLE));
    app.retry_delivery(dead.id).await;
    assert!(receiver.next().await.verified);
    let delivered = app
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    assert_eq!(delivered.attempts, 4);
    db.close().await;
    app.stop().await;
}
