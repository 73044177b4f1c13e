//! `Idempotency-Key` rows on SQLite, read and written inside the order's own group-committed
//! write (see [`SqliteStore::create_order_keyed`]): the writes of a batch run one after
//! another in one transaction that holds SQLite's write lock, so of two requests with one
//! key, in one batch or in two, the second always sees the first's row and creates nothing.

use rusqlite::{params, Connection, OptionalExtension as _};

use super::SqliteStore;
use crate::store::idempotency::{IdempotencyKey, KeyRow, KEY_TTL_MS};

/// The row of `key` unless it is missing or expired at `now`. Runs on the writer.
pub(super) fn find_live(
    conn: &Connection,
    key: &str,
    now: i64,
) -> rusqlite::Result<Option<KeyRow>> {
    conn.prepare_cached(
        "SELECT request_sha256, order_id, response_status, response_body \
         FROM idempotency_keys WHERE key = ?1 AND expires_at > ?2",
    )?
    .query_row(params![key, now], |row| {
        Ok(KeyRow {
            request_sha256: row.get(0)?,
            order_id: row.get(1)?,
            status: row.get(2)?,
            body: row.get(3)?,
        })
    })
    .optional()
}

/// Remembers `key` for the order `order_id` just written, from `now` for [`KEY_TTL_MS`];
/// replaces the key's expired row if there is one. Runs on the writer, after [`find_live`]
/// found no live row in the same transaction.
pub(super) fn remember(
    conn: &Connection,
    key: &IdempotencyKey,
    order_id: &str,
    now: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO idempotency_keys (key, request_sha256, order_id, response_status, \
         response_body, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (key) DO UPDATE SET request_sha256 = excluded.request_sha256, \
         order_id = excluded.order_id, response_status = excluded.response_status, \
         response_body = excluded.response_body, created_at = excluded.created_at, \
         expires_at = excluded.expires_at",
    )?
    .execute(params![
        key.key,
        key.request_sha256,
        order_id,
        key.response_status,
        key.response_body,
        now,
        now.saturating_add(KEY_TTL_MS),
    ])?;
    Ok(())
}

impl SqliteStore {
    /// Deletes up to `limit` keys expired at `now`, oldest first, in one group-committed
    /// write; returns how many went.
    pub async fn delete_expired_idempotency_keys(
        &self,
        now: i64,
        limit: u32,
    ) -> anyhow::Result<usize> {
        let deleted = self
            .writer
            .write(move |conn| {
                conn.prepare_cached(
                    "DELETE FROM idempotency_keys WHERE key IN \
                     (SELECT key FROM idempotency_keys WHERE expires_at <= ?1 \
                      ORDER BY expires_at LIMIT ?2)",
                )?
                .execute(params![now, limit])
            })
            .await?;
        Ok(deleted)
    }
}
