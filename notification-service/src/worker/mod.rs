//! Background work: the email worker that drains the durable job queue, and the periodic
//! cleanup of expired deduplication records.

mod cleanup;
mod leases;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng as _;
use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use webhook_common::outcome_retry::{retry_while_leased, Backoff};

pub use cleanup::run_cleanup;

use crate::config::WorkerSettings;
use crate::mailer::{Email, MailError, Mailer};
use crate::store::{ClaimedJob, Store, WriteError};
use leases::{HeldLease, HeldLeases};

/// First pause before retrying a failed outcome write (or claim); doubles up to
/// [`RECORD_RETRY_MAX`] (the poll interval for claims).
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
    /// Handed back unsent: shutdown, or its lease ran too low to start a send safely.
    Released,
    /// The outcome could not be recorded (lease lost, or the database failed until the
    /// lease ran out); the lease expires and the job is tried again.
    Unrecorded,
}

impl JobOutcome {
    /// The `outcome` label of `emails_sent_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Sent => "sent",
            JobOutcome::Retrying => "retrying",
            JobOutcome::Failed => "failed",
            JobOutcome::Released => "released",
            JobOutcome::Unrecorded => "unrecorded",
        }
    }
}

/// `emails_sent_total{outcome}`: email jobs processed, by [`JobOutcome`].
pub const EMAILS_SENT_TOTAL: &str = "emails_sent_total";

/// Sends queued emails: claims due jobs from the database under expiring leases and sends
/// at most `concurrency` at a time.
///
/// Delivery is at-least-once: a job whose worker dies keeps its lease until it expires (at
/// most `lease` after the worker's last renewal) and is then claimed again. Every attempt of
/// one notification carries the same Message-ID (see [`Email::message_id`]).
#[derive(Clone)]
pub struct EmailWorker {
    store: Store,
    mailer: Arc<dyn Mailer>,
    settings: WorkerSettings,
    /// Signalled by the intake after its write has committed (and on PostgreSQL by the
    /// listener, for jobs committed on any replica), so an idle worker starts at once
    /// instead of at its next poll. `Notify` keeps one wake-up if nobody is waiting yet,
    /// so a job committed while the worker is busy is not missed.
    wake: Arc<Notify>,
    /// The leases of the jobs this worker (every clone of it) holds right now. The renewal
    /// extends them every `lease / 5`; a job's task checks its lease before it sends, and
    /// stops retrying its outcome write when the lease is over (someone else may own the
    /// job by then).
    leases: Arc<HeldLeases>,
    /// Up while [`EmailWorker::run`] runs, for readiness.
    liveness: webhook_common::telemetry::Liveness,
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
            leases: Arc::default(),
            liveness: webhook_common::telemetry::Liveness::new(),
        }
    }

    /// Reports whether [`EmailWorker::run`] runs through `flag` (`GET /readyz` reads it).
    pub fn with_liveness(mut self, flag: webhook_common::telemetry::Liveness) -> Self {
        self.liveness = flag;
        self
    }

    /// Claims one batch of due jobs (at most `concurrency`, and at most `batch_size`) and
    /// processes it to the end, renewing its leases meanwhile. Returns how many jobs it
    /// claimed. For tests and tools that drive the worker.
    pub async fn run_once(&self) -> Result<usize, WriteError> {
        let limit = self.settings.concurrency.min(self.settings.batch_size);
        let jobs = self
            .store
            .claim_due(limit, self.settings.lease, self.settings.max_attempts)
            .await?;
        let claimed = jobs.len();
        let never = CancellationToken::new();
        let mut set = JoinSet::new();
        for job in jobs {
            let lease = self.leases.hold(&job);
            let worker = self.clone();
            let never = never.clone();
            set.spawn(async move { worker.process(job, lease, never).await });
        }
        let all_done = async { while set.join_next().await.is_some() {} };
        tokio::select! {
            () = all_done => {},
            () = self.renew_leases(&never) => {},
        }
        Ok(claimed)
    }

    /// Runs [`EmailWorker::run_once`] until no job is due. Jobs waiting for a later retry
    /// are left for later.
    pub async fn drain(&self) -> Result<usize, WriteError> {
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
    /// finish for up to the shutdown grace period, and releases (unclaims) the rest. It
    /// renews the leases of the jobs it holds until the last one is done.
    pub async fn run(self, shutdown: CancellationToken) {
        let _running = self.liveness.mark_running();
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let renewal_stop = CancellationToken::new();
        let renewal = tokio::spawn({
            let worker = self.clone();
            let stop = renewal_stop.clone();
            async move { worker.renew_leases(&stop).await }
        });
        // PostgreSQL: a job committed on any replica wakes this worker at once, not at its
        // next poll (SQLite: one process, whose intake wakes it directly).
        let listener_stop = CancellationToken::new();
        let listener = self
            .store
            .spawn_job_listener(self.wake.clone(), listener_stop.clone());
        tracing::info!(
            concurrency = self.settings.concurrency,
            batch_size = self.settings.batch_size,
            lease_ms = self.settings.lease.as_millis() as u64,
            "email worker started"
        );
        let mut claim_backoff = RECORD_RETRY_FIRST;
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            // As many jobs as there are free slots (up to the batch size): under load many
            // finish per commit, and one claim refills all their slots.
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
                    claim_backoff = RECORD_RETRY_FIRST;
                    drop(held);
                    self.idle(&shutdown).await;
                }
                Ok(jobs) => {
                    claim_backoff = RECORD_RETRY_FIRST;
                    let all_due_taken = jobs.len() < held.len();
                    for (job, permit) in jobs.into_iter().zip(held.drain(..)) {
                        // Held before the task starts, so the next renewal includes it.
                        let lease = self.leases.hold(&job);
                        let worker = self.clone();
                        let hard_stop = hard_stop.clone();
                        tracker.spawn(async move {
                            worker.process(job, lease, hard_stop).await;
                            drop(permit);
                        });
                    }
                    if all_due_taken {
                        // Fewer than asked: nothing else was due, so another claim now would
                        // come back empty. New jobs wake the worker (`Notify` keeps the
                        // wake-up of a commit that lands before `idle` waits).
                        drop(held);
                        self.idle(&shutdown).await;
                    }
                }
                Err(e) if e.is_closed() => {
                    tracing::warn!("the database is closed; the email worker stops claiming");
                    break;
                }
                Err(e) => {
                    drop(held);
                    tracing::error!(error = %e, retry_in_ms = claim_backoff.as_millis() as u64, "claiming email jobs failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => {},
                        () = tokio::time::sleep(claim_backoff) => {},
                    }
                    claim_backoff = (claim_backoff * 2).min(self.settings.poll_interval);
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
        renewal_stop.cancel();
        if let Err(e) = renewal.await {
            tracing::error!(error = %e, "the lease renewal task failed");
        }
        listener_stop.cancel();
        if let Some(listener) = listener {
            if let Err(e) = listener.await {
                tracing::error!(error = %e, "the wake-up listener task failed");
            }
        }
        tracing::info!("email worker stopped");
    }

    /// Waits for new work: a wake-up from the intake, the next due job, the poll interval, or
    /// shutdown, whichever comes first.
    async fn idle(&self, shutdown: &CancellationToken) {
        let mut wait = self.settings.poll_interval;
        if let Ok(Some(due)) = self.store.next_due_at().await {
            // Already due (a claim elsewhere passed it over): go again without waiting out
            // the poll interval.
            let until_due =
                Duration::try_from(due - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO);
            wait = wait.min(until_due);
        }
        // Never spin, even if a due job cannot be claimed for some reason.
        wait = wait.max(Duration::from_millis(10));
        tokio::select! {
            () = shutdown.cancelled() => {},
            () = self.wake.notified() => {},
            () = tokio::time::sleep(wait) => {},
        }
    }

    /// Every `lease / 5` until `stop`, extends the leases of the jobs this worker holds, all
    /// in one write. A failed renewal is only logged: each job goes by the expiry it knows,
    /// and a job whose lease runs low is not sent (see [`EmailWorker::process`]).
    async fn renew_leases(&self, stop: &CancellationToken) {
        let mut every = tokio::time::interval(self.settings.renew_interval());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await; // the first tick is immediate; fresh claims need no renewal
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {},
            }
            let held = self.leases.held();
            if held.is_empty() {
                continue;
            }
            match self.store.renew_leases(held, self.settings.lease).await {
                Ok(renewed) => self.leases.extend(&renewed),
                Err(e) => tracing::warn!(error = %e, "renewing the leases of email jobs failed"),
            }
        }
    }

    /// Sends one claimed job and records the outcome.
    async fn process(
        &self,
        job: ClaimedJob,
        lease: HeldLease,
        hard_stop: CancellationToken,
    ) -> JobOutcome {
        // `trace_id`: the one the webhook arrived with, so the job's lines join the sender's
        // attempts and the intake's request in one trace; left out when it came without.
        let span = tracing::info_span!(
            "email_job",
            notification_id = %job.id,
            attempt = job.attempts,
            trace_id = tracing::field::Empty,
        );
        if let Some(trace_id) = &job.trace_id {
            span.record("trace_id", trace_id.as_str());
        }
        async move {
            let email = Email {
                notification_id: job.id,
                to: job.to.clone(),
                subject: job.subject.clone(),
                body: job.body.clone(),
            };
            // A send must end inside the lease, or another worker could claim the job while
            // it is still being sent. Sends are cut off after `send_limit`, so one may only
            // start while the lease (as last renewed) outlasts that. A fresh claim always
            // does; a job whose renewals failed may not, and goes back to the queue.
            let result = if lease.remaining() <= self.settings.send_limit() {
                tracing::warn!(
                    lease_left_ms = lease.remaining().as_millis() as u64,
                    "lease too short to send safely; handing the job back"
                );
                None
            } else {
                tokio::select! {
                    () = hard_stop.cancelled() => None,
                    r = tokio::time::timeout(self.settings.send_limit(), self.mailer.send(&email)) => Some(
                        r.unwrap_or_else(|_| Err(MailError::Transient("send timed out".into())))
                    ),
                }
            };
            let recorded = match result {
                None => self
                    .record(&lease, || self.store.release(&job))
                    .await
                    .map(|ok| (ok, JobOutcome::Released)),
                Some(Ok(())) => self
                    .record(&lease, || self.store.mark_sent(&job))
                    .await
                    .map(|ok| (ok, JobOutcome::Sent)),
                Some(Err(e)) => {
                    let give_up = matches!(e, MailError::Permanent(_))
                        || job.attempts >= self.settings.max_attempts;
                    let message = e.to_string();
                    if give_up {
                        tracing::warn!(error = %message, "email failed for good");
                        self.record(&lease, || self.store.mark_failed(&job, &message))
                            .await
                            .map(|ok| (ok, JobOutcome::Failed))
                    } else {
                        let delay = self.backoff(job.attempts);
                        tracing::info!(error = %message, retry_in_ms = delay.as_millis() as u64, "email failed; will retry");
                        let retry_at = OffsetDateTime::now_utc() + delay;
                        self.record(&lease, || self.store.schedule_retry(&job, retry_at, &message))
                            .await
                            .map(|ok| (ok, JobOutcome::Retrying))
                    }
                }
            };
            let outcome = match recorded {
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
            };
            metrics::counter!(EMAILS_SENT_TOTAL, "outcome" => outcome.as_str()).increment(1);
            outcome
        }
        .instrument(span)
        .await
    }

    /// Runs `write` (recording a job's outcome) until it succeeds or the job's lease ends.
    /// A database hiccup right after a successful send must not turn into a second email:
    /// while the lease holds nobody else may send the job, so keep trying that long. The
    /// renewal keeps extending the lease meanwhile if the database lets it, so each pause is
    /// at most half of what is left, and the retries stop only once the lease is really over.
    async fn record<F, Fut>(&self, lease: &HeldLease, write: F) -> Result<bool, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool, WriteError>>,
    {
        let backoff = Backoff {
            first: RECORD_RETRY_FIRST,
            max: RECORD_RETRY_MAX,
        };
        // Shutdown has closed the store: nothing will succeed; the lease expires.
        retry_while_leased(
            "the email job outcome",
            backoff,
            || lease.remaining(),
            WriteError::is_closed,
            write,
        )
        .await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailer::RecordingMailer;
    use crate::store::tests::TestDb;
    use crate::store::{IncomingWebhook, OrderEmail, OrderEventKind};
    use uuid::Uuid;

    #[tokio::test]
    async fn sqlite_a_job_whose_lease_is_shorter_than_the_send_limit_is_handed_back_unsent() {
        let db = TestDb::sqlite().await;
        a_job_whose_lease_is_shorter_than_the_send_limit_is_handed_back_unsent(&db).await;
        db.close().await;
    }

    #[tokio::test]
    async fn postgres_a_job_whose_lease_is_shorter_than_the_send_limit_is_handed_back_unsent() {
        let Some(db) = TestDb::postgres("lease_shorter_than_send_limit").await else {
            return;
        };
        a_job_whose_lease_is_shorter_than_the_send_limit_is_handed_back_unsent(&db).await;
        db.close().await;
    }

    /// The pre-send check: a job whose lease (as last renewed) is shorter than the send
    /// limit is handed back unsent, with its attempt refunded, instead of being sent with a
    /// lease that could run out mid-send.
    async fn a_job_whose_lease_is_shorter_than_the_send_limit_is_handed_back_unsent(db: &TestDb) {
        let store = db.store();
        let order_id = Uuid::now_v7();
        store
            .record_webhook(&IncomingWebhook {
                webhook_id: "msg_lease".into(),
                event_type: "order.paid".into(),
                event_at: OffsetDateTime::now_utc(),
                email: Some(OrderEmail {
                    kind: OrderEventKind::Paid,
                    order_id,
                    to: "ada@example.com".into(),
                    subject: "Order confirmed".into(),
                    body: "Thanks".into(),
                }),
                trace_id: None,
            })
            .await
            .unwrap();
        let mailer = RecordingMailer::new();
        let settings = WorkerSettings::default();
        let worker = EmailWorker::new(
            store.clone(),
            Arc::new(mailer.clone()),
            settings.clone(),
            Arc::new(Notify::new()),
        );
        // Held with a lease far below the worker's send limit, as after failed renewals.
        let short = settings.send_limit() / 2;
        let job = store.claim_due(1, short, 8).await.unwrap().pop().unwrap();
        let lease = worker.leases.hold(&job);
        let outcome = worker.process(job, lease, CancellationToken::new()).await;

        assert_eq!(outcome, JobOutcome::Released);
        assert!(mailer.sent().is_empty());
        assert!(worker.leases.held().is_empty(), "no lease left to renew");
        let again = store.claim_due(1, settings.lease, 8).await.unwrap();
        assert_eq!(again.len(), 1, "due again at once");
        assert_eq!(again[0].attempts, 1, "the unstarted attempt is refunded");
    }
}
