//! Orders: `POST /orders`, `GET /orders/{id}`, `GET /orders?cursor=&limit=`.
//!
//! Creating an order simulates its payment and writes the order, its event and its
//! deliveries in one transaction (the outbox); the answer never waits for a webhook.
//! `"simulate_payment": "declined"` in the body makes the payment fail, which yields an
//! order with status `payment_failed` and an `order.payment_failed` event.
//!
//! `price_per_item` is a JSON number or a decimal string. A number is read from its literal
//! digits, never through `f64`: `12.5000000000000001` is refused as too precise rather than
//! rounded to 12.50, and exponent notation (`1e2`, `1.25E1`) is refused with a message asking
//! for plain digits (`100`, `12.50`).
//!
//! `POST /orders` takes an optional `Idempotency-Key` header (1 to 255 printable ASCII
//! characters; a random UUID per order is best), as Stripe does, so a client can retry after
//! a timeout or a 5xx without a second order and a second email. For 24 hours, the same key
//! with the same order answers the first answer again (same status and body, plus
//! `Idempotent-Replayed: true`) and creates nothing; the same key with a different order is a
//! 422. "The same order" means the same fields after validation: whitespace, key order and
//! `12.5` versus `"12.50"` do not make a body different. Keys are global (there is no client
//! identity to scope them to), and only an order that was created stores its key: a refused
//! request (400, 422, 5xx) can be retried with the same key. See [`crate::store::idempotency`].

use std::collections::BTreeMap;
use tracing::Instrument as _;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;
use webhook_common::error_body::ErrorBody;
use webhook_common::event;
use webhook_common::money::InvalidAmount;
use webhook_common::pagination::PageQuery;
use webhook_common::request::{AppJson, AppPath, AppQuery};
use webhook_common::signing::new_message_id;
use webhook_common::telemetry::TraceParent;
use webhook_common::{Currency, Event, EventPayload, Money, OrderPaid, OrderPaymentFailed};

use crate::domain::{NewEvent, Order, OrderStatus};
use crate::error::ApiError;
use crate::store::idempotency::{IdempotencyKey, KeyedOrder, StoredAnswer};
use crate::AppState;

/// The reason given for a simulated declined payment.
pub const DECLINED_REASON: &str = "card declined (simulated)";
/// The request header that makes `POST /orders` safe to retry.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The answer header that marks an answer replayed for an `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Longest `Idempotency-Key`, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

const KNOWN_FIELDS: [&str; 6] = [
    "product_name",
    "quantity",
    "price_per_item",
    "customer_email",
    "currency",
    "simulate_payment",
];

/// The public order routes. `GET /orders/{id}` needs no token: an order id is a random
/// UUIDv7 (74 random bits, never listed publicly), so only whoever created the order knows it.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
}

/// `GET /orders`, for the admin router: the list shows every customer's email address.
pub fn admin_router() -> Router<AppState> {
    Router::new().route("/orders", get(list_orders))
}

/// An order as the API shows it. Money is exact decimal text plus integer minor units.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderResponse {
    /// UUID of the order.
    pub id: Uuid,
    /// `paid` or `payment_failed`.
    pub status: String,
    /// What was bought.
    pub product_name: String,
    /// How many.
    pub quantity: u32,
    /// Price of one item, e.g. `"12.50"`.
    pub price_per_item: String,
    /// Total, e.g. `"25.00"`.
    pub total: String,
    /// Total in minor units (cents).
    pub total_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The buyer's email.
    pub customer_email: String,
    /// Why the payment failed, if it did.
    pub failure_reason: Option<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// The event this order produced; see `GET /events/{event_id}` (admin) for its deliveries.
    pub event_id: Option<Uuid>,
}

impl From<&Order> for OrderResponse {
    fn from(o: &Order) -> Self {
        OrderResponse {
            id: o.id,
            status: o.status.as_str().to_owned(),
            product_name: o.product_name.clone(),
            quantity: o.quantity,
            price_per_item: o.unit_price.to_decimal_string(),
            total: o.total.to_decimal_string(),
            total_minor: o.total.minor_units,
            currency: o.total.currency.to_string(),
            customer_email: o.customer_email.clone(),
            failure_reason: o.failure_reason.clone(),
            created_at: crate::api::rfc3339(o.created_at),
            event_id: o.event_id,
        }
    }
}

/// A page of orders: `{"items": [...], "next_cursor": "..." | null}`, newest first; pass
/// `next_cursor` as `cursor` for the next page.
pub type OrderPage = super::Page<OrderResponse>;

/// What a valid `POST /orders` body asks for.
struct NewOrder {
    product_name: String,
    quantity: u32,
    unit_price: Money,
    customer_email: String,
    declined: bool,
}

type Fields = BTreeMap<String, Vec<String>>;

fn complain(fields: &mut Fields, field: &str, message: impl Into<String>) {
    fields
        .entry(field.to_owned())
        .or_default()
        .push(message.into());
}

fn take_string(body: &Map<String, Value>, field: &str, fields: &mut Fields) -> Option<String> {
    match body.get(field) {
        None | Some(Value::Null) => {
            complain(fields, field, "is required");
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            complain(fields, field, "must be a string");
            None
        }
    }
}

/// Checks every field and reports all problems at once. Takes the raw body so that a price
/// given as a number is read from its literal digits. The rules themselves are the event
/// contract's ([`webhook_common::event`]), so an order accepted here makes a valid event.
fn parse_new_order(raw: &RawValue) -> Result<NewOrder, ApiError> {
    let body = RawBody::parse(raw)?;
    let mut fields = Fields::new();
    complain_of_unknown_fields(&body.values, &mut fields);
    let product_name = parse_product_name(&body.values, &mut fields);
    let quantity = parse_quantity(&body.values, &mut fields);
    let currency = parse_currency(&body.values, &mut fields);
    let price_text = parse_price_text(&body, &mut fields);
    let unit_price = match (price_text, currency) {
        (Some(text), Some(currency)) => parse_unit_price(&text, currency, &mut fields),
        _ => None,
    };
    let customer_email = parse_customer_email(&body.values, &mut fields);
    let declined = parse_simulate_payment(&body.values, &mut fields);
    match (product_name, quantity, unit_price, customer_email) {
        (Some(product_name), Some(quantity), Some(unit_price), Some(customer_email))
            if fields.is_empty() =>
        {
            Ok(NewOrder {
                product_name,
                quantity,
                unit_price,
                customer_email,
                declined,
            })
        }
        _ => Err(ApiError::Validation(fields)),
    }
}

/// A `POST /orders` body that is a JSON object, read twice.
struct RawBody<'a> {
    /// Each field's value.
    values: Map<String, Value>,
    /// Each field's source text, for reading a price's literal digits. A duplicated key
    /// keeps its last value here as in `values`.
    texts: BTreeMap<String, &'a RawValue>,
}

impl<'a> RawBody<'a> {
    fn parse(raw: &'a RawValue) -> Result<Self, ApiError> {
        let not_object = || ApiError::BadBody {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: "the request body must be a JSON object".into(),
        };
        Ok(RawBody {
            values: serde_json::from_str(raw.get()).map_err(|_| not_object())?,
            texts: serde_json::from_str(raw.get()).map_err(|_| not_object())?,
        })
    }
}

fn complain_of_unknown_fields(body: &Map<String, Value>, fields: &mut Fields) {
    for key in body.keys() {
        if !KNOWN_FIELDS.contains(&key.as_str()) {
            complain(
                fields,
                key,
                format!(
                    "is not a known field; known fields are {}",
                    KNOWN_FIELDS.join(", ")
                ),
            );
        }
    }
}

fn parse_product_name(body: &Map<String, Value>, fields: &mut Fields) -> Option<String> {
    let name = take_string(body, "product_name", fields)?;
    if !event::product_name_is_valid(&name) {
        complain(fields, "product_name", event::product_name_rule());
        return None;
    }
    Some(name)
}

fn parse_quantity(body: &Map<String, Value>, fields: &mut Fields) -> Option<u32> {
    match body.get("quantity") {
        None | Some(Value::Null) => {
            complain(fields, "quantity", "is required");
            None
        }
        Some(Value::Number(n)) => match n.as_u64().filter(|q| event::quantity_is_valid(*q)) {
            Some(q) => u32::try_from(q).ok(),
            None => {
                complain(fields, "quantity", event::quantity_rule());
                None
            }
        },
        Some(_) => {
            complain(fields, "quantity", "must be a number");
            None
        }
    }
}

fn parse_currency(body: &Map<String, Value>, fields: &mut Fields) -> Option<Currency> {
    match body.get("currency") {
        None | Some(Value::Null) => Some(Currency::EUR),
        Some(Value::String(s)) => match s.parse::<Currency>() {
            Ok(c) => Some(c),
            Err(e) => {
                complain(fields, "currency", e.to_string());
                None
            }
        },
        Some(_) => {
            complain(fields, "currency", "must be a string such as \"EUR\"");
            None
        }
    }
}

/// The price as decimal text: a string as given, a number as its literal digits.
fn parse_price_text(body: &RawBody<'_>, fields: &mut Fields) -> Option<String> {
    match body.values.get("price_per_item") {
        None | Some(Value::Null) => {
            complain(fields, "price_per_item", "is required");
            None
        }
        // The number's literal text, not the f64 serde_json made of it: "12.5000000000000001"
        // must be refused as too precise, not rounded to 12.50.
        Some(Value::Number(_)) => {
            let text = body
                .texts
                .get("price_per_item")
                .map(|r| r.get().trim().to_owned())
                .unwrap_or_default();
            if text.contains(['e', 'E']) {
                complain(
                    fields,
                    "price_per_item",
                    "must be written without an exponent, e.g. 100 or 12.50",
                );
                None
            } else {
                Some(text)
            }
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            complain(
                fields,
                "price_per_item",
                "must be a number or a decimal string such as \"12.50\"",
            );
            None
        }
    }
}

fn parse_unit_price(text: &str, currency: Currency, fields: &mut Fields) -> Option<Money> {
    match Money::parse_major(text, currency) {
        Ok(price) if event::unit_price_is_valid(price) => Some(price),
        Ok(_) | Err(InvalidAmount::TooLarge) => {
            complain(fields, "price_per_item", event::unit_price_rule());
            None
        }
        Err(e) => {
            complain(fields, "price_per_item", e.to_string());
            None
        }
    }
}

fn parse_customer_email(body: &Map<String, Value>, fields: &mut Fields) -> Option<String> {
    let email = take_string(body, "customer_email", fields)?;
    if !event::customer_email_is_valid(&email) {
        complain(fields, "customer_email", event::customer_email_rule());
        return None;
    }
    Some(email)
}

/// Whether the simulated payment is to be declined.
fn parse_simulate_payment(body: &Map<String, Value>, fields: &mut Fields) -> bool {
    match body.get("simulate_payment") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "approved" => false,
        Some(Value::String(s)) if s == "declined" => true,
        Some(_) => {
            complain(
                fields,
                "simulate_payment",
                "must be \"approved\" or \"declined\"",
            );
            false
        }
    }
}

/// The `Idempotency-Key` of a request, if it has one: given once, 1 to
/// [`MAX_IDEMPOTENCY_KEY_CHARS`] printable ASCII characters (space to `~`), else a 400
/// naming the header.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let printable = |v: &HeaderValue| {
        let bytes = v.as_bytes();
        (1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&bytes.len())
            && bytes.iter().all(|b| (b' '..=b'~').contains(b))
    };
    if values.next().is_some() || !printable(value) {
        return Err(ApiError::BadHeader(format!(
            "the Idempotency-Key header must be given once, as 1 to \
             {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters (a random UUID is best)"
        )));
    }
    Ok(value.to_str().ok().map(str::to_owned))
}

/// Hex SHA-256 of what a `POST /orders` asks for, to tell a retry of a request from another
/// request with the same `Idempotency-Key`: taken over the validated fields in a fixed order
/// (with the price in exact minor units), so two bodies that ask for the same order match,
/// whatever their whitespace, key order or way of writing the price.
fn request_sha256(new: &NewOrder) -> String {
    let canonical = serde_json::json!([
        "orders.v1",
        new.product_name,
        new.quantity,
        new.unit_price.minor_units,
        new.unit_price.currency.as_str(),
        new.customer_email,
        new.declined,
    ]);
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST /orders`.
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "1 to 255 printable ASCII characters (a random UUID is best): for 24 h the \
            same key with the same order answers the first answer again and creates nothing")),
    request_body(content = super::openapi::NewOrderBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The order, created; or its first answer replayed for an \
            `Idempotency-Key` (with `Idempotent-Replayed: true`)", body = OrderResponse,
            headers(("Location" = String, description = "`/orders/{id}`"))),
        (status = 400, description = "Malformed JSON or a bad `Idempotency-Key`", body = ErrorBody),
        (status = 413, description = "The body is over `MAX_BODY_BYTES`", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "Invalid fields (`error.fields` says which), or an \
            `Idempotency-Key` already used for another order", body = ErrorBody),
        (status = 429, description = "Over the client's rate limit; retry after `Retry-After` \
            seconds", body = ErrorBody),
        (status = 503, description = "Overloaded; retry after `Retry-After` seconds", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(order_id, trace_id))]
async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppJson(body): AppJson<Box<RawValue>>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let new = parse_new_order(&body)?;
    let answer = match place_order(&state, new, key).await? {
        Placed::Created { order, body } => {
            tracing::Span::current().record("order_id", tracing::field::display(order.id));
            tracing::info!(status = order.status.as_str(), total = %order.total, "order created");
            metrics::counter!("orders_created_total", "status" => order.status.as_str())
                .increment(1);
            StoredAnswer {
                order_id: order.id,
                status: StatusCode::CREATED.as_u16(),
                body,
            }
        }
        Placed::Replayed(answer) => {
            tracing::Span::current().record("order_id", tracing::field::display(answer.order_id));
            tracing::info!("Idempotency-Key seen before: answered its first answer, no new order");
            let mut response = created_response(answer)?;
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            return Ok(response);
        }
    };
    created_response(answer)
}

/// The answer to a `POST /orders` that created an order (or replays one that did): the
/// status and the JSON body, byte for byte, with `Location`.
fn created_response(answer: StoredAnswer) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(answer.status).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "a stored answer has the status {}: {e}",
            answer.status
        ))
    })?;
    Ok((
        status,
        [
            (header::LOCATION, format!("/orders/{}", answer.order_id)),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ],
        answer.body,
    )
        .into_response())
}

/// What [`place_order`] came to.
enum Placed {
    /// A new order, and the JSON body of its 201 (also stored under the request's key).
    Created {
        /// The order written.
        order: Order,
        /// `OrderResponse` of it, serialised.
        body: String,
    },
    /// The request's `Idempotency-Key` had created an order already: its first answer.
    Replayed(StoredAnswer),
}

/// The order a valid request makes, with its (simulated) payment decided, and the event it
/// produces, ready for the outbox.
fn order_and_event(new: NewOrder) -> Result<(Order, NewEvent), ApiError> {
    let total = event::order_total(new.unit_price, new.quantity)
        .ok_or_else(|| ApiError::field("price_per_item", "price × quantity is too large"))?;
    let id = Uuid::now_v7();
    let event = Event::now(event_payload(id, &new, total));
    let created_at =
        i64::try_from(event.timestamp.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    let event_id = Uuid::now_v7();
    let outbox = NewEvent {
        id: event_id,
        msg_id: new_message_id(),
        event_type: event.type_name().to_owned(),
        order_id: Some(id),
        payload: event.to_json_bytes(),
        created_at,
    };
    let order = Order {
        id,
        event_id: Some(event_id),
        product_name: new.product_name,
        quantity: new.quantity,
        unit_price: new.unit_price,
        total,
        customer_email: new.customer_email,
        status: if new.declined {
            OrderStatus::PaymentFailed
        } else {
            OrderStatus::Paid
        },
        failure_reason: new.declined.then(|| DECLINED_REASON.to_owned()),
        created_at,
    };
    Ok((order, outbox))
}

/// The `data` of the event that order `id` produces.
fn event_payload(id: Uuid, new: &NewOrder, total: Money) -> EventPayload {
    if new.declined {
        EventPayload::OrderPaymentFailed(OrderPaymentFailed {
            order_id: id,
            customer_email: new.customer_email.clone(),
            product_name: new.product_name.clone(),
            amount: total.minor_units,
            currency: total.currency,
            reason: DECLINED_REASON.to_owned(),
        })
    } else {
        EventPayload::OrderPaid(OrderPaid {
            order_id: id,
            customer_email: new.customer_email.clone(),
            product_name: new.product_name.clone(),
            quantity: new.quantity,
            amount: total.minor_units,
            currency: total.currency,
        })
    }
}

/// Simulates the payment, writes order + event + deliveries atomically (with the request's
/// `Idempotency-Key`, if any, checked and stored in the same write), wakes the dispatcher.
async fn place_order(
    state: &AppState,
    new: NewOrder,
    key: Option<String>,
) -> Result<Placed, ApiError> {
    let request_sha256 = key.as_ref().map(|_| request_sha256(&new));
    let (order, outbox) = order_and_event(new)?;
    // The answer is made before the write, so that the write can store it under the key.
    let body = serde_json::to_string(&OrderResponse::from(&order))
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("serialising the order: {e}")))?;
    let key = key
        .zip(request_sha256)
        .map(|(key, request_sha256)| IdempotencyKey {
            key,
            request_sha256,
            response_status: StatusCode::CREATED.as_u16(),
            response_body: body.clone(),
        });
    // The trace id every delivery attempt of the event will send in its `traceparent`
    // (derived from the webhook-id), recorded on the request's `create_order` span once the
    // order is written, so its "order created" line joins the attempts' trace.
    let trace_id = TraceParent::for_message(&outbox.msg_id).trace_id_hex();
    // The write and the handover run to the end in a task of their own, even if the client
    // goes away meanwhile: a request dropped between the commit and the handover would leave
    // its claimed delivery unattempted until the lease runs out. Each task does one write
    // through the bounded writer queue and ends.
    let committed = tokio::spawn(
        commit_and_hand_over(state.clone(), order.clone(), outbox, key)
            .instrument(tracing::Span::current()),
    );
    let replayed = committed
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("writing the order failed: {e}")))??;
    Ok(match replayed {
        Some(answer) => Placed::Replayed(answer),
        None => {
            tracing::Span::current().record("trace_id", trace_id.as_str());
            Placed::Created { order, body }
        }
    })
}

/// Writes the order with its event and deliveries. With a dispatch slot free, the order's
/// transaction also claims its delivery and the attempt starts right after the commit;
/// otherwise the dispatcher is woken to claim it. When `key` had created an order already,
/// nothing is written and the first answer comes back (or a 422 for a different request).
async fn commit_and_hand_over(
    state: AppState,
    order: Order,
    outbox: NewEvent,
    key: Option<IdempotencyKey>,
) -> Result<Option<StoredAnswer>, ApiError> {
    let slot = state.handoff.reserve();
    let claim = slot.as_ref().map(|_| state.handoff.claim_on_create());
    let created = match state
        .store
        .create_order_keyed(&order, &outbox, claim, key.as_ref())
        .await?
    {
        KeyedOrder::Created(created) => created,
        // Nothing was written or claimed; the slot goes back when dropped.
        KeyedOrder::Replayed(answer) => return Ok(Some(answer)),
        KeyedOrder::KeyReused => return Err(ApiError::IdempotencyKeyReused),
    };
    let mut handed_over = 0;
    if let (Some(claimed), Some(slot)) = (created.claimed, slot) {
        handed_over = claimed.jobs.len() + claimed.unloadable.len();
        if let Err(claimed) = state.handoff.hand_over(claimed, slot) {
            // The dispatcher has stopped (shutdown): make the delivery due again at once.
            handed_over = 0;
            let ids = claimed.jobs.iter().map(|job| job.delivery_id);
            for id in ids.chain(claimed.unloadable.iter().map(|(id, _)| *id)) {
                let _ = state.store.release(id, claimed.token, 0).await;
            }
        }
    }
    if created.deliveries > handed_over {
        state.dispatch_wake.notify_one();
    }
    Ok(None)
}

/// `GET /orders/{id}`.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    tag = "orders",
    params(("id" = uuid::Uuid, Path, description = "The order's id")),
    responses(
        (status = 200, description = "The order", body = OrderResponse),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No order with this id", body = ErrorBody),
    )
)]
async fn get_order(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<OrderResponse>, ApiError> {
    let order = state
        .store
        .order(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no order with id \"{id}\"")))?;
    Ok(Json(OrderResponse::from(&order)))
}

/// `GET /orders?cursor=&limit=`: newest first.
#[utoipa::path(
    get,
    path = "/orders",
    tag = "orders",
    params(PageQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of orders, newest first", body = super::Page<OrderResponse>),
        (status = 400, description = "A bad `limit` or a cursor this API did not issue (the body names it)", body = ErrorBody),
    )
)]
async fn list_orders(
    State(state): State<AppState>,
    AppQuery(page): AppQuery<PageQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    let limit = page.limit()?;
    let before = page.cursor(|c| c.parse::<Uuid>().ok())?;
    let orders = state.store.list_orders(before, limit + 1).await?;
    Ok(Json(OrderPage::from_overfetched(
        orders,
        limit,
        |o| o.id.to_string(),
        |o| OrderResponse::from(o),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use validator::Validate as _;

    /// A valid address of exactly `MAX_CUSTOMER_EMAIL_LEN` bytes.
    fn longest_email() -> String {
        let local = "a".repeat(64);
        let host = format!("{}.{}.", "b".repeat(63), "c".repeat(63));
        let tld_len = event::MAX_CUSTOMER_EMAIL_LEN - local.len() - 1 - host.len();
        format!("{local}@{host}{}", "d".repeat(tld_len))
    }

    /// An order at every upper bound the API documents.
    fn largest_order(currency: &str, declined: bool) -> serde_json::Value {
        serde_json::json!({
            "product_name": "x".repeat(event::MAX_PRODUCT_NAME_CHARS),
            "quantity": event::MAX_QUANTITY,
            "price_per_item": event::MAX_UNIT_PRICE_MAJOR.to_string(),
            "customer_email": longest_email(),
            "currency": currency,
            "simulate_payment": if declined { "declined" } else { "approved" },
        })
    }

    fn parse(body: &serde_json::Value) -> Result<NewOrder, Fields> {
        let raw = serde_json::value::to_raw_value(body).unwrap();
        match parse_new_order(&raw) {
            Ok(new) => Ok(new),
            Err(ApiError::Validation(fields)) => Err(fields),
            Err(other) => panic!("expected field errors, got {other:?}"),
        }
    }

    /// The event a valid body makes, read back from the outbox bytes as a receiver would.
    fn event_of(body: &serde_json::Value) -> Event {
        let Ok(new) = parse(body) else {
            panic!("{body} was refused");
        };
        let (_, outbox) = order_and_event(new).unwrap();
        serde_json::from_slice(&outbox.payload).unwrap()
    }

    #[test]
    fn an_order_at_every_api_maximum_makes_an_event_that_validates() {
        // CLF has four decimals: the largest total in minor units of any currency.
        for currency in ["EUR", "JPY", "CLF"] {
            for declined in [false, true] {
                let event = event_of(&largest_order(currency, declined));
                assert_eq!(event.validate(), Ok(()), "{currency}, declined: {declined}");
            }
        }
        let EventPayload::OrderPaid(paid) = event_of(&largest_order("EUR", false)).payload else {
            panic!("an approved order makes order.paid");
        };
        assert_eq!(paid.quantity, event::MAX_QUANTITY);
        assert_eq!(
            paid.amount,
            1_000_000 * 100 * i64::from(event::MAX_QUANTITY)
        );
    }

    #[test]
    fn one_past_each_bound_is_refused_by_the_api_and_the_event_contract_alike() {
        let mut body = largest_order("EUR", false);
        body["quantity"] = (event::MAX_QUANTITY + 1).into();
        body["product_name"] = "x".repeat(event::MAX_PRODUCT_NAME_CHARS + 1).into();
        body["customer_email"] = format!("a{}", longest_email()).into();
        let fields = parse(&body)
            .err()
            .expect("every field is one past its bound");
        let api: Vec<_> = fields.keys().map(String::as_str).collect();
        assert_eq!(api, ["customer_email", "product_name", "quantity"]);

        let EventPayload::OrderPaid(mut paid) = event_of(&largest_order("EUR", false)).payload
        else {
            panic!("an approved order makes order.paid");
        };
        paid.quantity = event::MAX_QUANTITY + 1;
        paid.product_name = "x".repeat(event::MAX_PRODUCT_NAME_CHARS + 1);
        paid.customer_email = format!("a{}", longest_email());
        let errors = paid.validate().unwrap_err();
        let contract = webhook_common::error_body::field_errors(&errors);
        let contract: Vec<_> = contract.keys().map(String::as_str).collect();
        assert_eq!(
            contract, api,
            "the API and the event contract drifted apart"
        );
    }

    #[test]
    fn field_errors_keep_their_published_wording() {
        let mut body = largest_order("EUR", false);
        body["quantity"] = 0.into();
        body["product_name"] = " padded".into();
        body["customer_email"] = "not-an-email".into();
        body["price_per_item"] = "1000000.01".into();
        let fields = parse(&body).err().expect("four bad fields");
        let first = |field: &str| fields[field][0].as_str();
        assert_eq!(first("quantity"), "must be a whole number from 1 to 1000");
        assert_eq!(
            first("product_name"),
            "must be 1 to 200 characters without leading or trailing spaces or control characters"
        );
        assert_eq!(
            first("customer_email"),
            "must be a valid email address of at most 254 characters"
        );
        assert_eq!(
            first("price_per_item"),
            "must be more than 0 and at most 1000000"
        );
    }

    #[test]
    fn the_openapi_document_and_readme_show_the_shared_bounds() {
        let doc = serde_json::to_value(crate::api::openapi::document()).unwrap();
        let body = &doc["components"]["schemas"]["NewOrderBody"]["properties"];
        assert_eq!(body["quantity"]["maximum"], event::MAX_QUANTITY, "{body}");
        assert_eq!(
            body["product_name"]["maxLength"],
            event::MAX_PRODUCT_NAME_CHARS,
            "{body}"
        );
        assert_eq!(
            body["customer_email"]["maxLength"],
            event::MAX_CUSTOMER_EMAIL_LEN,
            "{body}"
        );
        let described = |field: &str, text: String| {
            let description = body[field]["description"].as_str().unwrap_or_default();
            assert!(description.contains(&text), "{field}: {description:?}");
        };
        described("quantity", format!("1 to {}", event::MAX_QUANTITY));
        described(
            "product_name",
            format!("1 to {} characters", event::MAX_PRODUCT_NAME_CHARS),
        );
        described(
            "customer_email",
            format!("at most {} characters", event::MAX_CUSTOMER_EMAIL_LEN),
        );
        // `price_per_item` (a `schema_with` schema) has no description in the document, so
        // its bound is checked where it is written for users: README.
        let readme = include_str!("../../../README.md");
        let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
        for limit in [
            format!(
                "`product_name` (1 to {} characters)",
                event::MAX_PRODUCT_NAME_CHARS
            ),
            format!("`quantity` (1 to {})", event::MAX_QUANTITY),
            format!("more than 0 and at most {}", event::MAX_UNIT_PRICE_MAJOR),
            format!(
                "`customer_email` (at most {} characters)",
                event::MAX_CUSTOMER_EMAIL_LEN
            ),
        ] {
            assert!(readme.contains(&limit), "README does not say {limit:?}");
        }
    }
}
