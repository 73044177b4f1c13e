//! The SQLite backend: one process per database file.
//!
//! Writes go through one group committer per database (see [`SqliteStore`]); [`intake`]
//! records webhooks, [`queue`] claims email jobs and records what became of them.
//!
//! The writes run on the group committer's thread through `rusqlite` (`?n` placeholders);
//! reads and migrations use the `sqlx` pools. Timestamps are integer milliseconds and ids
//! text UUIDs; the PostgreSQL backend has the same columns in its own dialect.

mod intake;
mod metrics;
mod queue;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use uuid::Uuid;
use webhook_common::group_commit::{
    GroupCommitSettings, GroupCommitStats, GroupCommitter, WriteError,
};

use super::rows::{NotificationRow, ReceivedWebhookRow};
use super::{duration_ms, now_ms, Cursor, Notification, ReceivedWebhook};

/// The SQLite schema's migrations, embedded at build time.
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

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

/// The SQLite database. Cheap to clone (pool handles and the writer's handle).
///
/// Every hot write (the intake, claims, job outcomes, lease renewals, cleanup) goes through
/// one [`GroupCommitter`]: a single writer thread that commits everything queued in one
/// `BEGIN IMMEDIATE` transaction, so one fsync serves many callers and nobody waits in
/// SQLite's busy handler for a lock another caller of this process holds. Reads use pools:
/// requests (read API) and background work (the worker's next-due query) have separate ones,
/// so neither can starve the other of connections.
#[derive(Debug, Clone)]
pub(super) struct SqliteStore {
    pool: SqlitePool,
    background: SqlitePool,
    /// Serialises and batches every write of this process; see [`SqliteStore`].
    writer: GroupCommitter,
}

impl SqliteStore {
    /// Opens (creating if missing, with its directory) the SQLite database at `url`, in WAL
    /// mode with a busy timeout and foreign keys on, and starts its writer thread. Must be
    /// called inside a tokio runtime; [`SqliteStore::close`] stops the writer. Messages show
    /// `shown` (the URL with any `user:password@` redacted), never the raw URL or the file
    /// path derived from it.
    pub async fn connect(url: &str, shown: &str) -> anyhow::Result<SqliteStore> {
        use anyhow::Context as _;
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
        Ok(SqliteStore {
            pool,
            background,
            writer,
        })
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

    /// The writer and the readers are separate connections: an in-memory database would be
    /// a different one for each, so it is refused with a message naming the setting.
    #[tokio::test]
    async fn an_in_memory_database_is_refused_at_startup() {
        let url = "sqlite::memory:";
        let err = SqliteStore::connect(url, url).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("DATABASE_URL") && text.contains("in-memory"),
            "{text}"
        );
    }
}
