//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, generated from the
//! `#[utoipa::path]` annotations on the handlers and the `ToSchema` derives on their bodies.
//!
//! Routes whose handler lives elsewhere (`/metrics`, from `webhook-common`) are described
//! here by a stand-in function. The admin routes carry the `admin_token` bearer scheme;
//! [`AdminTokenSecurity`] adds it and the 401 every one of them may answer.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;
use webhook_common::error_body::ErrorBody;

use super::webhooks::ReceivedItem;
use crate::AppState;

/// The whole API of notification-service.
#[derive(OpenApi)]
#[openapi(
    info(title = "notification-service"),
    paths(
        super::webhooks::receive,
        super::webhooks::list_received,
        super::notifications::list,
        super::notifications::show,
        super::health::healthz,
        super::health::readyz,
        metrics,
        openapi_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&AdminTokenSecurity),
    tags(
        (name = "webhooks", description = "The signed webhook intake, and what it received (admin)"),
        (name = "notifications", description = "The customer emails and their state (admin)"),
        (name = "health", description = "Liveness and readiness probes"),
        (name = "operations", description = "Metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The document, as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The `/openapi.json` route; public.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// The document serialised once.
static DOCUMENT_JSON: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_json()
        .unwrap_or_else(|e| format!(r#"{{"error": "serialising the OpenAPI document: {e}"}}"#))
});

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object))
)]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT_JSON.as_str(),
    )
}

/// `GET /metrics` (served by `webhook_common::metrics::metrics_handler`); documented here.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(("admin_token" = [])),
    responses((status = 200, description = "Prometheus text exposition format",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
#[allow(dead_code)]
fn metrics() {}

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

/// The body of `GET /healthz`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: String,
}

/// The body of `GET /readyz`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    status: String,
    /// What keeps the service from being ready (only when it is not).
    #[schema(nullable = false)]
    reason: Option<String>,
}

/// Declares the `admin_token` bearer scheme, and the 401 on every operation that needs it.
pub struct AdminTokenSecurity;

impl Modify for AdminTokenSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <ADMIN_TOKEN>`"))
                    .build(),
            ),
        );
        let unauthorized: RefOr<_> = ResponseBuilder::new()
            .description("Missing or wrong admin token (with `WWW-Authenticate: Bearer`)")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
            .into();
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    operation
                        .responses
                        .responses
                        .entry("401".to_owned())
                        .or_insert_with(|| unauthorized.clone());
                }
            }
        }
    }
}
