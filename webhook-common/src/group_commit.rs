//! Group commit: one writer per database commits the writes of many callers in one
//! transaction, so one fsync serves many requests and nobody waits in SQLite's busy handler.
//!
//! A caller hands its write (a closure over the transaction's connection) to the
//! [`GroupCommitter`] and waits. The writer task takes everything queued (up to the batch
//! limit), runs each write inside its own savepoint, commits once, and only then answers each
//! caller: an `Ok` means the write is committed with whatever durability the database gives a
//! commit (`synchronous=FULL` for our SQLite, the defaults for PostgreSQL). A write that fails
//! on its own is rolled back to its savepoint and its caller gets the error; the others in the
//! batch are unaffected. If the commit itself fails, every caller of that batch gets an error
//! and nothing of the batch is stored.
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

/// What the writer calls once the batch's fate is known: `Ok` after the commit, or the
/// batch's error.
type Reply = Box<dyn FnOnce(Result<(), Arc<sqlx::Error>>) + Send>;

/// One queued write: runs on the transaction's connection (inside a savepoint) and returns
/// how to answer its caller once the batch commits; given the batch's error instead when the
/// transaction could not even begin.
type Job<DB> = Box<
    dyn for<'c> FnOnce(
            Result<&'c mut <DB as Database>::Connection, Arc<sqlx::Error>>,
        ) -> BoxFuture<'c, Reply>
        + Send,
>;

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
    /// `write` runs on the writer task inside a savepoint of the batch's transaction: it sees
    /// the writes queued before it, and its own failure rolls back only itself. It must not
    /// panic and should be short (every caller of the batch waits for it).
    pub async fn write<T, F>(&self, write: F) -> Result<T, WriteError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut DB::Connection) -> BoxFuture<'c, Result<T, sqlx::Error>>
            + Send
            + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T, WriteError>>();
        let job: Job<DB> = Box::new(move |conn: Result<&mut DB::Connection, _>| {
            Box::pin(async move {
                let conn = match conn {
                    Ok(conn) => conn,
                    Err(batch) => {
                        let _ = answer.send(Err(WriteError::Batch(batch)));
                        let nothing: Reply = Box::new(|_| {});
                        return nothing;
                    }
                };
                let outcome = async {
                    let mut savepoint = conn.begin().await?;
                    match write(&mut savepoint).await {
                        Ok(value) => {
                            savepoint.commit().await?;
                            Ok(value)
                        }
                        Err(e) => {
                            savepoint.rollback().await?;
                            Err(e)
                        }
                    }
                }
                .await;
                let reply: Reply = match outcome {
                    Ok(value) => Box::new(move |batch: Result<(), Arc<sqlx::Error>>| {
                        let _ = answer.send(batch.map(|()| value).map_err(WriteError::Batch));
                    }),
                    Err(e) => Box::new(move |_| {
                        let _ = answer.send(Err(WriteError::Database(e)));
                    }),
                };
                reply
            })
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

/// Runs `batch` in one transaction and answers every caller after the commit.
async fn run_batch<DB: Database>(pool: &Pool<DB>, begin: &'static str, batch: &mut Vec<Job<DB>>) {
    let size = batch.len();
    let mut tx = match pool.begin_with(begin).await {
        Ok(tx) => tx,
        Err(e) => {
            tracing::warn!(error = %e, size, "beginning a batch of writes failed");
            let e = Arc::new(e);
            // Each caller learns the batch failed; none of their writes ran.
            for job in batch.drain(..) {
                let nothing_to_answer = job(Err(e.clone())).await;
                nothing_to_answer(Err(e.clone()));
            }
            return;
        }
    };
    let mut replies: Vec<Reply> = Vec::with_capacity(size);
    for job in batch.drain(..) {
        replies.push(job(Ok(&mut tx)).await);
    }
    let committed = tx.commit().await.map_err(Arc::new);
    match &committed {
        Ok(()) => tracing::debug!(writes = size, "batch committed"),
        Err(e) => tracing::warn!(error = %e, size, "committing a batch of writes failed"),
    }
    for reply in replies {
        reply(committed.clone());
    }
}
