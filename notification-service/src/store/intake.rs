//! Recording a verified webhook: the dedup record, the order's state and the email job, as
//! one write of the group commit, in at most two round trips to the database.
//!
//! Each statement is a round trip to the connection's worker thread, and the writer runs
//! writes one after another, so the intake sends its statements in two query strings
//! (SQLite runs every statement of a string, in order, in one call; `$n` is the n-th bind
//! of the string in each of them): the first records the delivery and reads what the
//! ordering rule needs, [`decide`] rules in Rust, the second applies the ruling. A
//! duplicate, or an event type this service does not handle, takes only the first.

use std::sync::Arc;

use sqlx::SqliteConnection;
use uuid::Uuid;

use super::{
    decide, now_ms, to_ms, IncomingWebhook, IntakeOutcome, OrderEventKind, OrderState, Store,
    WriteError, MAX_RECORDED_TYPE_LEN,
};

/// Round trip 1: inserts the dedup record, unless this `webhook-id` was recorded before
/// (the primary key decides) or produced a notification whose dedup record has been cleaned
/// up since (the notification outlives it). Then reads, in the same call, whether it was
/// inserted (`changes()`: rows changed by the previous statement), the order's state, and
/// until when a worker holds a failure notice of the order (a lease is live while
/// `lease_until >= now`, as the claim reads it).
///
/// `$1` webhook id, `$2` event type, `$3` order id (NULL for unhandled types), `$4` event
/// time, `$5` now, `$6` the outcome recorded: final for an unhandled type (`ignored`),
/// otherwise `pending` until round trip 2 sets it, in the same transaction, so `pending`
/// is never seen committed.
///
/// PostgreSQL has no `changes()` and no multi-statement prepared queries: there, the insert
/// is `INSERT ... RETURNING` in a CTE of the read, and the state is read `FOR UPDATE` so
/// that two replicas' events of one order take turns.
const RECORD: &str = "INSERT INTO received_webhooks
         (webhook_id, event_type, order_id, event_at, outcome, received_at)
     SELECT $1, $2, $3, $4, $6, $5
     WHERE NOT EXISTS (SELECT 1 FROM notifications WHERE webhook_id = $1)
     ON CONFLICT (webhook_id) DO NOTHING;
     SELECT changes() AS recorded, state.paid_at, state.last_failure_at,
            (SELECT MAX(lease_until) FROM notifications
             WHERE order_id = $3 AND event_type = 'order.payment_failed'
               AND status = 'queued' AND lease_until >= $5) AS held_until
     FROM (SELECT 1) AS one LEFT JOIN order_states AS state ON state.order_id = $3";

/// Round trip 2 of a stale event: its outcome.
const STALE: &str = "UPDATE received_webhooks SET outcome = 'stale' WHERE webhook_id = $1";

/// Round trip 2 of an event that [`decide`] lets through: its outcome, the order's new
/// state, the failure notices a payment supersedes (rule 1's tail: queued and not held by a
/// worker; one under a live lease is being sent and cannot be recalled), and the job.
///
/// `$1` webhook id, `$2` event type, `$3` order id, `$4` now, `$5`/`$6` the order's new
/// `paid_at`/`last_failure_at`, `$7` whether the event is a payment (cancels failure
/// notices), `$8` notification id, `$9` recipient, `$10` subject, `$11` body, `$12` when the
/// job is due. The job's insert has no `ON CONFLICT`: round trip 1 found no notification of
/// this webhook under the writer's lock, so a conflict is a bug, and it fails the write.
const QUEUE: &str = "UPDATE received_webhooks SET outcome = 'queued' WHERE webhook_id = $1;
     INSERT INTO order_states (order_id, paid_at, last_failure_at, updated_at)
     VALUES ($3, $5, $6, $4)
     ON CONFLICT (order_id) DO UPDATE
     SET paid_at = excluded.paid_at,
         last_failure_at = excluded.last_failure_at,
         updated_at = excluded.updated_at;
     UPDATE notifications
     SET status = 'cancelled', last_error = 'superseded by order.paid'
     WHERE $7 AND order_id = $3 AND event_type = 'order.payment_failed'
       AND status = 'queued' AND (lease_until IS NULL OR lease_until < $4);
     INSERT INTO notifications
         (id, webhook_id, event_type, order_id, recipient, subject, body,
          status, attempts, next_attempt_at, created_at)
     VALUES ($8, $1, $2, $3, $9, $10, $11, 'queued', 0, $12, $4)";

/// What round trip 1 found.
#[derive(sqlx::FromRow)]
struct Recorded {
    /// 1 if the dedup record was inserted (a first delivery), 0 for a duplicate.
    recorded: i64,
    paid_at: Option<i64>,
    last_failure_at: Option<i64>,
    /// Until when a worker holds a failure notice of the order, if one does.
    held_until: Option<i64>,
}

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
        // Shared, not copied, by every run of the write (it may run twice).
        let webhook = Arc::new(webhook.clone());
        self.writer
            .write(move |conn| {
                let webhook = webhook.clone();
                Box::pin(async move { record_in(conn, &webhook).await })
            })
            .await
    }
}

/// The intake's SQL, run inside the writer's transaction: [`RECORD`], then, for a first
/// delivery of a handled type, [`STALE`] or [`QUEUE`].
///
/// SQLite: the writer's `BEGIN IMMEDIATE` holds the write lock for the whole batch, so
/// nothing can change between the two round trips (the order_states read-modify-write, the
/// lease read, the dedup check) but this write.
async fn record_in(
    conn: &mut SqliteConnection,
    webhook: &IncomingWebhook,
) -> Result<IntakeOutcome, sqlx::Error> {
    // The time the write runs, not when the request arrived: the lease comparisons must
    // use the clock the claims use.
    let now = now_ms();
    let event_at = to_ms(webhook.event_at);
    let event_type: String = webhook
        .event_type
        .chars()
        .take(MAX_RECORDED_TYPE_LEN)
        .collect();
    let order_id = webhook.email.as_ref().map(|e| e.order_id.to_string());
    let first_outcome = match webhook.email {
        None => IntakeOutcome::Ignored.recorded_as(),
        Some(_) => "pending",
    };
    // `fetch_all`, not `fetch_one`: `fetch_one` stops the string at its first row.
    let found: Vec<Recorded> = sqlx::query_as(RECORD)
        .bind(&webhook.webhook_id)
        .bind(&event_type)
        .bind(&order_id)
        .bind(event_at)
        .bind(now)
        .bind(first_outcome)
        .fetch_all(&mut *conn)
        .await?;
    let Some(found) = found.into_iter().next() else {
        return Err(sqlx::Error::RowNotFound);
    };
    if found.recorded != 1 {
        return Ok(IntakeOutcome::Duplicate);
    }
    let Some(email) = &webhook.email else {
        return Ok(IntakeOutcome::Ignored);
    };

    let state = OrderState {
        paid_at: found.paid_at,
        last_failure_at: found.last_failure_at,
    };
    if !decide(state, email.kind, event_at) {
        sqlx::query(STALE)
            .bind(&webhook.webhook_id)
            .execute(&mut *conn)
            .await?;
        return Ok(IntakeOutcome::Stale);
    }
    let is_payment = email.kind == OrderEventKind::Paid;
    let (paid_at, last_failure_at) = if is_payment {
        (Some(event_at), state.last_failure_at)
    } else {
        (state.paid_at, Some(event_at))
    };
    // The confirmation waits until no worker holds a failure notice of its order (see
    // `decide`); everything else is due at once.
    let due_at = match found.held_until {
        Some(held_until) if is_payment => held_until.saturating_add(1),
        _ => now,
    };
    let id = Uuid::now_v7();
    sqlx::query(QUEUE)
        .bind(&webhook.webhook_id)
        .bind(&event_type)
        .bind(&order_id)
        .bind(now)
        .bind(paid_at)
        .bind(last_failure_at)
        .bind(is_payment)
        .bind(id.to_string())
        .bind(&email.to)
        .bind(&email.subject)
        .bind(&email.body)
        .bind(due_at)
        .execute(&mut *conn)
        .await?;
    Ok(IntakeOutcome::Queued {
        notification_id: id,
    })
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::store::{from_ms, OrderEmail};

    fn webhook(
        id: &str,
        kind: Option<OrderEventKind>,
        order_id: Uuid,
        at_ms: i64,
    ) -> IncomingWebhook {
        let event_type = match kind {
            Some(OrderEventKind::Paid) => "order.paid",
            Some(OrderEventKind::PaymentFailed) => "order.payment_failed",
            None => "order.shipped",
        };
        IncomingWebhook {
            webhook_id: id.into(),
            event_type: event_type.into(),
            event_at: from_ms(at_ms),
            email: kind.map(|kind| OrderEmail {
                kind,
                order_id,
                to: format!("{id}@example.com"),
                subject: format!("subject of {id}"),
                body: format!("body of {id}"),
            }),
        }
    }

    /// Every column the intake's query strings write, checked after each kind of outcome:
    /// each statement ran, and each `$n` landed where it belongs.
    #[tokio::test]
    async fn every_statement_of_the_intake_runs_with_its_binds_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let store = Store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let pool = store.pool();
        let (order, t) = (Uuid::now_v7(), to_ms(OffsetDateTime::now_utc()) - 60_000);
        // The dedup record of `id`, as "id type order t+offset outcome".
        let received = |id: &'static str| async move {
            sqlx::query_scalar::<_, String>(
                "SELECT webhook_id || ' ' || event_type || ' '
                        || CASE WHEN order_id = $2 THEN 'order' ELSE COALESCE(order_id, '-') END
                        || ' t+' || (event_at - $3) || ' ' || outcome
                 FROM received_webhooks WHERE webhook_id = $1",
            )
            .bind(id)
            .bind(order.to_string())
            .bind(t)
            .fetch_one(pool)
            .await
            .unwrap()
        };
        // The order's (paid_at, last_failure_at).
        let state = || async {
            sqlx::query_as::<_, (Option<i64>, Option<i64>)>(
                "SELECT paid_at, last_failure_at FROM order_states WHERE order_id = $1",
            )
            .bind(order.to_string())
            .fetch_one(pool)
            .await
            .unwrap()
        };
        // The notification `id`, as "webhook type status due+delay attempts", flagged if
        // its order or email is not the one its webhook carried.
        let job = |id: Uuid| async move {
            sqlx::query_scalar::<_, String>(
                "SELECT webhook_id || ' ' || event_type || ' ' || status
                        || ' due+' || (next_attempt_at - created_at) || ' ' || attempts
                        || CASE WHEN order_id = $2 AND recipient = webhook_id || '@example.com'
                                     AND subject = 'subject of ' || webhook_id
                                     AND body = 'body of ' || webhook_id
                                THEN '' ELSE ' (not its order or email)' END
                 FROM notifications WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(order.to_string())
            .fetch_one(pool)
            .await
            .unwrap()
        };
        let queued = |outcome| match outcome {
            IntakeOutcome::Queued { notification_id } => notification_id,
            other => panic!("not queued: {other:?}"),
        };

        // A failure notice: recorded, the order's state set, the job queued (due at once).
        let failed = webhook("w1", Some(OrderEventKind::PaymentFailed), order, t);
        let notice = queued(store.record_webhook(&failed).await.unwrap());
        assert_eq!(
            received("w1").await,
            "w1 order.payment_failed order t+0 queued"
        );
        assert_eq!(state().await, (None, Some(t)));
        assert_eq!(job(notice).await, "w1 order.payment_failed queued due+0 0");

        // A newer failure: a notice of its own; only a payment cancels the earlier one.
        let again = webhook("w1b", Some(OrderEventKind::PaymentFailed), order, t + 1);
        let second_notice = queued(store.record_webhook(&again).await.unwrap());
        assert_eq!(state().await, (None, Some(t + 1)));
        assert_eq!(job(notice).await, "w1 order.payment_failed queued due+0 0");

        // The payment: the notices (queued, not held) are cancelled, the confirmation queued.
        let paid = webhook("w2", Some(OrderEventKind::Paid), order, t + 5);
        let confirmation = queued(store.record_webhook(&paid).await.unwrap());
        assert_eq!(received("w2").await, "w2 order.paid order t+5 queued");
        assert_eq!(state().await, (Some(t + 5), Some(t + 1)));
        assert_eq!(
            job(notice).await,
            "w1 order.payment_failed cancelled due+0 0"
        );
        assert_eq!(
            job(second_notice).await,
            "w1b order.payment_failed cancelled due+0 0"
        );
        assert_eq!(job(confirmation).await, "w2 order.paid queued due+0 0");

        // A repeat changes nothing; a later failure is stale; an unhandled type is ignored.
        assert_eq!(
            store.record_webhook(&paid).await.unwrap(),
            IntakeOutcome::Duplicate
        );
        let late = webhook("w3", Some(OrderEventKind::PaymentFailed), order, t + 10);
        assert_eq!(
            store.record_webhook(&late).await.unwrap(),
            IntakeOutcome::Stale
        );
        assert_eq!(
            received("w3").await,
            "w3 order.payment_failed order t+10 stale"
        );
        let shipped = webhook("w4", None, order, t + 20);
        assert_eq!(
            store.record_webhook(&shipped).await.unwrap(),
            IntakeOutcome::Ignored
        );
        assert_eq!(received("w4").await, "w4 order.shipped - t+20 ignored");
        assert_eq!(state().await, (Some(t + 5), Some(t + 1)));
        let (jobs, pending): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM notifications),
                    (SELECT COUNT(*) FROM received_webhooks WHERE outcome = 'pending')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!((jobs, pending), (3, 0));

        // After cleanup took the dedup record, the notification still marks a duplicate,
        // and leaves no record behind.
        sqlx::query("DELETE FROM received_webhooks WHERE webhook_id = 'w2'")
            .execute(pool)
            .await
            .unwrap();
        assert_eq!(
            store.record_webhook(&paid).await.unwrap(),
            IntakeOutcome::Duplicate
        );
        let left: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM received_webhooks WHERE webhook_id = 'w2'")
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(left, 0);
        store.close().await;
    }
}
