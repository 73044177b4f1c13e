//! `GET /notifications` and `GET /notifications/{id}` (admin): the emails and their state.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;
use webhook_common::error_body::ErrorBody;
use webhook_common::pagination::PageQuery;
use webhook_common::request::{AppPath, AppQuery};

use crate::error::ApiError;
use crate::store::{Cursor, Notification, NotificationStatus};
use crate::AppState;

/// The notification routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/notifications", get(list))
        .route("/notifications/{id}", get(show))
}

/// A notification as the API shows it.
/// Public, and `Deserialize`, so that clients in Rust (the tests among them) read the
/// wire format into the type the service writes it from.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Notification)]
pub struct Item {
    /// The notification's id.
    pub id: Uuid,
    /// The `webhook-id` of the delivery that queued it.
    pub webhook_id: String,
    /// e.g. `order.paid`.
    pub event_type: String,
    /// The order it is about.
    pub order_id: Uuid,
    /// The recipient.
    pub to: String,
    /// The email's subject.
    pub subject: String,
    /// `queued`, `sent`, `failed` or `cancelled`.
    #[schema(value_type = String, pattern = "^(queued|sent|failed|cancelled)$")]
    pub status: NotificationStatus,
    /// Sending attempts so far.
    pub attempts: u32,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// RFC 3339.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// RFC 3339: when it was handed to the mail transport.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sent_at: Option<OffsetDateTime>,
    /// The email's text (on `GET /notifications/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl Item {
    fn new(n: Notification, with_body: bool) -> Self {
        Item {
            id: n.id,
            webhook_id: n.webhook_id,
            event_type: n.event_type,
            order_id: n.order_id,
            to: n.to,
            subject: n.subject,
            status: n.status,
            attempts: n.attempts,
            last_error: n.last_error,
            created_at: n.created_at,
            sent_at: n.sent_at,
            body: with_body.then_some(n.body),
        }
    }
}

/// A page of notifications.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = NotificationPage)]
pub struct Page {
    /// This page, newest first.
    pub items: Vec<Item>,
    /// Pass it back as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// `GET /notifications?cursor=&limit=`.
#[utoipa::path(
    get,
    path = "/notifications",
    tag = "notifications",
    params(PageQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of notifications, newest first", body = Page),
        (status = 400, description = "A bad `limit` or a cursor this API did not issue (the body names it)", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    AppQuery(page): AppQuery<PageQuery>,
) -> Result<Json<Page>, ApiError> {
    let limit = page.limit()?;
    let cursor = page.cursor(Cursor::decode)?;
    let rows = state
        .store
        .list_notifications(cursor.as_ref(), limit)
        .await?;
    let next_cursor = if rows.len() == limit as usize {
        rows.last().map(|n| {
            Cursor {
                created_at_ms: crate::store::to_ms(n.created_at),
                id: n.id,
            }
            .encode()
        })
    } else {
        None
    };
    Ok(Json(Page {
        items: rows.into_iter().map(|n| Item::new(n, false)).collect(),
        next_cursor,
    }))
}

/// `GET /notifications/{id}`.
#[utoipa::path(
    get,
    path = "/notifications/{id}",
    tag = "notifications",
    params(("id" = Uuid, Path, description = "The notification's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The notification with its email text", body = Item),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No notification with this id", body = ErrorBody),
    )
)]
async fn show(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<Item>, ApiError> {
    let notification = state
        .store
        .get_notification(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no notification {id}")))?;
    Ok(Json(Item::new(notification, true)))
}
