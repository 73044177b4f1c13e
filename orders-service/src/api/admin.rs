//! The management routes, every one behind the admin token: one route layer
//! ([`webhook_common::admin_auth`]) over the router that holds them, so a route added here is
//! protected without asking for it.

use axum::{middleware, Router};
use webhook_common::admin_auth::require_admin;
pub use webhook_common::admin_auth::AdminToken;

use crate::AppState;

/// Every management route behind the guard. `route_layer` runs it only for matched routes,
/// so unknown paths still get their JSON 404.
pub fn router(token: AdminToken) -> Router<AppState> {
    Router::new()
        .merge(super::orders::admin_router())
        .merge(super::endpoints::router())
        .merge(super::events::router())
        .merge(super::deliveries::router())
        .route_layer(middleware::from_fn_with_state(token, require_admin))
}

/// `GET /metrics` (Prometheus text) behind the same guard; separate from [`router`] so that
/// it can stay outside the bound on requests in progress, and a scrape still answers under load.
pub fn metrics_router(token: AdminToken) -> Router<AppState> {
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(webhook_common::metrics::metrics_handler),
        )
        .route_layer(middleware::from_fn_with_state(token, require_admin))
}
