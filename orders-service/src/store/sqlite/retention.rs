//! Retention on SQLite: deleting what is finished and old, in small batches, each one
//! group-committed write (see `store::tasks` for the rules).

use rusqlite::{params, Connection};

use super::SqliteStore;
use crate::store::{now_ms, Purged, RETENTION_BATCH};

impl SqliteStore {
    /// Deletes the finished events created before `now - retention_ms`, oldest first, with
    /// their deliveries, attempts and (with their last event) orders, in batches of
    /// [`RETENTION_BATCH`] events, each its own write. Walks the old events once (a cursor on
    /// `seq`), so a pass costs O(old events), however many are kept.
    pub async fn purge_finished(&self, retention_ms: i64) -> anyhow::Result<Purged> {
        let cutoff = now_ms().saturating_sub(retention_ms);
        let mut total = Purged::default();
        let mut after_seq = 0_i64;
        loop {
            let (batch, last_seq, looked_at) = self
                .writer
                .write(move |conn| purge_batch(conn, cutoff, after_seq, RETENTION_BATCH))
                .await?;
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
fn purge_batch(
    conn: &Connection,
    cutoff: i64,
    after_seq: i64,
    limit: u32,
) -> rusqlite::Result<(Purged, i64, u32)> {
    let old: Vec<(i64, String, Option<String>)> = conn
        .prepare_cached(
            "SELECT seq, id, order_id FROM events WHERE seq > ?1 AND created_at < ?2 \
             ORDER BY seq LIMIT ?3",
        )?
        .query_map(params![after_seq, cutoff, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut purged = Purged::default();
    let mut unfinished = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM deliveries WHERE event_id = ?1 AND status <> 'delivered')",
    )?;
    let mut attempts = conn.prepare_cached(
        "DELETE FROM delivery_attempts \
         WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ?1)",
    )?;
    let mut deliveries = conn.prepare_cached("DELETE FROM deliveries WHERE event_id = ?1")?;
    let mut event = conn.prepare_cached("DELETE FROM events WHERE id = ?1")?;
    let mut order = conn.prepare_cached(
        "DELETE FROM orders WHERE id = ?1 \
         AND NOT EXISTS (SELECT 1 FROM events WHERE order_id = ?1)",
    )?;
    for (_, id, order_id) in &old {
        if unfinished.query_row([id], |r| r.get::<_, bool>(0))? {
            purged.kept += 1;
            continue;
        }
        attempts.execute([id])?;
        deliveries.execute([id])?;
        event.execute([id])?;
        purged.events += 1;
        if let Some(order_id) = order_id {
            purged.orders += u64::try_from(order.execute([order_id])?).unwrap_or(0);
        }
    }
    let last_seq = old.last().map_or(after_seq, |(seq, _, _)| *seq);
    let looked_at = u32::try_from(old.len()).unwrap_or(u32::MAX);
    Ok((purged, last_seq, looked_at))
}
