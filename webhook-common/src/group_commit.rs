//! Group commit: one writer per database commits the writes of many callers in one
//! transaction, so one fsync serves many requests and nobody waits in SQLite's busy handler.
//!
//! A caller hands its write (a closure over the transaction's connection) to the
//! [`GroupCommitter`] and waits. The writer task takes everything queued (up to the batch
//! limit), runs the writes one after the other in one transaction, commits once, and only then
//! answers each caller: an `Ok` means the write is committed with whatever durability the
//! database gives a commit (`synchronous=FULL` for our SQLite, the defaults for PostgreSQL).
//!
//! A batch runs optimistically, without a savepoint per write: each savepoint costs two more
//! round trips to the database, which is most of what a small write costs. If a write fails,
//! the whole transaction is rolled back and the batch is run again with every write in its own
//! savepoint, so the failing write is rolled back alone, its caller gets the error, and the
//! others commit. That is why a write is a re-runnable closure (`Fn`): it may run twice, and
//! only its last run counts. If the commit itself fails, every caller of the batch gets an
//! error and nothing of the batch is stored.
//!
//! There is no artificial delay: while one batch commits (the fsync), new writes queue up and
//! become the next batch, so batches grow with load and a lone write commits at once.
//! The queue is bounded: when it is full, callers wait (backpressure), nobody is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sqlx::{Connection as _, Database, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A boxed future that borrows the writer's connection for `'c`.
pub type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// Why a write handed to the [`GroupCommitter`] did not commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The write itself failed and was rolled back; nothing of it is stored.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The batch it was part of could not begin or commit; nothing of it is stored.
    #[error("committing a batch of writes failed: {0}")]
    Batch(Arc<sqlx::Error>),
    /// The writer has stopped (shutdown); the write was not attempted.
    #[error("the database writer has stopped")]
    Closed,
}

impl WriteError {
    /// The underlying database error, if there is one.
    pub fn sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            WriteError::Database(e) => Some(e),
            WriteError::Batch(e) => Some(e),
            WriteError::Closed => None,
        }
    }
}

/// A queued write, type-erased: it can be run (again) on the batch's connection, and answered
/// once the batch's fate is known.
trait QueuedWrite<DB: Database>: Send {
    /// Runs the write, keeping its value or error; says whether it succeeded.
    fn run<'c>(&'c mut self, conn: &'c mut DB::Connection) -> BoxFuture<'c, bool>;
    /// Answers the caller: the value of the last run if `batch` committed, else the error.
    fn answer(self: Box<Self>, batch: Result<(), Arc<sqlx::Error>>);
}

type Job<DB> = Box<dyn QueuedWrite<DB>>;

struct Queued<F, T> {
    write: F,
    /// The outcome of the last run; `None` before the first.
    outcome: Option<Result<T, sqlx::Error>>,
    answer: oneshot::Sender<Result<T, WriteError>>,
}

impl<DB, F, T> QueuedWrite<DB> for Queued<F, T>
where
    DB: Database,
    T: Send + 'static,
    F: for<'c> Fn(&'c mut DB::Connection) -> BoxFuture<'c, Result<T, sqlx::Error>> + Send + 'static,
{
    fn run<'c>(&'c mut self, conn: &'c mut DB::Connection) -> BoxFuture<'c, bool> {
        Box::pin(async move {
            let outcome = (self.write)(conn).await;
            let ok = outcome.is_ok();
            self.outcome = Some(outcome);
            ok
        })
    }

    fn answer(self: Box<Self>, batch: Result<(), Arc<sqlx::Error>>) {
        let reply = match (batch, self.outcome) {
            (Err(batch), _) => Err(WriteError::Batch(batch)),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Ok(()), Some(Err(e))) => Err(WriteError::Database(e)),
            // Not run: the batch failed before it (answered above), or the writer stopped.
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
}

impl Default for GroupCommitSettings {
    fn default() -> Self {
        GroupCommitSettings {
            max_batch: 256,
            queue: 1024,
        }
    }
}

/// The handle callers write through. Cheap to clone; every clone feeds the same writer task.
pub struct GroupCommitter<DB: Database> {
    jobs: mpsc::Sender<Job<DB>>,
    /// The writer task, taken (once) by [`GroupCommitter::close`] to wait for it.
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Tells the writer to finish what is queued and stop.
    stop: Arc<tokio::sync::Notify>,
    /// Counters the writer task updates after each batch.
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

impl<DB: Database> Clone for GroupCommitter<DB> {
    fn clone(&self) -> Self {
        GroupCommitter {
            jobs: self.jobs.clone(),
            task: self.task.clone(),
            stop: self.stop.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for GroupCommitter<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("queued", &(self.jobs.max_capacity() - self.jobs.capacity()))
            .finish_non_exhaustive()
    }
}

impl<DB: Database> GroupCommitter<DB> {
    /// Starts the writer task over `pool`. Each batch opens its transaction with `begin`
    /// (`"BEGIN IMMEDIATE"` for SQLite, so the write lock is taken up front; `"BEGIN"` for
    /// PostgreSQL). Must be called inside a tokio runtime.
    pub fn start(pool: Pool<DB>, begin: &'static str, settings: GroupCommitSettings) -> Self {
        let max_batch = settings.max_batch.max(1);
        let (jobs, rx) = mpsc::channel(settings.queue.max(1));
        let stop = Arc::new(tokio::sync::Notify::new());
        let stats = Arc::new(Counters::default());
        let task = tokio::spawn(writer_loop(
            pool,
            begin,
            max_batch,
            rx,
            stop.clone(),
            stats.clone(),
        ));
        GroupCommitter {
            jobs,
            task: Arc::new(Mutex::new(Some(task))),
            stop,
            stats,
        }
    }

    /// Batches and writes run so far.
    pub fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            writes: self.stats.writes.load(Ordering::Relaxed),
        }
    }

    /// Queues `write`, waits for its batch to commit and returns its value.
    ///
    /// `write` runs on the writer task in the batch's transaction: it sees the writes queued
    /// before it. It may run twice (see the module docs), so it must not move what it
    /// captures into its future (clone it) and must have no effect outside the database.
    /// Its failure rolls back only itself. It must not panic and should be short: every
    /// caller of the batch waits for it.
    pub async fn write<T, F>(&self, write: F) -> Result<T, WriteError>
    where
        T: Send + 'static,
        F: for<'c> Fn(&'c mut DB::Connection) -> BoxFuture<'c, Result<T, sqlx::Error>>
            + Send
            + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T, WriteError>>();
        let job: Job<DB> = Box::new(Queued {
            write,
            outcome: None,
            answer,
        });
        self.jobs.send(job).await.map_err(|_| WriteError::Closed)?;
        answered.await.unwrap_or(Err(WriteError::Closed))
    }

    /// Commits what is queued, stops the writer and waits for it. Later writes fail with
    /// [`WriteError::Closed`]. Idempotent.
    pub async fn close(&self) {
        self.stop.notify_one();
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the database writer task failed");
            }
        }
    }
}

async fn writer_loop<DB: Database>(
    pool: Pool<DB>,
    begin: &'static str,
    max_batch: usize,
    mut rx: mpsc::Receiver<Job<DB>>,
    stop: Arc<tokio::sync::Notify>,
    stats: Arc<Counters>,
) {
    let mut batch: Vec<Job<DB>> = Vec::with_capacity(max_batch);
    loop {
        let first = tokio::select! {
            biased;
            job = rx.recv() => job,
            () = stop.notified() => {
                // Refuse new writes, then commit whatever is already queued.
                rx.close();
                rx.recv().await
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .writes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        run_batch(&pool, begin, &mut batch).await;
    }
    tracing::debug!("database writer stopped");
}

/// Runs `batch` in one transaction and answers every caller after the commit: first without
/// savepoints, and if a write fails, again from the start with one savepoint per write.
async fn run_batch<DB: Database>(pool: &Pool<DB>, begin: &'static str, batch: &mut Vec<Job<DB>>) {
    let size = batch.len();
    let started = std::time::Instant::now();
    let committed = match run_optimistically(pool, begin, batch).await {
        Ok(committed) => committed,
        Err(()) => {
            tracing::debug!(
                writes = size,
                "a write failed; running the batch with savepoints"
            );
            run_with_savepoints(pool, begin, batch).await
        }
    };
    match &committed {
        // How long the whole batch took: with the batch rate, how busy the writer is.
        Ok(()) => tracing::debug!(
            writes = size,
            micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "batch committed"
        ),
        Err(e) => tracing::warn!(error = %e, size, "committing a batch of writes failed"),
    }
    for job in batch.drain(..) {
        job.answer(committed.clone());
    }
}

/// Runs every write of `batch` in one transaction and commits. `Err(())` when a write failed:
/// the transaction is rolled back (nothing of it stays) and the batch must be run again.
async fn run_optimistically<DB: Database>(
    pool: &Pool<DB>,
    begin: &'static str,
    batch: &mut [Job<DB>],
) -> Result<Result<(), Arc<sqlx::Error>>, ()> {
    let mut tx = match pool.begin_with(begin).await {
        Ok(tx) => tx,
        Err(e) => return Ok(Err(Arc::new(e))),
    };
    for job in batch.iter_mut() {
        if !job.run(&mut tx).await {
            if let Err(e) = tx.rollback().await {
                tracing::warn!(error = %e, "rolling back a failed batch failed");
            }
            return Err(());
        }
    }
    Ok(tx.commit().await.map_err(Arc::new))
}

/// Runs every write of `batch` in its own savepoint of one transaction, so a failing write is
/// rolled back alone (its caller gets its error), and commits.
async fn run_with_savepoints<DB: Database>(
    pool: &Pool<DB>,
    begin: &'static str,
    batch: &mut [Job<DB>],
) -> Result<(), Arc<sqlx::Error>> {
    let mut tx = pool.begin_with(begin).await.map_err(Arc::new)?;
    for job in batch.iter_mut() {
        let mut savepoint = tx.begin().await.map_err(Arc::new)?;
        if job.run(&mut savepoint).await {
            savepoint.commit().await.map_err(Arc::new)?;
        } else {
            savepoint.rollback().await.map_err(Arc::new)?;
        }
    }
    tx.commit().await.map_err(Arc::new)
}
