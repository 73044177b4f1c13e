//! The OpenAPI pieces both services' documents share: [`complete`] adds to a service's own
//! document the routes whose handlers live in this crate (`/healthz`, `/readyz`, `/metrics`,
//! `/openapi.json`), the JSON error body, the `health` and `operations` tags, and (last, so it
//! sees every route) [`AdminTokenSecurity`]: the `admin_token` bearer scheme and the 401 of
//! every operation that needs it. [`router`] serves the document at `GET /openapi.json`.

use std::sync::{Arc, OnceLock};

use axum::http::header;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi, Ref, RefOr};
use utoipa::Modify;

/// The routes and components every service's document has.
#[cfg(feature = "readiness")]
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(crate::health::healthz, crate::health::readyz, metrics, openapi_json),
    components(schemas(crate::error_body::ErrorBody)),
    tags(
        (name = "health", description = "Liveness and readiness probes"),
        (name = "operations", description = "Metrics and this document"),
    )
)]
struct Shared;

/// A service's `document` (its own routes, schemas and tags) completed with what every
/// service's document has: the shared routes, the error body, the `health` and `operations`
/// tags (after the service's own) and then [`AdminTokenSecurity`] over every route.
#[cfg(feature = "readiness")]
pub fn complete(mut document: OpenApi) -> OpenApi {
    use utoipa::OpenApi as _;

    document.merge(Shared::openapi());
    AdminTokenSecurity.modify(&mut document);
    document
}

/// The name of the admin token's security scheme; `security(("admin_token" = []))` on a path
/// marks it as needing the token.
pub const ADMIN_TOKEN_SCHEME: &str = "admin_token";

/// `GET /openapi.json`, public: `document()` as `application/json`, built and serialised on
/// the first request and kept for the next ones.
pub fn router<S>(document: fn() -> OpenApi) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let serialised: Arc<OnceLock<Bytes>> = Arc::new(OnceLock::new());
    Router::new().route(
        "/openapi.json",
        get(move || {
            let serialised = serialised.clone();
            async move {
                let body = serialised.get_or_init(|| {
                    document()
                        .to_json()
                        .unwrap_or_else(|e| {
                            format!(r#"{{"error": "serialising the OpenAPI document: {e}"}}"#)
                        })
                        .into()
                });
                ([(header::CONTENT_TYPE, "application/json")], body.clone())
            }
        }),
    )
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object))
)]
pub fn openapi_json() {}

/// `GET /metrics` (served by `webhook_common::metrics::metrics_handler`); documented here.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(("admin_token" = [])),
    responses((status = 200, description = "Prometheus text exposition format",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String))
)]
pub fn metrics() {}

/// Declares the `admin_token` bearer scheme, and the 401 on every operation that needs it.
pub struct AdminTokenSecurity;

impl Modify for AdminTokenSecurity {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_TOKEN_SCHEME,
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
