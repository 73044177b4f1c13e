//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, generated from the
//! `#[utoipa::path]` annotations on the handlers and the `ToSchema` derives on their bodies.
//!
//! Routes whose handler lives elsewhere (`/metrics`, from `webhook-common`) are described
//! here by a stand-in function. The management routes carry the `admin_token` bearer scheme;
//! [`AdminTokenSecurity`] adds it and the 401 every one of them may answer.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Schema};
use utoipa::{Modify, OpenApi, ToSchema};
use webhook_common::error_body::ErrorBody;

use crate::AppState;

/// The whole API of orders-service.
#[derive(OpenApi)]
#[openapi(
    info(title = "orders-service"),
    paths(
        super::orders::create_order,
        super::orders::get_order,
        super::orders::list_orders,
        super::endpoints::create_endpoint,
        super::endpoints::list_endpoints,
        super::endpoints::get_endpoint,
        super::endpoints::update_endpoint,
        super::endpoints::delete_endpoint,
        super::endpoints::get_secret,
        super::endpoints::rotate_secret,
        super::endpoints::recover,
        super::events::list_events,
        super::events::get_event,
        super::deliveries::retry,
        super::health::healthz,
        super::health::readyz,
        metrics,
        openapi_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&AdminTokenSecurity),
    tags(
        (name = "orders", description = "Place and read orders (listing them needs the admin token)"),
        (name = "endpoints", description = "Webhook subscriptions (admin)"),
        (name = "events", description = "Event history with deliveries and attempts (admin)"),
        (name = "deliveries", description = "Redeliver one delivery (admin)"),
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

/// Body of `POST /orders` (the handler reads the raw JSON itself, to read a price's exact
/// digits; this is what it accepts). Unknown fields are refused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct NewOrderBody {
    /// What is bought: 1 to 200 characters, no leading or trailing spaces.
    #[schema(min_length = 1, max_length = 200)]
    product_name: String,
    /// How many, 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
    quantity: u32,
    /// Price of one item: a JSON number in plain digits (`12.50`, not `1.25e1`) or a decimal
    /// string (`"12.50"`); more than 0 and at most 1000000.
    #[schema(schema_with = price_schema)]
    price_per_item: String,
    /// The buyer's email address, at most 254 characters.
    #[schema(max_length = 254, format = Email)]
    customer_email: String,
    /// ISO 4217 code; default `EUR`.
    #[schema(example = "EUR")]
    currency: Option<String>,
    /// `declined` makes the simulated payment fail; default `approved`.
    #[schema(value_type = Option<String>, pattern = "^(approved|declined)$")]
    simulate_payment: Option<String>,
}

/// A number or a decimal string.
fn price_schema() -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::String))
        .build()
        .into()
}

/// An event type this service emits.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum EventTypeName {
    /// An order was paid.
    #[schema(rename = "order.paid")]
    OrderPaid,
    /// An order's payment failed.
    #[schema(rename = "order.payment_failed")]
    OrderPaymentFailed,
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
