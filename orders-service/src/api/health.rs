//! `GET /healthz`: answers as soon as the service serves (liveness). `GET /readyz`: 200
//! `{"status":"ready"}` once the database answers, its migrations are applied and the
//! dispatcher runs; otherwise 503 `{"status":"not_ready","reason":"..."}`. Both are public,
//! not rate limited and outside the bound on requests in progress. The routes are
//! [`webhook_common::health`]'s; this service supplies only its checks.

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
/// [`webhook_common::readiness::not_ready`]) for the store's backend and migrations.
pub async fn not_ready(store: &Store, dispatcher_running: &Liveness) -> Vec<String> {
    let (database, migrator) = store.readiness();
    webhook_common::readiness::not_ready(database, migrator, dispatcher_running, "dispatcher").await
}

/// The checks of `GET /readyz`: the database and its migrations, and the dispatcher.
impl ReadinessCheck for AppState {
    fn not_ready(&self) -> Pin<Box<dyn Future<Output = Vec<String>> + Send + '_>> {
        Box::pin(not_ready(&self.store, &self.dispatcher_running))
    }
}

impl FromRef<AppState> for ReadinessProbe {
    fn from_ref(state: &AppState) -> Self {
        ReadinessProbe::new(state.clone())
    }
}
