//! `POST /webhooks/orders`: the verified, deduplicated, durable intake; and
//! `GET /webhooks/received` (admin): the recent deliveries and what became of them.

use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower::ServiceBuilder;
use webhook_common::extract::VerifiedWebhook;

use crate::api::AdminAuth;
use crate::error::ApiError;
use crate::guard::{intake_guard, IntakeGuard};
use crate::store::{IncomingWebhook, IntakeOutcome, ReceivedWebhook};
use crate::{email, AppState};

/// The webhook routes. The intake sits behind a bound on deliveries in progress (more are
/// shed with 503 and `Retry-After` rather than queued, so slow clients cannot pile up
/// work), then the allow-list and rejection limit.
pub fn router(guard: Arc<IntakeGuard>, max_concurrent: usize) -> Router<AppState> {
    let intake = Router::new()
        .route("/webhooks/orders", post(receive))
        .route_layer(middleware::from_fn_with_state(guard, intake_guard))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .concurrency_limit(max_concurrent),
        );
    Router::new()
        .merge(intake)
        .route("/webhooks/received", get(list_received))
}

/// Verifies (in the extractor), then records the delivery and its email job in one
/// transaction and answers as soon as that is durable. No email work happens here.
#[tracing::instrument(skip_all, fields(webhook_id = %webhook.id, event_type = webhook.event.type_name()))]
async fn receive(
    State(state): State<AppState>,
    webhook: VerifiedWebhook,
) -> Result<Response, ApiError> {
    let event = webhook.event;
    let incoming = IncomingWebhook {
        webhook_id: webhook.id,
        event_type: event.type_name().to_owned(),
        event_at: event.timestamp,
        email: email::render(&event),
    };
    let outcome = state
        .store
        .record_webhook(&incoming)
        .await
        .map_err(ApiError::Unavailable)?;
    tracing::info!(outcome = ?outcome, "webhook recorded");
    Ok(match outcome {
        IntakeOutcome::Queued { notification_id } => {
            state.wake.notify_one();
            (
                StatusCode::ACCEPTED,
                Json(json!({"status": "queued", "notification_id": notification_id})),
            )
                .into_response()
        }
        IntakeOutcome::Duplicate => Json(json!({"status": "duplicate"})).into_response(),
        IntakeOutcome::Ignored => Json(json!({"status": "ignored"})).into_response(),
        IntakeOutcome::Stale => Json(json!({"status": "stale"})).into_response(),
    })
}

/// Answers a delivery shed by the concurrency bound.
async fn overloaded(_: tower::BoxError) -> ApiError {
    tracing::warn!("webhook refused: too many deliveries in progress");
    ApiError::Overloaded
}

#[derive(Deserialize)]
struct ReceivedParams {
    limit: Option<String>,
}

#[derive(Serialize)]
struct ReceivedItem {
    webhook_id: String,
    event_type: String,
    order_id: Option<String>,
    outcome: String,
    #[serde(with = "time::serde::rfc3339")]
    event_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    received_at: time::OffsetDateTime,
}

impl From<ReceivedWebhook> for ReceivedItem {
    fn from(r: ReceivedWebhook) -> Self {
        ReceivedItem {
            webhook_id: r.webhook_id,
            event_type: r.event_type,
            order_id: r.order_id,
            outcome: r.outcome,
            event_at: r.event_at,
            received_at: r.received_at,
        }
    }
}

async fn list_received(
    _: AdminAuth,
    State(state): State<AppState>,
    params: Result<Query<ReceivedParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = crate::api::notifications::parse_limit(params.limit.as_deref())?;
    let items: Vec<ReceivedItem> = state
        .store
        .list_received(limit)
        .await?
        .into_iter()
        .map(ReceivedItem::from)
        .collect();
    Ok(Json(json!({"items": items})))
}
