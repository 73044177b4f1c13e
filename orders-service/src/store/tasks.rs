//! The store's background tasks, the same on both backends: the outbox gauges of `/metrics`
//! and the retention of finished events.
//!
//! `webhook_outbox_pending` counts the open deliveries (pending or in flight) that will be
//! attempted: paused ones, whose endpoint is disabled, are left out.
//! `webhook_outbox_oldest_pending_seconds` is the age of the oldest of them (0 when none).
//! Their query ([`Store::outbox_stats`]) reads the index of open work only, so the delivered
//! or failed history is never touched; it runs every
//! [`REFRESH_EVERY`](webhook_common::metrics::REFRESH_EVERY), never on a scrape.
//!
//! Retention: an event is finished when every delivery of it was delivered (or it has none).
//! A finished event older than the retention period goes with its deliveries and their
//! attempts, and its order goes with its last event. Nothing that is still pending, in flight
//! or failed is ever deleted, however old: a failed delivery waits for an operator to
//! redeliver it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use webhook_common::metrics::REFRESH_EVERY;

use super::{now_ms, Store};

/// `webhook_outbox_pending`.
pub const OUTBOX_PENDING: &str = "webhook_outbox_pending";
/// `webhook_outbox_oldest_pending_seconds`.
pub const OUTBOX_OLDEST_PENDING_SECONDS: &str = "webhook_outbox_oldest_pending_seconds";

/// How often the retention task looks for finished events past their retention.
pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Events looked at in one batch (each batch is one short write, so the orders and attempt
/// outcomes written meanwhile are not held up).
pub const RETENTION_BATCH: u32 = 200;

/// What the outbox holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Open deliveries that will be attempted (pending or in flight, not paused).
    pub pending: i64,
    /// `created_at` (unix ms) of the oldest of them; `None` when there is none.
    pub oldest_created_at: Option<i64>,
}

impl Store {
    /// Refreshes the outbox gauges (and runs the recorder's upkeep) at once and then every
    /// [`REFRESH_EVERY`] until `shutdown`. A failed query keeps the last values and is logged.
    pub async fn run_outbox_gauges(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(REFRESH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            webhook_common::metrics::run_upkeep();
            match self.outbox_stats().await {
                Ok(stats) => {
                    let age_ms = stats
                        .oldest_created_at
                        .map_or(0, |at| now_ms().saturating_sub(at).max(0));
                    // Counts and ages far below 2^52: exact as f64.
                    #[allow(clippy::cast_precision_loss)]
                    {
                        metrics::gauge!(OUTBOX_PENDING).set(stats.pending as f64);
                        metrics::gauge!(OUTBOX_OLDEST_PENDING_SECONDS).set(age_ms as f64 / 1000.0);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "refreshing the outbox gauges failed"
                    )
                }
            }
        }
    }

    /// Every [`RETENTION_EVERY`] (the first time a minute after start), deletes the finished
    /// events older than `keep` ([`Store::purge_finished`]), until `shutdown`.
    pub async fn run_retention(self, keep: Duration, shutdown: CancellationToken) {
        let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let mut wait = Duration::from_secs(60);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            wait = RETENTION_EVERY;
            match self.purge_finished(keep_ms).await {
                Ok(purged) if purged.events > 0 => tracing::info!(
                    events = purged.events,
                    orders = purged.orders,
                    kept_unfinished = purged.kept,
                    "deleted finished events past their retention"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "deleting finished events failed; trying again later"
                ),
            }
        }
    }
}

impl Store {
    /// On PostgreSQL, numbers newly committed events for the history every second until
    /// `shutdown` (see the postgres events module), so the backlog a reader would number
    /// stays small; returns at once on SQLite, which numbers events as it writes them.
    pub async fn run_event_sequencer(self, shutdown: CancellationToken) {
        if let super::Backend::Postgres(store) = self.backend {
            store.run_event_sequencer(shutdown).await;
        }
    }
}
