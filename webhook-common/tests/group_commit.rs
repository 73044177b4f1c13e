//! The group committer against a real SQLite file: concurrent writes share transactions, a
//! failing write is rolled back alone, and nothing is accepted after close.

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::str::FromStr;
use webhook_common::group_commit::{GroupCommitSettings, GroupCommitter, WriteError};

async fn pool(dir: &tempfile::TempDir) -> SqlitePool {
    let url = format!("sqlite://{}/t.db", dir.path().display());
    let options = SqliteConnectOptions::from_str(&url)
        .unwrap()
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    pool
}

/// Inserts the key `k` through the writer.
async fn insert(writer: &GroupCommitter<sqlx::Sqlite>, k: i64) -> Result<(), WriteError> {
    writer
        .write(move |conn| {
            Box::pin(async move {
                sqlx::query("INSERT INTO t (k) VALUES ($1)")
                    .bind(k)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
}

#[tokio::test]
async fn concurrent_writes_all_commit_and_share_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let writer = GroupCommitter::start(
        pool.clone(),
        "BEGIN IMMEDIATE",
        GroupCommitSettings {
            max_batch: 64,
            queue: 16,
        },
    );
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..500_i64 {
        let writer = writer.clone();
        tasks.spawn(async move { insert(&writer, k).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 500);
    let stats = writer.stats();
    assert_eq!(stats.writes, 500);
    // Writes queued while a batch commits go into the next one: far fewer transactions.
    assert!(stats.batches < 100, "{stats:?}");
    writer.close().await;
}

#[tokio::test]
async fn a_failing_write_is_rolled_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let writer = GroupCommitter::start(pool.clone(), "BEGIN IMMEDIATE", Default::default());
    insert(&writer, 1).await.unwrap();
    // Queue a good write, a duplicate key and another good write at once: they land in one
    // batch, whose first run fails on the duplicate and is rolled back; the re-run with
    // savepoints must commit the good two exactly once and fail only the duplicate.
    let before = writer.stats();
    let (a, dup, b) = tokio::join!(insert(&writer, 2), insert(&writer, 1), insert(&writer, 3));
    let after = writer.stats();
    assert_eq!(after.writes - before.writes, 3);
    assert_eq!(
        after.batches - before.batches,
        1,
        "the three writes shared one batch"
    );
    a.unwrap();
    b.unwrap();
    let err = dup.unwrap_err();
    assert!(
        matches!(&err, WriteError::Database(e) if e.as_database_error().is_some_and(|d| d.is_unique_violation())),
        "{err:?}"
    );
    let keys: Vec<(i64,)> = sqlx::query_as("SELECT k FROM t ORDER BY k")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, vec![(1,), (2,), (3,)]);
    writer.close().await;
}

#[tokio::test]
async fn writes_after_close_are_refused_and_queued_ones_commit() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let writer = GroupCommitter::start(pool.clone(), "BEGIN IMMEDIATE", Default::default());
    let queued = {
        let writer = writer.clone();
        tokio::spawn(async move { insert(&writer, 7).await })
    };
    queued.await.unwrap().unwrap();
    writer.close().await;
    writer.close().await;
    assert!(matches!(insert(&writer, 8).await, Err(WriteError::Closed)));
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM t")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_batch_that_cannot_begin_fails_every_caller_with_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    // An invalid BEGIN statement stands in for a database that refuses transactions.
    let writer = GroupCommitter::start(pool.clone(), "BEGIN NONSENSE", Default::default());
    let err = insert(&writer, 1).await.unwrap_err();
    assert!(matches!(err, WriteError::Batch(_)), "{err:?}");
    writer.close().await;
}
