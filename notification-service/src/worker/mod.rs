//! Background work: the email worker that drains the durable job queue, and the periodic
//! cleanup of expired deduplication records.

mod cleanup;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

pub use cleanup::run_cleanup;

use crate::config::WorkerSettings;
use crate::mailer::{Email, MailError, Mailer};
use crate::store::{ClaimedJob, Store};

/// First pause before retrying a failed outcome write; doubles up to [`RECORD_RETRY_MAX`].
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(50);
/// Longest pause between outcome write attempts.
const RECORD_RETRY_MAX: Duration = Duration::from_secs(2);

/// What happened to one claimed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Sent and recorded as sent.
    Sent,
    /// Failed this time; another attempt is scheduled.
    Retrying,
    /// Failed for good (permanent error or attempts exhausted); status `failed`.
    Failed,
    /// Handed back unsent because of shutdown.
    Released,
    /// The outcome could not be recorded (lease lost, or the database failed until the
    /// lease ran out); the lease expires and the job is tried again.
    Unrecorded,
}

/// Sends queued emails: claims due jobs from the database under expiring leases and sends
/// at most `concurrency` at a time.
///
/// Delivery is at-least-once: a job whose worker dies keeps its lease until it expires and
/// is then claimed again. Every attempt of one notification carries the same Message-ID
/// (see [`Email::message_id`]).
#[derive(Clone)]
pub struct EmailWorker {
    store: Store,
    mailer: Arc<dyn Mailer>,
    settings: WorkerSettings,
    /// Signalled by the intake after it commits a job, so an idle worker starts at once
    /// instead of at its next poll. `Notify` keeps one wake-up if nobody is waiting yet,
    /// so a job committed while the worker is busy is not missed.
    wake: Arc<Notify>,
}

impl EmailWorker {
    /// A worker over `store` sending with `mailer`; `wake` is shared with the intake.
    pub fn new(
        store: Store,
        mailer: Arc<dyn Mailer>,
        settings: WorkerSettings,
        wake: Arc<Notify>,
    ) -> Self {
        EmailWorker {
            store,
            mailer,
            settings,
            wake,
        }
    }

    /// Claims one batch of due jobs (at most `concurrency`) and processes it to the end.
    /// Returns how many jobs it claimed. For tests and tools that drive the worker.
    pub async fn run_once(&self) -> Result<usize, sqlx::Error> {
        let limit = self.settings.concurrency.min(self.settings.batch_size);
        let jobs = self
            .store
            .claim_due(limit, self.settings.lease, self.settings.max_attempts)
            .await?;
        let claimed = jobs.len();
        let never = CancellationToken::new();
        let mut set = JoinSet::new();
        for job in jobs {
            let worker = self.clone();
            let never = never.clone();
            set.spawn(async move { worker.process(job, never).await });
        }
        while set.join_next().await.is_some() {}
        Ok(claimed)
    }

    /// Runs [`EmailWorker::run_once`] until no job is due. Jobs waiting for a later retry
    /// are left for later.
    pub async fn run_until_idle(&self) -> Result<usize, sqlx::Error> {
        let mut total = 0;
        loop {
            let n = self.run_once().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Runs until `shutdown` is cancelled. Then it stops claiming, lets sends in flight
    /// finish for up to the shutdown grace period, and releases (unclaims) the rest.
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        tracing::info!(
            concurrency = self.settings.concurrency,
            "email worker started"
        );
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let mut held: Vec<OwnedSemaphorePermit> = vec![first];
            while held.len() < self.settings.batch_size {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => held.push(p),
                    Err(_) => break,
                }
            }
            match self
                .store
                .claim_due(held.len(), self.settings.lease, self.settings.max_attempts)
                .await
            {
                Ok(jobs) if jobs.is_empty() => {
                    drop(held);
                    self.idle(&shutdown).await;
                }
                Ok(jobs) => {
                    for (job, permit) in jobs.into_iter().zip(held.drain(..)) {
                        let worker = self.clone();
                        let hard_stop = hard_stop.clone();
                        tracker.spawn(async move {
                            worker.process(job, hard_stop).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    drop(held);
                    tracing::error!(error = %e, "claiming email jobs failed; retrying after the poll interval");
                    tokio::select! {
                        () = shutdown.cancelled() => {},
                        () = tokio::time::sleep(self.settings.poll_interval) => {},
                    }
                }
            }
        }
        tracker.close();
        let in_flight = tracker.len();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                "email worker stopping; letting sends in flight finish"
            );
        }
        if tokio::time::timeout(self.settings.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over; releasing unfinished email jobs");
            hard_stop.cancel();
            tracker.wait().await;
        }
        tracing::info!("email worker stopped");
    }

    /// Waits for new work: a wake-up from the intake, the next due job, the poll interval, or
    /// shutdown, whichever comes first.
    async fn idle(&self, shutdown: &CancellationToken) {
        let mut wait = self.settings.poll_interval;
        if let Ok(Some(due)) = self.store.next_due_at().await {
            let until_due = due - OffsetDateTime::now_utc();
            if let Ok(until_due) = Duration::try_from(until_due) {
                wait = wait.min(until_due);
            }
        }
        // Never spin, even if a due job cannot be claimed for some reason.
        wait = wait.max(Duration::from_millis(10));
        tokio::select! {
            () = shutdown.cancelled() => {},
            () = self.wake.notified() => {},
            () = tokio::time::sleep(wait) => {},
        }
    }

    /// Sends one claimed job and records the outcome.
    async fn process(&self, job: ClaimedJob, hard_stop: CancellationToken) -> JobOutcome {
        let span =
            tracing::info_span!("email_job", notification_id = %job.id, attempt = job.attempts);
        async move {
            let email = Email {
                notification_id: job.id,
                to: job.to.clone(),
                subject: job.subject.clone(),
                body: job.body.clone(),
            };
            // A send must end well inside the lease, or another worker could claim the job
            // while it is still being sent (config validation keeps the send timeout below).
            let result = tokio::select! {
                () = hard_stop.cancelled() => None,
                r = tokio::time::timeout(self.settings.send_limit(), self.mailer.send(&email)) => Some(
                    r.unwrap_or_else(|_| Err(MailError::Transient("send timed out".into())))
                ),
            };
            let recorded = match result {
                None => self
                    .record(&job, || self.store.release(&job))
                    .await
                    .map(|ok| (ok, JobOutcome::Released)),
                Some(Ok(())) => self
                    .record(&job, || self.store.mark_sent(&job))
                    .await
                    .map(|ok| (ok, JobOutcome::Sent)),
                Some(Err(e)) => {
                    let give_up = matches!(e, MailError::Permanent(_))
                        || job.attempts >= self.settings.max_attempts;
                    let message = e.to_string();
                    if give_up {
                        tracing::warn!(error = %message, "email failed for good");
                        self.record(&job, || self.store.mark_failed(&job, &message))
                            .await
                            .map(|ok| (ok, JobOutcome::Failed))
                    } else {
                        let delay = self.backoff(job.attempts);
                        tracing::info!(error = %message, retry_in_ms = delay.as_millis() as u64, "email failed; will retry");
                        let retry_at = OffsetDateTime::now_utc() + delay;
                        self.record(&job, || self.store.schedule_retry(&job, retry_at, &message))
                            .await
                            .map(|ok| (ok, JobOutcome::Retrying))
                    }
                }
            };
            match recorded {
                Ok((true, outcome)) => {
                    if outcome == JobOutcome::Sent {
                        tracing::debug!("email job done");
                    }
                    outcome
                }
                Ok((false, _)) => {
                    tracing::warn!("lease lost before the outcome was recorded; the job will be retried");
                    JobOutcome::Unrecorded
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not record the email job outcome; the job will be retried");
                    JobOutcome::Unrecorded
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Runs `write` (recording a job's outcome) until it succeeds or the job's lease ends.
    /// A database hiccup right after a successful send must not turn into a second email:
    /// while the lease holds nobody else may send the job, so keep trying that long.
    async fn record<F, Fut>(&self, job: &ClaimedJob, mut write: F) -> Result<bool, sqlx::Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, sqlx::Error>>,
    {
        let mut pause = RECORD_RETRY_FIRST;
        loop {
            match write().await {
                Ok(done) => return Ok(done),
                Err(e) => {
                    let left = Duration::try_from(job.lease_until - OffsetDateTime::now_utc())
                        .unwrap_or(Duration::ZERO);
                    if left <= pause {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "recording the email job outcome failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RECORD_RETRY_MAX);
                }
            }
        }
    }

    /// Exponential backoff with jitter: base * 2^(attempt-1), capped, then a random point in
    /// its upper half so retries of many jobs do not arrive in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .settings
            .retry_base
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
        let capped = exp.min(self.settings.retry_max);
        let half = capped / 2;
        half + half.mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}
