//! Domain types shared by the API, the store and the dispatcher.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;
use webhook_common::{Money, Secret};

/// The state of an order after its (simulated) payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Payment succeeded; an `order.paid` event was written.
    Paid,
    /// Payment was declined; an `order.payment_failed` event was written.
    PaymentFailed,
}

impl OrderStatus {
    /// The stored and serialised name.
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Paid => "paid",
            OrderStatus::PaymentFailed => "payment_failed",
        }
    }
}

impl FromStr for OrderStatus {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "paid" => Ok(OrderStatus::Paid),
            "payment_failed" => Ok(OrderStatus::PaymentFailed),
            other => Err(anyhow::anyhow!(
                "unknown order status {other:?} in the database"
            )),
        }
    }
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// UUIDv7: ids sort in creation order.
    pub id: Uuid,
    /// What was bought.
    pub product_name: String,
    /// How many.
    pub quantity: u32,
    /// Price of one item.
    pub unit_price: Money,
    /// `unit_price × quantity`, exact.
    pub total: Money,
    /// Who bought it.
    pub customer_email: String,
    /// Outcome of the payment.
    pub status: OrderStatus,
    /// Why the payment failed, when it did.
    pub failure_reason: Option<String>,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// The event the order produced (`None` only for rows written before events existed).
    pub event_id: Option<Uuid>,
}

/// An event ready to be written to the outbox, serialised once.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event's id.
    pub id: Uuid,
    /// `webhook-id` for every attempt to every endpoint.
    pub msg_id: String,
    /// Wire type, e.g. `order.paid`.
    pub event_type: String,
    /// The order it is about.
    pub order_id: Option<Uuid>,
    /// The exact bytes that are signed and sent.
    pub payload: Vec<u8>,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
}

/// The state of one event's delivery to one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (`next_attempt_at`).
    Pending,
    /// Claimed by a worker until its lease expires.
    InFlight,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up: a non-retryable answer, a gone endpoint, or the retries are used up (also
    /// by tries that could not even load the delivery).
    Failed,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::InFlight => "in_flight",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
}

impl FromStr for DeliveryStatus {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "in_flight" => Ok(DeliveryStatus::InFlight),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "failed" => Ok(DeliveryStatus::Failed),
            other => Err(anyhow::anyhow!(
                "unknown delivery status {other:?} in the database"
            )),
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery as reported (history, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The delivery's id.
    pub id: Uuid,
    /// The event delivered.
    pub event_id: Uuid,
    /// The endpoint delivered to.
    pub endpoint_id: Uuid,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (meaningful while pending), unix milliseconds.
    pub next_attempt_at: i64,
    /// HTTP status of the last answer, if any.
    pub last_status: Option<u16>,
    /// What went wrong last, if anything.
    pub last_error: Option<String>,
    /// When it was delivered, unix milliseconds.
    pub delivered_at: Option<i64>,
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// When it started, unix milliseconds.
    pub started_at: i64,
    /// How long it took.
    pub duration_ms: i64,
    /// The HTTP status, when an answer came.
    pub status_code: Option<u16>,
    /// `connect`, `timeout`, ... when none did.
    pub error_kind: Option<String>,
    /// The first 1 KiB of the answer's body.
    pub response_body: Option<String>,
    /// `delivered`, `retry`, `failed` or `endpoint_disabled`.
    pub outcome: String,
}

/// Everything needed to make one attempt of a claimed delivery.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    /// The delivery's id.
    pub delivery_id: Uuid,
    /// Proves this worker still owns the delivery; every update is guarded by it.
    pub claim_token: Uuid,
    /// Attempts made before this one.
    pub attempts: u32,
    /// Attempts made before the last manual retry or recover; the retry schedule counts
    /// attempts from here.
    pub retry_base: u32,
    /// `webhook-id`.
    pub msg_id: String,
    /// The stored event bytes.
    pub payload: bytes::Bytes,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// Where to POST, parsed once per endpoint when the claim is read (see
    /// `Claimed::from_rows`), not again for each attempt.
    pub url: reqwest::Url,
    /// The current secret, then the previous one while its rotation grace lasts.
    pub secrets: Vec<Secret>,
}

/// `error_kind` of an attempt recorded for a delivery that could not be loaded (a stored
/// secret that does not parse, say): nothing was sent, but the attempt counts against the
/// retry schedule, so such a delivery ends dead-lettered rather than retried forever.
pub const UNLOADABLE: &str = "unloadable";

/// What an attempt led to, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// 2xx: done.
    Delivered,
    /// Try again at this time (unix milliseconds).
    Retry {
        /// When the next attempt is due.
        at: i64,
    },
    /// Give up on this delivery.
    Failed,
    /// 410 Gone: give up and disable the endpoint.
    EndpointGone,
}

impl AttemptOutcome {
    /// The name stored with the attempt.
    pub fn as_str(&self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retry { .. } => "retry",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::EndpointGone => "endpoint_disabled",
        }
    }
}

/// How long the previous secret keeps signing after a rotation, unless the caller says
/// otherwise (and after `WEBHOOK_SECRET` changes in the environment).
pub const DEFAULT_ROTATION_GRACE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// An endpoint (subscription) as reported. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The endpoint's id.
    pub id: Uuid,
    /// Where events go.
    pub url: String,
    /// What the operator wrote about it.
    pub description: Option<String>,
    /// Subscribed event types.
    pub event_types: Vec<String>,
    /// Whether deliveries are attempted.
    pub enabled: bool,
    /// Why it was disabled, if it was.
    pub disabled_reason: Option<String>,
    /// Ensured from `NOTIFICATION_WEBHOOK_URL` rather than created through the API.
    pub from_configuration: bool,
    /// Until when (unix milliseconds) the previous secret still signs, during a rotation.
    pub previous_secret_expires_at: Option<i64>,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Last change, unix milliseconds.
    pub updated_at: i64,
}

/// A subscription to create.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    /// Where events go (already checked).
    pub url: String,
    /// Free text.
    pub description: Option<String>,
    /// Known event type names, deduplicated.
    pub event_types: Vec<String>,
}

/// Changes to a subscription; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointPatch {
    /// New URL (already checked).
    pub url: Option<String>,
    /// New description; `Some(None)` clears it.
    pub description: Option<Option<String>>,
    /// New event types.
    pub event_types: Option<Vec<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// An event from the outbox, as the history shows it.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// Position in the total order of events; the history cursor.
    pub seq: i64,
    /// The event's id.
    pub id: Uuid,
    /// `webhook-id` of its deliveries.
    pub msg_id: String,
    /// Wire type.
    pub event_type: String,
    /// The order it is about.
    pub order_id: Option<Uuid>,
    /// The exact bytes sent.
    pub payload: Vec<u8>,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
}

/// What asking for a redelivery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// No such delivery.
    NotFound,
    /// An attempt is running right now (the delivery is in flight under a lease that has not
    /// expired); its outcome decides what happens next.
    InFlight,
    /// Due now, with a fresh retry schedule.
    Requeued(Delivery),
}

/// What a recovery requeued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// How many failed deliveries are due again.
    pub requeued: u64,
    /// Whether failed deliveries in the window remain (call again).
    pub more: bool,
}
