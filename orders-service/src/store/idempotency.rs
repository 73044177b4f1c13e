//! `Idempotency-Key` on `POST /orders`: what a key stores and answers, and the background
//! deletion of expired keys. Each backend decides a key inside the order's own transaction
//! (see [`Store::create_order_keyed`]), so of two requests with one key, at the same instant
//! or not, on one replica or two, at most one creates an order:
//!
//! - SQLite: the lookup and the insert run in the same group-committed write, which holds
//!   the write lock, so the second request always sees the first's row.
//! - PostgreSQL: the key's row is inserted first (`ON CONFLICT (key) DO UPDATE ... WHERE`
//!   expired), so the primary key makes a second transaction wait for the first and then
//!   find its committed row.
//!
//! Keys are global, not per client: `POST /orders` has no authentication to scope them to.
//! A key is remembered for [`KEY_TTL_MS`] from the first request; after that it counts as
//! new, and a request carrying it again replaces its row. Expired rows are deleted in
//! batches of [`EXPIRY_BATCH`] every [`EXPIRY_INTERVAL`] by
//! [`Store::run_idempotency_key_expiry`], off the hot path.

use std::time::Duration;

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

/// A live key's row as the order's transaction reads it.
pub(super) struct KeyRow {
    pub(super) request_sha256: String,
    pub(super) order_id: String,
    pub(super) status: u16,
    pub(super) body: String,
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

impl Store {
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
