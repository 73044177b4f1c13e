//! `Idempotency-Key` rows on PostgreSQL. The order's transaction claims the key first
//! ([`claim_key`]): an insert that replaces only an expired row. Of two transactions with one
//! key, on one replica or two, the second's insert waits on the primary key until the first
//! ends; if the first committed, the second finds a live row, claims nothing and answers
//! from it ([`live_key`]); if the first rolled back, the second goes ahead.

use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::store::idempotency::{IdempotencyKey, KeyRow, KEY_TTL_MS};

/// Stores `key` for the order `order_id`, from `now` for [`KEY_TTL_MS`], unless a live row
/// holds it (then `false`, writing nothing). An expired row is replaced.
pub(super) async fn claim_key(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    order_id: &Uuid,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let claimed: Option<i32> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys (key, request_sha256, order_id, response_status, \
         response_body, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (key) DO UPDATE SET request_sha256 = excluded.request_sha256, \
         order_id = excluded.order_id, response_status = excluded.response_status, \
         response_body = excluded.response_body, created_at = excluded.created_at, \
         expires_at = excluded.expires_at \
         WHERE idempotency_keys.expires_at <= $6 \
         RETURNING 1",
    )
    .bind(&key.key)
    .bind(&key.request_sha256)
    .bind(order_id)
    .bind(i32::from(key.response_status))
    .bind(&key.response_body)
    .bind(now)
    .bind(now.saturating_add(KEY_TTL_MS))
    .fetch_optional(conn)
    .await?;
    Ok(claimed.is_some())
}

/// The row of `key`, read after [`claim_key`] found it live.
pub(super) async fn live_key(conn: &mut PgConnection, key: &str) -> anyhow::Result<Option<KeyRow>> {
    let row: Option<(String, Uuid, i32, String)> = sqlx::query_as(
        "SELECT request_sha256, order_id, response_status, response_body \
         FROM idempotency_keys WHERE key = $1",
    )
    .bind(key)
    .fetch_optional(conn)
    .await?;
    row.map(|(request_sha256, order_id, status, body)| {
        Ok(KeyRow {
            request_sha256,
            order_id: order_id.to_string(),
            status: u16::try_from(status)?,
            body,
        })
    })
    .transpose()
}

impl PgStore {
    /// Deletes up to `limit` keys expired at `now`, oldest first, in one statement; returns
    /// how many went.
    pub async fn delete_expired_idempotency_keys(
        &self,
        now: i64,
        limit: u32,
    ) -> anyhow::Result<usize> {
        let deleted = sqlx::query(
            "DELETE FROM idempotency_keys WHERE key IN \
             (SELECT key FROM idempotency_keys WHERE expires_at <= $1 \
              ORDER BY expires_at LIMIT $2)",
        )
        .bind(now)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(usize::try_from(deleted)?)
    }
}
