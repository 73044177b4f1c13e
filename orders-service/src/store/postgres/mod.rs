//! The PostgreSQL backend: several replicas of the service sharing one database.
//!
//! Ordinary sqlx transactions on a [`PgPool`] (no group committer: PostgreSQL's own WAL flush
//! already coalesces concurrent commits), with PostgreSQL's default durability (`fsync`,
//! `synchronous_commit=on`), so an acknowledged write is committed. Native `uuid`, `jsonb`,
//! `bytea` and `boolean` columns; timestamps are BIGINT unix milliseconds as on SQLite.
//!
//! What makes several replicas safe, and where:
//! - claims ([`deliveries`]): `FOR UPDATE SKIP LOCKED` over a partial index of open work, under
//!   leases and claim tokens; claims of one endpoint are serialised by a transaction-scoped
//!   advisory lock, so the per-endpoint cap counts every replica's live leases;
//! - wake-ups: after every commit that makes a delivery due now, the store's [`Notifier`]
//!   sends `NOTIFY` on [`WAKE_CHANNEL`] to every replica's listener (after the commit, not in
//!   it: see [`webhook_common::pg_listen`] for why);
//! - the event history ([`events`]): events are numbered only once committed;
//! - `Idempotency-Key` ([`orders`]): the key's row is inserted first, so the primary key
//!   decides which of two concurrent requests creates the order.

mod deliveries;
mod endpoints;
mod events;
mod idempotency;
mod metrics;
mod orders;
mod retention;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use webhook_common::pg_listen::Notifier;

use super::{redact_url, WAKE_CHANNEL};

/// The PostgreSQL schema's migrations (`migrations/postgres`).
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a request waits for a pooled connection before it is answered 503 (with
/// `Retry-After`): well inside `REQUEST_TIMEOUT`, so a saturated pool is reported as
/// such rather than as a timeout.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on a PostgreSQL database; cheap to clone.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Wakes every replica's dispatcher after a commit that made work due now.
    notifier: Notifier,
}

impl PgStore {
    /// Connects a pool of at most `max_connections` to the database at `url`, checking that
    /// it answers.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let shown = redact_url(url);
        let options = PgConnectOptions::from_str(url)
            .with_context(|| format!("DATABASE_URL {shown:?} is not a valid PostgreSQL URL"))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .with_context(|| {
                format!(
                    "connecting to the PostgreSQL database of DATABASE_URL {shown:?} \
                     (is the server up, and do the user, password and database exist?)"
                )
            })?;
        let notifier = Notifier::spawn(&pool, WAKE_CHANNEL);
        Ok(PgStore { pool, notifier })
    }

    /// Applies the embedded migrations. sqlx takes an advisory lock for them, so replicas
    /// starting together migrate one after the other.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("running database migrations")
    }

    /// The pool, for readiness checks and the wake-up listener.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Waits for open connections to finish and closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl PgStore {
    /// Wakes the dispatchers of every replica; call it after the commit that made work due.
    fn wake_dispatchers(&self) {
        self.notifier.notify();
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::deliveries::{BUSY, CLAIM, DUE_ENDPOINTS, NEXT_DUE, PAUSE_ABANDONED};
    use super::metrics::OUTBOX_STATS;
    use super::PgStore;
    use crate::store::{now_ms, PAUSED_AT};

    /// The claim path's statements read the indexes of open work in order and stop at their
    /// limits: no sequential scan of `deliveries`, no sort of its rows, with a history of
    /// thousands of finished deliveries and fresh statistics (so the planner could prefer a
    /// scan if no index served). A plan regression here turns a claim from O(batch) into
    /// O(backlog), which no functional test would notice.
    #[tokio::test]
    async fn claim_queries_are_served_by_indexes_without_scans_or_sorts() {
        let Some(db) = test_support::postgres::TestDatabase::create("claim_plans").await else {
            return;
        };
        let store = PgStore::connect(db.url(), 2).await.unwrap();
        store.migrate().await.unwrap();
        let endpoint = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO endpoints (id, url, secret, event_types, created_at, updated_at) \
             VALUES ($1, 'http://127.0.0.1:9/', 'whsec_x', '[\"order.paid\"]', 0, 0)",
        )
        .bind(endpoint)
        .execute(store.pool())
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO events (id, seq, msg_id, event_type, payload, created_at) \
             SELECT gen_random_uuid(), i, 'msg_' || i, 'order.paid', '\\x7b7d', i \
             FROM generate_series(1, 5000) AS i",
        )
        .execute(store.pool())
        .await
        .unwrap();
        // 5000 deliveries, all but 10 delivered: the history a claim must never walk.
        sqlx::query(
            "INSERT INTO deliveries (id, event_id, endpoint_id, status, next_attempt_at, \
             created_at, updated_at) \
             SELECT gen_random_uuid(), e.id, $1, \
                    CASE WHEN e.seq <= 10 THEN 'pending' ELSE 'delivered' END, e.seq, 0, 0 \
             FROM events e",
        )
        .bind(endpoint)
        .execute(store.pool())
        .await
        .unwrap();
        sqlx::query("ANALYZE").execute(store.pool()).await.unwrap();
        let now = now_ms();
        for (name, sql, sort_allowed) in [
            ("due endpoints", DUE_ENDPOINTS, true),
            ("busy", BUSY, false),
            ("claim", CLAIM, false),
            ("next due", NEXT_DUE, false),
            ("pause abandoned", PAUSE_ABANDONED, false),
            ("outbox stats", OUTBOX_STATS, false),
        ] {
            let explain = format!("EXPLAIN {sql}");
            let mut query = sqlx::query_scalar::<_, String>(&explain);
            query = match name {
                "due endpoints" => query.bind(now),
                "busy" => query.bind(endpoint).bind(now),
                "claim" => query
                    .bind(now + 1000)
                    .bind(Uuid::new_v4())
                    .bind(now)
                    .bind(endpoint)
                    .bind(5_i64),
                "next due" | "outbox stats" => query.bind(PAUSED_AT),
                _ => query.bind(now).bind(PAUSED_AT),
            };
            let plan = query.fetch_all(store.pool()).await.unwrap().join("\n");
            assert!(
                !plan.contains("Seq Scan on deliveries"),
                "{name}: sequential scan of deliveries:\n{plan}"
            );
            assert!(
                sort_allowed || !plan.contains("Sort"),
                "{name}: sorts rows:\n{plan}"
            );
            let index = match name {
                "busy" | "pause abandoned" => "deliveries_endpoint_leased",
                _ => "deliveries_endpoint_due",
            };
            assert!(
                plan.contains(index),
                "{name}: not served by {index}:\n{plan}"
            );
        }
        store.close().await;
    }
}
