//! All SQL of the service, behind one [`Store`] whose methods take and return domain types.
//!
//! Two backends, chosen by `DATABASE_URL` ([`Store::connect`]); everything above the store
//! is the same for both:
//!
//! - **SQLite** (`sqlite:`, the default; one process per database file). Every hot write
//!   goes through one group committer (`webhook_common::group_commit`): a writer thread that
//!   runs the writes of many callers back to back in one `BEGIN IMMEDIATE` transaction and
//!   commits once with `synchronous=FULL`, so an `Ok` is on disk. The writer's lock is what
//!   makes each intake's read-modify-write of an order atomic. Reads and migrations use
//!   `sqlx` pools.
//! - **PostgreSQL** (`postgres://` or `postgresql://`; several replicas on one database).
//!   Ordinary transactions on a pool, `synchronous_commit=on` (an `Ok` is committed and
//!   flushed; PostgreSQL's WAL flush coalesces concurrent commits). What one writer
//!   guarantees on SQLite is enforced here by the database:
//!   - *deduplication*: the primary key of `received_webhooks` decides, with
//!     `INSERT ... ON CONFLICT DO NOTHING`: of two replicas recording one `webhook-id` at the
//!     same instant, the second waits for the first's commit and answers `Duplicate`;
//!   - *claims*: `FOR UPDATE SKIP LOCKED` over the partial index on `due_at`, under the same
//!     leases (an expired lease of a dead replica makes its job claimable by any other);
//!   - *the ordering rule* ([`decide`]): everything that reads or changes what an order's
//!     emails may do is serialised per order by a transaction-scoped advisory lock on the
//!     order id. The intake waits for it; claims and lease renewals only try it and pass
//!     a failure notice over while an intake of its order runs (they never wait), and read
//!     the order's confirmation in a statement that starts after they hold it;
//!   - *wake-ups*: after a commit that makes a job due, the store sends `NOTIFY` (in a
//!     transaction of its own, see `webhook_common::pg_listen`), and every replica's worker
//!     listens ([`Store::spawn_job_listener`]).
//!
//! Timestamps are integer unix milliseconds and money never appears, so the domain code is
//! one for both (`crate::domain`, and `intake`: the steps of recording a webhook and the typed
//! states between them, which each backend runs with its own statements). Replicas compare
//! lease expiries taken from their own clocks: keep them in sync (NTP), as for any lease.

mod intake;
mod postgres;
mod rows;
mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::{PgPool, SqlitePool};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use webhook_common::group_commit::GroupCommitStats;
use webhook_common::metrics::REFRESH_EVERY;
use webhook_common::readiness::Database;

pub use crate::domain::{
    decide, from_ms, to_ms, ClaimedJob, Cursor, IncomingWebhook, IntakeOutcome, Notification,
    NotificationStatus, OrderEmail, OrderEventKind, OrderState, ReceivedWebhook, RenewedLease,
};
use crate::domain::{duration_ms, now_ms};

/// `email_queue_depth`: queued email jobs (see [`Store::email_queue_depth`]).
pub const EMAIL_QUEUE_DEPTH: &str = "email_queue_depth";

/// Connections of the PostgreSQL pool unless `DATABASE_MAX_CONNECTIONS` says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// Why a write did not commit; nothing of it is stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// SQLite: the group committer's error.
    #[error(transparent)]
    Sqlite(#[from] webhook_common::group_commit::WriteError),
    /// PostgreSQL: the transaction failed or could not commit.
    #[error(transparent)]
    Postgres(#[from] sqlx::Error),
}

impl WriteError {
    /// Whether the store is closed (shutdown): nothing will succeed any more.
    pub fn is_closed(&self) -> bool {
        match self {
            WriteError::Sqlite(e) => matches!(e, webhook_common::group_commit::WriteError::Closed),
            WriteError::Postgres(e) => matches!(e, sqlx::Error::PoolClosed),
        }
    }

    /// Whether trying again later may succeed: see [`is_transient`].
    pub fn is_transient(&self) -> bool {
        match self {
            WriteError::Sqlite(e) => e.is_transient(),
            WriteError::Postgres(e) => is_transient(e),
        }
    }
}

/// Whether trying again later may succeed: the database was busy or locked (SQLite), a
/// transaction lost a serialization or deadlock check, or the connection, the pool or the
/// server is unavailable for now (PostgreSQL: no free connection within the acquire timeout,
/// a dropped connection, a server shutting down or out of connections).
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // Extended codes keep the primary code in the low byte.
                let primary = code.and_then(|c| c.parse::<i32>().ok()).map(|c| c & 0xff);
                return matches!(primary, Some(5 | 6)); // SQLITE_BUSY, SQLITE_LOCKED
            }
            let code = code.as_deref().unwrap_or("");
            // serialization_failure, deadlock_detected, too_many_connections, the
            // connection_exception class and the server shutting down or starting.
            matches!(
                code,
                "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03"
            ) || code.starts_with("08")
        }
        _ => false,
    }
}

/// The database. Cheap to clone (pool handles, and on SQLite the writer's handle).
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

/// The active backend; every public method of [`Store`] delegates to it.
#[derive(Clone, Debug)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Calls the same method on whichever backend is active and converts its error into the
/// one the `Store` method returns (`sqlx::Error` for reads, [`WriteError`] for writes).
macro_rules! delegate {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match &$self.backend {
            Backend::Sqlite(store) => store.$method($($arg),*).await.map_err(Into::into),
            Backend::Postgres(store) => store.$method($($arg),*).await.map_err(Into::into),
        }
    };
}

impl Store {
    /// Opens the database `url` names: `sqlite:...` (the file and its directory are created
    /// if missing; `max_connections` is ignored, SQLite has one writer and fixed read pools)
    /// or `postgres://...` / `postgresql://...` (a pool of `max_connections`, plus one
    /// connection for `LISTEN`). Must be called inside a tokio runtime; [`Store::close`]
    /// stops it. Errors name `DATABASE_URL` and never show a password.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Store> {
        // Messages show the URL with any `user:password@` redacted, never the raw URL.
        let shown = crate::config::redact_url(url);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite(sqlite::SqliteStore::connect(url, &shown).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(postgres::PgStore::connect(url, &shown, max_connections).await?)
        } else {
            anyhow::bail!(
                "DATABASE_URL {shown:?} is neither a sqlite: URL (e.g. \
                 sqlite://data/notifications.db) nor a postgres:// or postgresql:// URL \
                 (e.g. postgres://user:password@host:5432/notifications)"
            );
        };
        Ok(Store { backend })
    }

    /// Applies the backend's embedded migrations (`migrations/sqlite` or
    /// `migrations/postgres`). On PostgreSQL, replicas starting together take turns (the
    /// migrator holds an advisory lock).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let (database, migrator) = self.readiness_target();
        match database {
            Database::Sqlite(pool) => migrator.run(pool).await?,
            Database::Postgres(pool) => migrator.run(pool).await?,
        }
        Ok(())
    }

    /// The database and the migrations a readiness probe checks (see
    /// `webhook_common::readiness::not_ready`).
    pub fn readiness_target(&self) -> (Database<'_>, &'static Migrator) {
        match &self.backend {
            Backend::Sqlite(store) => (Database::Sqlite(store.pool()), &sqlite::MIGRATOR),
            Backend::Postgres(store) => (Database::Postgres(store.pool()), &postgres::MIGRATOR),
        }
    }

    /// The SQLite request pool, when SQLite is the backend (for tests and diagnostics).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.backend {
            Backend::Sqlite(store) => Some(store.pool()),
            Backend::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, when PostgreSQL is the backend (for tests and diagnostics).
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(store) => Some(store.pool()),
        }
    }

    /// Batches and writes the SQLite writer has committed so far (for diagnostics and
    /// tests); `None` on PostgreSQL, which has no group committer.
    pub fn write_stats(&self) -> Option<GroupCommitStats> {
        match &self.backend {
            Backend::Sqlite(store) => Some(store.write_stats()),
            Backend::Postgres(_) => None,
        }
    }

    /// Until `shutdown`, pokes `wake` whenever any replica commits a job that is due (and
    /// after each reconnect), so every replica's worker starts at once; PostgreSQL only
    /// (`LISTEN`). `None` on SQLite: one process per database, whose intake pokes its own
    /// worker directly.
    pub fn spawn_job_listener(
        &self,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(store) => Some(webhook_common::pg_listen::spawn(
                store.pool(),
                postgres::JOBS_CHANNEL,
                wake,
                shutdown,
            )),
        }
    }

    /// Commits the writes still queued (SQLite), then closes the pools, waiting for
    /// connections in use to be returned; later writes fail with a [`WriteError`] whose
    /// [`is_closed`](WriteError::is_closed) holds. Call it after the worker has drained:
    /// its last outcomes are writes too.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(store) => store.close().await,
            Backend::Postgres(store) => store.close().await,
        }
    }

    /// A page of notifications, newest first, starting after `cursor`.
    pub async fn list_notifications(
        &self,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<Notification>, sqlx::Error> {
        delegate!(self.list_notifications(cursor, limit))
    }

    /// One notification with its body.
    pub async fn get_notification(&self, id: Uuid) -> Result<Option<Notification>, sqlx::Error> {
        delegate!(self.get_notification(id))
    }

    /// The most recent received webhooks, newest first (for the read API).
    pub async fn list_received(&self, limit: u32) -> Result<Vec<ReceivedWebhook>, sqlx::Error> {
        delegate!(self.list_received(limit))
    }

    /// Records a verified webhook and, if it asks for an email that the ordering rule
    /// ([`decide`]) allows, enqueues the email job, all in one transaction: a webhook is
    /// either fully recorded with its job or not at all, and a repeat of the same
    /// `webhook-id` (even concurrent, even on another replica) changes nothing and answers
    /// [`IntakeOutcome::Duplicate`]. Returns once that is committed, so the caller may
    /// acknowledge the webhook.
    #[tracing::instrument(skip_all, fields(webhook_id = %webhook.webhook_id))]
    pub async fn record_webhook(
        &self,
        webhook: &IncomingWebhook,
    ) -> Result<IntakeOutcome, WriteError> {
        delegate!(self.record_webhook(webhook))
    }

    /// Claims up to `limit` due jobs for `lease`, counting an attempt on each. A job is due
    /// when queued, its retry time has come and no live lease holds it; a lease left by a
    /// crashed worker (or replica) expires and the job is claimed again.
    ///
    /// The due candidates (at most `limit`, read in due order from an index) are settled in
    /// the same transaction that leases the others, so jobs that must not be sent never are:
    /// a failure notice of an order that has a confirmation is cancelled (the ordering rule,
    /// see [`decide`]); a job that already used `max_attempts` is marked failed; the rest
    /// are leased and returned, in no particular order. When some candidates were settled,
    /// the next ones are claimed, so a claim returns fewer than `limit` jobs only when fewer
    /// are due (or after settling a bounded number; the worker then simply claims again).
    pub async fn claim_due(
        &self,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Vec<ClaimedJob>, WriteError> {
        delegate!(self.claim_due(limit, lease, max_attempts))
    }

    /// Marks a claimed job sent. `false` if the lease was lost (another worker owns it now).
    pub async fn mark_sent(&self, job: &ClaimedJob) -> Result<bool, WriteError> {
        delegate!(self.mark_sent(job))
    }

    /// Schedules another attempt of a claimed job at `retry_at`, recording why this one failed.
    pub async fn schedule_retry(
        &self,
        job: &ClaimedJob,
        retry_at: OffsetDateTime,
        error: &str,
    ) -> Result<bool, WriteError> {
        delegate!(self.schedule_retry(job, retry_at, error))
    }

    /// Gives up on a claimed job: it stays visible as `failed` with the last error.
    pub async fn mark_failed(&self, job: &ClaimedJob, error: &str) -> Result<bool, WriteError> {
        delegate!(self.mark_failed(job, error))
    }

    /// Hands a claimed job back unsent (shutdown, or a lease too short to send in),
    /// refunding the attempt it was charged; it is due again at once.
    pub async fn release(&self, job: &ClaimedJob) -> Result<bool, WriteError> {
        delegate!(self.release(job))
    }

    /// Extends to now + `lease` the leases of the jobs in `held` (job ids by the claim token
    /// they were leased under: the jobs a live worker still has in hand), in one
    /// transaction. Returns the leases it extended; a job missing from the answer was not
    /// extended (its outcome is recorded, another worker took it over, or it is a failure
    /// notice whose order has a confirmation, or on PostgreSQL one whose order an intake is
    /// changing right now) and its holder must go by the expiry it knew.
    pub async fn renew_leases(
        &self,
        held: Vec<(Uuid, Vec<Uuid>)>,
        lease: Duration,
    ) -> Result<Vec<RenewedLease>, WriteError> {
        delegate!(self.renew_leases(held, lease))
    }

    /// When the next queued job becomes claimable (its retry time or its lease expiry); a
    /// read of the first index entry.
    pub async fn next_due_at(&self) -> Result<Option<OffsetDateTime>, sqlx::Error> {
        delegate!(self.next_due_at())
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
        delegate!(self.purge_finished(retention, batch))
    }

    /// Deletes up to `batch` dedup records older than `retention`; returns how many went.
    /// Bounded so one run never holds up other writes for long.
    ///
    /// `order_states` is kept: it is what says an order was paid, and a late event under a
    /// new webhook id must still be judged against it (rows are small: one per order).
    pub async fn delete_expired(&self, retention: Duration, batch: u32) -> Result<u64, WriteError> {
        delegate!(self.delete_expired(retention, batch))
    }

    /// How many email jobs are queued (due, waiting for a retry, or held under a lease):
    /// the entries of the partial index `notifications_due_at`, which holds only queued
    /// jobs, so the count never reads the sent, failed or cancelled history.
    pub async fn email_queue_depth(&self) -> Result<i64, sqlx::Error> {
        delegate!(self.email_queue_depth())
    }

    /// Refreshes `email_queue_depth` (and runs the recorder's upkeep) at once and then every
    /// [`REFRESH_EVERY`] until `shutdown`, on the background connections, never on a
    /// scrape. A failed query keeps the last value and is logged.
    pub async fn run_queue_gauge(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(REFRESH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            webhook_common::metrics::run_upkeep();
            match self.email_queue_depth().await {
                // A count far below 2^52: exact as f64.
                #[allow(clippy::cast_precision_loss)]
                Ok(depth) => metrics::gauge!(EMAIL_QUEUE_DEPTH).set(depth as f64),
                Err(e) => tracing::warn!(error = %e, "refreshing email_queue_depth failed"),
            }
        }
    }
}
