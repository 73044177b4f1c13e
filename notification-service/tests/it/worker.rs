//! The email worker: retries, giving up, running in the background, shutdown, cleanup.

use std::sync::Arc;
use std::time::Duration;

use notification_service::mailer::SimulatedMailer;
use notification_service::worker::run_cleanup;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::*;

async fn only_notification(app: &TestApp) -> NotificationView {
    let all = app.notifications().await;
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap()
}

#[tokio::test]
async fn transient_send_failures_are_retried_with_backoff_until_sent() {
    let app = TestApp::spawn().await;
    app.mailer.fail_next(2, false);
    app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    assert_eq!(app.worker.run_once().await.unwrap(), 1);
    let n = only_notification(&app).await;
    assert_eq!((n.status, n.attempts), (Status::Queued, 1), "{n:?}");
    assert!(
        n.last_error.as_deref().unwrap().contains("transient"),
        "{n:?}"
    );

    eventually("the retries have succeeded", || async {
        app.worker.run_once().await.unwrap();
        (app.mailer.sent().len() == 1).then_some(())
    })
    .await;
    let n = only_notification(&app).await;
    assert_eq!(n.status, Status::Sent);
    assert_eq!(n.attempts, 3);
    assert_eq!(app.mailer.sent().len(), 1);
}

#[tokio::test]
async fn a_permanent_failure_marks_the_notification_failed_and_visible() {
    let app = TestApp::spawn().await;
    app.mailer.fail_next(1, true);
    app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    app.worker.drain().await.unwrap();
    let n = only_notification(&app).await;
    assert_eq!(n.status, Status::Failed);
    assert_eq!(n.attempts, 1);
    assert!(
        n.last_error.as_deref().unwrap().contains("permanent"),
        "{n:?}"
    );
    assert_eq!(n.sent_at, None);
    assert!(app.mailer.sent().is_empty());
}

#[tokio::test]
async fn after_the_last_allowed_attempt_the_notification_is_failed() {
    let app = TestApp::spawn_with(&["--worker-max-attempts", "2"], None).await;
    app.mailer.fail_next(100, false);
    app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    let n = eventually("the notification has failed", || async {
        app.worker.run_once().await.unwrap();
        let n = only_notification(&app).await;
        (n.status == Status::Failed).then_some(n)
    })
    .await;
    assert_eq!(n.attempts, 2);
    assert_eq!(app.worker.drain().await.unwrap(), 0);
}

#[tokio::test]
async fn the_background_worker_sends_new_jobs_and_stops_on_shutdown() {
    let app = TestApp::spawn().await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.worker.clone().run(stop.clone()));
    for _ in 0..10 {
        app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    }
    eventually("ten emails are sent", || async {
        (app.mailer.sent().len() == 10).then_some(())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap();
    assert!(app
        .notifications()
        .await
        .iter()
        .all(|n| n.status == Status::Sent));
}

#[tokio::test]
async fn shutdown_releases_a_job_whose_send_does_not_finish_in_the_grace_period() {
    let slow = Arc::new(SimulatedMailer::new(Duration::from_secs(30)));
    let app = TestApp::spawn_with(&["--shutdown-grace", "0s"], Some(slow)).await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.worker.clone().run(stop.clone()));
    app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    eventually("the job is claimed", || async {
        let n = only_notification(&app).await;
        (n.attempts == 1).then_some(())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap();

    let n = only_notification(&app).await;
    assert_eq!(n.status, Status::Queued);
    assert_eq!(n.attempts, 0, "the unfinished attempt is refunded");
    let reclaimed = app
        .store
        .claim_due(10, Duration::from_secs(60), 8)
        .await
        .unwrap();
    assert_eq!(reclaimed.len(), 1, "released at once, not after the lease");
}

#[tokio::test]
async fn a_renewal_extends_only_the_jobs_still_in_hand() {
    let app = TestApp::spawn().await;
    app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    let jobs = app
        .store
        .claim_due(10, Duration::from_secs(5), 8)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    let token = jobs[0].claim_token;
    assert_eq!(jobs[1].claim_token, token, "one claim, one token");
    let (kept, let_go) = (jobs[0].id, jobs[1].id);

    // The worker still has the first job in hand; it let the second one go (its outcome
    // could not be recorded). The claim's renewal must not keep the second one leased, or
    // its retry would wait for its sibling.
    let renewed = app
        .store
        .renew_leases(vec![(token, vec![kept])], Duration::from_secs(60))
        .await
        .unwrap();
    let renewed: Vec<Uuid> = renewed.iter().map(|l| l.id).collect();
    assert_eq!(renewed, vec![kept]);
    let lease_expires_at = |id: Uuid| {
        let store = app.store.clone();
        async move {
            let (until,): (i64,) =
                sqlx::query_as("SELECT lease_expires_at FROM notifications WHERE id = $1")
                    .bind(id.to_string())
                    .fetch_one(store.sqlite_pool().unwrap())
                    .await
                    .unwrap();
            until - notification_service::store::to_ms(now())
        }
    };
    assert!(lease_expires_at(kept).await > 30_000, "renewed to a minute");
    assert!(lease_expires_at(let_go).await <= 5_000, "left to expire");
}

#[tokio::test]
async fn expired_dedup_records_are_cleaned_up_and_a_late_redelivery_is_still_a_duplicate() {
    let app = TestApp::spawn().await;
    let (old, fresh) = (msg_id(), msg_id());
    let old_event = paid(Uuid::now_v7(), now());
    app.deliver(&old, &old_event).await;
    app.deliver(&fresh, &paid(Uuid::now_v7(), now())).await;
    let eight_days_ago = now() - time::Duration::days(8);
    sqlx::query("UPDATE received_webhooks SET received_at = $1 WHERE webhook_id = $2")
        .bind(notification_service::store::to_ms(eight_days_ago))
        .bind(&old)
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
        let ids: Vec<String> = app
            .received()
            .await
            .into_iter()
            .map(|r| r.webhook_id)
            .collect();
        (ids == [fresh.clone()]).then_some(())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(DEADLINE, cleanup)
        .await
        .unwrap()
        .unwrap();

    // The notification itself still remembers the delivery.
    let (_, answer) = app.submit(&old, &old_event).await;
    assert_eq!(answer.status, Outcome::Duplicate);
    assert_eq!(app.notifications().await.len(), 2);
}

/// Makes every write that marks a notification `sent` fail for `span` from now, as it would
/// while the database is locked or unreachable; other writes (lease renewals) still work.
async fn block_sent_marks(app: &TestApp, span: time::Duration) {
    for statement in [
        "CREATE TABLE outage (until_ms INTEGER NOT NULL)",
        "CREATE TRIGGER outage_blocks_sent BEFORE UPDATE OF status ON notifications
         WHEN NEW.status = 'sent' AND EXISTS (
             SELECT 1 FROM outage
             WHERE until_ms > (julianday('now') - 2440587.5) * 86400000.0)
         BEGIN SELECT RAISE(ABORT, 'simulated database outage'); END",
    ] {
        sqlx::query(statement).execute(app.db()).await.unwrap();
    }
    sqlx::query("INSERT INTO outage (until_ms) VALUES ($1)")
        .bind(notification_service::store::to_ms(now() + span))
        .execute(app.db())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_database_hiccup_after_a_send_is_ridden_out_without_a_second_email() {
    let app = TestApp::spawn().await;
    app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    // For the next second, recording a notification as sent fails, as it would while the
    // database is locked or unreachable.
    block_sent_marks(&app, time::Duration::seconds(1)).await;

    assert_eq!(app.worker.run_once().await.unwrap(), 1);
    let n = only_notification(&app).await;
    assert_eq!(n.status, Status::Sent, "{n:?}");
    assert_eq!(n.attempts, 1);
    assert_eq!(app.mailer.sent().len(), 1);
    assert_eq!(app.worker.drain().await.unwrap(), 0);
    assert_eq!(app.mailer.sent().len(), 1, "no second email");
}

#[tokio::test]
async fn the_worker_records_its_work_while_requests_hold_every_request_connection() {
    let app = TestApp::spawn().await;
    app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    let mut taken = Vec::new();
    for _ in 0..8 {
        taken.push(app.db().acquire().await.unwrap());
    }
    let claimed = tokio::time::timeout(DEADLINE, app.worker.run_once())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed, 1);
    drop(taken);
    assert_eq!(only_notification(&app).await.status, Status::Sent);
    assert_eq!(app.mailer.sent().len(), 1);
}

#[tokio::test]
async fn a_live_worker_renews_its_lease_so_an_outage_longer_than_the_lease_sends_no_second_email() {
    let app = TestApp::spawn_with(&["--worker-lease", "1s"], None).await;
    app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    // For three leases, recording a notification as sent fails; renewing its lease (which
    // does not touch the status) still works.
    block_sent_marks(&app, time::Duration::seconds(3)).await;

    let worker = app.worker.clone();
    let running = tokio::spawn(async move { worker.run_once().await });
    let lease_of_the_job = || async {
        sqlx::query_scalar::<_, Option<i64>>("SELECT lease_expires_at FROM notifications")
            .fetch_one(app.db())
            .await
            .unwrap()
    };
    let first_lease = eventually("the job is claimed", lease_of_the_job).await;
    eventually("the first lease is over", || async {
        let now_ms = notification_service::store::to_ms(now());
        (now_ms > first_lease + 200).then_some(())
    })
    .await;
    // Its worker is alive and renewing: nobody else may take the job.
    let other_worker = app
        .store
        .claim_due(10, Duration::from_secs(60), 8)
        .await
        .unwrap();
    assert!(other_worker.is_empty(), "a renewed job must not be claimed");
    assert!(lease_of_the_job().await.is_some_and(|l| l > first_lease));

    assert_eq!(
        tokio::time::timeout(DEADLINE, running)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        1
    );
    let n = only_notification(&app).await;
    assert_eq!(n.status, Status::Sent, "{n:?}");
    assert_eq!(n.attempts, 1);
    assert_eq!(app.mailer.sent().len(), 1, "no second email");
}
