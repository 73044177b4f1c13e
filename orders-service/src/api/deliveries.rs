//! Deliveries (admin): redeliver one now.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use webhook_common::error_body::ErrorBody;
use webhook_common::request::AppPath;

use super::rfc3339;
use crate::domain::{Attempt, Delivery, DeliveryStatus, RetryOutcome};
use crate::error::ApiError;
use crate::AppState;

/// The delivery routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/deliveries/{id}/retry", post(retry))
}

/// A delivery as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryResponse {
    /// The delivery's id.
    pub id: Uuid,
    /// The event delivered.
    pub event_id: Uuid,
    /// The endpoint delivered to.
    pub endpoint_id: Uuid,
    /// `pending`, `in_flight`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made so far.
    pub attempt_count: u32,
    /// RFC 3339: when the next attempt is due, while pending; `null` while its endpoint is
    /// disabled (paused until it is enabled again).
    pub next_attempt_at: Option<String>,
    /// HTTP status of the last answer.
    pub last_status: Option<u16>,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// RFC 3339: when it was delivered.
    pub delivered_at: Option<String>,
    /// The latest attempts, oldest first (on `GET /events/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptResponse>>,
}

/// One attempt as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptResponse {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// RFC 3339.
    pub started_at: String,
    /// How long it took.
    pub duration_ms: i64,
    /// HTTP status, when an answer came.
    pub status_code: Option<u16>,
    /// `connect`, `timeout`, `forbidden_target`, `unloadable` (the delivery could not be
    /// loaded, so nothing was sent), ... when none did.
    pub error_kind: Option<String>,
    /// The first 1 KiB of the answer.
    pub response_body: Option<String>,
    /// `delivered`, `retry`, `failed` or `endpoint_disabled`.
    pub outcome: String,
}

impl DeliveryResponse {
    /// `delivery`, with `attempts` if given.
    pub fn new(delivery: &Delivery, attempts: Option<&[Attempt]>) -> Self {
        DeliveryResponse {
            id: delivery.id,
            event_id: delivery.event_id,
            endpoint_id: delivery.endpoint_id,
            status: delivery.status.to_string(),
            attempt_count: delivery.attempts,
            next_attempt_at: (delivery.status == DeliveryStatus::Pending
                && delivery.next_attempt_at != crate::store::PAUSED_AT)
                .then(|| rfc3339(delivery.next_attempt_at)),
            last_status: delivery.last_status,
            last_error: delivery.last_error.clone(),
            delivered_at: delivery.delivered_at.map(rfc3339),
            attempts: attempts.map(|list| {
                list.iter()
                    .map(|a| AttemptResponse {
                        attempt: a.attempt,
                        started_at: rfc3339(a.started_at),
                        duration_ms: a.duration_ms,
                        status_code: a.status_code,
                        error_kind: a.error_kind.clone(),
                        response_body: a.response_body.clone(),
                        outcome: a.outcome.clone(),
                    })
                    .collect()
            }),
        }
    }
}

/// `POST /deliveries/{id}/retry`: due now with a fresh retry schedule, also after success or
/// dead-lettering; the same `webhook-id`, so receivers can deduplicate. 409 only while an
/// attempt runs under a live lease; a delivery left in flight by a worker that died (its
/// lease expired) is requeued like any other.
#[utoipa::path(
    post,
    path = "/deliveries/{id}/retry",
    tag = "deliveries",
    params(("id" = Uuid, Path, description = "The delivery's id")),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "Due now, with a fresh retry schedule", body = DeliveryResponse),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No delivery with this id", body = ErrorBody),
        (status = 409, description = "An attempt of it is running", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(delivery_id = %id))]
async fn retry(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
) -> Result<(StatusCode, Json<DeliveryResponse>), ApiError> {
    match state.store.retry_delivery(id).await? {
        RetryOutcome::Requeued(delivery) => {
            tracing::info!("delivery requeued by an operator");
            state.dispatch_wake.notify_one();
            Ok((
                StatusCode::ACCEPTED,
                Json(DeliveryResponse::new(&delivery, None)),
            ))
        }
        RetryOutcome::InFlight => Err(ApiError::Conflict(
            "an attempt of this delivery is running; retry once it has finished".into(),
        )),
        RetryOutcome::NotFound => Err(ApiError::NotFound(format!("no delivery with id \"{id}\""))),
    }
}
