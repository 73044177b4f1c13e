//! The ordering rule across the worker: a failure notice never reaches the customer after
//! the order's confirmation, and a paid order stays paid after cleanup.

use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use notification_service::store::to_ms;
use notification_service::worker::run_cleanup;

use crate::support::*;

/// The notification of `event_type`, from the read API.
async fn notification_of(app: &TestApp, event_type: &str) -> NotificationView {
    app.notifications()
        .await
        .into_iter()
        .find(|n| n.event_type == event_type)
        .unwrap_or_else(|| panic!("no {event_type} notification"))
}

#[tokio::test]
async fn a_failure_notice_whose_send_failed_while_the_order_was_paid_is_cancelled_not_retried() {
    let app = TestApp::spawn().await;
    let (order, t) = (Uuid::now_v7(), now());
    let r = app.deliver(&msg_id(), &payment_failed(order, t)).await;
    assert_eq!(r.status(), 202);
    // A worker takes the failure notice and starts sending it...
    let held = app
        .store
        .claim_due(10, Duration::from_millis(300), 8)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    // ...the payment succeeds meanwhile...
    let r = app
        .deliver(&msg_id(), &paid(order, t + time::Duration::seconds(5)))
        .await;
    assert_eq!(r.status(), 202);
    // ...and the send fails transiently, so the worker schedules a retry, due at once.
    assert!(app
        .store
        .schedule_retry(&held[0], OffsetDateTime::now_utc(), "transient: try later")
        .await
        .unwrap());

    eventually("the confirmation is sent", || async {
        app.worker.run_once().await.unwrap();
        (notification_of(&app, "order.paid").await.status == Status::Sent).then_some(())
    })
    .await;
    app.worker.drain().await.unwrap();
    let confirmation = notification_of(&app, "order.paid").await;
    let sent = app.mailer.sent();
    assert_eq!(sent.len(), 1, "only the confirmation goes out: {sent:?}");
    assert_eq!(sent[0].notification_id, confirmation.id);
    assert_eq!(
        notification_of(&app, "order.payment_failed").await.status,
        Status::Cancelled
    );
}

#[tokio::test]
async fn a_confirmation_waits_until_the_failure_notice_being_sent_is_done() {
    let app = TestApp::spawn().await;
    let (order, t) = (Uuid::now_v7(), now());
    app.deliver(&msg_id(), &payment_failed(order, t)).await;
    let held = app
        .store
        .claim_due(10, Duration::from_secs(1), 8)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    let r = app
        .deliver(&msg_id(), &paid(order, t + time::Duration::seconds(5)))
        .await;
    assert_eq!(r.status(), 202);

    // Another worker slot must not send the confirmation while the failure notice may still
    // be on its way: the confirmation is due only once that notice's lease is over.
    let due: i64 = sqlx::query_scalar(
        "SELECT next_attempt_at FROM notifications WHERE event_type = 'order.paid'",
    )
    .fetch_one(app.db())
    .await
    .unwrap();
    let lease_expires_at = to_ms(held[0].lease_expires_at);
    assert!(
        due > lease_expires_at,
        "confirmation due at {due}, failure notice held until {lease_expires_at}"
    );

    // The failure send succeeds; the confirmation follows it.
    assert!(app.store.mark_sent(&held[0]).await.unwrap());
    eventually("the confirmation is sent", || async {
        app.worker.run_once().await.unwrap();
        (notification_of(&app, "order.paid").await.status == Status::Sent).then_some(())
    })
    .await;
    let failure = notification_of(&app, "order.payment_failed").await;
    assert_eq!(failure.status, Status::Sent);
    assert_eq!(app.mailer.sent().len(), 1);
}

#[tokio::test]
async fn a_job_whose_worker_died_during_every_attempt_is_marked_failed_not_retried_forever() {
    let app = TestApp::spawn_with(&["--worker-max-attempts", "2"], None).await;
    app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    // Two workers claim the job in turn and die before recording anything.
    for attempt in 1..=2 {
        let job = eventually("the lease has expired", || async {
            let mut jobs = app
                .store
                .claim_due(10, Duration::from_millis(5), 2)
                .await
                .unwrap();
            jobs.pop()
        })
        .await;
        assert_eq!(job.attempts, attempt);
    }
    let n = eventually("the job is given up", || async {
        app.worker.run_once().await.unwrap();
        let n = notification_of(&app, "order.paid").await;
        (n.status != Status::Queued).then_some(n)
    })
    .await;
    assert_eq!(n.status, Status::Failed, "{n:?}");
    assert_eq!(n.attempts, 2);
    assert!(
        n.last_error.as_deref().unwrap().contains("gave up"),
        "{n:?}"
    );
    assert!(app.mailer.sent().is_empty());
}

#[tokio::test]
async fn an_order_stays_paid_after_its_dedup_records_are_cleaned_up() {
    let app = TestApp::spawn().await;
    let (order, t) = (Uuid::now_v7(), now());
    let first = msg_id();
    app.deliver(&first, &paid(order, t)).await;
    let eight_days_ago = to_ms(now() - time::Duration::days(8));
    sqlx::query("UPDATE received_webhooks SET received_at = $1")
        .bind(eight_days_ago)
        .execute(app.db())
        .await
        .unwrap();
    sqlx::query("UPDATE order_states SET updated_at = $1")
        .bind(eight_days_ago)
        .execute(app.db())
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let cleanup = tokio::spawn(run_cleanup(
        app.store.clone(),
        Duration::from_secs(7 * 24 * 3600),
        Some(Duration::from_secs(90 * 24 * 3600)),
        Duration::from_secs(3600),
        stop.clone(),
    ));
    eventually("the expired record is gone", || async {
        app.received().await.is_empty().then_some(())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(DEADLINE, cleanup)
        .await
        .unwrap()
        .unwrap();

    // Later events of the order under new webhook ids: no second confirmation, no
    // contradicting failure notice.
    for event in [
        paid(order, t + time::Duration::seconds(1)),
        payment_failed(order, t + time::Duration::seconds(2)),
    ] {
        let (_, answer) = app.submit(&msg_id(), &event).await;
        assert_eq!(answer.status, Outcome::Stale);
    }
    assert_eq!(app.notifications().await.len(), 1);
}

#[tokio::test]
async fn a_held_failure_notice_is_not_renewed_once_its_order_has_a_confirmation() {
    let app = TestApp::spawn().await;
    let (order, other, t) = (Uuid::now_v7(), Uuid::now_v7(), now());
    app.deliver(&msg_id(), &payment_failed(order, t)).await;
    app.deliver(&msg_id(), &paid(other, t)).await;
    // One worker holds both jobs under one claim...
    let held = app
        .store
        .claim_due(10, Duration::from_secs(1), 8)
        .await
        .unwrap();
    assert_eq!(held.len(), 2);
    // ...and the order of the failure notice is paid meanwhile.
    let r = app
        .deliver(&msg_id(), &paid(order, t + time::Duration::seconds(5)))
        .await;
    assert_eq!(r.status(), 202);

    let renewed = app
        .store
        .renew_leases(
            vec![(held[0].claim_token, held.iter().map(|j| j.id).collect())],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    // The confirmation waits for the failure notice's lease as it stood: that lease must
    // not grow, or the notice could still be on its way when the confirmation goes out.
    let failure = notification_of(&app, "order.payment_failed").await;
    let failure_id = failure.id;
    let renewed_ids: Vec<Uuid> = renewed.iter().map(|l| l.id).collect();
    assert_eq!(renewed.len(), 1, "{renewed:?}");
    assert!(!renewed_ids.contains(&failure_id), "{renewed:?}");
    let (failure_lease, confirmation_due): (i64, i64) = sqlx::query_as(
        "SELECT f.lease_expires_at, c.next_attempt_at FROM notifications AS f, notifications AS c
         WHERE f.id = $1 AND c.order_id = f.order_id AND c.event_type = 'order.paid'",
    )
    .bind(failure_id.to_string())
    .fetch_one(app.db())
    .await
    .unwrap();
    let claimed = held.iter().find(|j| j.id == failure_id).unwrap();
    assert_eq!(
        failure_lease,
        to_ms(claimed.lease_expires_at),
        "not extended"
    );
    assert!(confirmation_due > failure_lease);
}
