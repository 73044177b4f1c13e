//! The query behind the outbox gauges on SQLite (see `store::tasks` for the gauges).
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

use super::SqliteStore;
use crate::store::{OutboxStats, PAUSED_AT};

/// Open, not paused deliveries: how many, and the `created_at` of the oldest.
const OUTBOX_STATS: &str =
    "SELECT s.n, (SELECT created_at FROM deliveries WHERE rowid = s.oldest) \
     FROM (SELECT COUNT(*) AS n, MIN(rowid) AS oldest FROM deliveries \
           WHERE due_at IS NOT NULL AND due_at < ?1) AS s";

impl SqliteStore {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gauges' query reads the partial index of open work, never the whole table.
    #[tokio::test]
    async fn the_outbox_query_reads_the_open_work_index_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("m.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
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
