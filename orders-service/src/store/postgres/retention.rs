//! Retention on PostgreSQL: deleting what is finished and old, in small batches, each its own
//! transaction (see `store::tasks` for the rules).

use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::store::{now_ms, Purged, RETENTION_BATCH};

impl PgStore {
    /// Deletes the finished events created before `now - retention_ms`, oldest first, in
    /// batches of [`RETENTION_BATCH`] events; see [`crate::store::Store::purge_finished`].
    /// Events are numbered first, so the walk by `seq` sees every committed one.
    pub async fn purge_finished(&self, retention_ms: i64) -> anyhow::Result<Purged> {
        self.sequence_events().await?;
        let cutoff = now_ms().saturating_sub(retention_ms);
        let mut total = Purged::default();
        let mut after_seq = 0_i64;
        loop {
            let mut tx = self.pool.begin().await?;
            let (batch, last_seq, looked_at) =
                purge_batch(&mut tx, cutoff, after_seq, RETENTION_BATCH).await?;
            tx.commit().await?;
            total.events += batch.events;
            total.orders += batch.orders;
            total.kept += batch.kept;
            if looked_at < RETENTION_BATCH {
                return Ok(total);
            }
            after_seq = last_seq;
        }
    }
}

/// One batch: the first `limit` events after `after_seq` created before `cutoff`. Returns
/// what it did, the last `seq` it looked at and how many events it looked at.
async fn purge_batch(
    conn: &mut PgConnection,
    cutoff: i64,
    after_seq: i64,
    limit: u32,
) -> Result<(Purged, i64, u32), sqlx::Error> {
    let old: Vec<(i64, Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT seq, id, order_id FROM events WHERE seq > $1 AND created_at < $2 \
         ORDER BY seq LIMIT $3",
    )
    .bind(after_seq)
    .bind(cutoff)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut purged = Purged::default();
    for (_, id, order_id) in &old {
        // Locked, so a redelivery asked for meanwhile waits and then finds the row gone
        // (404) rather than a deleted row requeued.
        let statuses: Vec<String> =
            sqlx::query_scalar("SELECT status FROM deliveries WHERE event_id = $1 FOR UPDATE")
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
        if statuses.iter().any(|s| s != "delivered") {
            purged.kept += 1;
            continue;
        }
        sqlx::query(
            "DELETE FROM delivery_attempts \
             WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = $1)",
        )
        .bind(id)
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM deliveries WHERE event_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        sqlx::query("DELETE FROM events WHERE id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
        purged.events += 1;
        if let Some(order_id) = order_id {
            let deleted = sqlx::query(
                "DELETE FROM orders WHERE id = $1 \
                 AND NOT EXISTS (SELECT 1 FROM events WHERE order_id = $1)",
            )
            .bind(order_id)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            purged.orders += deleted;
        }
    }
    let last_seq = old.last().map_or(after_seq, |(seq, _, _)| *seq);
    let looked_at = u32::try_from(old.len()).unwrap_or(u32::MAX);
    Ok((purged, last_seq, looked_at))
}
