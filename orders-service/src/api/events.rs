//! Event history (admin): every event in commit order for receivers that missed some, and
//! one event with its deliveries and their attempts.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;
use webhook_common::EventType;

use super::deliveries::DeliveryResponse;
use super::{page_limit, path_id, rfc3339, Page};
use crate::domain::EventRecord;
use crate::error::ApiError;
use crate::AppState;

/// Most attempts shown per delivery (the latest ones).
pub const MAX_ATTEMPTS_SHOWN: u32 = 100;

/// The history routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events", get(list_events))
        .route("/events/{id}", get(get_event))
}

/// An event as the history shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventResponse {
    /// The event's id.
    pub id: Uuid,
    /// Its place in the history: pass it as `after` to read the events that follow it.
    pub cursor: String,
    /// e.g. `order.paid`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The `webhook-id` every delivery of it carries (receivers deduplicate on it).
    pub webhook_id: String,
    /// The order it is about.
    pub order_id: Option<Uuid>,
    /// RFC 3339.
    pub created_at: String,
    /// The webhook body, exactly as signed and sent.
    pub payload: Value,
}

impl From<&EventRecord> for EventResponse {
    fn from(e: &EventRecord) -> Self {
        EventResponse {
            id: e.id,
            cursor: e.seq.to_string(),
            event_type: e.event_type.clone(),
            webhook_id: e.msg_id.clone(),
            order_id: e.order_id,
            created_at: rfc3339(e.created_at),
            payload: serde_json::from_slice(&e.payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&e.payload).into())),
        }
    }
}

/// One event with its deliveries.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventDetail {
    /// The event.
    #[serde(flatten)]
    pub event: EventResponse,
    /// One per endpoint it was queued for, each with its latest attempts.
    pub deliveries: Vec<DeliveryResponse>,
}

/// Query of `GET /events`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    /// Events after this cursor (`next_cursor`, or an event's `cursor`); from the start if absent.
    pub after: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<u32>,
}

/// `GET /events?after=&type=&limit=`: oldest first.
async fn list_events(
    State(state): State<AppState>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page<EventResponse>>, ApiError> {
    let Query(params) = query?;
    let limit = page_limit(params.limit)?;
    let after =
        match params.after.as_deref().filter(|a| !a.is_empty()) {
            None => 0,
            Some(a) => a.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::BadQuery("after is not a cursor this API issued".into())
            })?,
        };
    let event_type = params
        .event_type
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<EventType>()
                .map_err(|e| ApiError::field("type", e.to_string()))
        })
        .transpose()?;
    let mut events = state
        .store
        .list_events(after, event_type.as_ref().map(EventType::as_str), limit + 1)
        .await?;
    let next_cursor = if events.len() > limit as usize {
        events.truncate(limit as usize);
        events.last().map(|e| e.seq.to_string())
    } else {
        None
    };
    Ok(Json(Page {
        items: events.iter().map(EventResponse::from).collect(),
        next_cursor,
    }))
}

/// `GET /events/{id}`.
async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<EventDetail>, ApiError> {
    let uuid = path_id(&id, "event")?;
    let event = state
        .store
        .event(uuid)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event with id {id:?}")))?;
    let mut deliveries = Vec::new();
    for delivery in state.store.deliveries_for_event(uuid).await? {
        let attempts = state
            .store
            .last_attempts(delivery.id, MAX_ATTEMPTS_SHOWN)
            .await?;
        deliveries.push(DeliveryResponse::new(&delivery, Some(&attempts)));
    }
    Ok(Json(EventDetail {
        event: EventResponse::from(&event),
        deliveries,
    }))
}
