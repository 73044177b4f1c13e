//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, generated from the
//! `#[utoipa::path]` annotations on the handlers and the `ToSchema` derives on their bodies.
//!
//! [`ApiDoc`] holds this service's own routes; [`document`] completes it with what both
//! services' documents have ([`webhook_common::openapi::complete`]): the routes whose handlers
//! live in `webhook-common` (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`), the JSON
//! error body, and the `admin_token` bearer scheme with the 401 on every admin route.

use axum::Router;
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::webhooks::ReceivedItem;
use crate::AppState;

/// The routes of notification-service itself ([`document`] is the whole API).
#[derive(OpenApi)]
#[openapi(
    info(title = "notification-service"),
    paths(
        super::webhooks::receive,
        super::webhooks::list_received,
        super::notifications::list,
        super::notifications::show,
    ),
    tags(
        (name = "webhooks", description = "The signed webhook intake, and what it received (admin)"),
        (name = "notifications", description = "The customer emails and their state (admin)"),
    )
)]
pub struct ApiDoc;

/// The document, as served: [`ApiDoc`] completed with what both services' documents have
/// (see [`webhook_common::openapi::complete`]).
pub fn document() -> utoipa::openapi::OpenApi {
    webhook_common::openapi::complete(ApiDoc::openapi())
}

/// The `/openapi.json` route; public.
pub fn router() -> Router<AppState> {
    webhook_common::openapi::router(document)
}

/// The answer to a delivery: `{"status": "queued", "notification_id": ...}` (202) or
/// `{"status": "duplicate" | "ignored" | "stale"}` (200).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct IntakeAnswer {
    /// `queued`, `duplicate`, `ignored` or `stale`.
    #[schema(pattern = "^(queued|duplicate|ignored|stale)$")]
    status: String,
    /// The email job queued (only with `queued`).
    #[schema(nullable = false)]
    notification_id: Option<Uuid>,
}

/// The body of `GET /webhooks/received`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReceivedList {
    /// The latest deliveries, newest first.
    items: Vec<ReceivedItem>,
}
