//! Row shapes as SQL returns them, and their conversion to domain types.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{from_ms, ClaimedJob};

/// Where a notification is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    fn parse(text: &str) -> Option<Self> {
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

#[derive(sqlx::FromRow)]
pub(super) struct NotificationRow {
    id: String,
    webhook_id: String,
    event_type: String,
    order_id: String,
    recipient: String,
    subject: String,
    body: String,
    status: String,
    attempts: i64,
    last_error: Option<String>,
    created_at: i64,
    sent_at: Option<i64>,
}

impl NotificationRow {
    /// `None` only for a row this code could not have written; it is logged and skipped
    /// rather than failing a whole page.
    pub(super) fn into_domain(self) -> Option<Notification> {
        let (Ok(id), Ok(order_id), Some(status)) = (
            Uuid::try_parse(&self.id),
            Uuid::try_parse(&self.order_id),
            NotificationStatus::parse(&self.status),
        ) else {
            tracing::error!(id = %self.id, "skipping a malformed notifications row");
            return None;
        };
        Some(Notification {
            id,
            webhook_id: self.webhook_id,
            event_type: self.event_type,
            order_id,
            to: self.recipient,
            subject: self.subject,
            body: self.body,
            status,
            attempts: u32::try_from(self.attempts).unwrap_or(0),
            last_error: self.last_error,
            created_at: from_ms(self.created_at),
            sent_at: self.sent_at.map(from_ms),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ReceivedWebhookRow {
    webhook_id: String,
    event_type: String,
    order_id: Option<String>,
    event_at: i64,
    outcome: String,
    received_at: i64,
}

impl ReceivedWebhookRow {
    pub(super) fn into_domain(self) -> ReceivedWebhook {
        ReceivedWebhook {
            webhook_id: self.webhook_id,
            event_type: self.event_type,
            order_id: self.order_id,
            event_at: from_ms(self.event_at),
            outcome: self.outcome,
            received_at: from_ms(self.received_at),
        }
    }
}

/// A candidate of a claim as the claim's statement (`queue::CLAIM`) returns it: leased (a job
/// to send) or settled (cancelled or given up).
pub(super) struct ClaimedRow {
    id: String,
    /// `queued` if leased; `cancelled` or `failed` if settled.
    status: String,
    /// Attempts including the one this claim started.
    attempts: i64,
    recipient: String,
    subject: String,
    body: String,
    /// The trace id the webhook arrived with; NULL without one.
    trace_id: Option<String>,
}

impl ClaimedRow {
    /// Reads a row of the claim's `RETURNING`: id, status, attempts, recipient, subject,
    /// body, trace id.
    pub(super) fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(ClaimedRow {
            id: row.get(0)?,
            status: row.get(1)?,
            attempts: row.get(2)?,
            recipient: row.get(3)?,
            subject: row.get(4)?,
            body: row.get(5)?,
            trace_id: row.get(6)?,
        })
    }

    /// The job as leased under `lease_token` until `lease_until`. `None` for a settled
    /// candidate, and for a row this code could not have written (it is logged, and its
    /// lease keeps it out of the way until it expires).
    pub(super) fn into_job(
        self,
        lease_token: Uuid,
        lease_until: OffsetDateTime,
    ) -> Option<ClaimedJob> {
        if self.status != "queued" {
            return None;
        }
        let Ok(id) = Uuid::try_parse(&self.id) else {
            tracing::error!(id = %self.id, "skipping a claimed job with a malformed id");
            return None;
        };
        Some(ClaimedJob {
            id,
            lease_token,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            lease_until,
            to: self.recipient,
            subject: self.subject,
            body: self.body,
            trace_id: self.trace_id,
        })
    }
}
