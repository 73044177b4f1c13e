//! The query behind the outbox gauges on PostgreSQL (see `store::tasks` for the gauges).
//!
//! Cost: one pass over the partial index `deliveries_endpoint_due`, which holds only open
//! work, so O(open deliveries); the delivered or failed history is never touched.

use super::PgStore;
use crate::store::{OutboxStats, PAUSED_AT};

/// Open, not paused deliveries: how many, and the `created_at` of the oldest.
pub(super) const OUTBOX_STATS: &str = "SELECT COUNT(*), MIN(created_at) FROM deliveries \
     WHERE due_at IS NOT NULL AND due_at < $1";

impl PgStore {
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
