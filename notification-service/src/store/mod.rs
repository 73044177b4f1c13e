//! All SQL of the service, behind methods that take and return domain types.
//!
//! The SQL sticks to what SQLite and PostgreSQL share (`$n` placeholders, `ON CONFLICT`,
//! `UPDATE ... RETURNING`, integer millisecond timestamps, text UUIDs) so a PostgreSQL backend
//! can reuse it.

mod rows;

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use time::OffsetDateTime;
use uuid::Uuid;

pub use rows::{Notification, NotificationStatus, ReceivedWebhook};
use rows::{NotificationRow, ReceivedWebhookRow};

/// How long a statement waits for SQLite's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of the pool the intake and the read API use.
const REQUEST_POOL_CONNECTIONS: u32 = 8;

/// Connections of the email worker's and cleanup's own pool, so a burst of deliveries that
/// takes every request connection cannot keep the worker from recording what it sent.
const BACKGROUND_POOL_CONNECTIONS: u32 = 2;

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
    /// The `received_webhooks.outcome` it is recorded as. A row is inserted as `pending` and
    /// set to one of these in the same transaction, so `pending` is never seen committed.
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
///   cut off, see `WorkerSettings::send_limit`);
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
    /// When the claim expires and another worker may take the job.
    pub lease_until: OffsetDateTime,
    /// Recipient.
    pub to: String,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
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

/// The database. Cheap to clone (two pool handles).
///
/// Requests (intake, read API) and background work (email worker, cleanup) use separate
/// pools over the same database, so neither can starve the other of connections.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    background: SqlitePool,
}

impl Store {
    /// Opens (creating if missing, with its directory) the SQLite database at `url`, in WAL
    /// mode with a busy timeout and foreign keys on.
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
            // FULL: an accepted webhook (we answered 202) survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let file = options.get_filename().to_owned();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            if file.as_os_str() != ":memory:" {
                tokio::fs::create_dir_all(dir).await.with_context(|| {
                    format!("DATABASE_URL {shown:?}: cannot create the database's directory")
                })?;
            }
        }
        let open = |connections: u32| {
            SqlitePoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options.clone())
        };
        let pool = open(REQUEST_POOL_CONNECTIONS)
            .await
            .with_context(|| format!("DATABASE_URL {shown:?}: cannot open the database"))?;
        let background = open(BACKGROUND_POOL_CONNECTIONS)
            .await
            .with_context(|| format!("DATABASE_URL {shown:?}: cannot open the database"))?;
        Ok(Store { pool, background })
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

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
        self.background.close().await;
    }

    /// Records a verified webhook and, if it asks for an email that the ordering rule
    /// ([`decide`]) allows, enqueues the email job — all in one transaction, so a webhook is
    /// either fully recorded with its job or not at all, and a repeat of the same
    /// `webhook-id` (even concurrent) finds the record and changes nothing.
    #[tracing::instrument(skip_all, fields(webhook_id = %webhook.webhook_id))]
    pub async fn record_webhook(
        &self,
        webhook: &IncomingWebhook,
    ) -> Result<IntakeOutcome, sqlx::Error> {
        let now = now_ms();
        let event_at = to_ms(webhook.event_at);
        let event_type: String = webhook
            .event_type
            .chars()
            .take(MAX_RECORDED_TYPE_LEN)
            .collect();
        let order_id = webhook.email.as_ref().map(|e| e.order_id.to_string());

        // IMMEDIATE takes SQLite's write lock up front (waiting up to the busy timeout), so
        // concurrent deliveries queue instead of failing to upgrade a read transaction.
        // PostgreSQL: a plain BEGIN is enough for the dedup (the unique insert below
        // serialises duplicates), but NOT for the order_states read-modify-write further
        // down: under READ COMMITTED two events of one order could both read the old state.
        // There the state must be read with `SELECT ... FOR UPDATE` (after inserting the row
        // if missing, with ON CONFLICT DO NOTHING) so events of one order take turns.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let inserted = sqlx::query(
            "INSERT INTO received_webhooks (webhook_id, event_type, order_id, event_at, outcome, received_at)
             VALUES ($1, $2, $3, $4, 'pending', $5)
             ON CONFLICT (webhook_id) DO NOTHING",
        )
        .bind(&webhook.webhook_id)
        .bind(&event_type)
        .bind(&order_id)
        .bind(event_at)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // The notification outlives the dedup record: a delivery redelivered after cleanup
        // is still recognised.
        let notified: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM notifications WHERE webhook_id = $1")
                .bind(&webhook.webhook_id)
                .fetch_optional(&mut *tx)
                .await?;
        if inserted == 0 || notified.is_some() {
            tx.rollback().await?;
            return Ok(IntakeOutcome::Duplicate);
        }

        let outcome = match &webhook.email {
            None => IntakeOutcome::Ignored,
            Some(email) => {
                let order_key = email.order_id.to_string();
                let state: OrderState = sqlx::query_as(
                    "SELECT paid_at, last_failure_at FROM order_states WHERE order_id = $1",
                )
                .bind(&order_key)
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or_default();
                if !decide(state, email.kind, event_at) {
                    IntakeOutcome::Stale
                } else {
                    let (paid_at, last_failure_at) = match email.kind {
                        OrderEventKind::Paid => (Some(event_at), state.last_failure_at),
                        OrderEventKind::PaymentFailed => (state.paid_at, Some(event_at)),
                    };
                    sqlx::query(
                        "INSERT INTO order_states (order_id, paid_at, last_failure_at, updated_at)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (order_id) DO UPDATE
                         SET paid_at = excluded.paid_at,
                             last_failure_at = excluded.last_failure_at,
                             updated_at = excluded.updated_at",
                    )
                    .bind(&order_key)
                    .bind(paid_at)
                    .bind(last_failure_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    // The confirmation waits until no worker holds a failure notice of
                    // its order (see `decide`); everything else is due at once.
                    let mut due_at = now;
                    if email.kind == OrderEventKind::Paid {
                        let held_until: Option<i64> = sqlx::query_scalar(
                            "SELECT MAX(lease_until) FROM notifications
                             WHERE order_id = $1 AND event_type = 'order.payment_failed'
                               AND status = 'queued' AND lease_until >= $2",
                        )
                        .bind(&order_key)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                        due_at = held_until.map_or(now, |t| t.saturating_add(1));
                        // Rule 1's tail: a failure notice must not follow the confirmation.
                        // Jobs under a live lease are being sent and cannot be recalled.
                        sqlx::query(
                            "UPDATE notifications
                             SET status = 'cancelled', last_error = 'superseded by order.paid'
                             WHERE order_id = $1 AND event_type = 'order.payment_failed'
                               AND status = 'queued' AND (lease_until IS NULL OR lease_until < $2)",
                        )
                        .bind(&order_key)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let id = Uuid::now_v7();
                    let queued = sqlx::query(
                        "INSERT INTO notifications
                            (id, webhook_id, event_type, order_id, recipient, subject, body,
                             status, attempts, next_attempt_at, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $9)
                         ON CONFLICT (webhook_id) DO NOTHING",
                    )
                    .bind(id.to_string())
                    .bind(&webhook.webhook_id)
                    .bind(&event_type)
                    .bind(&order_key)
                    .bind(&email.to)
                    .bind(&email.subject)
                    .bind(&email.body)
                    .bind(due_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if queued == 0 {
                        // The dedup record expired but the notification from the first
                        // delivery is still here: still a duplicate.
                        tx.rollback().await?;
                        return Ok(IntakeOutcome::Duplicate);
                    }
                    IntakeOutcome::Queued {
                        notification_id: id,
                    }
                }
            }
        };
        sqlx::query("UPDATE received_webhooks SET outcome = $1 WHERE webhook_id = $2")
            .bind(outcome.recorded_as())
            .bind(&webhook.webhook_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Claims up to `limit` due jobs for `lease`, counting an attempt on each. A job is due
    /// when queued, its retry time has come and no live lease holds it; a lease left by a
    /// crashed worker expires and the job is claimed again.
    ///
    /// Before claiming, in the same transaction, it settles jobs that must not be sent:
    /// failure notices of an order that has a confirmation are cancelled (the ordering rule,
    /// see [`decide`]), and due jobs that already used `max_attempts` (their worker died
    /// during every attempt, so no outcome was ever recorded) are marked failed.
    pub async fn claim_due(
        &self,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Vec<ClaimedJob>, sqlx::Error> {
        let now = now_ms();
        let token = Uuid::new_v4();
        let mut tx = self.background.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "UPDATE notifications
             SET status = 'cancelled', last_error = 'superseded by order.paid',
                 lease_token = NULL, lease_until = NULL
             WHERE status = 'queued' AND event_type = 'order.payment_failed'
               AND (lease_until IS NULL OR lease_until < $1)
               AND EXISTS (SELECT 1 FROM notifications AS paid
                           WHERE paid.order_id = notifications.order_id
                             AND paid.event_type = 'order.paid')",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE notifications
             SET status = 'failed', lease_token = NULL, lease_until = NULL,
                 last_error = 'gave up after ' || attempts || ' attempts; the last one never '
                              || 'reported back (the worker stopped while sending)'
             WHERE status = 'queued' AND next_attempt_at <= $1
               AND (lease_until IS NULL OR lease_until < $1) AND attempts >= $2",
        )
        .bind(now)
        .bind(i64::from(max_attempts))
        .execute(&mut *tx)
        .await?;
        // The guard is repeated in the outer WHERE: of two racing claimers only one sees
        // the row still unleased when it updates, the other updates nothing.
        let rows: Vec<rows::ClaimRow> = sqlx::query_as(
            "UPDATE notifications
             SET lease_token = $1, lease_until = $2, attempts = attempts + 1
             WHERE id IN (
                 SELECT id FROM notifications
                 WHERE status = 'queued' AND next_attempt_at <= $3
                   AND (lease_until IS NULL OR lease_until < $3)
                 ORDER BY next_attempt_at, created_at
                 LIMIT $4)
               AND status = 'queued' AND (lease_until IS NULL OR lease_until < $3)
             RETURNING id, attempts, lease_until, recipient, subject, body",
        )
        .bind(token.to_string())
        .bind(now.saturating_add(duration_ms(lease)))
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows.into_iter().filter_map(|r| r.into_job(token)).collect())
    }

    /// Marks a claimed job sent. `false` if the lease was lost (another worker owns it now).
    pub async fn mark_sent(&self, job: &ClaimedJob) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE notifications
             SET status = 'sent', sent_at = $1, lease_token = NULL, lease_until = NULL, last_error = NULL
             WHERE id = $2 AND lease_token = $3 AND status = 'queued'",
        )
        .bind(now_ms())
        .bind(job.id.to_string())
        .bind(job.lease_token.to_string())
        .execute(&self.background)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Schedules another attempt of a claimed job at `retry_at`, recording why this one failed.
    pub async fn schedule_retry(
        &self,
        job: &ClaimedJob,
        retry_at: OffsetDateTime,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE notifications
             SET next_attempt_at = $1, last_error = $2, lease_token = NULL, lease_until = NULL
             WHERE id = $3 AND lease_token = $4 AND status = 'queued'",
        )
        .bind(to_ms(retry_at))
        .bind(error)
        .bind(job.id.to_string())
        .bind(job.lease_token.to_string())
        .execute(&self.background)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives up on a claimed job: it stays visible as `failed` with the last error.
    pub async fn mark_failed(&self, job: &ClaimedJob, error: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE notifications
             SET status = 'failed', last_error = $1, lease_token = NULL, lease_until = NULL
             WHERE id = $2 AND lease_token = $3 AND status = 'queued'",
        )
        .bind(error)
        .bind(job.id.to_string())
        .bind(job.lease_token.to_string())
        .execute(&self.background)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Hands a claimed job back unsent (shutdown), refunding the attempt it was charged.
    pub async fn release(&self, job: &ClaimedJob) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE notifications
             SET lease_token = NULL, lease_until = NULL, attempts = attempts - 1
             WHERE id = $1 AND lease_token = $2 AND status = 'queued'",
        )
        .bind(job.id.to_string())
        .bind(job.lease_token.to_string())
        .execute(&self.background)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// When the next queued job becomes claimable (its retry time or its lease expiry).
    pub async fn next_due_at(&self) -> Result<Option<OffsetDateTime>, sqlx::Error> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(CASE WHEN lease_until IS NOT NULL AND lease_until > next_attempt_at
                             THEN lease_until ELSE next_attempt_at END)
             FROM notifications WHERE status = 'queued'",
        )
        .fetch_one(&self.background)
        .await?;
        Ok(next.map(from_ms))
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

    /// Deletes up to `batch` dedup records older than `retention`; returns how many went.
    /// Bounded so one run never holds the write lock for long.
    ///
    /// `order_states` is kept: it is what says an order was paid, and a late event under a
    /// new webhook id must still be judged against it (rows are small: one per order).
    pub async fn delete_expired(
        &self,
        retention: Duration,
        batch: u32,
    ) -> Result<u64, sqlx::Error> {
        let cutoff = now_ms().saturating_sub(duration_ms(retention));
        let deleted = sqlx::query(
            "DELETE FROM received_webhooks WHERE webhook_id IN (
                 SELECT webhook_id FROM received_webhooks WHERE received_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&self.background)
        .await?
        .rows_affected();
        Ok(deleted)
    }
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
