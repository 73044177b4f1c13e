//! All SQL of the service, behind methods that take and return domain types.
//!
//! SQLite is the default backend. The SQL stays portable to PostgreSQL where that is cheap:
//! numbered placeholders, unix-millisecond INTEGER timestamps, TEXT UUIDs, and work claimed with
//! a conditional `UPDATE ... RETURNING` guarded by status and lease columns, so several
//! replicas can share one database.
//!
//! The hot writes (orders, claims, attempt outcomes, releases) go through one
//! [`GroupCommitter`]: a thread of its own that owns the one write connection and commits
//! many callers' writes in one transaction and one fsync, instead of each taking SQLite's
//! write lock in turn. Their SQL runs on that thread through `rusqlite`, statement after
//! statement without a hop between threads; reads and the rare management writes use the
//! `sqlx` pool (the latter wait for the lock within the busy timeout).

mod deliveries;
mod endpoints;
mod events;
pub mod idempotency;
mod metrics;
mod orders;
mod retention;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use webhook_common::group_commit::{GroupCommitSettings, GroupCommitter};

pub use deliveries::{Claimed, PAUSED_AT};
pub use endpoints::{EndpointSecret, EnsuredEndpoint, CONFIG_UNSET_REASON, DELETE_BATCH};
pub use orders::{ClaimOnCreate, CreatedOrder};
pub use retention::{Purged, RETENTION_BATCH};

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// The one writer of the hot path; see the module docs.
    writer: GroupCommitter,
}

/// The current time in unix milliseconds.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating if missing) the database at `url` with WAL, a busy timeout and
    /// foreign keys on, and starts its writer.
    ///
    /// `synchronous=FULL`: a commit is on disk before it is acknowledged, so a 201 survives a
    /// power cut or an OS crash, not only a crash of this process. Group commit is what keeps
    /// that affordable (one fsync per batch of writes).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("DATABASE_URL {url:?} is not a valid SQLite URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let filename = options.get_filename().to_path_buf();
        if is_in_memory(url) {
            anyhow::bail!(
                "DATABASE_URL {url:?} is an in-memory database; the service needs a file \
                 (its writer and readers are separate connections), e.g. sqlite://data/orders.db"
            );
        }
        if let Some(parent) = filename.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.with_context(|| {
                format!(
                    "creating the directory {} for DATABASE_URL",
                    parent.display()
                )
            })?;
        }
        let open = |connections: u32| {
            SqlitePoolOptions::new()
                .max_connections(connections)
                // A local file cannot go stale like a network connection; the default ping
                // would cost every acquire a round trip to the connection's thread.
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options.clone())
        };
        let opened = || format!("opening the database {}", filename.display());
        let pool = open(8).await.with_context(opened)?;
        // The writer's own connection: a burst of reads cannot hold up a batch of writes.
        let writer = GroupCommitter::open(&filename, GroupCommitSettings::default())
            .await
            .with_context(opened)?;
        Ok(Store { pool, writer })
    }

    /// Applies the embedded migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::migrate!()
            .run(&self.pool)
            .await
            .context("running database migrations")
    }

    /// The read pool, for readiness checks and diagnostics.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Commits what the writer has queued, stops it, then waits for open connections to
    /// finish and closes the pool.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

fn parse_uuid(text: &str) -> anyhow::Result<uuid::Uuid> {
    uuid::Uuid::parse_str(text).with_context(|| format!("bad UUID {text:?} in the database"))
}

/// Whether `url` names an in-memory database (`sqlite::memory:`, `mode=memory`), which each
/// connection would see as a database of its own.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

#[cfg(test)]
mod tests {
    /// The writer and the readers are separate connections: an in-memory database would be
    /// a different one for each, so it is refused with a message naming the setting.
    #[tokio::test]
    async fn an_in_memory_database_is_refused_at_startup() {
        let err = super::Store::connect("sqlite::memory:").await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("DATABASE_URL") && text.contains("in-memory"),
            "{text}"
        );
    }
}
