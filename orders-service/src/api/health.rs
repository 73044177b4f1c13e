//! `GET /healthz`: answers as soon as the service serves (liveness). `GET /readyz`: 200
//! `{"status":"ready"}` once the database answers, its migrations are applied and the
//! dispatcher runs; otherwise 503 `{"status":"not_ready","reason":"..."}`. Both are public,
//! not rate limited and outside the bound on requests in progress.

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use webhook_common::telemetry::Liveness;

use crate::store::Store;
use crate::AppState;

/// The health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `GET /healthz`.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The service serves", body = super::openapi::Health))
)]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready: `{\"status\": \"ready\"}`", body = super::openapi::Readiness),
        (status = 503, description = "Not ready: `{\"status\": \"not_ready\", \"reason\": ...}`",
            body = super::openapi::Readiness),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    webhook_common::readiness::response(&not_ready(&state.store, &state.dispatcher_running).await)
}

/// What keeps the service from being ready, empty when it is (see
/// [`webhook_common::readiness::not_ready`]) for the store's backend and migrations.
pub async fn not_ready(store: &Store, dispatcher_running: &Liveness) -> Vec<String> {
    let (database, migrator) = store.readiness();
    webhook_common::readiness::not_ready(database, migrator, dispatcher_running, "dispatcher").await
}
