//! The health routes of both services, public and outside every bound on requests:
//! `GET /healthz` answers 200 `{"status":"ok"}` as soon as the service serves (liveness);
//! `GET /readyz` answers 200 `{"status":"ready"}` once the service's [`ReadinessCheck`] finds
//! nothing wrong, otherwise 503 `{"status":"not_ready","reason":"..."}` (see
//! [`crate::readiness::response`]).
//!
//! A service supplies only its check: it implements [`ReadinessCheck`] (usually with
//! [`crate::readiness::not_ready`] over its database, migrations and background loop) and
//! `FromRef<AppState> for ReadinessProbe`, then merges [`router`]. With the `openapi` feature
//! the handlers carry their `#[utoipa::path]` docs and the [`Health`] and [`Readiness`] body
//! schemas, for the services' `paths(...)` lists.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// What one service checks before it calls itself ready.
pub trait ReadinessCheck: Send + Sync + 'static {
    /// What keeps the service from being ready, empty when it is.
    fn not_ready(&self) -> Pin<Box<dyn Future<Output = Vec<String>> + Send + '_>>;
}

/// The [`ReadinessCheck`] `GET /readyz` runs; the service's state hands it out through
/// `FromRef`. Cheap to clone.
#[derive(Clone)]
pub struct ReadinessProbe(Arc<dyn ReadinessCheck>);

impl ReadinessProbe {
    /// A probe running `check`.
    pub fn new(check: impl ReadinessCheck) -> Self {
        ReadinessProbe(Arc::new(check))
    }
}

/// `GET /healthz` and `GET /readyz`, for a state that hands out its [`ReadinessProbe`].
pub fn router<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    ReadinessProbe: FromRef<S>,
{
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `GET /healthz`.
#[cfg_attr(
    feature = "openapi",
    utoipa::path(
        get,
        path = "/healthz",
        tag = "health",
        responses((status = 200, description = "The service serves", body = Health))
    )
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`.
#[cfg_attr(
    feature = "openapi",
    utoipa::path(
        get,
        path = "/readyz",
        tag = "health",
        responses(
            (status = 200, description = "Ready: `{\"status\": \"ready\"}`", body = Readiness),
            (status = 503, description = "Not ready: `{\"status\": \"not_ready\", \"reason\": ...}`",
                body = Readiness),
        )
    )
)]
pub async fn readyz(State(probe): State<ReadinessProbe>) -> Response {
    crate::readiness::response(&probe.0.not_ready().await)
}

/// The body of `GET /healthz`.
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: String,
}

/// The body of `GET /readyz`.
#[cfg(feature = "openapi")]
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    status: String,
    /// What keeps the service from being ready (only when it is not).
    #[schema(nullable = false)]
    reason: Option<String>,
}
