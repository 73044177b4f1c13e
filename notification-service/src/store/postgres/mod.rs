//! The PostgreSQL backend: several replicas of the service on one database.
//!
//! Every write is an ordinary transaction on the pool ([`intake`] records webhooks,
//! [`queue`] claims email jobs and records what became of them). What the SQLite backend
//! gets from its single writer, this one gets from the database: unique keys for
//! deduplication, `FOR UPDATE SKIP LOCKED` for claims and a per-order advisory lock
//! ([`lock_order`]) for the ordering rule (see the store's module docs).
//!
//! Ids are native `uuid`; they are bound as text and cast (`$1::uuid`), and read back
//! `::text`, so the row shapes are the SQLite backend's.

mod intake;
mod metrics;
mod queue;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use uuid::Uuid;
use webhook_common::pg_listen::Notifier;

use super::rows::{NotificationRow, ReceivedWebhookRow};
use super::{duration_ms, now_ms, Cursor, Notification, ReceivedWebhook};

/// The PostgreSQL schema's migrations, embedded at build time.
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The `LISTEN/NOTIFY` channel of "an email job is due now": the intake's and a release's
/// transactions notify it, every replica's worker listens.
pub(super) const JOBS_CHANNEL: &str = "notification_jobs";

/// How long to wait for a free pooled connection (and for the first one at startup).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock of one order, held until the transaction ends: `$1` is the order id
/// (text). Blocking; the intake takes it. 64-bit hash of the id: a collision only makes
/// two orders wait for each other.
const LOCK_ORDER: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// The order id of a notification row, hashed to its advisory lock key: for the claims and
/// renewals that *try* the lock (`pg_try_advisory_xact_lock`) inside their statements.
/// Must hash exactly what [`LOCK_ORDER`] is given.
macro_rules! order_lock_key {
    () => {
        "hashtextextended(order_id::text, 0)"
    };
}
pub(crate) use order_lock_key;

/// The PostgreSQL database. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub(super) struct PgStore {
    /// Every read and write of this replica. Transactions are short (a few statements, no
    /// waiting on anything but row and advisory locks of one order), so one pool serves the
    /// requests and the worker alike.
    pool: PgPool,
    /// Wakes every replica's worker after a commit that made a job due now (after the commit,
    /// not in it: see [`webhook_common::pg_listen`] for why).
    notifier: Notifier,
}

impl PgStore {
    /// Connects a pool of `max_connections` to `url`, with `synchronous_commit=on` on every
    /// connection whatever the server's default: a committed intake is flushed before the
    /// 2xx. Fails if the server does not answer within [`ACQUIRE_TIMEOUT`]. Messages show
    /// `shown` (the URL with any `user:password@` redacted), never the raw URL.
    pub async fn connect(url: &str, shown: &str, max_connections: u32) -> anyhow::Result<PgStore> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| {
                // The parse error may quote the URL; say which setting, not what it holds.
                anyhow::anyhow!(
                    "DATABASE_URL {shown:?} is not a valid postgres:// URL \
                     (e.g. postgres://user:password@host:5432/notifications)"
                )
            })?
            .application_name("notification-service")
            .options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .with_context(|| format!("DATABASE_URL {shown:?}: cannot connect to PostgreSQL"))?;
        let notifier = Notifier::spawn(&pool, JOBS_CHANNEL);
        Ok(PgStore { pool, notifier })
    }

    /// Wakes the workers of every replica; call it after the commit that made a job due.
    fn wake_workers(&self) {
        self.notifier.notify();
    }

    /// The pool, for migrations, readiness, `LISTEN` and tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A page of notifications, newest first, starting after `cursor`.
    pub async fn list_notifications(
        &self,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<Notification>, sqlx::Error> {
        let (before_ms, before_id) = match cursor {
            Some(c) => (c.created_at_ms, c.id),
            // Past every row: uuids compare as their bytes, like the hex text SQLite sorts.
            None => (i64::MAX, Uuid::max()),
        };
        let rows: Vec<NotificationRow> = sqlx::query_as(
            "SELECT id::text AS id, webhook_id, event_type, order_id::text AS order_id,
                    recipient, subject, body, status, attempts, last_error, created_at, sent_at
             FROM notifications
             WHERE (created_at, id) < ($1, $2::uuid)
             ORDER BY created_at DESC, id DESC
             LIMIT $3",
        )
        .bind(before_ms)
        .bind(before_id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(NotificationRow::into_domain)
            .collect())
    }

    /// One notification with its body.
    pub async fn get_notification(&self, id: Uuid) -> Result<Option<Notification>, sqlx::Error> {
        let row: Option<NotificationRow> = sqlx::query_as(
            "SELECT id::text AS id, webhook_id, event_type, order_id::text AS order_id,
                    recipient, subject, body, status, attempts, last_error, created_at, sent_at
             FROM notifications WHERE id = $1::uuid",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(NotificationRow::into_domain))
    }

    /// The most recent received webhooks, newest first (for the read API).
    pub async fn list_received(&self, limit: u32) -> Result<Vec<ReceivedWebhook>, sqlx::Error> {
        let rows: Vec<ReceivedWebhookRow> = sqlx::query_as(
            "SELECT webhook_id, event_type, order_id::text AS order_id, event_at, outcome,
                    received_at
             FROM received_webhooks ORDER BY received_at DESC, webhook_id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(ReceivedWebhookRow::into_domain)
            .collect())
    }

    /// Deletes up to `batch` finished notifications and up to `batch` unused order states
    /// older than `retention`, in one transaction (see `Store::purge_finished`). Replicas
    /// running it at once delete disjoint rows or nothing.
    pub async fn purge_finished(
        &self,
        retention: Duration,
        batch: u32,
    ) -> Result<(u64, u64), sqlx::Error> {
        let cutoff = now_ms().saturating_sub(duration_ms(retention));
        let mut tx = self.pool.begin().await?;
        let notifications = sqlx::query(
            "DELETE FROM notifications WHERE id IN (
                 SELECT id FROM notifications
                 WHERE created_at < $1 AND status IN ('sent', 'cancelled')
                 ORDER BY created_at LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let states = sqlx::query(
            "DELETE FROM order_states WHERE order_id IN (
                 SELECT order_id FROM order_states AS state
                 WHERE updated_at < $1
                   AND NOT EXISTS (SELECT 1 FROM notifications AS n
                                   WHERE n.order_id = state.order_id
                                     AND n.status IN ('queued', 'failed'))
                 ORDER BY updated_at LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((notifications, states))
    }

    /// Deletes up to `batch` dedup records older than `retention`; returns how many went.
    pub async fn delete_expired(
        &self,
        retention: Duration,
        batch: u32,
    ) -> Result<u64, sqlx::Error> {
        let cutoff = now_ms().saturating_sub(duration_ms(retention));
        let deleted = sqlx::query(
            "DELETE FROM received_webhooks WHERE webhook_id IN (
                 SELECT webhook_id FROM received_webhooks WHERE received_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(deleted)
    }
}

/// Takes the advisory lock of `order_id` for the rest of `tx`, waiting while another
/// transaction holds it. Every intake of an order takes it before it reads the order's
/// state, so the read-modify-write of `order_states`, the lease read and the cancellations
/// of one order never interleave with another replica's; claims and renewals only try it.
pub(super) async fn lock_order(
    tx: &mut sqlx::PgConnection,
    order_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(LOCK_ORDER).bind(order_id).execute(tx).await?;
    Ok(())
}
