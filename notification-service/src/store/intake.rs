//! Recording a verified webhook: the dedup record, the order's state and the email job, as
//! one write of the group commit.

use sqlx::{Connection as _, SqliteConnection};
use uuid::Uuid;

use super::{
    decide, now_ms, to_ms, IncomingWebhook, IntakeOutcome, OrderEventKind, OrderState, Store,
    WriteError, MAX_RECORDED_TYPE_LEN,
};

impl Store {
    /// Records a verified webhook and, if it asks for an email that the ordering rule
    /// ([`decide`]) allows, enqueues the email job — all in one write, so a webhook is
    /// either fully recorded with its job or not at all, and a repeat of the same
    /// `webhook-id` (even concurrent) finds the record and changes nothing.
    ///
    /// Returns once the batch holding the write has committed (`synchronous=FULL`: fsynced),
    /// so the caller may acknowledge the webhook. Writes of one batch run one after the
    /// other in one transaction, so of two concurrent deliveries of one `webhook-id` the
    /// second sees the first's row: the unique insert decides, exactly as across batches.
    #[tracing::instrument(skip_all, fields(webhook_id = %webhook.webhook_id))]
    pub async fn record_webhook(
        &self,
        webhook: &IncomingWebhook,
    ) -> Result<IntakeOutcome, WriteError> {
        let webhook = webhook.clone();
        self.writer
            .write(move |conn| {
                Box::pin(async move {
                    // A savepoint of its own, so that a duplicate leaves no trace even when
                    // it got as far as writing (see `record_in`); the writer's savepoint
                    // around it only rolls back on an error.
                    let mut savepoint = conn.begin().await?;
                    let outcome = record_in(&mut savepoint, &webhook).await?;
                    if outcome == IntakeOutcome::Duplicate {
                        savepoint.rollback().await?;
                    } else {
                        savepoint.commit().await?;
                    }
                    Ok(outcome)
                })
            })
            .await
    }
}

/// The intake's SQL, run inside the writer's transaction. On `Duplicate` the caller rolls
/// back whatever it wrote.
///
/// SQLite: the writer's `BEGIN IMMEDIATE` holds the write lock for the whole batch, so the
/// order_states read-modify-write below cannot interleave with another writer. PostgreSQL:
/// the dedup is still decided by the unique insert, but the state must be read with
/// `SELECT ... FOR UPDATE` (after inserting the row if missing, with ON CONFLICT DO NOTHING)
/// so that two replicas' events of one order take turns.
async fn record_in(
    conn: &mut SqliteConnection,
    webhook: &IncomingWebhook,
) -> Result<IntakeOutcome, sqlx::Error> {
    // The time the write runs, not when the request arrived: the lease comparisons below
    // must use the clock the claims use.
    let now = now_ms();
    let event_at = to_ms(webhook.event_at);
    let event_type: String = webhook
        .event_type
        .chars()
        .take(MAX_RECORDED_TYPE_LEN)
        .collect();
    let order_id = webhook.email.as_ref().map(|e| e.order_id.to_string());

    let inserted = sqlx::query(
        "INSERT INTO received_webhooks (webhook_id, event_type, order_id, event_at, outcome, received_at)
         VALUES ($1, $2, $3, $4, 'pending', $5)
         ON CONFLICT (webhook_id) DO NOTHING",
    )
    .bind(&webhook.webhook_id)
    .bind(&event_type)
    .bind(&order_id)
    .bind(event_at)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // The notification outlives the dedup record: a delivery redelivered after cleanup
    // is still recognised.
    let notified: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM notifications WHERE webhook_id = $1")
            .bind(&webhook.webhook_id)
            .fetch_optional(&mut *conn)
            .await?;
    if inserted == 0 || notified.is_some() {
        return Ok(IntakeOutcome::Duplicate);
    }

    let outcome = match &webhook.email {
        None => IntakeOutcome::Ignored,
        Some(email) => {
            let order_key = email.order_id.to_string();
            let state: OrderState = sqlx::query_as(
                "SELECT paid_at, last_failure_at FROM order_states WHERE order_id = $1",
            )
            .bind(&order_key)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or_default();
            if !decide(state, email.kind, event_at) {
                IntakeOutcome::Stale
            } else {
                let (paid_at, last_failure_at) = match email.kind {
                    OrderEventKind::Paid => (Some(event_at), state.last_failure_at),
                    OrderEventKind::PaymentFailed => (state.paid_at, Some(event_at)),
                };
                sqlx::query(
                    "INSERT INTO order_states (order_id, paid_at, last_failure_at, updated_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (order_id) DO UPDATE
                     SET paid_at = excluded.paid_at,
                         last_failure_at = excluded.last_failure_at,
                         updated_at = excluded.updated_at",
                )
                .bind(&order_key)
                .bind(paid_at)
                .bind(last_failure_at)
                .bind(now)
                .execute(&mut *conn)
                .await?;
                // The confirmation waits until no worker holds a failure notice of its
                // order (see `decide`); everything else is due at once.
                let mut due_at = now;
                if email.kind == OrderEventKind::Paid {
                    let held_until: Option<i64> = sqlx::query_scalar(
                        "SELECT MAX(lease_until) FROM notifications
                         WHERE order_id = $1 AND event_type = 'order.payment_failed'
                           AND status = 'queued' AND lease_until >= $2",
                    )
                    .bind(&order_key)
                    .bind(now)
                    .fetch_one(&mut *conn)
                    .await?;
                    due_at = held_until.map_or(now, |t| t.saturating_add(1));
                    // Rule 1's tail: a failure notice must not follow the confirmation.
                    // Jobs under a live lease are being sent and cannot be recalled.
                    sqlx::query(
                        "UPDATE notifications
                         SET status = 'cancelled', last_error = 'superseded by order.paid'
                         WHERE order_id = $1 AND event_type = 'order.payment_failed'
                           AND status = 'queued' AND (lease_until IS NULL OR lease_until < $2)",
                    )
                    .bind(&order_key)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                }
                let id = Uuid::now_v7();
                let queued = sqlx::query(
                    "INSERT INTO notifications
                        (id, webhook_id, event_type, order_id, recipient, subject, body,
                         status, attempts, next_attempt_at, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', 0, $8, $9)
                     ON CONFLICT (webhook_id) DO NOTHING",
                )
                .bind(id.to_string())
                .bind(&webhook.webhook_id)
                .bind(&event_type)
                .bind(&order_key)
                .bind(&email.to)
                .bind(&email.subject)
                .bind(&email.body)
                .bind(due_at)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if queued == 0 {
                    // The dedup record expired but the notification from the first
                    // delivery is still here: still a duplicate (its writes are undone).
                    return Ok(IntakeOutcome::Duplicate);
                }
                IntakeOutcome::Queued {
                    notification_id: id,
                }
            }
        }
    };
    sqlx::query("UPDATE received_webhooks SET outcome = $1 WHERE webhook_id = $2")
        .bind(outcome.recorded_as())
        .bind(&webhook.webhook_id)
        .execute(&mut *conn)
        .await?;
    Ok(outcome)
}
