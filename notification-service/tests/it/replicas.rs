//! Two replicas of the service on one PostgreSQL database, through the app: one webhook id
//! delivered to both at once is recorded once, and a job accepted by one replica is sent by
//! the other's worker at once (its `LISTEN`), not at its next poll. Skipped without
//! `TEST_DATABASE_URL`; the store's own suite covers the rest on both backends.

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_record_a_webhook_once_and_wake_each_other() {
    let Some(db) = test_support::postgres::TestDatabase::create("two_replicas_app").await else {
        return;
    };
    // B's worker polls every ten minutes: only a wake-up can make it send within the
    // test's deadline.
    let flags = [
        "--database-url",
        db.url(),
        "--database-max-connections",
        "4",
        "--worker-poll",
        "600000ms",
    ];
    let a = TestApp::spawn_with(&flags, None).await;
    let b = TestApp::spawn_with(&flags, None).await;
    let stop = CancellationToken::new();
    let worker = tokio::spawn(b.worker.clone().run(stop.clone()));

    let (id, event) = (msg_id(), paid(Uuid::now_v7(), now()));
    let (x, y) = tokio::join!(a.submit(&id, &event), b.submit(&id, &event));
    let mut answers = [(x.0, x.1.status), (y.0, y.1.status)];
    answers.sort();
    assert_eq!(answers, [(200, Outcome::Duplicate), (202, Outcome::Queued)]);
    eventually("B's worker has sent the email", || async {
        (b.mailer.sent().len() == 1).then_some(())
    })
    .await;

    // Now B's worker is idle until its poll; a job accepted by A wakes it.
    let r = a.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    assert_eq!(r.status(), 202);
    eventually("A's commit has woken B's worker", || async {
        (b.mailer.sent().len() == 2).then_some(())
    })
    .await;
    assert!(a.mailer.sent().is_empty(), "A runs no worker");
    assert_eq!(a.notifications().await.len(), 2);

    stop.cancel();
    worker.await.unwrap();
    a.store.close().await;
    b.store.close().await;
}
