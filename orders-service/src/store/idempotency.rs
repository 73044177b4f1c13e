//! `Idempotency-Key` on `POST /orders`: a key's row, looked up and written inside the order's
//! own group-committed write, and the background deletion of expired keys.
//!
//! The lookup and the insert run in the same write as the order (see
//! [`Store::create_order_keyed`]): the writes of a batch run one after another in one
//! transaction that holds SQLite's write lock, so of two requests with one key, in one batch
//! or in two, the second always sees the first's row and creates nothing.
//!
//! Keys are global, not per client: `POST /orders` has no authentication to scope them to.
//! A key is remembered for [`KEY_TTL_MS`] from the first request; after that it counts as
//! new, and a request carrying it again replaces its row. Expired rows are deleted in
//! batches of [`EXPIRY_BATCH`] every [`EXPIRY_INTERVAL`] by
//! [`Store::run_idempotency_key_expiry`], off the hot path.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension as _};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{now_ms, parse_uuid, Store};

/// How long a key is remembered after the request that first used it: 24 hours.
pub const KEY_TTL_MS: i64 = 24 * 60 * 60 * 1000;
/// Most expired keys one write deletes: each batch is one short write among the orders.
pub const EXPIRY_BATCH: u32 = 500;
/// How often expired keys are deleted.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// An `Idempotency-Key` with what the request carrying it stores under it, should it be the
/// one that creates the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The header's value (validated by the API: 1 to 255 printable ASCII characters).
    pub key: String,
    /// Hex SHA-256 of what the request asks for: a later request with the key and another
    /// hash is refused, not answered with this request's order.
    pub request_sha256: String,
    /// The status of the answer to give (201).
    pub response_status: u16,
    /// The JSON body of the answer to give, byte for byte.
    pub response_body: String,
}

/// The answer stored under a key by the request that first used it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The order that request created.
    pub order_id: Uuid,
    /// Its status.
    pub status: u16,
    /// Its JSON body, byte for byte.
    pub body: String,
}

/// What writing an order with an optional `Idempotency-Key` came to.
#[derive(Debug)]
pub enum KeyedOrder {
    /// No key, or a key not seen (or expired): the order was written, and the key (if any)
    /// now answers with it.
    Created(super::CreatedOrder),
    /// The key was used before for the same order: nothing was written; here is the answer
    /// the first request got.
    Replayed(StoredAnswer),
    /// The key was used before with a different request: nothing was written.
    KeyReused,
}

/// A live key's row as the order's write reads it.
pub(super) struct KeyRow {
    request_sha256: String,
    order_id: String,
    status: u16,
    body: String,
}

impl KeyRow {
    /// What a request with `key` gets, given the key's row.
    pub(super) fn outcome(self, key: &IdempotencyKey) -> anyhow::Result<KeyedOrder> {
        if self.request_sha256 != key.request_sha256 {
            return Ok(KeyedOrder::KeyReused);
        }
        Ok(KeyedOrder::Replayed(StoredAnswer {
            order_id: parse_uuid(&self.order_id)?,
            status: self.status,
            body: self.body,
        }))
    }
}

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

impl Store {
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

    /// Deletes every key expired now, [`EXPIRY_BATCH`] per write, stopping early when
    /// `shutdown` is cancelled; returns how many went.
    pub async fn expire_idempotency_keys(
        &self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<u64> {
        let now = now_ms();
        let mut total = 0_u64;
        while !shutdown.is_cancelled() {
            let deleted = self
                .delete_expired_idempotency_keys(now, EXPIRY_BATCH)
                .await?;
            total += u64::try_from(deleted).unwrap_or(u64::MAX);
            if deleted < usize::try_from(EXPIRY_BATCH).unwrap_or(usize::MAX) {
                break;
            }
        }
        Ok(total)
    }

    /// The background task: every [`EXPIRY_INTERVAL`], deletes the expired keys; returns
    /// when `shutdown` is cancelled. A failed pass is logged and tried again next time.
    pub async fn run_idempotency_key_expiry(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(EXPIRY_INTERVAL) => {}
            }
            match self.expire_idempotency_keys(&shutdown).await {
                Ok(0) => {}
                Ok(deleted) => tracing::debug!(deleted, "deleted expired idempotency keys"),
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "deleting expired idempotency keys failed; trying again later"
                ),
            }
        }
    }
}
