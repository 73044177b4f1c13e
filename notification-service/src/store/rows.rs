//! Row shapes as SQL returns them, and their conversion to domain types. Both backends read
//! into these: ids are text here (PostgreSQL's queries select their `uuid` columns
//! `::text`), timestamps and counts 64-bit integers.

use time::OffsetDateTime;
use uuid::Uuid;

use super::{from_ms, ClaimedJob, Notification, NotificationStatus, ReceivedWebhook};

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
#[derive(sqlx::FromRow)]
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
    /// Reads a row of the SQLite claim's `RETURNING`: id, status, attempts, recipient,
    /// subject, body, trace id.
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

    /// The job as leased under `claim_token` until `lease_expires_at`. `None` for a settled
    /// candidate, and for a row this code could not have written (it is logged, and its
    /// lease keeps it out of the way until it expires).
    pub(super) fn into_job(
        self,
        claim_token: Uuid,
        lease_expires_at: OffsetDateTime,
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
            claim_token,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            lease_expires_at,
            to: self.recipient,
            subject: self.subject,
            body: self.body,
            trace_id: self.trace_id,
        })
    }
}
