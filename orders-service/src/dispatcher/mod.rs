//! The background dispatcher: claims due deliveries from the database in batches and
//! attempts them with bounded concurrency until each is delivered or given up.
//!
//! It wakes as soon as an order's transaction commits (a [`Notify`]; on PostgreSQL also when
//! another replica commits work that is due now, through `LISTEN/NOTIFY`), when a retry or an
//! expired lease falls due, when a worker slot frees up, and at least every sweep interval.
//! Memory is bounded by the concurrency: at most that many deliveries are claimed and held.
//!
//! A lease covers one whole attempt and the recording of its outcome (`DISPATCH_LEASE` is at
//! least `WEBHOOK_TIMEOUT` + 5 s; 15 s by default), so a crashed process's deliveries are
//! taken over within one lease. An attempt starts only while its lease still covers the
//! attempt timeout, so no request goes out that could outlive its lease and overlap another
//! worker's attempt of the same delivery.

mod attempt;
mod metrics;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use uuid::Uuid;
use webhook_common::outcome_retry::{retry_while_leased, Backoff};

pub use attempt::{FORBIDDEN_TARGET, RESPONSE_PREFIX_BYTES};
use retry::RetryPolicy;

use crate::config::Config;
use crate::domain::{AttemptOutcome, DeliveryJob};
use crate::store::{now_ms, ClaimOnCreate, Claimed, Store};

/// How long to wait after a failing claim before trying again.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// How long released tasks get to give their leases back after the grace period.
const RELEASE_BOUND: Duration = Duration::from_secs(5);
/// The least a delivery that could not be loaded waits before it is tried again (the retry
/// schedule's delay, when longer, applies): a row that always fails to load must not spin
/// the loop, whatever the schedule. The default of [`DispatcherSettings::load_error_backoff`].
pub const LOAD_ERROR_BACKOFF: Duration = Duration::from_secs(60);
/// Pauses before recording an attempt's outcome again after a database error: 100 ms,
/// doubling up to 2 s, while the lease lasts.
const RECORD_RETRY: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(2),
};

/// The dispatcher's knobs, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    /// Attempts in flight at once.
    pub concurrency: u32,
    /// Attempts in flight to one endpoint at once (across every worker sharing the database).
    pub per_endpoint: u32,
    /// Most deliveries claimed by one query.
    pub batch_size: u32,
    /// Longest idle wait between sweeps.
    pub sweep_interval: Duration,
    /// How long a claim lasts.
    pub lease: Duration,
    /// How long shutdown waits for attempts in flight.
    pub shutdown_grace: Duration,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Retry spacing.
    pub retry: RetryPolicy,
    /// `ALLOW_PRIVATE_WEBHOOK_TARGETS`: when false, the SSRF guard checks every address
    /// connected to.
    pub allow_private_targets: bool,
    /// The least wait before a delivery that could not be loaded is tried again
    /// ([`LOAD_ERROR_BACKOFF`]; tests shorten it).
    pub load_error_backoff: Duration,
}

impl DispatcherSettings {
    /// The settings in `config`.
    pub fn from_config(config: &Config) -> Self {
        DispatcherSettings {
            concurrency: config.dispatch_concurrency,
            per_endpoint: config.per_endpoint_cap(),
            batch_size: config.dispatch_batch_size,
            sweep_interval: config.dispatch_sweep_interval,
            lease: config.dispatch_lease,
            shutdown_grace: config.http.shutdown_grace,
            timeout: config.webhook_timeout,
            retry: RetryPolicy {
                schedule: config.retry_schedule.clone(),
                jitter_percent: config.retry_jitter_percent,
                retry_after_max: config.retry_after_max,
            },
            allow_private_targets: config.allow_private_webhook_targets,
            load_error_backoff: LOAD_ERROR_BACKOFF,
        }
    }
}

/// Delivers webhooks. Cheap to clone; clones share the wake-up signal and worker slots.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
    /// Where handed-off jobs arrive; taken by [`Dispatcher::run`].
    handed_off: Arc<std::sync::Mutex<Option<mpsc::Receiver<HandedOff>>>>,
    /// The sending side, for [`Dispatcher::handoff`].
    hand_over: mpsc::Sender<HandedOff>,
}

/// A delivery claimed by an order's own transaction, with the slot reserved for it.
struct HandedOff {
    claimed: Claimed,
    permit: OwnedSemaphorePermit,
}

/// Lets the order handler claim a delivery in the order's own transaction and hand it
/// straight to the dispatcher: one commit fewer between an order and its webhook. It may do
/// so only while it holds a free dispatch slot ([`Handoff::reserve`]), so attempts in flight
/// stay within `DISPATCH_CONCURRENCY`; without one, the delivery is written pending and the
/// dispatcher claims it as usual. Cheap to clone.
#[derive(Clone)]
pub struct Handoff {
    slots: Arc<Semaphore>,
    /// Free slots below which new orders no longer take one.
    floor: usize,
    hand_over: mpsc::Sender<HandedOff>,
    claim: ClaimOnCreate,
}

/// A dispatch slot held for one handed-off delivery; given back when dropped.
#[derive(Debug)]
pub struct Reservation(OwnedSemaphorePermit);

impl Handoff {
    /// A free dispatch slot, if more than a quarter of them are free right now. The rest are
    /// left to the dispatcher's own claims, so a steady stream of new orders cannot starve
    /// retries, a backlog or the other endpoints of a fanned-out event.
    pub fn reserve(&self) -> Option<Reservation> {
        if self.slots.available_permits() <= self.floor {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok().map(Reservation)
    }

    /// What the order's transaction must do to claim for the dispatcher.
    pub fn claim_on_create(&self) -> ClaimOnCreate {
        self.claim
    }

    /// Hands a claim made by an order's transaction to the dispatcher, with its slot. Gives
    /// the claim back when the dispatcher has stopped (shutdown): the caller then releases
    /// its deliveries.
    pub fn hand_over(&self, claimed: Claimed, slot: Reservation) -> Result<(), Claimed> {
        self.hand_over
            .try_send(HandedOff {
                claimed,
                permit: slot.0,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(h) | mpsc::error::TrySendError::Closed(h) => {
                    h.claimed
                }
            })
    }
}

struct Inner {
    store: Store,
    client: reqwest::Client,
    settings: DispatcherSettings,
    /// Poked after an outbox write commits; `notify_one` keeps a permit if the loop is busy,
    /// so a wake-up between a claim and the next wait is not lost.
    wake: Arc<Notify>,
    /// One permit per attempt in flight; the loop claims no more rows than it holds permits.
    slots: Arc<Semaphore>,
    /// Poked when an attempt finishes, so the loop claims again and recomputes its wait.
    slot_freed: Notify,
    /// Up while [`Dispatcher::run`] runs, for readiness.
    liveness: webhook_common::telemetry::Liveness,
}

/// The lease of one claim, shared by the attempts it claimed.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Unix ms at which the claim's leases expire (`Claimed::lease_expires_at`).
    expires_at_ms: i64,
}

impl Lease {
    /// Time left on the lease.
    fn left(&self) -> Duration {
        Duration::from_millis(
            u64::try_from(self.expires_at_ms.saturating_sub(now_ms())).unwrap_or(0),
        )
    }
}

impl Dispatcher {
    /// A dispatcher over `store`, with its own pooled HTTP client.
    pub fn new(store: Store, settings: DispatcherSettings) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder();
        if !settings.allow_private_targets {
            // Every connection to a named host goes through the guard's resolver; a proxy
            // would connect on our behalf to an address the guard never saw, so none is used.
            builder = builder
                .dns_resolver(Arc::new(crate::ssrf::GuardedResolver))
                .no_proxy();
        }
        let client = builder
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("orders-service/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(settings.concurrency as usize)
            // Receivers close idle keep-alive connections (ours after HEADER_READ_TIMEOUT,
            // 10 s by default); dropping ours sooner avoids reusing one the server is closing,
            // which would cost the attempt a spurious connection error and a retry.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        let slots = Arc::new(Semaphore::new(settings.concurrency as usize));
        // Every message holds one of `concurrency` permits, so the channel never fills.
        let (hand_over, handed_off) = mpsc::channel(settings.concurrency.max(1) as usize);
        Ok(Dispatcher {
            handed_off: Arc::new(std::sync::Mutex::new(Some(handed_off))),
            hand_over,
            inner: Arc::new(Inner {
                store,
                client,
                settings,
                wake: Arc::new(Notify::new()),
                slots,
                slot_freed: Notify::new(),
                liveness: webhook_common::telemetry::Liveness::new(),
            }),
        })
    }

    /// Up while [`Dispatcher::run`] runs (`GET /readyz` reads it).
    pub fn liveness(&self) -> webhook_common::telemetry::Liveness {
        self.inner.liveness.clone()
    }

    /// The signal to poke (`notify_one`) after new deliveries commit.
    pub fn waker(&self) -> Arc<Notify> {
        self.inner.wake.clone()
    }

    /// The handle through which new orders hand their deliveries over (see [`Handoff`]).
    pub fn handoff(&self) -> Handoff {
        Handoff {
            slots: self.inner.slots.clone(),
            floor: self.inner.settings.concurrency as usize / 4,
            hand_over: self.hand_over.clone(),
            claim: ClaimOnCreate {
                lease_ms: self.inner.lease_ms(),
                per_endpoint: self.inner.settings.per_endpoint,
            },
        }
    }

    /// Claims one batch of due deliveries (at most the concurrency), attempts them all and
    /// returns how many were claimed. For tests and tools that drive the dispatcher by hand.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let limit = self
            .inner
            .settings
            .batch_size
            .min(self.inner.settings.concurrency);
        let claimed = self.claim(limit).await?;
        let count = claimed.jobs.len() + claimed.unloadable.len();
        let lease = Lease {
            expires_at_ms: claimed.lease_expires_at,
        };
        self.inner
            .record_unloadable(claimed.token, claimed.unloadable)
            .await;
        let mut set = JoinSet::new();
        let never = CancellationToken::new();
        for job in claimed.jobs {
            let inner = self.inner.clone();
            let never = never.clone();
            set.spawn(async move { inner.process(job, lease, never).await });
        }
        while set.join_next().await.is_some() {}
        Ok(count)
    }

    /// Runs [`Dispatcher::run_once`] until nothing is due; returns how many were claimed.
    pub async fn drain(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let n = self.run_once().await?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    async fn claim(&self, limit: u32) -> anyhow::Result<Claimed> {
        self.inner
            .store
            .claim_due(
                limit,
                self.inner.lease_ms(),
                self.inner.settings.per_endpoint,
            )
            .await
    }

    /// The background loop: runs until `shutdown` is cancelled, then lets attempts in flight
    /// finish within the grace period and gives back the leases of those that do not.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let _running = inner.liveness.mark_running();
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        tracing::info!(
            concurrency = inner.settings.concurrency,
            batch_size = inner.settings.batch_size,
            "dispatcher started"
        );
        let handed_off = self
            .handed_off
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        // Handed-off jobs arrive with their slots; a task of their own starts them, so they
        // never wait behind a claim (and the loop never waits for a slot they hold).
        let handoffs = handed_off.map(|rx| {
            tokio::spawn(inner.clone().run_handoffs(
                rx,
                tracker.clone(),
                hard_stop.clone(),
                shutdown.clone(),
            ))
        });
        // On PostgreSQL, work committed by any replica wakes this loop too (LISTEN/NOTIFY);
        // the sweep interval stays the backstop.
        let listener = inner
            .store
            .listen_for_work(inner.wake.clone(), shutdown.clone());
        while !shutdown.is_cancelled() {
            let free = inner.slots.available_permits();
            let limit = u32::try_from(free)
                .unwrap_or(u32::MAX)
                .min(inner.settings.batch_size);
            let mut wait = inner.settings.sweep_interval;
            if limit > 0 {
                let claimed_at_ms = now_ms();
                // The limit is read again when the claim runs on the writer: slots freed while
                // it waited for its batch are filled too. A new order may take one of them in
                // the meantime (a handoff); the job that then finds no slot is given back.
                let slots = inner.slots.clone();
                let batch = inner.settings.batch_size;
                let claim = inner.store.claim_due_with(
                    move || {
                        u32::try_from(slots.available_permits())
                            .unwrap_or(u32::MAX)
                            .min(batch)
                    },
                    inner.lease_ms(),
                    inner.settings.per_endpoint,
                );
                match claim.await {
                    Ok(claimed) => {
                        let any = !claimed.jobs.is_empty() || !claimed.unloadable.is_empty();
                        let lease = Lease {
                            expires_at_ms: claimed.lease_expires_at,
                        };
                        inner
                            .record_unloadable(claimed.token, claimed.unloadable)
                            .await;
                        for job in claimed.jobs {
                            let Ok(permit) = inner.slots.clone().try_acquire_owned() else {
                                // An order handed off its delivery and took the slot after
                                // the claim counted it: give the row back (due at once)
                                // rather than exceed the bound; the next claim takes it.
                                let _ = inner
                                    .store
                                    .release(job.delivery_id, job.claim_token, 0)
                                    .await;
                                continue;
                            };
                            let worker = inner.clone();
                            let stop = hard_stop.clone();
                            tracker.spawn(async move {
                                worker.process_with_slot(job, lease, stop, permit).await
                            });
                        }
                        if any {
                            // There may be more claimable right now (a claim can return
                            // fewer rows than its limit because of the per-endpoint cap).
                            continue;
                        }
                        wait = self.time_until_next_due(claimed_at_ms).await;
                    }
                    Err(e) => {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "claiming deliveries failed; will retry"
                        );
                        wait = ERROR_BACKOFF;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = inner.wake.notified() => {}
                // A finished attempt frees a slot and may have scheduled a retry sooner
                // than `wait`, so it is a reason to look again either way.
                () = inner.slot_freed.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(handoffs) = handoffs {
            if let Err(e) = handoffs.await {
                tracing::error!(error = %e, "the handoff task failed");
            }
        }
        if let Some(listener) = listener {
            if let Err(e) = listener.await {
                tracing::error!(error = %e, "the wake-up listener failed");
            }
        }
        tracker.close();
        tracing::info!(in_flight = tracker.len(), "dispatcher stopping");
        if tokio::time::timeout(inner.settings.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = tracker.len(),
                "attempts still running after the grace period; releasing their leases"
            );
            hard_stop.cancel();
            let _ = tokio::time::timeout(RELEASE_BOUND, tracker.wait()).await;
        }
        tracing::info!("dispatcher stopped");
    }

    /// How long to wait after a claim at `claimed_at_ms` (unix ms) that returned nothing.
    async fn time_until_next_due(&self, claimed_at_ms: i64) -> Duration {
        let sweep = self.inner.settings.sweep_interval;
        match self.inner.store.next_due_at().await {
            // Due already when the claim found nothing to take: its endpoint is at its
            // per-endpoint cap (a finishing attempt wakes the loop) or another replica took
            // it. Polling would spin, so wait for a wake-up or the sweep.
            Ok(Some(at)) if at <= claimed_at_ms => sweep,
            Ok(Some(at)) => {
                let ms = u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0);
                // The floor keeps a row that fell due between the claim and now from
                // turning this into a busy loop.
                Duration::from_millis(ms.max(2)).min(sweep)
            }
            Ok(None) => sweep,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "reading the next due time failed");
                ERROR_BACKOFF.min(sweep)
            }
        }
    }
}

impl Inner {
    fn lease_ms(&self) -> i64 {
        i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Records deliveries whose job could not be built (a stored secret that does not parse,
    /// say) as attempts that sent nothing: each is tried again on the retry schedule, but no
    /// sooner than `load_error_backoff` so a row that always fails to load cannot spin the
    /// loop, and is dead-lettered with the reason once the schedule is used up, to be retried
    /// by hand once the cause is fixed.
    async fn record_unloadable(&self, token: Uuid, unloadable: Vec<(Uuid, anyhow::Error)>) {
        for (id, error) in unloadable {
            let error = format!("{error:#}");
            let policy = self.settings.retry.clone();
            let floor = self.settings.load_error_backoff;
            let next_delay = move |n| policy.next_delay(n, None).map(|d| d.max(floor));
            let recorded = self
                .store
                .record_load_failure(id, token, &error, next_delay)
                .await;
            if let Ok(Some(outcome)) = &recorded {
                // Not loaded, so its type is not known.
                metrics::count_outcome("other", outcome);
            }
            match recorded {
                Ok(Some(AttemptOutcome::Retry { at })) => tracing::warn!(
                    delivery_id = %id,
                    error,
                    retry_in_ms = at - now_ms(),
                    "loading the delivery failed; will retry"
                ),
                Ok(Some(_)) => tracing::error!(
                    delivery_id = %id,
                    error,
                    "loading the delivery failed and its retries are used up; dead-lettered"
                ),
                Ok(None) => tracing::warn!(
                    delivery_id = %id,
                    error,
                    "loading the delivery failed, and its lease was lost before that was recorded"
                ),
                Err(e) => tracing::warn!(
                    delivery_id = %id,
                    error = format!("{e:#}"),
                    "recording that the delivery could not be loaded failed; its lease will expire"
                ),
            }
        }
    }

    /// Starts handed-off jobs until `shutdown`; then refuses further handoffs and gives back
    /// those still queued, so their deliveries are due again at once.
    async fn run_handoffs(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<HandedOff>,
        tracker: TaskTracker,
        hard_stop: CancellationToken,
        shutdown: CancellationToken,
    ) {
        loop {
            let handed = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                handed = rx.recv() => match handed {
                    Some(handed) => handed,
                    None => return,
                },
            };
            let HandedOff { claimed, permit } = handed;
            self.record_unloadable(claimed.token, claimed.unloadable)
                .await;
            let lease = Lease {
                expires_at_ms: claimed.lease_expires_at,
            };
            // One delivery per handoff: one slot was reserved for it.
            if let Some(job) = claimed.jobs.into_iter().next() {
                let worker = self.clone();
                let stop = hard_stop.clone();
                tracker
                    .spawn(async move { worker.process_with_slot(job, lease, stop, permit).await });
            }
        }
        rx.close();
        while let Some(HandedOff { claimed, .. }) = rx.recv().await {
            let ids = claimed.jobs.iter().map(|job| job.delivery_id);
            for id in ids.chain(claimed.unloadable.iter().map(|(id, _)| *id)) {
                let _ = self.store.release(id, claimed.token, 0).await;
            }
        }
    }

    async fn process_with_slot(
        self: Arc<Self>,
        job: DeliveryJob,
        lease: Lease,
        hard_stop: CancellationToken,
        permit: OwnedSemaphorePermit,
    ) {
        self.process(job, lease, hard_stop).await;
        drop(permit);
        self.slot_freed.notify_one();
    }

    async fn process(&self, job: DeliveryJob, lease: Lease, hard_stop: CancellationToken) {
        // The trace id the attempt's `traceparent` carries: the same for every attempt of
        // one event, so both services' log lines of it can be found by it.
        let traceparent = webhook_common::telemetry::TraceParent::for_message(&job.msg_id);
        let span = tracing::info_span!(
            "delivery",
            delivery_id = %job.delivery_id,
            attempt = job.attempts + 1,
            trace_id = %traceparent.trace_id_hex()
        );
        // Exported (feature `otlp`), the attempt belongs to the event's trace, which the
        // receiver joins through the `traceparent` it gets.
        traceparent.adopt(&span);
        self.process_inner(job, lease, hard_stop)
            .instrument(span)
            .await;
    }

    async fn process_inner(&self, job: DeliveryJob, lease: Lease, hard_stop: CancellationToken) {
        let (id, token) = (job.delivery_id, job.claim_token);
        // The request must end before the lease can: otherwise another worker could claim
        // the delivery and send it while this attempt still runs.
        let timeout_ms = i64::try_from(self.settings.timeout.as_millis()).unwrap_or(i64::MAX);
        if lease.expires_at_ms < now_ms().saturating_add(timeout_ms) {
            tracing::warn!("the lease no longer covers an attempt; giving the delivery back");
            if let Err(e) = self.store.release(id, token, 0).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "releasing the lease failed; it will expire"
                );
            }
            return;
        }
        let report = tokio::select! {
            report = attempt::attempt(
                &self.client,
                &job,
                &self.settings.retry,
                !self.settings.allow_private_targets,
            ) => report,
            () = hard_stop.cancelled() => {
                if let Err(e) = self.store.release(id, token, 0).await {
                    tracing::warn!(error = format!("{e:#}"), "releasing the lease failed; it will expire");
                }
                return;
            }
        };
        metrics::observe_attempt(report.attempt.duration_ms);
        // The receiver has the request; losing its outcome to a database hiccup would send it
        // again after the lease. Nobody else may take the row while the lease lasts, so keep
        // trying that long (DISPATCH_LEASE exceeds WEBHOOK_TIMEOUT by at least 5 s for this).
        let recorded = retry_while_leased(
            "the attempt",
            RECORD_RETRY,
            || lease.left(),
            |_| false,
            || {
                self.store.finish_attempt(
                    &job,
                    &report.attempt,
                    &report.outcome,
                    report.error.as_deref(),
                )
            },
        )
        .await;
        if let Ok(true) = recorded {
            metrics::count_outcome(metrics::event_type_of(&job.payload), &report.outcome);
        }
        match recorded {
            Ok(true) => match &report.outcome {
                AttemptOutcome::Delivered => tracing::info!(
                    status = report.attempt.status_code,
                    duration_ms = report.attempt.duration_ms,
                    "webhook delivered"
                ),
                AttemptOutcome::Retry { at } => tracing::info!(
                    error = report.error.as_deref(),
                    retry_in_ms = at - now_ms(),
                    "webhook attempt failed; will retry"
                ),
                AttemptOutcome::Failed => {
                    tracing::warn!(
                        error = report.error.as_deref(),
                        "webhook delivery failed for good"
                    )
                }
                AttemptOutcome::EndpointGone => tracing::warn!(
                    endpoint_id = %job.endpoint_id,
                    "endpoint answered 410 Gone; endpoint disabled"
                ),
            },
            Ok(false) => {
                tracing::warn!("lease lost before the attempt was recorded; another worker owns it")
            }
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "recording the attempt failed; the delivery is retried when its lease expires"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_orders_take_dispatch_slots_only_while_more_than_a_quarter_are_free() {
        use clap::Parser as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("d.db").display()))
            .await
            .unwrap();
        let config = Config::try_parse_from([
            "orders-service",
            "--admin-token",
            "a-test-token-0123456789",
            "--dispatch-concurrency",
            "8",
        ])
        .unwrap();
        let dispatcher =
            Dispatcher::new(store.clone(), DispatcherSettings::from_config(&config)).unwrap();
        let handoff = dispatcher.handoff();
        // 8 slots, a floor of 2: six orders get one, the seventh leaves the last two to the
        // dispatcher's own claims.
        let held: Vec<Reservation> = std::iter::from_fn(|| handoff.reserve()).take(10).collect();
        assert_eq!(held.len(), 6);
        assert_eq!(dispatcher.inner.slots.available_permits(), 2);
        drop(held);
        assert_eq!(dispatcher.inner.slots.available_permits(), 8);
        store.close().await;
    }
}
