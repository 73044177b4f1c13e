//! `POST /webhooks/orders`: the verified, deduplicated, durable intake; and
//! `GET /webhooks/received` (admin): the recent deliveries and what became of them.

use std::sync::Arc;

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower::ServiceBuilder;
use webhook_common::error_body::ErrorBody;
use webhook_common::extract::VerifiedWebhook;
use webhook_common::pagination;
use webhook_common::request::AppQuery;
use webhook_common::telemetry::TraceParent;

use crate::error::ApiError;
use crate::guard::{intake_guard, IntakeGuard};
use crate::store::{IncomingWebhook, IntakeOutcome, ReceivedWebhook};
use crate::{email, AppState};

/// The intake route (public: the signature is its authentication). It sits behind a bound on
/// deliveries in progress (more are shed with 503 and `Retry-After` rather than queued, so
/// slow clients cannot pile up work), then the allow-list and rejection limit.
pub fn router(guard: Arc<IntakeGuard>, max_concurrent: usize) -> Router<AppState> {
    Router::new()
        .route("/webhooks/orders", post(receive))
        .route_layer(middleware::from_fn_with_state(guard, intake_guard))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(overloaded))
                .load_shed()
                .concurrency_limit(max_concurrent),
        )
}

/// `GET /webhooks/received` (mounted behind the admin token by [`crate::api::admin_router`]).
pub fn admin_router() -> Router<AppState> {
    Router::new().route("/webhooks/received", get(list_received))
}

/// Verifies (in the extractor), then records the delivery and its email job in one
/// transaction and answers as soon as that is durable. No email work happens here.
#[utoipa::path(
    post,
    path = "/webhooks/orders",
    tag = "webhooks",
    params(
        ("webhook-id" = String, Header, description = "Standard Webhooks message id"),
        ("webhook-timestamp" = String, Header, description = "Unix seconds when it was signed"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256>`, space separated"),
    ),
    request_body(content = Object, content_type = "application/json",
        description = "A Standard Webhooks event: `{\"type\", \"timestamp\", \"data\"}`"),
    responses(
        (status = 200, description = "Already recorded (`duplicate`), not for this service \
            (`ignored`), or older than what the order has seen (`stale`)", body = super::openapi::IntakeAnswer),
        (status = 202, description = "Recorded; its email is queued (`queued`)", body = super::openapi::IntakeAnswer),
        (status = 400, description = "Unreadable body or malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing, stale or wrong signature", body = ErrorBody),
        (status = 403, description = "The client is not in `ALLOWED_NETWORKS`", body = ErrorBody),
        (status = 413, description = "The body is over `MAX_BODY_BYTES`", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "Verified, but not an event this service understands", body = ErrorBody),
        (status = 429, description = "Too many rejected requests from this client; retry after \
            `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Overloaded or the database is unavailable; retry after \
            `Retry-After` seconds", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(webhook_id = %webhook.id, event_type = webhook.event.type_name()))]
async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    webhook: VerifiedWebhook,
) -> Result<Response, ApiError> {
    let event = webhook.event;
    let incoming = IncomingWebhook {
        webhook_id: webhook.id,
        event_type: event.type_name().to_owned(),
        event_at: event.timestamp,
        email: email::render(&event),
        // A malformed `traceparent` is ignored, as the request span does.
        trace_id: TraceParent::from_headers(&headers).map(|parent| parent.trace_id_hex()),
    };
    let outcome = state
        .store
        .record_webhook(&incoming)
        .await
        .map_err(ApiError::Unavailable)?;
    tracing::info!(outcome = ?outcome, "webhook recorded");
    crate::api::metrics::count_recorded(&incoming.event_type, &outcome);
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
    crate::api::metrics::count_rejected("overloaded");
    ApiError::Overloaded
}

/// Query of `GET /webhooks/received`: the latest deliveries, no cursor; `limit` follows
/// `webhook_common::pagination`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReceivedParams {
    /// How many, 1 to 200 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

/// A recent delivery and what became of it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ReceivedItem {
    /// Its `webhook-id`.
    webhook_id: String,
    /// e.g. `order.paid`.
    event_type: String,
    /// The order it is about.
    order_id: Option<String>,
    /// What the intake did with it.
    outcome: String,
    /// RFC 3339: the event's own time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    event_at: time::OffsetDateTime,
    /// RFC 3339: when it arrived.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
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

/// `GET /webhooks/received?limit=`.
#[utoipa::path(
    get,
    path = "/webhooks/received",
    tag = "webhooks",
    params(ReceivedParams),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The latest deliveries, newest first", body = super::openapi::ReceivedList),
        (status = 400, description = "A bad `limit` (the body names it)", body = ErrorBody),
    )
)]
async fn list_received(
    State(state): State<AppState>,
    AppQuery(params): AppQuery<ReceivedParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = pagination::limit(params.limit.as_deref())?;
    let items: Vec<ReceivedItem> = state
        .store
        .list_received(limit)
        .await?
        .into_iter()
        .map(ReceivedItem::from)
        .collect();
    Ok(Json(json!({"items": items})))
}
