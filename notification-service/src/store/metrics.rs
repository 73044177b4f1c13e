//! The query behind the `email_queue_depth` gauge, and the task that refreshes it.
//!
//! The depth is the number of queued email jobs (due, waiting for a retry, or held under a
//! lease): the entries of the partial index `notifications_due_at`, which holds only queued
//! jobs, so the count reads O(queued jobs) index entries and never the sent, failed or
//! cancelled history. It runs every
//! [`REFRESH_EVERY`](webhook_common::metrics::REFRESH_EVERY) on the worker's read pool,
//! never on a scrape.

use tokio_util::sync::CancellationToken;
use webhook_common::metrics::REFRESH_EVERY;

use super::Store;

/// Queued email jobs, counted in `notifications_due_at`.
const QUEUE_DEPTH: &str = "SELECT COUNT(*) FROM notifications WHERE due_at IS NOT NULL";

/// `email_queue_depth`.
pub const EMAIL_QUEUE_DEPTH: &str = "email_queue_depth";

impl Store {
    /// How many email jobs are queued (see the module docs for the cost).
    pub async fn email_queue_depth(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(QUEUE_DEPTH)
            .fetch_one(&self.background)
            .await
    }

    /// Refreshes `email_queue_depth` (and runs the recorder's upkeep) at once and then every
    /// [`REFRESH_EVERY`] until `shutdown`. A failed query keeps the last value and is logged.
    pub async fn run_queue_gauge(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(REFRESH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            webhook_common::metrics::run_upkeep();
            match self.email_queue_depth().await {
                // A count far below 2^52: exact as f64.
                #[allow(clippy::cast_precision_loss)]
                Ok(depth) => metrics::gauge!(EMAIL_QUEUE_DEPTH).set(depth as f64),
                Err(e) => tracing::warn!(error = %e, "refreshing email_queue_depth failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The depth is counted in the partial index of queued jobs, never the whole table.
    #[tokio::test]
    async fn the_queue_depth_is_counted_in_the_queued_jobs_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {QUEUE_DEPTH}"))
                .fetch_all(&store.background)
                .await
                .unwrap();
        let text = rows
            .iter()
            .map(|r| r.3.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("INDEX notifications_due_at"),
            "not counted in notifications_due_at:\n{text}"
        );
        assert_eq!(store.email_queue_depth().await.unwrap(), 0);
        store.close().await;
    }
}
