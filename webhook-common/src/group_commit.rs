//! Group commit: one writer per SQLite database commits the writes of many callers in one
//! transaction, so one fsync serves many requests and nobody waits in SQLite's busy handler.
//!
//! A caller hands its write (a closure over the writer's connection) to the
//! [`GroupCommitter`] and awaits it. The writer, a dedicated thread that owns one SQLite
//! connection, takes everything queued (up to the batch limit), runs the writes one after the
//! other in one `BEGIN IMMEDIATE` transaction, commits once, and only then answers each
//! caller: an `Ok` means the write is committed with whatever durability the connection's
//! `synchronous` setting gives a commit (`FULL`: fsynced).
//!
//! Why a thread of its own and not an async driver: the writes of a batch run back to back on
//! the thread that owns the connection, each statement a function call of a few
//! microseconds. An async driver hands every statement to its connection's thread and waits
//! for the answer; on a busy machine each of those hand-offs costs a trip through the OS
//! scheduler (measured at 150–300 µs on two loaded cores), which made that hop, not the disk,
//! the limit of the whole pipeline. Here the async side crosses over once per write (queue in,
//! answer out), and the thread crosses none while it works.
//!
//! A batch runs optimistically, without a savepoint per write: a savepoint makes SQLite copy
//! every page a write touches into a statement journal first, which measured as a large part
//! of a small write's cost. If a write fails, the whole transaction is rolled back and the
//! batch is run again with every write in its own savepoint, so the failing write is rolled
//! back alone, its caller gets the error, and the others commit. That is why a write is a
//! re-runnable closure (`Fn`): it may run twice, and only its last run counts. If the commit
//! itself fails, every caller of the batch gets an error and nothing of the batch is stored.
//!
//! There is no artificial delay: while one batch commits (the fsync), new writes queue up and
//! become the next batch, so batches grow with load and a lone write commits at once. The
//! queue is bounded: when it is full, callers wait (backpressure), nobody is dropped.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

/// Why a write handed to the [`GroupCommitter`] did not commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The write itself failed and was rolled back; nothing of it is stored.
    #[error(transparent)]
    Database(#[from] rusqlite::Error),
    /// The batch it was part of could not begin or commit; nothing of it is stored.
    #[error("committing a batch of writes failed: {0}")]
    Batch(Arc<rusqlite::Error>),
    /// The write panicked (a bug); it was rolled back and the writer went on.
    #[error("the database write panicked and was rolled back")]
    Panicked,
    /// The writer has stopped (shutdown); the write was not attempted.
    #[error("the database writer has stopped")]
    Closed,
}

impl WriteError {
    /// The underlying database error, if there is one.
    pub fn sqlite(&self) -> Option<&rusqlite::Error> {
        match self {
            WriteError::Database(e) => Some(e),
            WriteError::Batch(e) => Some(e),
            WriteError::Panicked | WriteError::Closed => None,
        }
    }

    /// Whether trying again later may succeed: the writer is stopping (shutdown), or the
    /// database was busy or locked (another process held its lock past the busy timeout).
    pub fn is_transient(&self) -> bool {
        match self.sqlite().and_then(rusqlite::Error::sqlite_error_code) {
            _ if matches!(self, WriteError::Closed) => true,
            Some(code) => matches!(
                code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            None => false,
        }
    }

    /// Whether the write broke a `UNIQUE` or `PRIMARY KEY` constraint.
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self.sqlite().and_then(rusqlite::Error::sqlite_error),
            Some(e) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )
    }
}

/// A queued write, type-erased: it can be run (again) on the writer's connection, and is
/// answered once the batch's fate is known.
trait QueuedWrite: Send {
    /// Runs the write, keeping its value or error; says whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: the value of the last run if `batch` committed, else the error.
    fn answer(self: Box<Self>, batch: Result<(), Arc<rusqlite::Error>>);
}

enum Job {
    Write(Box<dyn QueuedWrite>),
    /// Commit what is queued, refuse the rest, stop.
    Stop,
}

struct Queued<F, T> {
    write: F,
    /// The outcome of the last run; `None` before the first.
    outcome: Option<Result<T, WriteError>>,
    answer: oneshot::Sender<Result<T, WriteError>>,
}

impl<F, T> QueuedWrite for Queued<F, T>
where
    T: Send + 'static,
    F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        // A panicking write fails alone; it must not take the writer (and every later
        // write of the process) down with it.
        let write = &self.write;
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| write(conn))) {
            Ok(outcome) => outcome.map_err(WriteError::Database),
            Err(_) => Err(WriteError::Panicked),
        };
        let ok = outcome.is_ok();
        self.outcome = Some(outcome);
        ok
    }

    fn answer(self: Box<Self>, batch: Result<(), Arc<rusqlite::Error>>) {
        let reply = match (batch, self.outcome) {
            (Err(batch), _) => Err(WriteError::Batch(batch)),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Ok(()), Some(Err(e))) => Err(e),
            // Never run: the writer stopped before it.
            (Ok(()), None) => Err(WriteError::Closed),
        };
        let _ = self.answer.send(reply);
    }
}

/// Tuning of a [`GroupCommitter`].
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitSettings {
    /// Most writes committed in one transaction.
    pub max_batch: usize,
    /// Writes that may wait in the queue before callers are held back.
    pub queue: usize,
    /// How long the writer waits for SQLite's lock when another connection (a migration,
    /// a rare management write on a pool) holds it.
    pub busy_timeout: Duration,
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        GroupCommitSettings {
            max_batch: 256,
            queue: 1024,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The handle callers write through. Cheap to clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct GroupCommitter {
    jobs: mpsc::Sender<Job>,
    /// Fires when the writer thread has finished; taken (once) by [`GroupCommitter::close`].
    stopped: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    /// Counters the writer updates after each batch.
    stats: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    writes: AtomicU64,
}

/// How much the writer has done since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Transactions run (committed or not).
    pub batches: u64,
    /// Writes run in them.
    pub writes: u64,
}

impl std::fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl GroupCommitter {
    /// Opens the SQLite database file at `path` (creating it if missing) on a writer thread
    /// of its own, in WAL mode with `synchronous=FULL` and foreign keys on, and starts
    /// taking writes. Fails if the file cannot be opened or configured.
    pub async fn open(path: &Path, settings: GroupCommitSettings) -> std::io::Result<Self> {
        let max_batch = settings.max_batch.max(1);
        let (jobs, rx) = mpsc::channel(settings.queue.max(1));
        let (opened_tx, opened) = oneshot::channel();
        let (stopped_tx, stopped) = oneshot::channel();
        let stats = Arc::new(Counters::default());
        let path = path.to_owned();
        let counters = stats.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let conn = match open_connection(&path, settings.busy_timeout) {
                    Ok(conn) => {
                        let _ = opened_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = opened_tx.send(Err(std::io::Error::other(e)));
                        return;
                    }
                };
                writer_loop(&conn, max_batch, rx, &counters);
                drop(conn);
                let _ = stopped_tx.send(());
            })?;
        opened.await.unwrap_or_else(|_| {
            Err(std::io::Error::other(
                "the database writer thread stopped while opening the database",
            ))
        })?;
        Ok(GroupCommitter {
            jobs,
            stopped: Arc::new(Mutex::new(Some(stopped))),
            stats,
        })
    }

    /// Batches and writes run so far.
    pub fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
        }
    }

    /// Writes waiting in the queue for a batch (not counting the batch running).
    pub fn queued(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Queues `write`, waits for its batch to commit and returns its value.
    ///
    /// `write` runs on the writer thread inside the batch's transaction and sees the writes
    /// queued before it. It may run twice (see the module docs), so it must have no effect
    /// outside the database. It must be short and must not block on anything but the
    /// database: every caller of the batch waits for it. An error (or a panic) rolls back
    /// only this write.
    pub async fn write<T, F>(&self, write: F) -> Result<T, WriteError>
    where
        T: Send + 'static,
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T, WriteError>>();
        let job = Job::Write(Box::new(Queued {
            write,
            outcome: None,
            answer,
        }));
        self.jobs.send(job).await.map_err(|_| WriteError::Closed)?;
        answered.await.unwrap_or(Err(WriteError::Closed))
    }

    /// Commits what is queued, stops the writer and waits for it (its connection is closed
    /// when this returns). Later writes fail with [`WriteError::Closed`]. Idempotent.
    pub async fn close(&self) {
        // Fails only when the writer has stopped already.
        let _ = self.jobs.send(Job::Stop).await;
        let stopped = self
            .stopped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(stopped) = stopped {
            let _ = stopped.await;
        }
    }
}

fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection, OpenError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenError::NotWal(mode));
    }
    // FULL: a commit is on disk before its callers hear of it.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Statement journals (and any temporary table) in memory, not in temporary files.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database refused WAL mode (it stays in {0} mode)")]
    NotWal(String),
}

fn writer_loop(conn: &Connection, max_batch: usize, mut rx: mpsc::Receiver<Job>, stats: &Counters) {
    let mut batch: Vec<Box<dyn QueuedWrite>> = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        match first {
            Job::Write(write) => batch.push(write),
            // Refuse new writes; what is queued is still received (and committed) below.
            Job::Stop => rx.close(),
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Job::Write(write)) => batch.push(write),
                Ok(Job::Stop) => rx.close(),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        run_batch(conn, &mut batch);
    }
    tracing::debug!("database writer stopped");
}

/// Runs `batch` in one transaction and answers every caller after the commit: first without
/// savepoints, and if a write fails, again from the start with one savepoint per write.
fn run_batch(conn: &Connection, batch: &mut Vec<Box<dyn QueuedWrite>>) {
    let size = batch.len();
    let started = std::time::Instant::now();
    let committed = match run_optimistically(conn, batch) {
        Ok(committed) => committed,
        Err(WriteFailed) => {
            tracing::debug!(
                writes = size,
                "a write failed; running the batch with savepoints"
            );
            run_with_savepoints(conn, batch)
        }
    }
    .map_err(|e| {
        roll_back(conn);
        Arc::new(e)
    });
    match &committed {
        // How long the whole batch took: with the batch rate, how busy the writer is; and
        // how much of it the commit (the fsync of the WAL, now and then a checkpoint) took.
        Ok(commit_took) => tracing::debug!(
            writes = size,
            micros = micros(started.elapsed()),
            commit_micros = micros(*commit_took),
            "batch committed"
        ),
        Err(e) => tracing::warn!(error = %e, size, "committing a batch of writes failed"),
    }
    let committed = committed.map(|_| ());
    for write in batch.drain(..) {
        write.answer(committed.clone());
    }
}

fn micros(took: Duration) -> u64 {
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX)
}

/// Commits the open transaction; returns how long that took.
fn commit(conn: &Connection) -> rusqlite::Result<Duration> {
    let started = std::time::Instant::now();
    execute(conn, "COMMIT")?;
    Ok(started.elapsed())
}

/// A write of an optimistic run failed: its transaction is rolled back, run it again.
struct WriteFailed;

/// Runs every write of `batch` in one transaction and commits; `Err` when a write failed (the
/// transaction is then rolled back).
fn run_optimistically(
    conn: &Connection,
    batch: &mut [Box<dyn QueuedWrite>],
) -> Result<rusqlite::Result<Duration>, WriteFailed> {
    if let Err(e) = execute(conn, "BEGIN IMMEDIATE") {
        return Ok(Err(e));
    }
    for write in batch.iter_mut() {
        if !write.run(conn) {
            roll_back(conn);
            return Err(WriteFailed);
        }
    }
    Ok(commit(conn))
}

/// Runs every write of `batch` in its own savepoint of one transaction, so a failing write is
/// rolled back alone (its caller gets its error), and commits.
fn run_with_savepoints(
    conn: &Connection,
    batch: &mut [Box<dyn QueuedWrite>],
) -> rusqlite::Result<Duration> {
    execute(conn, "BEGIN IMMEDIATE")?;
    for write in batch.iter_mut() {
        execute(conn, "SAVEPOINT write")?;
        if !write.run(conn) {
            execute(conn, "ROLLBACK TO write")?;
        }
        execute(conn, "RELEASE write")?;
    }
    commit(conn)
}

fn execute(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Rolls back the open transaction, if there is one.
fn roll_back(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::warn!(error = %e, "rolling back a batch of writes failed");
        }
    }
}
