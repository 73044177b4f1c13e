//! `GET /healthz`: liveness, no token. `GET /readyz`: 200 `{"status":"ready"}` once the
//! database answers, its migrations are applied and the email worker runs; otherwise 503
//! `{"status":"not_ready","reason":"..."}`. Both are public and outside the intake's bounds.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::SqlitePool;
use webhook_common::telemetry::Liveness;

use crate::AppState;

/// How long a readiness probe waits for the database before calling it unavailable.
const DATABASE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
    let problems = not_ready(state.store.pool(), &state.worker_running).await;
    if problems.is_empty() {
        return Json(json!({"status": "ready"})).into_response();
    }
    let reason = problems.join("; ");
    tracing::warn!(reason, "not ready");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": "not_ready", "reason": reason})),
    )
        .into_response()
}

/// What keeps the service from being ready, empty when it is: the database does not answer a
/// trivial query, an embedded migration is not applied, or the email worker is not running.
pub async fn not_ready(pool: &SqlitePool, worker_running: &Liveness) -> Vec<String> {
    let mut problems = Vec::new();
    let probe = async {
        // The trivial query; a database never migrated has no `_sqlx_migrations` yet.
        let has_table: i64 = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master \
             WHERE type = 'table' AND name = '_sqlx_migrations')",
        )
        .fetch_one(pool)
        .await?;
        if has_table == 0 {
            return Ok(Vec::new());
        }
        sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations WHERE success = 1")
            .fetch_all(pool)
            .await
    };
    match tokio::time::timeout(DATABASE_PROBE_TIMEOUT, probe).await {
        Err(_) => problems.push("database unavailable: no answer within 2 s".to_owned()),
        Ok(Err(e)) => problems.push(format!("database unavailable: {e}")),
        Ok(Ok(applied)) => {
            let applied: HashSet<i64> = applied.into_iter().collect();
            let missing: Vec<String> = sqlx::migrate!()
                .iter()
                .filter(|m| !m.migration_type.is_down_migration())
                .filter(|m| !applied.contains(&m.version))
                .map(|m| m.version.to_string())
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "database migrations not applied: {}",
                    missing.join(", ")
                ));
            }
        }
    }
    if !worker_running.is_running() {
        problems.push("email worker not running".to_owned());
    }
    problems
}
