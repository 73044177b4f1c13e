//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, generated from the
//! `#[utoipa::path]` annotations on the handlers and the `ToSchema` derives on their bodies.
//!
//! [`ApiDoc`] holds this service's own routes; [`document`] completes it with what both
//! services' documents have ([`webhook_common::openapi::complete`]): the routes whose handlers
//! live in `webhook-common` (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`), the JSON
//! error body, and the `admin_token` bearer scheme with the 401 on every management route.

use axum::Router;
use serde::Deserialize;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::Schema;
use utoipa::{OpenApi, ToSchema};

use crate::AppState;

/// The routes of orders-service itself ([`document`] is the whole API).
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
    ),
    tags(
        (name = "orders", description = "Place and read orders (listing them needs the admin token)"),
        (name = "endpoints", description = "Webhook subscriptions (admin)"),
        (name = "events", description = "Event history with deliveries and attempts (admin)"),
        (name = "deliveries", description = "Redeliver one delivery (admin)"),
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

/// The schema of an event type's wire name, from the event table (`webhook_common::event`).
pub use webhook_common::event::EventTypeName;
