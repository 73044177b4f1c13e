//! `GET /readyz` for both services: ready once the database answers, every embedded migration
//! is applied and the service's background loop runs; otherwise 503 with the reasons.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sqlx::migrate::Migrator;
use sqlx::SqlitePool;

use crate::telemetry::Liveness;

/// How long a readiness probe waits for the database before calling it unavailable.
const DATABASE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What keeps the service from being ready, empty when it is: the database does not answer a
/// trivial query within 2 s, a migration of `migrator` is not applied, or the background loop
/// `worker` (named `worker_name` in the reason) is not running.
pub async fn not_ready(
    pool: &SqlitePool,
    migrator: &Migrator,
    worker: &Liveness,
    worker_name: &str,
) -> Vec<String> {
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
            let missing: Vec<String> = migrator
                .iter()
                .filter(|m| !m.migration_type.is_down_migration())
                .filter(|m| !applied.contains(&m.version))
                .map(|m| m.version.to_string())
                .collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "database migrations not applied: {} (restart the service to apply them)",
                    missing.join(", ")
                ));
            }
        }
    }
    if !worker.is_running() {
        problems.push(format!("{worker_name} not running"));
    }
    problems
}

/// The answer of `GET /readyz` for `problems` (see [`not_ready`]): 200 `{"status":"ready"}`,
/// or 503 `{"status":"not_ready","reason":...}` with the reasons joined, logged once.
pub fn response(problems: &[String]) -> Response {
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
