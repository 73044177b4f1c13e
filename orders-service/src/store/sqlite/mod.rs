//! The SQLite backend (the default): one process on one machine. Unix-millisecond INTEGER
//! timestamps, TEXT UUIDs, and work claimed with a conditional `UPDATE ... RETURNING` guarded
//! by status and lease columns.
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
mod idempotency;
mod metrics;
mod orders;
mod retention;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use webhook_common::group_commit::{GroupCommitSettings, GroupCommitter};

/// The SQLite schema's migrations (`migrations/sqlite`).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// A handle on a SQLite database; cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The one writer of the hot path; see the module docs.
    writer: GroupCommitter,
}

impl SqliteStore {
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
        Ok(SqliteStore { pool, writer })
    }

    /// Applies the embedded migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
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
        let err = super::SqliteStore::connect("sqlite::memory:")
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("DATABASE_URL") && text.contains("in-memory"),
            "{text}"
        );
    }
}
