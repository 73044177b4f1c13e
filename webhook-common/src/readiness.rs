//! `GET /readyz` for both services: ready once the database answers, every embedded migration
//! is applied and the service's background loop runs; otherwise 503 with the reasons.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sqlx::migrate::Migrator;
use sqlx::{PgPool, SqlitePool};

use crate::telemetry::Liveness;

/// How long a readiness probe waits for the database before calling it unavailable.
const DATABASE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The database a readiness probe asks, whichever backend the service runs on.
#[derive(Clone, Copy, Debug)]
pub enum Database<'a> {
    /// The embedded default.
    Sqlite(&'a SqlitePool),
    /// Several replicas sharing one database.
    Postgres(&'a PgPool),
}

impl Database<'_> {
    /// The versions of the migrations applied successfully; empty when the database was never
    /// migrated (no `_sqlx_migrations` table yet). One trivial query answers both questions:
    /// does the database answer, and how far is it migrated.
    async fn applied_migrations(self) -> Result<Vec<i64>, sqlx::Error> {
        const APPLIED: &str = "SELECT version FROM _sqlx_migrations WHERE success";
        match self {
            Database::Sqlite(pool) => {
                let has_table: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master \
                     WHERE type = 'table' AND name = '_sqlx_migrations')",
                )
                .fetch_one(pool)
                .await?;
                if !has_table {
                    return Ok(Vec::new());
                }
                sqlx::query_scalar(APPLIED).fetch_all(pool).await
            }
            Database::Postgres(pool) => {
                // `to_regclass` follows the connection's `search_path`, like the migrator.
                let has_table: bool =
                    sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                        .fetch_one(pool)
                        .await?;
                if !has_table {
                    return Ok(Vec::new());
                }
                sqlx::query_scalar(APPLIED).fetch_all(pool).await
            }
        }
    }
}

/// What keeps the service from being ready, empty when it is: the database does not answer a
/// trivial query within 2 s, a migration of `migrator` is not applied, or the background loop
/// `worker` (named `worker_name` in the reason) is not running.
pub async fn not_ready(
    database: Database<'_>,
    migrator: &Migrator,
    worker: &Liveness,
    worker_name: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let probe = database.applied_migrations();
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
