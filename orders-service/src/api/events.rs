//! Event history (admin): every event in commit order for receivers that missed some, and
//! one event with its deliveries and their attempts.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;
use webhook_common::error_body::ErrorBody;
use webhook_common::pagination;
use webhook_common::request::{AppPath, AppQuery};
use webhook_common::EventType;

use super::deliveries::DeliveryResponse;
use super::{rfc3339, Page};
use crate::domain::EventRecord;
use crate::error::ApiError;
use crate::AppState;

/// Most deliveries `GET /events/{id}` lists (the first ones created); `delivery_count` gives
/// them all.
pub const MAX_DELIVERIES_SHOWN: u32 = 100;
/// Most attempts shown per delivery there (the latest ones); `attempt_count` gives them all.
pub const MAX_ATTEMPTS_SHOWN: u32 = 20;

/// The history routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events", get(list_events))
        .route("/events/{id}", get(get_event))
}

/// An event as the history shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The webhook body, exactly as signed and sent (the stored bytes, keys in their order).
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
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
            payload: raw_payload(&e.payload),
        }
    }
}

/// The stored payload verbatim; bytes that are not JSON (never written by this service) are
/// shown as a JSON string rather than failing the whole answer.
fn raw_payload(bytes: &[u8]) -> Box<RawValue> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| RawValue::from_string(text.to_owned()).ok())
        .unwrap_or_else(|| {
            serde_json::value::to_raw_value(&String::from_utf8_lossy(bytes))
                .unwrap_or_else(|_| RawValue::NULL.to_owned())
        })
}

/// One event with its deliveries.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventDetail {
    /// The event.
    #[serde(flatten)]
    pub event: EventResponse,
    /// How many deliveries the event has (one per endpoint it was queued for).
    pub delivery_count: u64,
    /// The first [`MAX_DELIVERIES_SHOWN`] of them, each with its latest
    /// [`MAX_ATTEMPTS_SHOWN`] attempts (`attempt_count` says how many there are).
    pub deliveries: Vec<DeliveryResponse>,
}

/// Query of `GET /events`: the pagination rule of `webhook_common::pagination`, with the
/// cursor called `after` (it is also each event's `cursor`, so a receiver can resume after
/// the last event it has) and a type filter.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Events after this cursor (`next_cursor`, or an event's `cursor`); from the start if absent.
    pub after: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    pub limit: Option<String>,
}

/// `GET /events?after=&type=&limit=`: oldest first.
#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    params(ListParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of events in commit order", body = Page<EventResponse>),
        (status = 400, description = "A bad `limit` or a cursor this API did not issue (the body names it)", body = ErrorBody),
        (status = 422, description = "`type` is not a known event type", body = ErrorBody),
    )
)]
async fn list_events(
    State(state): State<AppState>,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<Json<Page<EventResponse>>, ApiError> {
    let limit = pagination::limit(params.limit.as_deref())?;
    let after = pagination::cursor("after", params.after.as_deref(), |c| c.parse::<u64>().ok())?
        .map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX));
    let event_type = params
        .event_type
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<EventType>()
                .map_err(|e| ApiError::field("type", e.to_string()))
        })
        .transpose()?;
    let events = state
        .store
        .list_events(after, event_type.as_ref().map(EventType::as_str), limit + 1)
        .await?;
    Ok(Json(Page::from_overfetched(
        events,
        limit,
        |e| e.seq.to_string(),
        |e| EventResponse::from(e),
    )))
}

/// `GET /events/{id}`.
#[utoipa::path(
    get,
    path = "/events/{id}",
    tag = "events",
    params(("id" = Uuid, Path, description = "The event's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The event with its deliveries and their latest attempts", body = EventDetail),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No event with this id", body = ErrorBody),
    )
)]
async fn get_event(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<EventDetail>, ApiError> {
    let event = state
        .store
        .event(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event with id \"{id}\"")))?;
    // Bounded: one query per listed delivery, at most MAX_DELIVERIES_SHOWN of them.
    let delivery_count = state.store.count_deliveries_for_event(id).await?;
    let mut deliveries = Vec::new();
    for delivery in state
        .store
        .deliveries_for_event(id, MAX_DELIVERIES_SHOWN)
        .await?
    {
        let attempts = state
            .store
            .last_attempts(delivery.id, MAX_ATTEMPTS_SHOWN)
            .await?;
        deliveries.push(DeliveryResponse::new(&delivery, Some(&attempts)));
    }
    Ok(Json(EventDetail {
        event: EventResponse::from(&event),
        delivery_count,
        deliveries,
    }))
}
