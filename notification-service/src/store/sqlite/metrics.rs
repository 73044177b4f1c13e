//! The query behind the `email_queue_depth` gauge.
//!
//! The depth is the number of queued email jobs (due, waiting for a retry, or held under a
//! lease): the entries of the partial index `notifications_due_at`, which holds only queued
//! jobs, so the count reads O(queued jobs) index entries and never the sent, failed or
//! cancelled history. It runs on the worker's read pool, never on a scrape.

use super::SqliteStore;

/// Queued email jobs, counted in `notifications_due_at`.
const QUEUE_DEPTH: &str = "SELECT COUNT(*) FROM notifications WHERE due_at IS NOT NULL";

impl SqliteStore {
    /// How many email jobs are queued (see the module docs for the cost).
    pub async fn email_queue_depth(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(QUEUE_DEPTH)
            .fetch_one(&self.background)
            .await
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
        let store = SqliteStore::connect(&url, &url).await.unwrap();
        super::super::MIGRATOR.run(store.pool()).await.unwrap();
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
