//! Recording a verified webhook: the dedup record, the order's state and the email job, as
//! one write of the group commit.
//!
//! The steps of `store::intake` run on the writer's thread, back to back. Here the order is
//! read ([`STATE`]) and the ruling made (`rule`, in Rust) before the dedup record is inserted
//! ([`RECORD`]), so that the record is written once, with its final outcome, and never
//! updated in the same transaction: the writer's `BEGIN IMMEDIATE` holds SQLite's write lock
//! for the whole batch, so nothing can change between the read and the insert. A duplicate
//! (the insert changes no row) stops there with nothing written; so does an event type this
//! service does not handle, after its record.

use rusqlite::{params, Connection};
use uuid::Uuid;

use webhook_common::group_commit::WriteError;

use super::SqliteStore;
use crate::store::intake::{rule, OrderSnapshot, PreparedWebhook, Queueing, Ruling};
use crate::store::{now_ms, IncomingWebhook, IntakeOutcome, OrderEmail, OrderState};

/// Inserts the dedup record, unless this `webhook-id` was recorded before (the primary key
/// decides) or produced a notification whose dedup record has been cleaned up since (the
/// notification outlives it); changes one row for a first delivery, none for a duplicate.
///
/// `?1` webhook id, `?2` event type, `?3` order id (NULL for unhandled types), `?4` event
/// time, `?5` now, `?6` the outcome recorded, final: `ignored` for an unhandled type, else
/// what the ruling made of it (`queued` or `stale`).
const RECORD: &str = "INSERT INTO received_webhooks
         (webhook_id, event_type, order_id, event_at, outcome, received_at)
     SELECT ?1, ?2, ?3, ?4, ?6, ?5
     WHERE NOT EXISTS (SELECT 1 FROM notifications WHERE webhook_id = ?1)
     ON CONFLICT (webhook_id) DO NOTHING";

/// The order `?1`'s state, and until when a worker holds a failure notice of it (a lease is
/// live while `lease_expires_at >= now`, `?2`, as the claim reads it). An order without a
/// `last_failure_at` has no failure notice (see `Queueing::cancels_notices`), so the
/// notices are looked up only for one that has (SQLite evaluates `CASE` lazily).
const STATE: &str = "SELECT state.paid_at, state.last_failure_at,
            CASE WHEN state.last_failure_at IS NOT NULL THEN
                (SELECT MAX(lease_expires_at) FROM notifications
                 WHERE order_id = ?1 AND event_type = 'order.payment_failed'
                   AND status = 'queued' AND lease_expires_at >= ?2)
            END AS notice_lease_expires_at
     FROM (SELECT 1) AS one LEFT JOIN order_states AS state ON state.order_id = ?1";

/// The order `?1`'s new state: `paid_at` `?2`, `last_failure_at` `?3`, at `?4`.
const SET_STATE: &str = "INSERT INTO order_states (order_id, paid_at, last_failure_at, updated_at)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (order_id) DO UPDATE
     SET paid_at = excluded.paid_at,
         last_failure_at = excluded.last_failure_at,
         updated_at = excluded.updated_at";

/// The failure notices of order `?1` that a payment supersedes (rule 1's tail: queued and
/// not held by a worker at `?2`; one under a live lease is being sent and cannot be recalled).
const CANCEL_NOTICES: &str = "UPDATE notifications
     SET status = 'cancelled', last_error = 'superseded by order.paid'
     WHERE order_id = ?1 AND event_type = 'order.payment_failed'
       AND status = 'queued' AND (lease_expires_at IS NULL OR lease_expires_at < ?2)";

/// The email job: `?1` id, `?2` webhook id, `?3` event type, `?4` order id, `?5` recipient,
/// `?6` subject, `?7` body, `?8` when it is due, `?9` now, `?10` the trace id the webhook
/// arrived with (NULL without one). No `ON CONFLICT`: [`RECORD`] found no notification of
/// this webhook under the writer's lock, so a conflict is a bug, and it fails the write.
const QUEUE: &str = "INSERT INTO notifications
         (id, webhook_id, event_type, order_id, recipient, subject, body,
          status, attempts, next_attempt_at, created_at, trace_id)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', 0, ?8, ?9, ?10)";

impl SqliteStore {
    /// Records a verified webhook and, if it asks for an email that the ordering rule
    /// ([`decide`](crate::store::decide)) allows, enqueues the email job — all in one write,
    /// so a webhook is either fully recorded with its job or not at all, and a repeat of the
    /// same `webhook-id` (even concurrent) finds the record and changes nothing.
    ///
    /// Returns once the batch holding the write has committed (`synchronous=FULL`: fsynced),
    /// so the caller may acknowledge the webhook. Writes of one batch run one after the
    /// other in one transaction, so of two concurrent deliveries of one `webhook-id` the
    /// second sees the first's row: the unique insert decides, exactly as across batches.
    pub async fn record_webhook(
        &self,
        webhook: &IncomingWebhook,
    ) -> Result<IntakeOutcome, WriteError> {
        let webhook = webhook.clone();
        self.writer
            .write(move |conn| record_in(conn, &webhook))
            .await
    }
}

/// The intake's steps (see `store::intake`), run inside the writer's transaction.
///
/// SQLite: the writer's `BEGIN IMMEDIATE` holds the write lock for the whole batch, so
/// nothing can change between the statements (the order_states read-modify-write, the lease
/// read, the dedup check) but this write.
fn record_in(conn: &Connection, webhook: &IncomingWebhook) -> rusqlite::Result<IntakeOutcome> {
    // The time the write runs, not when the request arrived: the lease comparisons must
    // use the clock the claims use.
    let now = now_ms();
    let webhook = PreparedWebhook::prepare(webhook);
    let Some((email, order_id)) = webhook.handled() else {
        return Ok(
            if insert_record(conn, &webhook, IntakeOutcome::Ignored, now)? {
                IntakeOutcome::Ignored
            } else {
                IntakeOutcome::Duplicate
            },
        );
    };
    let snapshot = read_order(conn, order_id, now)?;
    match rule(snapshot, email.kind, webhook.event_at, now) {
        Ruling::Stale => Ok(
            if insert_record(conn, &webhook, IntakeOutcome::Stale, now)? {
                IntakeOutcome::Stale
            } else {
                IntakeOutcome::Duplicate
            },
        ),
        Ruling::Queue(queueing) => {
            let notification_id = Uuid::now_v7();
            let queued = IntakeOutcome::Queued { notification_id };
            if !insert_record(conn, &webhook, queued, now)? {
                return Ok(IntakeOutcome::Duplicate);
            }
            queue_email(
                conn,
                &webhook,
                email,
                order_id,
                queueing,
                notification_id,
                now,
            )?;
            Ok(queued)
        }
    }
}

/// Inserts the dedup record ([`RECORD`]) with the outcome it ends with; `false` for a
/// duplicate, which writes nothing.
fn insert_record(
    conn: &Connection,
    webhook: &PreparedWebhook<'_>,
    outcome: IntakeOutcome,
    now: i64,
) -> rusqlite::Result<bool> {
    let recorded = conn.prepare_cached(RECORD)?.execute(params![
        webhook.webhook.webhook_id,
        webhook.event_type,
        webhook.order_id,
        webhook.event_at,
        now,
        outcome.recorded_as()
    ])?;
    Ok(recorded == 1)
}

/// What the ordering rule reads of `order_id` at `now` ([`STATE`]).
fn read_order(conn: &Connection, order_id: &str, now: i64) -> rusqlite::Result<OrderSnapshot> {
    conn.prepare_cached(STATE)?
        .query_row(params![order_id, now], |row| {
            Ok(OrderSnapshot {
                state: OrderState {
                    paid_at: row.get(0)?,
                    last_failure_at: row.get(1)?,
                },
                notice_lease_expires_at: row.get(2)?,
            })
        })
}

/// Writes a queued email of `order_id` as job `id`: the order's state, the cancelled
/// failure notices of a confirmation, and the job.
fn queue_email(
    conn: &Connection,
    webhook: &PreparedWebhook<'_>,
    email: &OrderEmail,
    order_id: &str,
    queueing: Queueing,
    id: Uuid,
    now: i64,
) -> rusqlite::Result<()> {
    let state = queueing.state;
    conn.prepare_cached(SET_STATE)?.execute(params![
        order_id,
        state.paid_at,
        state.last_failure_at,
        now
    ])?;
    if queueing.cancels_notices {
        conn.prepare_cached(CANCEL_NOTICES)?
            .execute(params![order_id, now])?;
    }
    conn.prepare_cached(QUEUE)?.execute(params![
        id.to_string(),
        webhook.webhook.webhook_id,
        webhook.event_type,
        order_id,
        email.to,
        email.subject,
        email.body,
        queueing.due_at,
        now,
        webhook.webhook.trace_id
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let store = SqliteStore::connect(&url, &url).await.unwrap();
        (dir, store)
    }

    /// The dedup record, the email job and a job's change of status check `outcome` and
    /// `status` in place: a `CHECK (... IN (...))` of more than two values made SQLite build
    /// a temporary table for each of them (migration 0005). The rules themselves still hold.
    #[tokio::test]
    async fn the_status_checks_need_no_temporary_table_and_still_refuse_unknown_values() {
        let (_dir, store) = store().await;
        super::super::MIGRATOR.run(store.pool()).await.unwrap();
        for sql in [
            RECORD,
            QUEUE,
            "UPDATE notifications SET status = 'sent', sent_at = ?3 \
             WHERE id = ?1 AND claim_token = ?2 AND status = 'queued'",
        ] {
            let ops = test_support::migrations::sqlite_opcodes(store.pool(), sql).await;
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql}: builds a temporary table: {ops:?}"
            );
        }
        let job = |id: &str, status: &str| {
            sqlx::query(
                "INSERT INTO notifications (id, webhook_id, event_type, order_id, recipient, \
                 subject, body, status, attempts, next_attempt_at, created_at) \
                 VALUES (?1, ?1, 'order.paid', 'o', 'a@example.com', 's', 'b', ?2, 0, 0, 0)",
            )
            .bind(id.to_owned())
            .bind(status.to_owned())
        };
        let err = job("x", "delivered")
            .execute(store.pool())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
        for status in ["queued", "sent", "failed", "cancelled"] {
            job(status, status).execute(store.pool()).await.unwrap();
        }
        let record = |id: &str, outcome: &str| {
            sqlx::query(
                "INSERT INTO received_webhooks (webhook_id, event_type, event_at, outcome, \
                 received_at) VALUES (?1, 'order.paid', 0, ?2, 0)",
            )
            .bind(id.to_owned())
            .bind(outcome.to_owned())
        };
        let err = record("x", "sent").execute(store.pool()).await.unwrap_err();
        assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
        for outcome in ["pending", "queued", "ignored", "stale"] {
            record(outcome, outcome)
                .execute(store.pool())
                .await
                .unwrap();
        }
        store.close().await;
    }

    /// Migration 0005 rebuilds `notifications` and `received_webhooks`: a database written
    /// before it keeps every row, leases and due times included.
    #[tokio::test]
    async fn rebuilding_the_tables_keeps_every_row() {
        let (_dir, store) = store().await;
        let before =
            test_support::migrations::migrations_before(&super::super::MIGRATOR, "checks in place");
        before.run(store.pool()).await.unwrap();
        for sql in [
            "INSERT INTO notifications (id, webhook_id, event_type, order_id, recipient, subject,
                 body, status, attempts, next_attempt_at, claim_token, lease_expires_at,
                 last_error, created_at, sent_at, trace_id)
             VALUES ('n1', 'w1', 'order.paid', 'o1', 'a@example.com', 's', 'b', 'queued', 1,
                     100, 'token', 200, 'boom', 5, NULL, 'trace'),
                    ('n2', 'w2', 'order.paid', 'o2', 'a@example.com', 's', 'b', 'sent', 1,
                     100, NULL, NULL, NULL, 5, 6, NULL)",
            "INSERT INTO received_webhooks (webhook_id, event_type, order_id, event_at, outcome,
                 received_at)
             VALUES ('w1', 'order.paid', 'o1', 1, 'queued', 2),
                    ('w3', 'order.shipped', NULL, 1, 'ignored', 2)",
        ] {
            sqlx::query(sql).execute(store.pool()).await.unwrap();
        }
        super::super::MIGRATOR.run(store.pool()).await.unwrap();

        type Job = (
            String,
            String,
            Option<i64>,
            Option<String>,
            Option<String>,
            Option<i64>,
        );
        let jobs: Vec<Job> = sqlx::query_as(
            "SELECT id, status, due_at, claim_token, trace_id, sent_at FROM notifications
             ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(
            jobs,
            [
                (
                    "n1".into(),
                    "queued".into(),
                    Some(201),
                    Some("token".into()),
                    Some("trace".into()),
                    None
                ),
                ("n2".into(), "sent".into(), None, None, None, Some(6)),
            ]
        );
        let records: Vec<(String, String)> =
            sqlx::query_as("SELECT webhook_id, outcome FROM received_webhooks ORDER BY webhook_id")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(
            records,
            [
                ("w1".into(), "queued".into()),
                ("w3".into(), "ignored".into())
            ]
        );
        store.close().await;
    }
}
