//! The query behind the outbox gauges, and the task that refreshes them.
//!
//! `webhook_outbox_pending` counts the open deliveries (pending or in flight) that will be
//! attempted: paused ones, whose endpoint is disabled, are left out.
//! `webhook_outbox_oldest_pending_seconds` is the age of the oldest of them (0 when none).
//!
//! Cost: one scan of the partial index `deliveries_endpoint_due`, which holds only open work
//! and has both `due_at` and the rowid, so O(open deliveries) index entries; SQLite's plan
//! defers the table seek and never makes it, so no table row is read but the oldest one's,
//! and the delivered or failed history is never touched. With a large backlog this is the
//! one query of the service that grows with it (a count cannot stop early); at 5 s intervals
//! an index scan of even 10^5 entries stays in the milliseconds. The oldest is the lowest
//! rowid (rows are inserted as they are created, and SQLite hands out rowids in ascending
//! order), so `created_at` is read from that one row. It runs every
//! [`REFRESH_EVERY`](webhook_common::metrics::REFRESH_EVERY) on the read pool, never on a scrape.

use tokio_util::sync::CancellationToken;
use webhook_common::metrics::REFRESH_EVERY;

use super::{now_ms, Store, PAUSED_AT};

/// Open, not paused deliveries: how many, and the `created_at` of the oldest.
const OUTBOX_STATS: &str =
    "SELECT s.n, (SELECT created_at FROM deliveries WHERE rowid = s.oldest) \
     FROM (SELECT COUNT(*) AS n, MIN(rowid) AS oldest FROM deliveries \
           WHERE due_at IS NOT NULL AND due_at < ?1) AS s";

/// `webhook_outbox_pending`.
pub const OUTBOX_PENDING: &str = "webhook_outbox_pending";
/// `webhook_outbox_oldest_pending_seconds`.
pub const OUTBOX_OLDEST_PENDING_SECONDS: &str = "webhook_outbox_oldest_pending_seconds";

/// What the outbox holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Open deliveries that will be attempted (pending or in flight, not paused).
    pub pending: i64,
    /// `created_at` (unix ms) of the oldest of them; `None` when there is none.
    pub oldest_created_at: Option<i64>,
}

impl Store {
    /// The outbox's size and oldest entry (see the module docs for the cost).
    pub async fn outbox_stats(&self) -> anyhow::Result<OutboxStats> {
        let (pending, oldest_created_at): (i64, Option<i64>) = sqlx::query_as(OUTBOX_STATS)
            .bind(PAUSED_AT)
            .fetch_one(&self.pool)
            .await?;
        Ok(OutboxStats {
            pending,
            oldest_created_at,
        })
    }

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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gauges' query reads the partial index of open work, never the whole table.
    #[tokio::test]
    async fn the_outbox_query_reads_the_open_work_index_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {OUTBOX_STATS}"))
                .bind(PAUSED_AT)
                .fetch_all(&store.pool)
                .await
                .unwrap();
        let plan: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
        let text = plan.join("\n");
        assert!(
            text.contains("USING INDEX deliveries_endpoint_due"),
            "not served by the open-work index:\n{text}"
        );
        assert!(
            !plan.iter().any(|step| step.trim() == "SCAN deliveries"),
            "full scan of deliveries:\n{text}"
        );
        assert_eq!(
            store.outbox_stats().await.unwrap(),
            OutboxStats {
                pending: 0,
                oldest_created_at: None
            }
        );
        store.close().await;
    }
}
