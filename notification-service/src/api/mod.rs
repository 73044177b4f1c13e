//! HTTP routes, one file per resource, and the router of the admin routes, every one behind
//! the admin token.

pub mod health;
pub mod metrics;
pub mod notifications;
pub mod openapi;
pub mod webhooks;

use axum::http::StatusCode;
use axum::{middleware, Router};
use webhook_common::admin_auth::{require_admin, AdminToken};

use crate::AppState;

/// Every route behind the admin token as `(method, path template)`; each needs
/// `Authorization: Bearer <ADMIN_TOKEN>`. The guard is one layer over [`admin_router`], so a
/// route added there is protected whether or not it is listed here; the list is what the
/// tests walk through.
pub const MANAGEMENT_ROUTES: [(&str, &str); 4] = [
    ("GET", "/notifications"),
    ("GET", "/notifications/{id}"),
    ("GET", "/webhooks/received"),
    ("GET", "/metrics"),
];

/// The admin routes (the read API and `/metrics`) behind the admin token. `route_layer` runs
/// the guard only for matched routes, so unknown paths still get their JSON 404.
pub fn admin_router(token: AdminToken) -> Router<AppState> {
    Router::new()
        .merge(notifications::router())
        .merge(webhooks::admin_router())
        .merge(metrics::router())
        .route_layer(middleware::from_fn_with_state(token, require_admin))
        // Set after the guard, so it replaces the guarded 405: a method a route does not have
        // is answered 405 (with `Allow`) before the token is checked, as orders-service does.
        .method_not_allowed_fallback(method_not_allowed)
}

/// 405; `json_errors` gives it the JSON body, and axum adds `Allow`.
async fn method_not_allowed() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}
