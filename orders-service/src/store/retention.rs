//! Retention: deleting what is finished and old, in small batches, off the hot path.
//!
//! An event is finished when every delivery of it was delivered (or it has none). A finished
//! event older than the retention period goes with its deliveries and their attempts, and its
//! order goes with its last event. Nothing that is still pending, in flight or failed is ever
//! deleted, however old: a failed delivery waits for an operator to redeliver it.

use std::time::Duration;

use rusqlite::{params, Connection};
use tokio_util::sync::CancellationToken;

use super::{now_ms, Store};

/// How often the retention task looks for finished events past their retention.
pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Events looked at in one batch (each batch is one group-committed write: short, so the
/// orders and attempt outcomes batched with it are not held up).
pub const RETENTION_BATCH: u32 = 200;

/// What one retention pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Events deleted (with their deliveries and attempts).
    pub events: u64,
    /// Orders deleted with their last event.
    pub orders: u64,
    /// Old events kept because a delivery of theirs is not delivered.
    pub kept: u64,
}

impl Store {
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

impl Store {
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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: i64 = 24 * 3600 * 1000;

    /// Old finished events go with their deliveries, attempts and orders; an old event with a
    /// failed delivery, an old event with a pending one and a recent delivered one stay.
    #[tokio::test]
    async fn finished_old_events_go_and_everything_unfinished_or_recent_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("r.db").display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let old = now_ms() - 40 * DAY_MS;
        let recent = now_ms() - DAY_MS;
        sqlx::query(
            "INSERT INTO endpoints (id, url, secret, event_types, created_at, updated_at) \
             VALUES ('ep', 'http://example.com/', 'whsec_x', '[\"order.paid\"]', 0, 0)",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        // (name, created at, delivery status or none)
        let cases = [
            ("delivered", old, Some("delivered")),
            ("no-delivery", old, None),
            ("failed", old, Some("failed")),
            ("pending", old, Some("pending")),
            ("recent", recent, Some("delivered")),
        ];
        for (i, (name, at, status)) in cases.iter().enumerate() {
            sqlx::query(
                "INSERT INTO orders (id, product_name, quantity, unit_price, total, currency, \
                 customer_email, status, created_at) \
                 VALUES ($1, 'p', 1, 100, 100, 'EUR', 'a@example.com', 'paid', $2)",
            )
            .bind(name)
            .bind(at)
            .execute(&store.pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO events (id, msg_id, event_type, order_id, payload, created_at) \
                 VALUES ($1, $2, 'order.paid', $1, x'7b7d', $3)",
            )
            .bind(name)
            .bind(format!("msg_{i}"))
            .bind(at)
            .execute(&store.pool)
            .await
            .unwrap();
            if let Some(status) = status {
                sqlx::query(
                    "INSERT INTO deliveries (id, event_id, endpoint_id, status, attempts, \
                     next_attempt_at, created_at, updated_at) VALUES ($1, $1, 'ep', $2, 1, $3, $3, $3)",
                )
                .bind(name)
                .bind(status)
                .bind(at)
                .execute(&store.pool)
                .await
                .unwrap();
                sqlx::query(
                    "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, \
                     outcome) VALUES ($1, 1, $2, 5, 'delivered')",
                )
                .bind(name)
                .bind(at)
                .execute(&store.pool)
                .await
                .unwrap();
            }
        }

        let purged = store.purge_finished(30 * DAY_MS).await.unwrap();
        assert_eq!(
            purged,
            Purged {
                events: 2,
                orders: 2,
                kept: 2
            }
        );
        let left = |table: &'static str, column: &'static str| {
            let pool = store.pool.clone();
            async move {
                let mut names: Vec<String> =
                    sqlx::query_scalar(&format!("SELECT {column} FROM {table}"))
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                names.sort();
                names
            }
        };
        let kept = ["failed", "pending", "recent"];
        assert_eq!(left("orders", "id").await, kept);
        assert_eq!(left("events", "id").await, kept);
        assert_eq!(left("deliveries", "id").await, kept);
        assert_eq!(left("delivery_attempts", "delivery_id").await, kept);
        // A second pass finds nothing more to delete.
        assert_eq!(store.purge_finished(30 * DAY_MS).await.unwrap().events, 0);
        store.close().await;
    }
}
