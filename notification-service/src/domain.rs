//! The service's domain types and rules, shared by the API, the worker and both store
//! backends: what the store takes and returns, the ordering rule ([`decide`]) and the
//! millisecond timestamps every table uses.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

/// Longest `type` of an unknown event we record; the rest is cut off.
pub(crate) const MAX_RECORDED_TYPE_LEN: usize = 100;

/// The kind of customer email an order event produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEventKind {
    /// `order.paid`: an order confirmation.
    Paid,
    /// `order.payment_failed`: a payment failure notice.
    PaymentFailed,
}

/// A rendered email waiting to be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderEmail {
    /// Which event produced it.
    pub kind: OrderEventKind,
    /// The order it is about.
    pub order_id: Uuid,
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// A verified webhook, ready to be recorded.
#[derive(Debug, Clone)]
pub struct IncomingWebhook {
    /// `webhook-id`, the deduplication key.
    pub webhook_id: String,
    /// The event's wire `type`.
    pub event_type: String,
    /// When the event happened (the envelope's `timestamp`).
    pub event_at: OffsetDateTime,
    /// The email it asks for; `None` for event types this service does not handle.
    pub email: Option<OrderEmail>,
    /// The trace id (32 lowercase hex digits) of the valid `traceparent` the webhook arrived
    /// with, if any; stored with its email job so the worker's log lines carry it too.
    pub trace_id: Option<String>,
}

/// What recording a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// First delivery; an email job is durable.
    Queued {
        /// The new notification.
        notification_id: Uuid,
    },
    /// This `webhook-id` was already recorded; nothing changed.
    Duplicate,
    /// Recorded, but the type is not one this service handles.
    Ignored,
    /// Recorded, but what we already told the customer supersedes it (see [`decide`]).
    Stale,
}

impl IntakeOutcome {
    /// The `received_webhooks.outcome` it is recorded as. SQLite inserts the row with its
    /// outcome at once; PostgreSQL inserts the row of a handled event as `pending` and sets
    /// it to one of these in the same write, so `pending` is never seen committed; an
    /// unhandled one is inserted as `ignored` at once on both.
    /// (The comment in migration 0001 calls the rule `decide_outcome`: it is [`decide`]; the
    /// applied migration is left unedited because sqlx refuses a changed checksum.)
    pub(crate) fn recorded_as(&self) -> &'static str {
        match self {
            IntakeOutcome::Queued { .. } => "queued",
            IntakeOutcome::Duplicate => "duplicate",
            IntakeOutcome::Ignored => "ignored",
            IntakeOutcome::Stale => "stale",
        }
    }
}

/// What is known about one order: the event times of the emails it already produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderState {
    /// Event time (ms) of the `order.paid` that was notified.
    pub paid_at: Option<i64>,
    /// Event time (ms) of the newest `order.payment_failed` that was notified.
    pub last_failure_at: Option<i64>,
}

/// The ordering rule. Events of one order may arrive in any order; the customer must never
/// get an email that contradicts one already sent or queued:
///
/// 1. A successful payment is final. The first `order.paid` of an order always produces a
///    confirmation (it supersedes any failure, older or newer: the customer did pay). Any
///    later `order.paid` of that order, under a new webhook id, is stale: one confirmation
///    per order.
/// 2. Once an order is paid, every `order.payment_failed` is stale, whatever its timestamp:
///    an older one is history, a newer one is a retry attempt that does not undo the payment.
/// 3. Without a payment, an `order.payment_failed` produces a notice only if its event time is
///    later than the last failure notified for the order (each new failed attempt is news,
///    an older or equal one is stale).
///
/// A failure notice is never handed to the mailer after the confirmation of its order:
/// - when rule 1 fires, failure notices of that order that are queued and not being sent are
///   cancelled at once;
/// - one that a worker holds right now cannot be recalled, so the confirmation is queued to
///   become due only when that worker's lease ends (by then its send has finished or been
///   cut off, see `WorkerSettings::send_limit`). That lease no longer grows:
///   [`Store::renew_leases`](super::Store::renew_leases) does not extend a failure notice of an order that has a
///   confirmation, and a worker starts a send only while its lease outlasts the send limit;
/// - whatever then happens to the held notice (a retry is scheduled, it is released at
///   shutdown, its worker dies and the lease expires), [`Store::claim_due`](super::Store::claim_due) cancels instead
///   of claiming any failure notice of an order that has a confirmation.
pub fn decide(state: OrderState, kind: OrderEventKind, event_at_ms: i64) -> bool {
    match kind {
        OrderEventKind::Paid => state.paid_at.is_none(),
        OrderEventKind::PaymentFailed => {
            state.paid_at.is_none() && state.last_failure_at.is_none_or(|t| event_at_ms > t)
        }
    }
}

/// Where a page of notifications starts: strictly older than this item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` (ms) of the last item of the previous page.
    pub created_at_ms: i64,
    /// Its id, to break ties.
    pub id: Uuid,
}

impl Cursor {
    /// The opaque text form handed to clients.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.created_at_ms, self.id.simple())
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (ms, id) = text.split_once('_')?;
        Some(Cursor {
            created_at_ms: ms.parse().ok()?,
            id: Uuid::try_parse(id).ok()?,
        })
    }
}

/// An email job claimed by a worker.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The notification.
    pub id: Uuid,
    /// Proves the claim; every update of the job must present it.
    pub claim_token: Uuid,
    /// Attempts including this one.
    pub attempts: u32,
    /// When the claim expires and another worker may take the job, unless the worker renews
    /// it first (see [`Store::renew_leases`](super::Store::renew_leases)).
    pub lease_expires_at: OffsetDateTime,
    /// Recipient.
    pub to: String,
    /// Subject.
    pub subject: String,
    /// Body.
    pub body: String,
    /// The trace id the webhook that queued the job arrived with, if any (see
    /// [`IncomingWebhook::trace_id`]).
    pub trace_id: Option<String>,
}

/// A lease extended by [`Store::renew_leases`](super::Store::renew_leases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewedLease {
    /// The job.
    pub id: Uuid,
    /// The claim it belongs to.
    pub claim_token: Uuid,
    /// Its new expiry.
    pub lease_expires_at: OffsetDateTime,
}

/// Most candidates one claim settles (cancels or gives up) before it returns, so a backlog
/// of jobs that must not be sent cannot hold up the claim's transaction (and on SQLite the
/// writer, and every intake batched with it) for long; the next claim goes on where this
/// one stopped.
pub(crate) const MAX_SETTLED_PER_CLAIM: usize = 1000;

/// Milliseconds since the Unix epoch.
pub fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The inverse of [`to_ms`].
pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn now_ms() -> i64 {
    to_ms(OffsetDateTime::now_utc())
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where a notification is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationStatus {
    /// Waiting to be sent, or being sent, or waiting for a retry.
    Queued,
    /// Handed to the mail transport.
    Sent,
    /// Given up after the maximum number of attempts.
    Failed,
    /// Withdrawn before sending because a later event superseded it (ordering rule).
    Cancelled,
}

impl NotificationStatus {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => NotificationStatus::Queued,
            "sent" => NotificationStatus::Sent,
            "failed" => NotificationStatus::Failed,
            "cancelled" => NotificationStatus::Cancelled,
            _ => return None,
        })
    }
}

/// One customer email and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Its id; also the basis of the email's Message-ID.
    pub id: Uuid,
    /// The webhook that produced it.
    pub webhook_id: String,
    /// The event type of that webhook.
    pub event_type: String,
    /// The order it is about.
    pub order_id: Uuid,
    /// Recipient.
    pub to: String,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// Delivery state.
    pub status: NotificationStatus,
    /// Send attempts so far (including one in progress).
    pub attempts: u32,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When it was queued.
    pub created_at: OffsetDateTime,
    /// When it was sent.
    pub sent_at: Option<OffsetDateTime>,
}

/// A recorded webhook delivery (the dedup record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedWebhook {
    /// `webhook-id`.
    pub webhook_id: String,
    /// Its event type.
    pub event_type: String,
    /// Its order, for handled types.
    pub order_id: Option<String>,
    /// When the event happened.
    pub event_at: OffsetDateTime,
    /// `queued`, `ignored` or `stale`.
    pub outcome: String,
    /// When it arrived.
    pub received_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_000_000;

    #[test]
    fn ordering_rule_never_contradicts_a_payment() {
        let fresh = OrderState::default();
        assert!(decide(fresh, OrderEventKind::Paid, T));
        assert!(decide(fresh, OrderEventKind::PaymentFailed, T));

        let paid = OrderState {
            paid_at: Some(T),
            last_failure_at: None,
        };
        assert!(
            !decide(paid, OrderEventKind::Paid, T + 1),
            "one confirmation per order"
        );
        assert!(
            !decide(paid, OrderEventKind::PaymentFailed, T - 1),
            "older failure is stale"
        );
        assert!(
            !decide(paid, OrderEventKind::PaymentFailed, T + 1),
            "paid is final"
        );

        let failed = OrderState {
            paid_at: None,
            last_failure_at: Some(T),
        };
        assert!(
            decide(failed, OrderEventKind::Paid, T - 1),
            "success supersedes failures"
        );
        assert!(
            decide(failed, OrderEventKind::PaymentFailed, T + 1),
            "a new failed attempt"
        );
        assert!(!decide(failed, OrderEventKind::PaymentFailed, T));
        assert!(!decide(failed, OrderEventKind::PaymentFailed, T - 1));
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            created_at_ms: 42,
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "42", "x_y", "42_nope", "_"] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
    }
}
