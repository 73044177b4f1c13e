//! Recording a verified webhook: the dedup record, the order's state and the email job, in
//! one transaction; the statements and their order are the SQLite backend's.
//!
//! The steps of `store::intake`: [`RECORD`] inserts the dedup record (a duplicate stops
//! there); a handled event then takes its order's advisory lock ([`lock_order`]), [`STATE`]
//! reads what the ordering rule needs, `rule` decides in Rust, and the ruling is applied
//! ([`STALE`], or the statements of a queued email; the store wakes every replica's worker
//! once it commits).
//!
//! Why this holds across replicas: each statement runs on a snapshot taken when it starts,
//! and every statement after the lock starts after it is held. So [`STATE`] sees everything
//! any other intake, claim or lease renewal of the order committed before (they hold the
//! lock, or for a claim or renewal try it, while they touch the order), and nothing of
//! theirs can commit in between until this transaction ends.

use sqlx::{PgConnection, Row as _};
use uuid::Uuid;

use super::{lock_order, PgStore};
use crate::store::intake::{rule, OrderSnapshot, PreparedWebhook, Queueing, Ruling};
use crate::store::{now_ms, IncomingWebhook, IntakeOutcome, OrderEmail, OrderState};

/// Inserts the dedup record, unless this `webhook-id` was recorded before (the primary key
/// decides; a concurrent insert of the same id on another replica waits for that one's
/// commit, then inserts nothing) or produced a notification whose dedup record has been
/// cleaned up since (the notification outlives it); inserts one row for a first delivery,
/// none for a duplicate.
///
/// `$1` webhook id, `$2` event type, `$3` order id (NULL for unhandled types), `$4` event
/// time, `$5` now, `$6` the outcome recorded: final for an unhandled type (`ignored`),
/// otherwise `pending` until the ruling sets it, in the same transaction, so `pending` is
/// never seen committed.
const RECORD: &str = "INSERT INTO received_webhooks
         (webhook_id, event_type, order_id, event_at, outcome, received_at)
     SELECT $1, $2, $3::uuid, $4, $6, $5
     WHERE NOT EXISTS (SELECT 1 FROM notifications WHERE webhook_id = $1)
     ON CONFLICT (webhook_id) DO NOTHING";

/// The order `$1`'s state, and until when a worker holds a failure notice of it (a lease is
/// live while `lease_expires_at >= now`, `$2`, as the claim reads it).
const STATE: &str = "SELECT state.paid_at, state.last_failure_at,
            (SELECT MAX(lease_expires_at) FROM notifications
             WHERE order_id = $1::uuid AND event_type = 'order.payment_failed'
               AND status = 'queued' AND lease_expires_at >= $2) AS notice_lease_expires_at
     FROM (SELECT 1) AS one LEFT JOIN order_states AS state ON state.order_id = $1::uuid";

/// The outcome of a stale event.
const STALE: &str = "UPDATE received_webhooks SET outcome = 'stale' WHERE webhook_id = $1";

/// The outcome of an event that [`decide`](crate::store::decide) lets through.
const QUEUED: &str = "UPDATE received_webhooks SET outcome = 'queued' WHERE webhook_id = $1";

/// The order `$1`'s new state: `paid_at` `$2`, `last_failure_at` `$3`, at `$4`.
const SET_STATE: &str = "INSERT INTO order_states (order_id, paid_at, last_failure_at, updated_at)
     VALUES ($1::uuid, $2, $3, $4)
     ON CONFLICT (order_id) DO UPDATE
     SET paid_at = excluded.paid_at,
         last_failure_at = excluded.last_failure_at,
         updated_at = excluded.updated_at";

/// The failure notices of order `$1` that a payment supersedes (rule 1's tail: queued and
/// not held by a worker at `$2`; one under a live lease is being sent and cannot be recalled).
const CANCEL_NOTICES: &str = "UPDATE notifications
     SET status = 'cancelled', last_error = 'superseded by order.paid'
     WHERE order_id = $1::uuid AND event_type = 'order.payment_failed'
       AND status = 'queued' AND (lease_expires_at IS NULL OR lease_expires_at < $2)";

/// The email job: `$1` id, `$2` webhook id, `$3` event type, `$4` order id, `$5` recipient,
/// `$6` subject, `$7` body, `$8` when it is due, `$9` now, `$10` the trace id the webhook
/// arrived with (NULL without one). No `ON CONFLICT`: [`RECORD`] inserted this webhook's
/// dedup record, so no other transaction can be queueing it, and a conflict is a bug that
/// fails the transaction.
const QUEUE: &str = "INSERT INTO notifications
         (id, webhook_id, event_type, order_id, recipient, subject, body,
          status, attempts, next_attempt_at, created_at, trace_id)
     VALUES ($1::uuid, $2, $3, $4::uuid, $5, $6, $7, 'queued', 0, $8, $9, $10)";

impl PgStore {
    /// Records a verified webhook (see `Store::record_webhook`) in one transaction; returns
    /// once it is committed.
    pub async fn record_webhook(
        &self,
        webhook: &IncomingWebhook,
    ) -> Result<IntakeOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let outcome = record_in(&mut tx, webhook).await?;
        tx.commit().await?;
        if matches!(outcome, IntakeOutcome::Queued { .. }) {
            self.wake_workers();
        }
        Ok(outcome)
    }
}

/// The intake's steps (see `store::intake`), inside its transaction.
async fn record_in(
    tx: &mut PgConnection,
    webhook: &IncomingWebhook,
) -> Result<IntakeOutcome, sqlx::Error> {
    let webhook = PreparedWebhook::prepare(webhook);
    if !insert_record(tx, &webhook).await? {
        return Ok(IntakeOutcome::Duplicate);
    }
    let Some((email, order_id)) = webhook.handled() else {
        return Ok(IntakeOutcome::Ignored);
    };
    lock_order(tx, order_id).await?;
    // The time after the lock: the lease comparisons must use the clock the claims use,
    // at the moment nothing of this order can change any more.
    let now = now_ms();
    let snapshot = read_order(tx, order_id, now).await?;
    match rule(snapshot, email.kind, webhook.event_at, now) {
        Ruling::Stale => {
            sqlx::query(STALE)
                .bind(&webhook.webhook.webhook_id)
                .execute(&mut *tx)
                .await?;
            Ok(IntakeOutcome::Stale)
        }
        Ruling::Queue(queueing) => {
            let notification_id = queue_email(tx, &webhook, email, order_id, queueing, now).await?;
            Ok(IntakeOutcome::Queued { notification_id })
        }
    }
}

/// The outcome the dedup record is inserted with: final (`ignored`) for an event type this
/// service ignores, otherwise `pending`, which the ruling sets in the same transaction, so
/// `pending` is never seen committed.
fn first_outcome(webhook: &PreparedWebhook<'_>) -> &'static str {
    match webhook.webhook.email {
        None => IntakeOutcome::Ignored.recorded_as(),
        Some(_) => "pending",
    }
}

/// Inserts the dedup record ([`RECORD`]); `false` for a duplicate.
async fn insert_record(
    tx: &mut PgConnection,
    webhook: &PreparedWebhook<'_>,
) -> Result<bool, sqlx::Error> {
    let recorded = sqlx::query(RECORD)
        .bind(&webhook.webhook.webhook_id)
        .bind(&webhook.event_type)
        .bind(&webhook.order_id)
        .bind(webhook.event_at)
        .bind(now_ms())
        .bind(first_outcome(webhook))
        .execute(&mut *tx)
        .await?
        .rows_affected();
    Ok(recorded == 1)
}

/// What the ordering rule reads of `order_id` at `now` ([`STATE`]); under the order's lock.
async fn read_order(
    tx: &mut PgConnection,
    order_id: &str,
    now: i64,
) -> Result<OrderSnapshot, sqlx::Error> {
    let row = sqlx::query(STATE)
        .bind(order_id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
    Ok(OrderSnapshot {
        state: OrderState {
            paid_at: row.try_get(0)?,
            last_failure_at: row.try_get(1)?,
        },
        notice_lease_expires_at: row.try_get(2)?,
    })
}

/// Writes a queued email of `order_id`: the dedup record's outcome, the order's state, the
/// cancelled failure notices of a confirmation, and the job; returns the job's id.
async fn queue_email(
    tx: &mut PgConnection,
    webhook: &PreparedWebhook<'_>,
    email: &OrderEmail,
    order_id: &str,
    queueing: Queueing,
    now: i64,
) -> Result<Uuid, sqlx::Error> {
    sqlx::query(QUEUED)
        .bind(&webhook.webhook.webhook_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(SET_STATE)
        .bind(order_id)
        .bind(queueing.state.paid_at)
        .bind(queueing.state.last_failure_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    if queueing.cancels_notices {
        sqlx::query(CANCEL_NOTICES)
            .bind(order_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    let id = Uuid::now_v7();
    sqlx::query(QUEUE)
        .bind(id.to_string())
        .bind(&webhook.webhook.webhook_id)
        .bind(&webhook.event_type)
        .bind(order_id)
        .bind(&email.to)
        .bind(&email.subject)
        .bind(&email.body)
        .bind(queueing.due_at)
        .bind(now)
        .bind(&webhook.webhook.trace_id)
        .execute(&mut *tx)
        .await?;
    Ok(id)
}
