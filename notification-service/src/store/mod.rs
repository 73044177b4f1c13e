//! All SQL of the service, behind methods that take and return domain types.
//!
//! Writes go through one group committer per database (see [`Store`]); [`intake`] records
//! webhooks, [`queue`] claims email jobs and records what became of them.
//!
//! The writes run on the group committer's thread through `rusqlite` (`?n` placeholders);
//! reads and migrations use the `sqlx` pools. The SQL sticks to what SQLite and PostgreSQL
//! share where that is cheap (`ON CONFLICT`, `UPDATE ... FROM ... RETURNING`, integer
//! millisecond timestamps, text UUIDs).

mod intake;
mod metrics;
mod queue;
mod rows;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use time::OffsetDateTime;
use uuid::Uuid;
use webhook_common::group_commit::{GroupCommitSettings, GroupCommitStats, GroupCommitter};

pub use queue::RenewedLease;
pub use rows::{Notification, NotificationStatus, ReceivedWebhook};
use rows::{NotificationRow, ReceivedWebhookRow};
/// Why a write did not commit (re-exported from `webhook_common::group_commit`).
pub use webhook_common::group_commit::WriteError;

/// How long a statement waits for SQLite's write lock before giving up. Within one process
/// only the writer thread writes, so this is for other processes on the same file (a second
/// replica, an operator's `sqlite3` shell).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of the pool the intake and the read API use.
const REQUEST_POOL_CONNECTIONS: u32 = 8;

/// Connections of the email worker's own read pool, so a burst of reads that takes every
/// request connection cannot keep the worker from finding due work. (Its writes, like every
/// write, go through the writer's own connection.)
const BACKGROUND_POOL_CONNECTIONS: u32 = 2;

/// The writer's bounds. A batch holds at most 256 writes (intakes are bounded by
/// `MAX_CONCURRENT_REQUESTS`, the worker's writes by `WORKER_CONCURRENCY`, so one batch
/// usually holds everything queued); up to 1024 more may wait, beyond that callers wait to
/// enqueue (backpressure) rather than being dropped.
const WRITER: GroupCommitSettings = GroupCommitSettings {
    max_batch: 256,
    queue: 1024,
    busy_timeout: BUSY_TIMEOUT,
};

/// How long to wait for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest `type` of an unknown event we record; the rest is cut off.
const MAX_RECORDED_TYPE_LEN: usize = 100;

/// The kind of customer email an order event produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEventKind {
    /// `order.paid`: an order confirmation.
    Paid,
    /// `order.payment_failed`: a payment failure notice.
    PaymentFailed,
}

/// A rendered email waiting to be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEmail {
    /// Which event produced it.
    pub kind: OrderEventKind,
    /// The order it is about.
    pub order_id: Uuid,
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// A verified webhook, ready to be recorded.
#[derive(Debug, Clone)]
pub struct IncomingWebhook {
    /// `webhook-id`, the deduplication key.
    pub webhook_id: String,
    /// The event's wire `type`.
    pub event_type: String,
    /// When the event happened (the envelope's `timestamp`).
    pub event_at: OffsetDateTime,
    /// The email it asks for; `None` for event types this service does not handle.
    pub email: Option<OrderEmail>,
    /// The trace id (32 lowercase hex digits) of the valid `traceparent` the webhook arrived
    /// with, if any; stored with its email job so the worker's log lines carry it too.
    pub trace_id: Option<String>,
}

/// What recording a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// First delivery; an email job is durable.
    Queued {
        /// The new notification.
        notification_id: Uuid,
    },
    /// This `webhook-id` was already recorded; nothing changed.
    Duplicate,
    /// Recorded, but the type is not one this service handles.
    Ignored,
    /// Recorded, but what we already told the customer supersedes it (see [`decide`]).
    Stale,
}

impl IntakeOutcome {
    /// The `received_webhooks.outcome` it is recorded as. The row of a handled event is
    /// inserted as `pending` and set to one of these in the same write, so `pending` is never
    /// seen committed; an unhandled one is inserted as `ignored` at once.
    /// (The comment in migration 0001 calls the rule `decide_outcome`: it is [`decide`]; the
    /// applied migration is left unedited because sqlx refuses a changed checksum.)
    fn recorded_as(&self) -> &'static str {
        match self {
            IntakeOutcome::Queued { .. } => "queued",
            IntakeOutcome::Duplicate => "duplicate",
            IntakeOutcome::Ignored => "ignored",
            IntakeOutcome::Stale => "stale",
        }
    }
}

/// What is known about one order: the event times of the emails it already produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderState {
    /// Event time (ms) of the `order.paid` that was notified.
    pub paid_at: Option<i64>,
    /// Event time (ms) of the newest `order.payment_failed` that was notified.
    pub last_failure_at: Option<i64>,
}

/// The ordering rule. Events of one order may arrive in any order; the customer must never
/// get an email that contradicts one already sent or queued:
///
/// 1. A successful payment is final. The first `order.paid` of an order always produces a
///    confirmation (it supersedes any failure, older or newer: the customer did pay). Any
///    later `order.paid` of that order, under a new webhook id, is stale: one confirmation
///    per order.
/// 2. Once an order is paid, every `order.payment_failed` is stale, whatever its timestamp:
///    an older one is history, a newer one is a retry attempt that does not undo the payment.
/// 3. Without a payment, an `order.payment_failed` produces a notice only if its event time is
///    later than the last failure notified for the order (each new failed attempt is news,
///    an older or equal one is stale).
///
/// A failure notice is never handed to the mailer after the confirmation of its order:
/// - when rule 1 fires, failure notices of that order that are queued and not being sent are
///   cancelled at once;
/// - one that a worker holds right now cannot be recalled, so the confirmation is queued to
///   become due only when that worker's lease ends (by then its send has finished or been
///   cut off, see `WorkerSettings::send_limit`). That lease no longer grows:
///   [`Store::renew_leases`] does not extend a failure notice of an order that has a
///   confirmation, and a worker starts a send only while its lease outlasts the send limit;
/// - whatever then happens to the held notice (a retry is scheduled, it is released at
///   shutdown, its worker dies and the lease expires), [`Store::claim_due`] cancels instead
///   of claiming any failure notice of an order that has a confirmation.
pub fn decide(state: OrderState, kind: OrderEventKind, event_at_ms: i64) -> bool {
    match kind {
        OrderEventKind::Paid => state.paid_at.is_none(),
        OrderEventKind::PaymentFailed => {
            state.paid_at.is_none() && state.last_failure_at.is_none_or(|t| event_at_ms > t)
        }
    }
}

/// Where a page of notifications starts: strictly older than this item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` (ms) of the last item of the previous page.
    pub created_at_ms: i64,
    /// Its id, to break ties.
    pub id: Uuid,
}

impl Cursor {
    /// The opaque text form handed to clients.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.created_at_ms, self.id.simple())
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (ms, id) = text.split_once('_')?;
        Some(Cursor {
            created_at_ms: ms.parse().ok()?,
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

/// An email job claimed by a worker.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The notification.
    pub id: Uuid,
    /// Proves the claim; every update of the job must present it.
    pub lease_token: Uuid,
    /// Attempts including this one.
    pub attempts: u32,
    /// When the claim expires and another worker may take the job, unless the worker renews
    /// it first (see [`Store::renew_leases`]).
    pub lease_until: OffsetDateTime,
    /// Recipient.
    pub to: String,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// The trace id the webhook that queued the job arrived with, if any (see
    /// [`IncomingWebhook::trace_id`]).
    pub trace_id: Option<String>,
}

/// Milliseconds since the Unix epoch.
pub fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The inverse of [`to_ms`].
pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The database. Cheap to clone (pool handles and the writer's handle).
///
/// Every hot write (the intake, claims, job outcomes, lease renewals, cleanup) goes through
/// one [`GroupCommitter`]: a single writer thread that commits everything queued in one
/// `BEGIN IMMEDIATE` transaction, so one fsync serves many callers and nobody waits in
/// SQLite's busy handler for a lock another caller of this process holds. Reads use pools:
/// requests (read API) and background work (the worker's next-due query) have separate ones,
/// so neither can starve the other of connections.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    background: SqlitePool,
    /// Serialises and batches every write of this process; see [`Store`].
    writer: GroupCommitter,
}

impl Store {
    /// Opens (creating if missing, with its directory) the SQLite database at `url`, in WAL
    /// mode with a busy timeout and foreign keys on, and starts its writer thread. Must be
    /// called inside a tokio runtime; [`Store::close`] stops the writer.
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        use anyhow::Context as _;
        // Messages show the URL with any `user:password@` redacted, never the raw URL or
        // the file path derived from it.
        let shown = crate::config::redact_url(url);
        if !url.starts_with("sqlite:") {
            anyhow::bail!(
                "DATABASE_URL {shown:?} is not a sqlite: URL (only SQLite is supported so far)"
            );
        }
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("DATABASE_URL {shown:?} is not a valid sqlite:// URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an accepted webhook (we answered 202 after its batch committed) survives
            // a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let file = options.get_filename().to_owned();
        if is_in_memory(url) {
            anyhow::bail!(
                "DATABASE_URL {shown:?} is an in-memory database; the service needs a file \
                 (its writer and readers are separate connections), e.g. \
                 sqlite://data/notifications.db"
            );
        }
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.with_context(|| {
                format!("DATABASE_URL {shown:?}: cannot create the database's directory")
            })?;
        }
        let open = |connections: u32| {
            SqlitePoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // A local file cannot go stale like a network connection; the default ping
                // would cost every acquire a round trip to the connection's thread.
                .test_before_acquire(false)
                .connect_with(options.clone())
        };
        let opened = |e| {
            anyhow::Error::new(e)
                .context(format!("DATABASE_URL {shown:?}: cannot open the database"))
        };
        let pool = open(REQUEST_POOL_CONNECTIONS).await.map_err(opened)?;
        let background = open(BACKGROUND_POOL_CONNECTIONS).await.map_err(opened)?;
        let writer = GroupCommitter::open(&file, WRITER).await.with_context(|| {
            format!("DATABASE_URL {shown:?}: cannot open the database for writing")
        })?;
        Ok(Store {
            pool,
            background,
            writer,
        })
    }

    /// Applies the embedded migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::migrate!().run(&self.pool).await?;
        Ok(())
    }

    /// The request pool (intake and read API), for tests and diagnostics.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Batches and writes the writer has committed so far (for diagnostics and tests).
    pub fn write_stats(&self) -> GroupCommitStats {
        self.writer.stats()
    }

    /// Commits the writes still queued, stops the writer (later writes fail with
    /// [`WriteError::Closed`]) and closes the pools, waiting for connections in use to be
    /// returned. Call it after the worker has drained: its last outcomes are writes too.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
        self.background.close().await;
    }

    /// A page of notifications, newest first, starting after `cursor`.
    pub async fn list_notifications(
        &self,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<Notification>, sqlx::Error> {
        let (before_ms, before_id) = match cursor {
            Some(c) => (c.created_at_ms, c.id.to_string()),
            // Past every row: ids are hyphenated lowercase hex, '~' sorts after them.
            None => (i64::MAX, "~".to_owned()),
        };
        let rows: Vec<NotificationRow> = sqlx::query_as(
            "SELECT id, webhook_id, event_type, order_id, recipient, subject, body, status,
                    attempts, last_error, created_at, sent_at
             FROM notifications
             WHERE created_at < $1 OR (created_at = $1 AND id < $2)
             ORDER BY created_at DESC, id DESC
             LIMIT $3",
        )
        .bind(before_ms)
        .bind(before_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(NotificationRow::into_domain)
            .collect())
    }

    /// One notification with its body.
    pub async fn get_notification(&self, id: Uuid) -> Result<Option<Notification>, sqlx::Error> {
        let row: Option<NotificationRow> = sqlx::query_as(
            "SELECT id, webhook_id, event_type, order_id, recipient, subject, body, status,
                    attempts, last_error, created_at, sent_at
             FROM notifications WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(NotificationRow::into_domain))
    }

    /// The most recent received webhooks, newest first (for the read API).
    pub async fn list_received(&self, limit: u32) -> Result<Vec<ReceivedWebhook>, sqlx::Error> {
        let rows: Vec<ReceivedWebhookRow> = sqlx::query_as(
            "SELECT webhook_id, event_type, order_id, event_at, outcome, received_at
             FROM received_webhooks ORDER BY received_at DESC, webhook_id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(ReceivedWebhookRow::into_domain)
            .collect())
    }

    /// Deletes up to `batch` finished notifications (sent or cancelled) created before now -
    /// `retention`, oldest first, and up to `batch` order states not updated since then whose
    /// order has no notification left that is still queued or failed. Returns how many of
    /// each went; a caller repeats while a count equals `batch`. Queued and failed
    /// notifications are never deleted: one is still to be sent, the other waits for an
    /// operator. An order whose state is gone is judged as new by a later event of it, so the
    /// retention must outlast the sender's retries (days, not months).
    pub async fn purge_finished(
        &self,
        retention: Duration,
        batch: u32,
    ) -> Result<(u64, u64), WriteError> {
        let cutoff = now_ms().saturating_sub(duration_ms(retention));
        self.writer
            .write(move |conn| {
                let notifications = conn
                    .prepare_cached(
                        "DELETE FROM notifications WHERE id IN (
                             SELECT id FROM notifications
                             WHERE created_at < ?1 AND status IN ('sent', 'cancelled')
                             ORDER BY created_at LIMIT ?2)",
                    )?
                    .execute(rusqlite::params![cutoff, i64::from(batch)])?;
                let states = conn
                    .prepare_cached(
                        "DELETE FROM order_states WHERE order_id IN (
                             SELECT order_id FROM order_states AS state
                             WHERE updated_at < ?1
                               AND NOT EXISTS (SELECT 1 FROM notifications AS n
                                               WHERE n.order_id = state.order_id
                                                 AND n.status IN ('queued', 'failed'))
                             ORDER BY updated_at LIMIT ?2)",
                    )?
                    .execute(rusqlite::params![cutoff, i64::from(batch)])?;
                Ok((
                    u64::try_from(notifications).unwrap_or(u64::MAX),
                    u64::try_from(states).unwrap_or(u64::MAX),
                ))
            })
            .await
    }

    /// Deletes up to `batch` dedup records older than `retention`; returns how many went.
    /// Bounded so one run never holds up the writer (and the intakes batched with it) for
    /// long; it goes through the writer like every other write, so it never competes with
    /// them for SQLite's lock.
    ///
    /// `order_states` is kept: it is what says an order was paid, and a late event under a
    /// new webhook id must still be judged against it (rows are small: one per order).
    pub async fn delete_expired(&self, retention: Duration, batch: u32) -> Result<u64, WriteError> {
        let cutoff = now_ms().saturating_sub(duration_ms(retention));
        self.writer
            .write(move |conn| {
                let deleted = conn
                    .prepare_cached(
                        "DELETE FROM received_webhooks WHERE webhook_id IN (
                             SELECT webhook_id FROM received_webhooks WHERE received_at < ?1 LIMIT ?2)",
                    )?
                    .execute(rusqlite::params![cutoff, i64::from(batch)])?;
                Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
            })
            .await
    }
}

/// Whether `url` names an in-memory database (`sqlite::memory:`, `mode=memory`), which each
/// connection would see as a database of its own.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_000_000;

    #[test]
    fn ordering_rule_never_contradicts_a_payment() {
        let fresh = OrderState::default();
        assert!(decide(fresh, OrderEventKind::Paid, T));
        assert!(decide(fresh, OrderEventKind::PaymentFailed, T));

        let paid = OrderState {
            paid_at: Some(T),
            last_failure_at: None,
        };
        assert!(
            !decide(paid, OrderEventKind::Paid, T + 1),
            "one confirmation per order"
        );
        assert!(
            !decide(paid, OrderEventKind::PaymentFailed, T - 1),
            "older failure is stale"
        );
        assert!(
            !decide(paid, OrderEventKind::PaymentFailed, T + 1),
            "paid is final"
        );

        let failed = OrderState {
            paid_at: None,
            last_failure_at: Some(T),
        };
        assert!(
            decide(failed, OrderEventKind::Paid, T - 1),
            "success supersedes failures"
        );
        assert!(
            decide(failed, OrderEventKind::PaymentFailed, T + 1),
            "a new failed attempt"
        );
        assert!(!decide(failed, OrderEventKind::PaymentFailed, T));
        assert!(!decide(failed, OrderEventKind::PaymentFailed, T - 1));
    }

    /// Finished notifications older than the retention go, with the order states nothing
    /// needs any more; queued and failed ones stay however old, and so does their order's
    /// state; recent ones stay.
    #[tokio::test]
    async fn retention_deletes_only_old_finished_notifications_and_unused_states() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let day = 24 * 3600 * 1000_i64;
        let old = now_ms() - 100 * day;
        let recent = now_ms() - day;
        // (order, status, created at)
        let cases = [
            ("sent-old", "sent", old),
            ("cancelled-old", "cancelled", old),
            ("queued-old", "queued", old),
            ("failed-old", "failed", old),
            ("sent-recent", "sent", recent),
        ];
        for (order, status, at) in cases {
            sqlx::query(
                "INSERT INTO notifications (id, webhook_id, event_type, order_id, recipient,
                     subject, body, status, attempts, next_attempt_at, created_at)
                 VALUES ($1, $1, 'order.paid', $1, 'a@example.com', 's', 'b', $2, 1, $3, $3)",
            )
            .bind(order)
            .bind(status)
            .bind(at)
            .execute(store.pool())
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO order_states (order_id, paid_at, last_failure_at, updated_at)
                 VALUES ($1, $2, NULL, $2)",
            )
            .bind(order)
            .bind(at)
            .execute(store.pool())
            .await
            .unwrap();
        }
        let purged = store
            .purge_finished(Duration::from_secs(90 * 24 * 3600), 1000)
            .await
            .unwrap();
        assert_eq!(purged, (2, 2));
        let pool = store.pool().clone();
        let left = |table: &'static str| {
            let pool = pool.clone();
            async move {
                let mut ids: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT order_id FROM {table}"))
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                ids.sort();
                ids
            }
        };
        let kept = ["failed-old", "queued-old", "sent-recent"];
        assert_eq!(left("notifications").await, kept);
        assert_eq!(left("order_states").await, kept);
        store.close().await;
    }

    /// The writer and the readers are separate connections: an in-memory database would be
    /// a different one for each, so it is refused with a message naming the setting.
    #[tokio::test]
    async fn an_in_memory_database_is_refused_at_startup() {
        let err = Store::connect("sqlite::memory:").await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("DATABASE_URL") && text.contains("in-memory"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_bad_database_url_is_reported_without_its_password() {
        for url in [
            "postgres://app:s3cret@db:5432/n",
            "sqlite://app:s3cret@db/n.db?mode=nonsense",
        ] {
            let err = Store::connect(url).await.unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("DATABASE_URL"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            created_at_ms: 42,
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "42", "x_y", "42_nope", "_"] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }
}
