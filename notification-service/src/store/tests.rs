//! The store's test suite: one scenario per behaviour, each run on both backends (a temp
//! SQLite file, and a fresh PostgreSQL database from `TEST_DATABASE_URL`; without it the
//! PostgreSQL runs print that they were skipped). The cross-replica scenarios open a second
//! [`Store`] on the same database, as a second replica would, and race the two.
//!
//! Raw SQL here is written to run on both (`CAST(x AS TEXT)` to compare ids as text); only
//! the inserts of prepared rows need each dialect ([`TestDb::insert_job`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;

/// How long any wait of a test may take before it fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// Connections of each test store's PostgreSQL pool: tests run in parallel against one
/// server (`max_connections=100`).
const TEST_POOL: u32 = 4;

/// A fresh, migrated database and a store on it; dropped (PostgreSQL) or deleted (SQLite)
/// with the value.
pub(crate) struct TestDb {
    url: String,
    store: Store,
    _keep: Keep,
}

/// What must live as long as the test's database does.
enum Keep {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] Box<test_support::postgres::TestDatabase>),
}

/// A value bound to a test query.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Int(i64),
    Text(String),
    NullInt,
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<Uuid> for Value {
    fn from(v: Uuid) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Value::NullInt, Value::Int)
    }
}

/// A row of `notifications` to insert as it is (see [`TestDb::insert_job`]).
pub(crate) struct Job<'a> {
    /// Also its subject, to tell the rows apart.
    pub webhook_id: &'a str,
    pub event_type: &'a str,
    pub order_id: Uuid,
    pub status: &'a str,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub lease_expires_at: Option<i64>,
    pub created_at: i64,
}

impl Default for Job<'_> {
    fn default() -> Self {
        Job {
            webhook_id: "w",
            event_type: "order.paid",
            order_id: Uuid::now_v7(),
            status: "queued",
            attempts: 0,
            next_attempt_at: 0,
            lease_expires_at: None,
            created_at: 0,
        }
    }
}

impl TestDb {
    /// A migrated SQLite database in a temporary directory.
    pub(crate) async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        Self::open(url, Keep::Sqlite(dir)).await
    }

    /// A migrated PostgreSQL database of its own for the test `name`; `None` (skipped, with
    /// a message) when `TEST_DATABASE_URL` is not set.
    pub(crate) async fn postgres(name: &str) -> Option<TestDb> {
        let db = test_support::postgres::TestDatabase::create(name).await?;
        let url = db.url().to_owned();
        Some(Self::open(url, Keep::Postgres(Box::new(db))).await)
    }

    async fn open(url: String, keep: Keep) -> TestDb {
        let db = Self::open_unmigrated(url, keep).await;
        db.store.migrate().await.unwrap();
        db
    }

    /// A database with its store connected and no schema yet, to migrate step by step.
    async fn open_unmigrated(url: String, keep: Keep) -> TestDb {
        let store = Store::connect(&url, TEST_POOL).await.unwrap();
        TestDb {
            url,
            store,
            _keep: keep,
        }
    }

    /// A SQLite database at the schema before the claim rename (see [`before_the_rename`]).
    async fn sqlite_before_the_rename() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let db = Self::open_unmigrated(url, Keep::Sqlite(dir)).await;
        let pool = db.store.sqlite_pool().unwrap();
        before_the_rename(&super::sqlite::MIGRATOR)
            .run(pool)
            .await
            .unwrap();
        db
    }

    /// A PostgreSQL database at the schema before the claim rename; `None` as
    /// [`TestDb::postgres`].
    async fn postgres_before_the_rename(name: &str) -> Option<TestDb> {
        let pg = test_support::postgres::TestDatabase::create(name).await?;
        let url = pg.url().to_owned();
        let db = Self::open_unmigrated(url, Keep::Postgres(Box::new(pg))).await;
        let pool = db.store.postgres_pool().unwrap();
        before_the_rename(&super::postgres::MIGRATOR)
            .run(pool)
            .await
            .unwrap();
        Some(db)
    }

    /// The store the test started with.
    pub(crate) fn store(&self) -> Store {
        self.store.clone()
    }

    /// Another store on the same database: a second replica.
    pub(crate) async fn replica(&self) -> Store {
        Store::connect(&self.url, TEST_POOL).await.unwrap()
    }

    /// Whether this is the PostgreSQL run.
    pub(crate) fn is_postgres(&self) -> bool {
        self.store.postgres_pool().is_some()
    }

    /// Runs `sql` with `binds`; returns the rows it changed.
    pub(crate) async fn execute(&self, sql: &str, binds: &[Value]) -> u64 {
        if let Some(pool) = self.store.sqlite_pool() {
            let mut query = sqlx::query(sql);
            for b in binds {
                query = match b.clone() {
                    Value::Int(v) => query.bind(v),
                    Value::Text(v) => query.bind(v),
                    Value::NullInt => query.bind(None::<i64>),
                };
            }
            return query.execute(pool).await.unwrap().rows_affected();
        }
        let pool = self.store.postgres_pool().unwrap();
        let mut query = sqlx::query(sql);
        for b in binds {
            query = match b.clone() {
                Value::Int(v) => query.bind(v),
                Value::Text(v) => query.bind(v),
                Value::NullInt => query.bind(None::<i64>),
            };
        }
        query.execute(pool).await.unwrap().rows_affected()
    }

    /// The rows of `sql` with `binds`.
    pub(crate) async fn fetch_all<T>(&self, sql: &str, binds: &[Value]) -> Vec<T>
    where
        T: Send + Unpin + for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow>,
    {
        if let Some(pool) = self.store.sqlite_pool() {
            let mut query = sqlx::query_as::<_, T>(sql);
            for b in binds {
                query = match b.clone() {
                    Value::Int(v) => query.bind(v),
                    Value::Text(v) => query.bind(v),
                    Value::NullInt => query.bind(None::<i64>),
                };
            }
            return query.fetch_all(pool).await.unwrap();
        }
        let pool = self.store.postgres_pool().unwrap();
        let mut query = sqlx::query_as::<_, T>(sql);
        for b in binds {
            query = match b.clone() {
                Value::Int(v) => query.bind(v),
                Value::Text(v) => query.bind(v),
                Value::NullInt => query.bind(None::<i64>),
            };
        }
        query.fetch_all(pool).await.unwrap()
    }

    /// The one row of `sql` with `binds`.
    pub(crate) async fn fetch_one<T>(&self, sql: &str, binds: &[Value]) -> T
    where
        T: Send + Unpin + for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow>,
    {
        let mut rows = self.fetch_all(sql, binds).await;
        assert_eq!(rows.len(), 1, "{sql}");
        rows.remove(0)
    }

    /// Inserts `job` as it is (recipient `a@example.com`, subject its webhook id, body `b`);
    /// returns its id.
    pub(crate) async fn insert_job(&self, job: &Job<'_>) -> Uuid {
        let id = Uuid::now_v7();
        // The one statement that needs each dialect: PostgreSQL's ids are uuid.
        let sql = if self.is_postgres() {
            "INSERT INTO notifications (id, webhook_id, event_type, order_id, recipient,
                 subject, body, status, attempts, next_attempt_at, lease_expires_at, created_at)
             VALUES ($1::uuid, $2, $3, $4::uuid, 'a@example.com', $2, 'b', $5, $6, $7, $8, $9)"
        } else {
            "INSERT INTO notifications (id, webhook_id, event_type, order_id, recipient,
                 subject, body, status, attempts, next_attempt_at, lease_expires_at, created_at)
             VALUES ($1, $2, $3, $4, 'a@example.com', $2, 'b', $5, $6, $7, $8, $9)"
        };
        self.execute(
            sql,
            &[
                id.into(),
                job.webhook_id.into(),
                job.event_type.into(),
                job.order_id.into(),
                job.status.into(),
                job.attempts.into(),
                job.next_attempt_at.into(),
                job.lease_expires_at.into(),
                job.created_at.into(),
            ],
        )
        .await;
        id
    }

    /// Inserts the state of `order_id`: paid at `paid_at`, last updated at `updated_at`.
    pub(crate) async fn insert_order_state(&self, order_id: Uuid, paid_at: i64, updated_at: i64) {
        let sql = if self.is_postgres() {
            "INSERT INTO order_states (order_id, paid_at, last_failure_at, updated_at)
             VALUES ($1::uuid, $2, NULL, $3)"
        } else {
            "INSERT INTO order_states (order_id, paid_at, last_failure_at, updated_at)
             VALUES ($1, $2, NULL, $3)"
        };
        self.execute(sql, &[order_id.into(), paid_at.into(), updated_at.into()])
            .await;
    }

    /// Closes the store (and so the SQLite writer).
    pub(crate) async fn close(&self) {
        self.store.close().await;
    }
}

/// The description of the migration that renamed `lease_token`/`lease_until` to
/// `claim_token`/`lease_expires_at` (sqlite 0004, postgres 0002).
const CLAIM_RENAME: &str = "claim vocabulary";

/// `migrator`'s migrations before the claim rename: the schema a database written by the
/// previous release has.
pub(crate) fn before_the_rename(migrator: &Migrator) -> Migrator {
    test_support::migrations::migrations_before(migrator, CLAIM_RENAME)
}

/// Generates, for each scenario `async fn name(db: &TestDb)`, the tests `sqlite::name` and
/// `postgres::name`. Multi-threaded, so the races between replicas are real.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let db = super::TestDb::sqlite().await;
                    super::$scenario(&db).await;
                    db.close().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(db) = super::TestDb::postgres(stringify!($scenario)).await else {
                        return;
                    };
                    super::$scenario(&db).await;
                    db.close().await;
                }
            )*
        }
    };
}

on_both_backends!(
    every_statement_of_the_intake_runs_with_its_binds_in_place,
    retention_deletes_only_old_finished_notifications_and_unused_states,
    due_at_is_exactly_when_a_job_becomes_claimable,
    a_claim_settles_what_must_not_be_sent_and_leases_the_next_due_jobs,
    notifications_page_newest_first_and_read_back_whole,
    the_same_webhook_on_two_replicas_at_once_is_recorded_once,
    two_payments_of_one_order_on_two_replicas_queue_one_confirmation,
    a_failure_notice_claimed_while_its_order_is_paid_is_never_due_after_the_confirmation,
    a_failure_notice_renewed_while_its_order_is_paid_never_outlasts_the_confirmation_s_wait,
    two_replicas_claiming_at_once_never_take_one_job_twice,
    a_job_leased_by_a_dead_replica_is_claimed_by_another_once_its_lease_expires,
);

/// A webhook `id` of `kind` (`None`: an event type this service ignores) for `order_id`,
/// that happened at `at_ms`.
fn webhook(id: &str, kind: Option<OrderEventKind>, order_id: Uuid, at_ms: i64) -> IncomingWebhook {
    let event_type = match kind {
        Some(OrderEventKind::Paid) => "order.paid",
        Some(OrderEventKind::PaymentFailed) => "order.payment_failed",
        None => "order.shipped",
    };
    IncomingWebhook {
        webhook_id: id.into(),
        event_type: event_type.into(),
        event_at: from_ms(at_ms),
        email: kind.map(|kind| OrderEmail {
            kind,
            order_id,
            to: format!("{id}@example.com"),
            subject: format!("subject of {id}"),
            body: format!("body of {id}"),
        }),
        trace_id: None,
    }
}

fn queued(outcome: IntakeOutcome) -> Uuid {
    match outcome {
        IntakeOutcome::Queued { notification_id } => notification_id,
        other => panic!("not queued: {other:?}"),
    }
}

/// Every column the intake's statements write, checked after each kind of outcome: each
/// statement ran, and each parameter landed where it belongs.
async fn every_statement_of_the_intake_runs_with_its_binds_in_place(db: &TestDb) {
    let store = db.store();
    let (order, t) = (Uuid::now_v7(), to_ms(OffsetDateTime::now_utc()) - 60_000);
    // The dedup record of `id`, as "id type order t+offset outcome".
    let received = |id: &'static str| async move {
        db.fetch_one::<(String,)>(
            "SELECT webhook_id || ' ' || event_type || ' '
                    || CASE WHEN CAST(order_id AS TEXT) = $2 THEN 'order'
                            ELSE COALESCE(CAST(order_id AS TEXT), '-') END
                    || ' t+' || (event_at - $3) || ' ' || outcome
             FROM received_webhooks WHERE webhook_id = $1",
            &[id.into(), order.into(), t.into()],
        )
        .await
        .0
    };
    // The order's (paid_at, last_failure_at).
    let state = || async {
        db.fetch_one::<(Option<i64>, Option<i64>)>(
            "SELECT paid_at, last_failure_at FROM order_states WHERE CAST(order_id AS TEXT) = $1",
            &[order.into()],
        )
        .await
    };
    // The notification `id`, as "webhook type status due+delay attempts", flagged if its
    // order or email is not the one its webhook carried.
    let job = |id: Uuid| async move {
        db.fetch_one::<(String,)>(
            "SELECT webhook_id || ' ' || event_type || ' ' || status
                    || ' due+' || (next_attempt_at - created_at) || ' ' || attempts
                    || CASE WHEN CAST(order_id AS TEXT) = $2
                                 AND recipient = webhook_id || '@example.com'
                                 AND subject = 'subject of ' || webhook_id
                                 AND body = 'body of ' || webhook_id
                            THEN '' ELSE ' (not its order or email)' END
             FROM notifications WHERE CAST(id AS TEXT) = $1",
            &[id.into(), order.into()],
        )
        .await
        .0
    };
    // The trace id the job of notification `id` was stored with.
    let trace_id = |id: Uuid| async move {
        db.fetch_one::<(Option<String>,)>(
            "SELECT trace_id FROM notifications WHERE CAST(id AS TEXT) = $1",
            &[id.into()],
        )
        .await
        .0
    };

    // A failure notice: recorded, the order's state set, the job queued (due at once) with
    // the trace id its webhook arrived with.
    let failed = IncomingWebhook {
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        ..webhook("w1", Some(OrderEventKind::PaymentFailed), order, t)
    };
    let notice = queued(store.record_webhook(&failed).await.unwrap());
    assert_eq!(
        received("w1").await,
        "w1 order.payment_failed order t+0 queued"
    );
    assert_eq!(state().await, (None, Some(t)));
    assert_eq!(job(notice).await, "w1 order.payment_failed queued due+0 0");
    assert_eq!(
        trace_id(notice).await.as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );

    // A newer failure: a notice of its own; only a payment cancels the earlier one.
    let again = webhook("w1b", Some(OrderEventKind::PaymentFailed), order, t + 1);
    let second_notice = queued(store.record_webhook(&again).await.unwrap());
    assert_eq!(state().await, (None, Some(t + 1)));
    assert_eq!(job(notice).await, "w1 order.payment_failed queued due+0 0");

    // The payment: the notices (queued, not held) are cancelled, the confirmation queued.
    let paid = webhook("w2", Some(OrderEventKind::Paid), order, t + 5);
    let confirmation = queued(store.record_webhook(&paid).await.unwrap());
    assert_eq!(received("w2").await, "w2 order.paid order t+5 queued");
    assert_eq!(state().await, (Some(t + 5), Some(t + 1)));
    assert_eq!(
        job(notice).await,
        "w1 order.payment_failed cancelled due+0 0"
    );
    assert_eq!(
        job(second_notice).await,
        "w1b order.payment_failed cancelled due+0 0"
    );
    assert_eq!(job(confirmation).await, "w2 order.paid queued due+0 0");
    // A webhook without a trace id queues a job without one.
    assert_eq!(trace_id(confirmation).await, None);

    // A repeat changes nothing; a later failure is stale; an unhandled type is ignored.
    assert_eq!(
        store.record_webhook(&paid).await.unwrap(),
        IntakeOutcome::Duplicate
    );
    let late = webhook("w3", Some(OrderEventKind::PaymentFailed), order, t + 10);
    assert_eq!(
        store.record_webhook(&late).await.unwrap(),
        IntakeOutcome::Stale
    );
    assert_eq!(
        received("w3").await,
        "w3 order.payment_failed order t+10 stale"
    );
    let shipped = webhook("w4", None, order, t + 20);
    assert_eq!(
        store.record_webhook(&shipped).await.unwrap(),
        IntakeOutcome::Ignored
    );
    assert_eq!(received("w4").await, "w4 order.shipped - t+20 ignored");
    assert_eq!(state().await, (Some(t + 5), Some(t + 1)));
    let counts: (i64, i64) = db
        .fetch_one(
            "SELECT (SELECT COUNT(*) FROM notifications),
                    (SELECT COUNT(*) FROM received_webhooks WHERE outcome = 'pending')",
            &[],
        )
        .await;
    assert_eq!(counts, (3, 0));

    // After cleanup took the dedup record, the notification still marks a duplicate, and
    // leaves no record behind.
    db.execute("DELETE FROM received_webhooks WHERE webhook_id = 'w2'", &[])
        .await;
    assert_eq!(
        store.record_webhook(&paid).await.unwrap(),
        IntakeOutcome::Duplicate
    );
    let left: (i64,) = db
        .fetch_one(
            "SELECT COUNT(*) FROM received_webhooks WHERE webhook_id = 'w2'",
            &[],
        )
        .await;
    assert_eq!(left, (0,));
}

/// Finished notifications older than the retention go, with the order states nothing needs
/// any more; queued and failed ones stay however old, and so does their order's state;
/// recent ones stay.
async fn retention_deletes_only_old_finished_notifications_and_unused_states(db: &TestDb) {
    let day = 24 * 3600 * 1000_i64;
    let old = now_ms() - 100 * day;
    let recent = now_ms() - day;
    // (name, status, created at); each its own order, whose state is as old.
    let cases = [
        ("sent-old", "sent", old),
        ("cancelled-old", "cancelled", old),
        ("queued-old", "queued", old),
        ("failed-old", "failed", old),
        ("sent-recent", "sent", recent),
    ];
    let mut orders = Vec::new();
    for (name, status, at) in cases {
        let order_id = Uuid::now_v7();
        db.insert_job(&Job {
            webhook_id: name,
            order_id,
            status,
            attempts: 1,
            next_attempt_at: at,
            created_at: at,
            ..Job::default()
        })
        .await;
        db.insert_order_state(order_id, at, at).await;
        orders.push((name, order_id));
    }
    let purged = db
        .store()
        .purge_finished(Duration::from_secs(90 * 24 * 3600), 1000)
        .await
        .unwrap();
    assert_eq!(purged, (2, 2));
    let kept = ["failed-old", "queued-old", "sent-recent"];
    let notifications: Vec<(String,)> = db
        .fetch_all(
            "SELECT webhook_id FROM notifications ORDER BY webhook_id",
            &[],
        )
        .await;
    let notifications: Vec<String> = notifications.into_iter().map(|r| r.0).collect();
    assert_eq!(notifications, kept);
    let states: Vec<(String,)> = db
        .fetch_all("SELECT CAST(order_id AS TEXT) FROM order_states", &[])
        .await;
    let mut states: Vec<&str> = states
        .iter()
        .map(|(id,)| {
            orders
                .iter()
                .find(|(_, order)| order.to_string() == *id)
                .map_or("?", |(name, _)| *name)
        })
        .collect();
    states.sort_unstable();
    assert_eq!(states, kept);
}

/// The generated `due_at` is the claim rule: claimable exactly when queued, the retry time
/// has come and the lease (live while `lease_expires_at >= now`, as the intake reads it) is over.
async fn due_at_is_exactly_when_a_job_becomes_claimable(db: &TestDb) {
    let cases: [(&str, i64, Option<i64>, Option<i64>); 5] = [
        ("queued", 100, None, Some(100)),
        ("queued", 100, Some(50), Some(100)),
        ("queued", 100, Some(300), Some(301)),
        ("sent", 100, None, None),
        ("cancelled", 100, Some(300), None),
    ];
    for (i, (status, next_attempt_at, lease_expires_at, want)) in cases.into_iter().enumerate() {
        let name = format!("case-{i}");
        db.insert_job(&Job {
            webhook_id: &name,
            status,
            next_attempt_at,
            lease_expires_at,
            ..Job::default()
        })
        .await;
        let (due,): (Option<i64>,) = db
            .fetch_one(
                "SELECT due_at FROM notifications WHERE webhook_id = $1",
                &[name.as_str().into()],
            )
            .await;
        assert_eq!(due, want, "{status} {next_attempt_at} {lease_expires_at:?}");
    }
}

/// One claim settles the candidates that must not be sent and goes on to the next due jobs
/// until it has `limit` of them: the settled ones do not count against it.
async fn a_claim_settles_what_must_not_be_sent_and_leases_the_next_due_jobs(db: &TestDb) {
    let paid_order = Uuid::now_v7();
    // (name, event type, order, attempts, due at): due in this order, the two that must
    // not be sent first; the order's confirmation ("paid") is not due yet.
    let jobs = [
        ("notice", "order.payment_failed", paid_order, 0, 1),
        ("exhausted", "order.paid", Uuid::now_v7(), 3, 2),
        ("first", "order.paid", Uuid::now_v7(), 1, 3),
        ("second", "order.payment_failed", Uuid::now_v7(), 0, 4),
        ("third", "order.paid", Uuid::now_v7(), 0, 5),
        ("paid", "order.paid", paid_order, 0, i64::MAX),
    ];
    for (name, event_type, order_id, attempts, due) in jobs {
        db.insert_job(&Job {
            webhook_id: name,
            event_type,
            order_id,
            attempts,
            next_attempt_at: due,
            ..Job::default()
        })
        .await;
    }

    let before = now_ms();
    let claimed = db
        .store()
        .claim_due(2, Duration::from_secs(60), 3)
        .await
        .unwrap();
    let mut leased: Vec<(&str, u32)> = claimed
        .iter()
        .map(|j| (j.subject.as_str(), j.attempts))
        .collect();
    leased.sort_unstable();
    assert_eq!(leased, [("first", 2), ("second", 1)]);
    assert_eq!(claimed[0].claim_token, claimed[1].claim_token);
    assert!(to_ms(claimed[0].lease_expires_at) >= before + 60_000);

    let rows: Vec<(String,)> = db
        .fetch_all(
            "SELECT webhook_id || ' ' || status || ' ' || attempts || ' '
                    || CASE WHEN claim_token IS NULL AND lease_expires_at IS NULL THEN 'free'
                            WHEN CAST(claim_token AS TEXT) = $1 AND lease_expires_at = $2
                            THEN 'leased'
                            ELSE 'held elsewhere' END
                    || COALESCE(': ' || last_error, '')
             FROM notifications ORDER BY next_attempt_at",
            &[
                claimed[0].claim_token.into(),
                to_ms(claimed[0].lease_expires_at).into(),
            ],
        )
        .await;
    let rows: Vec<String> = rows.into_iter().map(|r| r.0).collect();
    let want = [
        "notice cancelled 0 free: superseded by order.paid",
        "exhausted failed 3 free: gave up after 3 attempts; the last one never reported back \
         (the worker stopped while sending)",
        "first queued 2 leased",
        "second queued 1 leased",
        "third queued 0 free",
        "paid queued 0 free",
    ];
    assert_eq!(rows, want);
}

/// The read side: pages newest first that follow each other without gaps or repeats, one
/// notification whole, the received webhooks, and the queue's depth and next due time.
async fn notifications_page_newest_first_and_read_back_whole(db: &TestDb) {
    let store = db.store();
    let t = now_ms();
    let mut ids = Vec::new();
    for i in 0..5 {
        let w = webhook(
            &format!("p{i}"),
            Some(OrderEventKind::Paid),
            Uuid::now_v7(),
            t,
        );
        ids.push(queued(store.record_webhook(&w).await.unwrap()));
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_notifications(cursor.as_ref(), 2).await.unwrap();
        seen.extend(page.iter().map(|n| n.id));
        match page.last() {
            Some(last) if page.len() == 2 => {
                cursor = Some(Cursor {
                    created_at_ms: to_ms(last.created_at),
                    id: last.id,
                });
            }
            _ => break,
        }
    }
    // Queued in this order, each with a later UUIDv7: newest first is the reverse.
    ids.reverse();
    assert_eq!(seen, ids);

    let one = store.get_notification(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (
            one.webhook_id.as_str(),
            one.status,
            one.to.as_str(),
            one.body.as_str()
        ),
        (
            "p4",
            NotificationStatus::Queued,
            "p4@example.com",
            "body of p4"
        )
    );
    assert_eq!(store.get_notification(Uuid::now_v7()).await.unwrap(), None);
    let received = store.list_received(3).await.unwrap();
    assert_eq!(received.len(), 3);
    assert!(
        received.iter().all(|r| r.outcome == "queued"),
        "{received:?}"
    );

    assert_eq!(store.email_queue_depth().await.unwrap(), 5);
    let due = store.next_due_at().await.unwrap().unwrap();
    assert!(to_ms(due) >= t && to_ms(due) <= now_ms(), "{due}");
}

/// The same delivery reaching two replicas at the same instant: one records it and queues
/// its email, the other answers `Duplicate`; never two emails, never an error.
async fn the_same_webhook_on_two_replicas_at_once_is_recorded_once(db: &TestDb) {
    let (a, b) = (db.store(), db.replica().await);
    let rounds = 40;
    for i in 0..rounds {
        let w = webhook(
            &format!("race-{i}"),
            Some(OrderEventKind::Paid),
            Uuid::now_v7(),
            now_ms(),
        );
        let (x, y) = tokio::join!(a.record_webhook(&w), b.record_webhook(&w));
        let mut outcomes = [x.unwrap(), y.unwrap()];
        outcomes.sort_by_key(|o| matches!(o, IntakeOutcome::Duplicate));
        assert!(
            matches!(
                outcomes,
                [IntakeOutcome::Queued { .. }, IntakeOutcome::Duplicate]
            ),
            "{outcomes:?}"
        );
    }
    let (jobs,): (i64,) = db
        .fetch_one("SELECT COUNT(*) FROM notifications", &[])
        .await;
    assert_eq!(jobs, rounds);
    b.close().await;
}

/// Two payments of one order (two webhook ids) reaching two replicas at once: one
/// confirmation, the other is stale (one confirmation per order, rule 1 of `decide`).
async fn two_payments_of_one_order_on_two_replicas_queue_one_confirmation(db: &TestDb) {
    let (a, b) = (db.store(), db.replica().await);
    for i in 0..40 {
        let order = Uuid::now_v7();
        let t = now_ms();
        let first = webhook(&format!("pay-{i}-a"), Some(OrderEventKind::Paid), order, t);
        let second = webhook(
            &format!("pay-{i}-b"),
            Some(OrderEventKind::Paid),
            order,
            t + 1,
        );
        let (x, y) = tokio::join!(a.record_webhook(&first), b.record_webhook(&second));
        let mut outcomes = [x.unwrap(), y.unwrap()];
        outcomes.sort_by_key(|o| matches!(o, IntakeOutcome::Stale));
        assert!(
            matches!(
                outcomes,
                [IntakeOutcome::Queued { .. }, IntakeOutcome::Stale]
            ),
            "round {i}: {outcomes:?}"
        );
    }
    b.close().await;
}

/// The failure notice `notice` and the confirmation of its order: (status, lease_expires_at) of
/// the notice, and when the confirmation is due.
async fn notice_and_confirmation(db: &TestDb, notice: Uuid) -> (String, Option<i64>, i64) {
    db.fetch_one(
        "SELECT f.status, f.lease_expires_at, c.next_attempt_at
         FROM notifications AS f JOIN notifications AS c
              ON c.order_id = f.order_id AND c.event_type = 'order.paid'
         WHERE CAST(f.id AS TEXT) = $1",
        &[notice.into()],
    )
    .await
}

/// The ordering rule across replicas, the claim's side: replica A records an order's
/// payment while replica B claims due jobs, which include the order's failure notice. Either
/// B got the notice first (then the confirmation waits for B's lease) or the notice is
/// cancelled (by the payment, or by a claim that saw the confirmation); never a notice in
/// hand with the confirmation due before its lease ends.
async fn a_failure_notice_claimed_while_its_order_is_paid_is_never_due_after_the_confirmation(
    db: &TestDb,
) {
    let (a, b) = (db.store(), db.replica().await);
    let (mut claimed_first, mut cancelled) = (0, 0);
    for i in 0..40 {
        let order = Uuid::now_v7();
        let t = now_ms();
        let failed = webhook(
            &format!("f-{i}"),
            Some(OrderEventKind::PaymentFailed),
            order,
            t,
        );
        let notice = queued(a.record_webhook(&failed).await.unwrap());
        let paid = webhook(&format!("p-{i}"), Some(OrderEventKind::Paid), order, t + 5);
        let (recorded, claim) = tokio::join!(
            a.record_webhook(&paid),
            b.claim_due(10, Duration::from_secs(60), 8)
        );
        queued(recorded.unwrap());
        let claim = claim.unwrap();
        let (status, lease_expires_at, confirmation_due) =
            notice_and_confirmation(db, notice).await;
        match claim.iter().find(|j| j.id == notice) {
            Some(job) => {
                claimed_first += 1;
                assert_eq!(status, "queued");
                assert_eq!(lease_expires_at, Some(to_ms(job.lease_expires_at)));
                assert!(
                    confirmation_due > to_ms(job.lease_expires_at),
                    "round {i}: the confirmation is due at {confirmation_due}, before the \
                     notice's lease ends at {}",
                    to_ms(job.lease_expires_at)
                );
            }
            None => {
                cancelled += 1;
                assert_eq!(status, "cancelled", "round {i}");
            }
        }
        // Whatever B holds is done with before the next round.
        for job in &claim {
            assert!(b.mark_sent(job).await.unwrap());
        }
    }
    eprintln!("notice claimed first: {claimed_first}, cancelled: {cancelled}");
    b.close().await;
}

/// The ordering rule across replicas, the renewal's side: replica B holds an order's failure
/// notice and renews its lease while replica A records the order's payment. Either the
/// renewal came first (the confirmation waits for the renewed lease) or the lease is left
/// as it was; never a notice lease that outlasts the confirmation's wait.
async fn a_failure_notice_renewed_while_its_order_is_paid_never_outlasts_the_confirmation_s_wait(
    db: &TestDb,
) {
    let (a, b) = (db.store(), db.replica().await);
    let mut renewed_first = 0;
    for i in 0..40 {
        let order = Uuid::now_v7();
        let t = now_ms();
        let failed = webhook(
            &format!("f-{i}"),
            Some(OrderEventKind::PaymentFailed),
            order,
            t,
        );
        let notice = queued(a.record_webhook(&failed).await.unwrap());
        let held = b.claim_due(10, Duration::from_secs(60), 8).await.unwrap();
        assert_eq!(held.iter().map(|j| j.id).collect::<Vec<_>>(), [notice]);
        let paid = webhook(&format!("p-{i}"), Some(OrderEventKind::Paid), order, t + 5);
        let (recorded, renewed) = tokio::join!(
            a.record_webhook(&paid),
            b.renew_leases(
                vec![(held[0].claim_token, vec![notice])],
                Duration::from_secs(120)
            )
        );
        queued(recorded.unwrap());
        renewed_first += renewed.unwrap().len();
        let (status, lease_expires_at, confirmation_due) =
            notice_and_confirmation(db, notice).await;
        assert_eq!(status, "queued");
        let lease_expires_at = lease_expires_at.unwrap();
        assert!(
            confirmation_due > lease_expires_at,
            "round {i}: the confirmation is due at {confirmation_due}, before the notice's \
             lease ends at {lease_expires_at}"
        );
        assert!(b.mark_sent(&held[0]).await.unwrap());
    }
    eprintln!("renewed before the payment: {renewed_first} of 40");
    b.close().await;
}

/// Two replicas, two claimers each, draining one queue at once: every job is claimed
/// exactly once.
async fn two_replicas_claiming_at_once_never_take_one_job_twice(db: &TestDb) {
    let (a, b) = (db.store(), db.replica().await);
    let jobs = 100;
    for i in 0..jobs {
        let w = webhook(
            &format!("q{i}"),
            Some(OrderEventKind::Paid),
            Uuid::now_v7(),
            0,
        );
        queued(a.record_webhook(&w).await.unwrap());
    }
    let drain = |store: Store| async move {
        let mut mine = Vec::new();
        loop {
            let claimed = store
                .claim_due(7, Duration::from_secs(60), 8)
                .await
                .unwrap();
            if claimed.is_empty() {
                return mine;
            }
            mine.extend(claimed.into_iter().map(|j| j.id));
        }
    };
    let (w, x, y, z) = tokio::join!(
        drain(a.clone()),
        drain(a.clone()),
        drain(b.clone()),
        drain(b.clone())
    );
    let all: Vec<Uuid> = [w, x, y, z].concat();
    let distinct: HashSet<Uuid> = all.iter().copied().collect();
    assert_eq!(all.len(), jobs, "claimed more than once, or not at all");
    assert_eq!(distinct.len(), jobs);
    b.close().await;
}

/// A replica that claimed a job and died (its lease is never renewed): once the lease has
/// expired, another replica claims the job (attempt 2, a claim of its own), and the dead
/// one's late outcome is refused.
async fn a_job_leased_by_a_dead_replica_is_claimed_by_another_once_its_lease_expires(db: &TestDb) {
    let (dead, alive) = (db.replica().await, db.store());
    let w = webhook("lost", Some(OrderEventKind::Paid), Uuid::now_v7(), now_ms());
    let id = queued(alive.record_webhook(&w).await.unwrap());
    let held = dead
        .claim_due(10, Duration::from_millis(300), 8)
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    assert!(
        alive
            .claim_due(10, Duration::from_secs(60), 8)
            .await
            .unwrap()
            .is_empty(),
        "a live lease is respected"
    );
    dead.close().await;

    let start = Instant::now();
    let taken = loop {
        let mut claimed = alive
            .claim_due(10, Duration::from_secs(60), 8)
            .await
            .unwrap();
        if let Some(job) = claimed.pop() {
            break job;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the expired lease was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((taken.id, taken.attempts), (id, 2));
    assert_ne!(taken.claim_token, held[0].claim_token);
    let late = db.replica().await;
    assert!(!late.mark_sent(&held[0]).await.unwrap(), "the lost lease");
    assert!(alive.mark_sent(&taken).await.unwrap());
    late.close().await;
}

/// PostgreSQL: a job committed on one replica wakes the listener of another at once (the
/// `NOTIFY` the intake sends after its commit), not at its next poll. SQLite has no listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_committed_on_one_replica_wakes_the_workers_of_another() {
    let sqlite = TestDb::sqlite().await;
    let never = CancellationToken::new();
    assert!(sqlite
        .store()
        .spawn_job_listener(Arc::new(Notify::new()), never.clone())
        .is_none());
    sqlite.close().await;

    let Some(db) = TestDb::postgres("wakes_the_workers_of_another").await else {
        return;
    };
    let (a, b) = (db.store(), db.replica().await);
    let wake = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let listener = b.spawn_job_listener(wake.clone(), stop.clone()).unwrap();
    // The poke after connecting: from here on, B listens.
    tokio::time::timeout(DEADLINE, wake.notified())
        .await
        .expect("the listener connects");
    for kind in [OrderEventKind::PaymentFailed, OrderEventKind::Paid] {
        let w = webhook(&format!("{kind:?}"), Some(kind), Uuid::now_v7(), now_ms());
        queued(a.record_webhook(&w).await.unwrap());
        tokio::time::timeout(DEADLINE, wake.notified())
            .await
            .expect("a NOTIFY from the other replica's commit");
    }
    // A release makes a job due again: it wakes the others too.
    let job = a
        .claim_due(1, Duration::from_secs(60), 8)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(a.release(&job).await.unwrap());
    tokio::time::timeout(DEADLINE, wake.notified())
        .await
        .expect("a NOTIFY from the release");
    stop.cancel();
    listener.await.unwrap();
    b.close().await;
    db.close().await;
}

/// Startup refuses what it cannot use, naming the setting and never showing the password.
#[tokio::test]
async fn a_bad_database_url_is_reported_without_its_password() {
    for url in [
        // Nothing listens on port 1: the connection is refused at once.
        "postgres://app:s3cret@127.0.0.1:1/n",
        "postgresql://app:s3cret@db:notaport/n",
        "sqlite://app:s3cret@db/n.db?mode=nonsense",
        "mysql://app:s3cret@db/n",
    ] {
        let err = Store::connect(url, 1).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("DATABASE_URL"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
    let err = Store::connect("mysql://db/n", 1).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("sqlite:") && text.contains("postgres://"),
        "names both accepted forms: {text}"
    );
}

/// The tests of [`a_database_of_the_previous_schema_keeps_its_claims_across_the_rename`].
mod upgrade {
    use super::TestDb;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_a_database_of_the_previous_schema_keeps_its_claims_across_the_rename() {
        let db = TestDb::sqlite_before_the_rename().await;
        super::a_database_of_the_previous_schema_keeps_its_claims_across_the_rename(&db).await;
        db.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_a_database_of_the_previous_schema_keeps_its_claims_across_the_rename() {
        let Some(db) = TestDb::postgres_before_the_rename("claim_rename_upgrade").await else {
            return;
        };
        super::a_database_of_the_previous_schema_keeps_its_claims_across_the_rename(&db).await;
        db.close().await;
    }
}

/// `db` is at the schema before the claim rename, holding jobs written under the old column
/// names: one free, one whose lease (of a dead worker) has expired, one under a live lease.
/// After the rename migration the tokens and expiries are where the new names say, the
/// generated `due_at` and the indexes follow them, and the jobs are claimed, renewed and
/// finished as before; the live lease is still honoured and its token still proves it.
async fn a_database_of_the_previous_schema_keeps_its_claims_across_the_rename(db: &TestDb) {
    let now = now_ms();
    let (abandoned_token, held_token) = (Uuid::new_v4(), Uuid::new_v4());
    // Ids are uuid on PostgreSQL; a NULL token is bound as '' (a NULL text would be typed).
    let sql = if db.is_postgres() {
        "INSERT INTO notifications (id, webhook_id, event_type, order_id, recipient, subject,
             body, status, attempts, next_attempt_at, lease_token, lease_until, created_at)
         VALUES ($1::uuid, $2, 'order.paid', $3::uuid, 'a@example.com', $2, 'b', 'queued',
                 $4, $5, NULLIF($6, '')::uuid, $7, $5)"
    } else {
        "INSERT INTO notifications (id, webhook_id, event_type, order_id, recipient, subject,
             body, status, attempts, next_attempt_at, lease_token, lease_until, created_at)
         VALUES ($1, $2, 'order.paid', $3, 'a@example.com', $2, 'b', 'queued',
                 $4, $5, NULLIF($6, ''), $7, $5)"
    };
    let mut ids = Vec::new();
    for (name, attempts, token, expires) in [
        ("free", 0, String::new(), None),
        (
            "abandoned",
            1,
            abandoned_token.to_string(),
            Some(now - 1_000),
        ),
        ("held", 1, held_token.to_string(), Some(now + 60_000)),
    ] {
        let id = Uuid::now_v7();
        let binds = [
            id.into(),
            name.into(),
            Uuid::now_v7().into(),
            Value::Int(attempts),
            Value::Int(now - 2_000),
            token.into(),
            expires.into(),
        ];
        assert_eq!(db.execute(sql, &binds).await, 1);
        ids.push(id);
    }
    let (free, abandoned, held) = (ids[0], ids[1], ids[2]);

    db.store().migrate().await.unwrap();

    let indexes: Vec<(String,)> = if db.is_postgres() {
        db.fetch_all(
            "SELECT CAST(indexname AS TEXT) FROM pg_indexes WHERE tablename = 'notifications'",
            &[],
        )
        .await
    } else {
        db.fetch_all(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'notifications'",
            &[],
        )
        .await
    };
    let indexes: HashSet<String> = indexes.into_iter().map(|(name,)| name).collect();
    assert!(indexes.contains("notifications_claim_token"), "{indexes:?}");
    assert!(indexes.contains("notifications_due_at"), "{indexes:?}");
    assert!(
        !indexes.contains("notifications_lease_token"),
        "{indexes:?}"
    );
    let (token, expires, due): (Option<String>, Option<i64>, Option<i64>) = db
        .fetch_one(
            "SELECT CAST(claim_token AS TEXT), lease_expires_at, due_at FROM notifications
             WHERE webhook_id = 'held'",
            &[],
        )
        .await;
    assert_eq!(token, Some(held_token.to_string()));
    assert_eq!(expires, Some(now + 60_000));
    assert_eq!(
        due,
        Some(now + 60_001),
        "due_at reads the renamed lease_expires_at"
    );

    let store = db.store();
    let mut claimed = store
        .claim_due(10, Duration::from_secs(60), 8)
        .await
        .unwrap();
    claimed.sort_by_key(|job| job.id);
    let got: Vec<(Uuid, u32)> = claimed.iter().map(|job| (job.id, job.attempts)).collect();
    assert_eq!(
        got,
        [(free, 1), (abandoned, 2)],
        "the live lease is honoured"
    );
    let token = claimed[0].claim_token;
    let mut renewed = store
        .renew_leases(
            vec![(token, vec![free, abandoned]), (held_token, vec![held])],
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    renewed.sort_by_key(|lease| lease.id);
    let got: Vec<(Uuid, Uuid)> = renewed.iter().map(|l| (l.id, l.claim_token)).collect();
    assert_eq!(
        got,
        [(free, token), (abandoned, token), (held, held_token)],
        "renewed by claim token, the old one too"
    );
    for job in &claimed {
        assert!(store.mark_sent(job).await.unwrap());
    }
    // The worker that held the job under the old schema hands it back with its token.
    let held_job = ClaimedJob {
        id: held,
        claim_token: held_token,
        attempts: 1,
        lease_expires_at: renewed[2].lease_expires_at,
        to: "a@example.com".into(),
        subject: "held".into(),
        body: "b".into(),
        trace_id: None,
    };
    assert!(store.release(&held_job).await.unwrap());
    let again = store
        .claim_due(10, Duration::from_secs(60), 8)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempts), (held, 1));
    assert!(store.mark_sent(&again[0]).await.unwrap());
    let (sent,): (i64,) = db
        .fetch_one(
            "SELECT COUNT(*) FROM notifications
             WHERE status = 'sent' AND claim_token IS NULL AND lease_expires_at IS NULL",
            &[],
        )
        .await;
    assert_eq!(sent, 3);
}
