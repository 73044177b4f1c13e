//! The group committer against a real SQLite file: concurrent writes share transactions, a
//! failing (or panicking) write is rolled back alone, a batch that cannot take the lock fails
//! its callers, and nothing is accepted after close.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::Connection;
use webhook_common::group_commit::{GroupCommitSettings, GroupCommitter, WriteError};

/// A fresh database with one table `t (k INTEGER PRIMARY KEY)`.
fn database(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("t.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        .unwrap();
    path
}

fn keys(path: &PathBuf) -> Vec<i64> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT k FROM t ORDER BY k").unwrap();
    let keys = stmt
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<Vec<i64>, _>>()
        .unwrap();
    keys
}

/// Inserts the key `k` through the writer.
async fn insert(writer: &GroupCommitter, k: i64) -> Result<(), WriteError> {
    writer
        .write(move |conn| {
            conn.prepare_cached("INSERT INTO t (k) VALUES (?1)")?
                .execute([k])?;
            Ok(())
        })
        .await
}

fn spawn_insert(
    writer: &GroupCommitter,
    k: i64,
) -> tokio::task::JoinHandle<Result<(), WriteError>> {
    let writer = writer.clone();
    tokio::spawn(async move { insert(&writer, k).await })
}

/// Queues a write that keeps the writer busy until the returned sender fires, and waits
/// until the writer runs it, so that the writes queued next all meet in the next batch.
async fn hold_up(writer: &GroupCommitter) -> std::sync::mpsc::Sender<()> {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let started = std::sync::Arc::new(tokio::sync::Notify::new());
    let started_tx = started.clone();
    let writer = writer.clone();
    tokio::spawn(async move {
        writer
            .write(move |_conn| {
                started_tx.notify_one();
                // Bounded: a test that never releases fails instead of hanging.
                let _ = released.recv_timeout(Duration::from_secs(30));
                Ok(())
            })
            .await
    });
    started.notified().await;
    release
}

/// Polls until `n` writes wait in the writer's queue, with a deadline.
async fn wait_until_queued(writer: &GroupCommitter, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while writer.queued() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} queued, not {n}",
            writer.queued()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn concurrent_writes_all_commit_and_share_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(&dir);
    let writer = GroupCommitter::open(
        &path,
        GroupCommitSettings {
            max_batch: 64,
            queue: 16,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..500_i64 {
        let writer = writer.clone();
        tasks.spawn(async move { insert(&writer, k).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(keys(&path), (0..500).collect::<Vec<_>>());
    let stats = writer.stats();
    assert_eq!(stats.writes, 500);
    // Writes queued while a batch commits go into the next one: far fewer transactions.
    assert!(stats.batches < 100, "{stats:?}");
    writer.close().await;
}

#[tokio::test]
async fn a_failing_write_is_rolled_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(&dir);
    let writer = GroupCommitter::open(&path, Default::default())
        .await
        .unwrap();
    insert(&writer, 1).await.unwrap();
    // A good write, a duplicate key, a write that inserts then fails, and another good
    // write, queued while the writer is held up: they land in one batch, and only the good
    // two may stay.
    let release = hold_up(&writer).await;
    let before = writer.stats();
    let a = spawn_insert(&writer, 2);
    let dup = spawn_insert(&writer, 1);
    let half = {
        let writer = writer.clone();
        tokio::spawn(async move {
            writer
                .write(|conn| {
                    conn.execute("INSERT INTO t (k) VALUES (4)", [])?;
                    conn.execute("INSERT INTO t (k) VALUES (1)", [])?;
                    Ok(())
                })
                .await
        })
    };
    let b = spawn_insert(&writer, 3);
    wait_until_queued(&writer, 4).await;
    release.send(()).unwrap();
    let (a, dup, half, b) = (
        a.await.unwrap(),
        dup.await.unwrap(),
        half.await.unwrap(),
        b.await.unwrap(),
    );
    let after = writer.stats();
    // (The hold-up's batch was counted when it started, before `before`.)
    assert_eq!(after.writes - before.writes, 4);
    assert_eq!(
        after.batches - before.batches,
        1,
        "the four writes shared one batch"
    );
    a.unwrap();
    b.unwrap();
    let err = dup.unwrap_err();
    assert!(err.is_unique_violation(), "{err:?}");
    assert!(half.unwrap_err().is_unique_violation());
    assert_eq!(
        keys(&path),
        vec![1, 2, 3],
        "the half-done write left its first row"
    );
    writer.close().await;
}

#[tokio::test]
async fn a_panicking_write_fails_alone_and_the_writer_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(&dir);
    let writer = GroupCommitter::open(&path, Default::default())
        .await
        .unwrap();
    let panicking = writer.write(|conn| -> rusqlite::Result<()> {
        conn.execute("INSERT INTO t (k) VALUES (9)", [])?;
        panic!("a bug in a write");
    });
    let (good, panicked) = tokio::join!(insert(&writer, 1), panicking);
    good.unwrap();
    assert!(
        matches!(panicked, Err(WriteError::Panicked)),
        "{panicked:?}"
    );
    insert(&writer, 2).await.unwrap();
    assert_eq!(keys(&path), vec![1, 2]);
    writer.close().await;
}

#[tokio::test]
async fn writes_after_close_are_refused_and_queued_ones_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(&dir);
    let writer = GroupCommitter::open(&path, Default::default())
        .await
        .unwrap();
    let queued: Vec<_> = (0..50)
        .map(|k| {
            let writer = writer.clone();
            tokio::spawn(async move { insert(&writer, k).await })
        })
        .collect();
    // Every write sent before close is committed, none is dropped.
    while writer.stats().writes == 0 {
        tokio::task::yield_now().await;
    }
    writer.close().await;
    writer.close().await;
    let mut committed = 0;
    for task in queued {
        match task.await.unwrap() {
            Ok(()) => committed += 1,
            Err(WriteError::Closed) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(matches!(
        insert(&writer, 100).await,
        Err(WriteError::Closed)
    ));
    assert_eq!(keys(&path).len(), committed);
}

#[tokio::test]
async fn a_batch_that_cannot_take_the_lock_fails_every_caller_and_the_next_one_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(&dir);
    let writer = GroupCommitter::open(
        &path,
        GroupCommitSettings {
            busy_timeout: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Another connection holds the write lock longer than the writer waits for it.
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = insert(&writer, 1).await.unwrap_err();
    assert!(matches!(err, WriteError::Batch(_)), "{err:?}");
    other.execute_batch("ROLLBACK").unwrap();
    insert(&writer, 2).await.unwrap();
    assert_eq!(keys(&path), vec![2]);
    writer.close().await;
}

#[tokio::test]
async fn commits_are_durable_settings_on_the_writer_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = database(&dir);
    let writer = GroupCommitter::open(&path, Default::default())
        .await
        .unwrap();
    let (journal, synchronous, foreign_keys) = writer
        .write(|conn| {
            Ok((
                conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))?,
                conn.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))?,
                conn.query_row("PRAGMA foreign_keys", [], |r| r.get::<_, i64>(0))?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    assert_eq!(synchronous, 2, "synchronous=FULL");
    assert_eq!(foreign_keys, 1);
    writer.close().await;
}
