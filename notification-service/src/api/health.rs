//! `GET /healthz`: liveness, no token. `GET /readyz`: 200 `{"status":"ready"}` once the
//! database answers, its migrations are applied and the email worker runs; otherwise 503
//! `{"status":"not_ready","reason":"..."}`. Both are public and outside the intake's bounds.
//! The routes are [`webhook_common::health`]'s; this service supplies only its checks.

use std::future::Future;
use std::pin::Pin;

use axum::extract::FromRef;
use axum::Router;
use webhook_common::health::{ReadinessCheck, ReadinessProbe};
use webhook_common::telemetry::Liveness;

use crate::store::Store;
use crate::AppState;

/// The health routes.
pub fn router() -> Router<AppState> {
    webhook_common::health::router()
}

/// What keeps the service from being ready, empty when it is (see
/// [`webhook_common::readiness::not_ready`]).
pub async fn not_ready(store: &Store, worker_running: &Liveness) -> Vec<String> {
    let (database, migrator) = store.readiness_target();
    webhook_common::readiness::not_ready(database, migrator, worker_running, "email worker").await
}

/// The checks of `GET /readyz`: the database and its migrations, and the email worker.
impl ReadinessCheck for AppState {
    fn not_ready(&self) -> Pin<Box<dyn Future<Output = Vec<String>> + Send + '_>> {
        Box::pin(not_ready(&self.store, &self.worker_running))
    }
}

impl FromRef<AppState> for ReadinessProbe {
    fn from_ref(state: &AppState) -> Self {
        ReadinessProbe::new(state.clone())
    }
}
