//! Event contracts: the JSON that travels in a webhook body.
//!
//! Every event is an envelope in the Standard Webhooks style:
//!
//! ```json
//! {"type": "order.paid", "timestamp": "2026-11-22T20:07:03Z", "data": {"order_id": "..."}}
//! ```
//!
//! `data` has one typed shape per `type`. A `type` this version does not know is *not* an
//! error: it deserialises to [`EventPayload::Unknown`] with its `data` kept as raw JSON, so a
//! receiver can acknowledge (and record) it instead of rejecting it. That lets a sender add event
//! types without breaking older receivers.
//!
//! The rules of one order ([`MAX_QUANTITY`], [`product_name_is_valid`], [`unit_price_is_valid`],
//! [`customer_email_is_valid`], [`order_total`], ...) are defined here, once: the orders API
//! checks a request with them and `data` is validated with them, so every order the API
//! accepts makes an event that validates.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;
use validator::{Validate, ValidateEmail as _, ValidationError, ValidationErrors};

use crate::money::{Currency, Money};

/// The one table of event types: each entry is the [`EventType`] variant (and the
/// [`EventPayload`] variant of the same name), its wire name and the struct of its `data`,
/// with the docs of the variant. Everything else that names the known types is generated
/// from it: the enums, the wire names and their parsing, [`EventType::ALL`], the list in
/// [`UnknownEventType`]'s message, the (de)serialisation and validation of `data`, and (with
/// the `openapi` feature) the `EventTypeName` schema. Adding a type is one entry here plus its
/// payload struct, which derives `Serialize`, `Deserialize` and `Validate` and has an
/// `order_id: Uuid` (every event is about one order).
macro_rules! event_types {
    ($($(#[doc = $doc:literal])* $variant:ident = $wire:literal => $payload:ident;)+) => {
        /// The event types this version knows, with their wire names.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum EventType {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $wire)]
                $variant,
            )+
        }

        impl EventType {
            /// Every known type, in a stable order (the order of the table).
            pub const ALL: [EventType; [$($wire),+].len()] = [$(EventType::$variant),+];

            /// The wire name, e.g. `"order.paid"`.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $(EventType::$variant => $wire,)+
                }
            }
        }

        /// The typed `data` of an event, selected by its `type`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum EventPayload {
            $(
                #[doc = concat!("`", $wire, "`.")]
                $variant($payload),
            )+
            /// A type this version does not know; acknowledge it rather than reject it.
            Unknown {
                /// The `type` as sent.
                event_type: String,
                /// The `data` as sent, unparsed.
                data: serde_json::Value,
            },
        }

        impl EventPayload {
            /// The wire `type` of this payload.
            pub fn type_name(&self) -> &str {
                match self {
                    $(EventPayload::$variant(_) => $wire,)+
                    EventPayload::Unknown { event_type, .. } => event_type,
                }
            }

            /// The known type, or `None` for [`EventPayload::Unknown`].
            pub fn event_type(&self) -> Option<EventType> {
                match self {
                    $(EventPayload::$variant(_) => Some(EventType::$variant),)+
                    EventPayload::Unknown { .. } => None,
                }
            }

            /// The order this event is about, for the known types.
            pub fn order_id(&self) -> Option<Uuid> {
                match self {
                    $(EventPayload::$variant(d) => Some(d.order_id),)+
                    EventPayload::Unknown { .. } => None,
                }
            }

            /// Validates the typed `data` (nothing to validate for an unknown type).
            fn validate_data(&self) -> Result<(), ValidationErrors> {
                match self {
                    $(EventPayload::$variant(d) => d.validate(),)+
                    EventPayload::Unknown { .. } => Ok(()),
                }
            }

            /// Serialises the `data` field of the envelope.
            fn serialize_data<S: SerializeStruct>(&self, s: &mut S) -> Result<(), S::Error> {
                match self {
                    $(EventPayload::$variant(d) => s.serialize_field("data", d),)+
                    EventPayload::Unknown { data, .. } => s.serialize_field("data", data),
                }
            }

            /// The payload of a known `event_type` from its raw `data`.
            fn from_data(
                event_type: EventType,
                data: serde_json::Value,
            ) -> Result<EventPayload, serde_json::Error> {
                Ok(match event_type {
                    $(EventType::$variant => EventPayload::$variant(serde_json::from_value(data)?),)+
                })
            }
        }
    };
}

event_types! {
    /// `order.paid`: the payment of an order succeeded.
    OrderPaid = "order.paid" => OrderPaid;
    /// `order.payment_failed`: the payment of an order was declined.
    OrderPaymentFailed = "order.payment_failed" => OrderPaymentFailed;
}

/// A `type` string that is not one of [`EventType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}; known types are {known}", known = EventType::known_list())]
pub struct UnknownEventType(pub String);

impl EventType {
    /// The wire names of [`EventType::ALL`] as a sentence lists them:
    /// `"order.paid and order.payment_failed"`.
    pub fn known_list() -> String {
        match EventType::ALL.split_last() {
            None => String::new(),
            Some((last, [])) => last.as_str().to_owned(),
            Some((last, rest)) => {
                let rest: Vec<&str> = rest.iter().map(EventType::as_str).collect();
                format!("{} and {}", rest.join(", "), last.as_str())
            }
        }
    }
}

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The OpenAPI schema of an event type's wire name, `EventTypeName`: a string, one of the wire
/// names of [`EventType::ALL`].
#[cfg(feature = "openapi")]
pub struct EventTypeName;

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for EventTypeName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("An event type this service emits."))
            .enum_values(Some(EventType::ALL.map(|t| t.as_str())))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for EventTypeName {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("EventTypeName")
    }
}

/// `data` of `order.paid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Validate)]
pub struct OrderPaid {
    /// The order's id.
    pub order_id: Uuid,
    /// Where the confirmation goes.
    #[validate(custom(function = "validate_customer_email"))]
    pub customer_email: String,
    /// What was bought.
    #[validate(custom(function = "validate_product_name"))]
    pub product_name: String,
    /// How many items: 1 to [`MAX_QUANTITY`].
    #[validate(custom(function = "validate_quantity"))]
    pub quantity: u32,
    /// Total charged, in the currency's minor units (cents); never negative.
    #[validate(range(min = 0, message = "must not be negative"))]
    pub amount: i64,
    /// ISO 4217 code; serde already refuses anything but three upper-case letters.
    pub currency: Currency,
}

/// `data` of `order.payment_failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Validate)]
pub struct OrderPaymentFailed {
    /// The order's id.
    pub order_id: Uuid,
    /// Where the notice goes.
    #[validate(custom(function = "validate_customer_email"))]
    pub customer_email: String,
    /// What was to be bought.
    #[validate(custom(function = "validate_product_name"))]
    pub product_name: String,
    /// The amount that was declined, in minor units; never negative.
    #[validate(range(min = 0, message = "must not be negative"))]
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: Currency,
    /// Why the payment failed, as told by the payment provider.
    #[validate(length(min = 1, max = 500, message = "must be 1 to 500 characters"))]
    pub reason: String,
}

impl OrderPaid {
    /// The total as [`Money`].
    pub fn total(&self) -> Money {
        Money::new(self.amount, self.currency)
    }
}

impl OrderPaymentFailed {
    /// The declined amount as [`Money`].
    pub fn total(&self) -> Money {
        Money::new(self.amount, self.currency)
    }
}

fn field_error(code: &'static str, message: String) -> ValidationError {
    ValidationError::new(code).with_message(message.into())
}

fn validate_product_name(name: &str) -> Result<(), ValidationError> {
    if product_name_is_valid(name) {
        Ok(())
    } else {
        Err(field_error("product_name", product_name_rule()))
    }
}

fn validate_quantity(quantity: u32) -> Result<(), ValidationError> {
    if quantity_is_valid(u64::from(quantity)) {
        Ok(())
    } else {
        Err(field_error("quantity", quantity_rule()))
    }
}

fn validate_customer_email(email: &str) -> Result<(), ValidationError> {
    if customer_email_is_valid(email) {
        Ok(())
    } else {
        Err(field_error("customer_email", customer_email_rule()))
    }
}

// The rules of one order, defined once: `POST /orders` checks a request with them and the
// event contract validates `data` with them, so what the API accepts and what a receiver
// accepts cannot drift apart. There is one bound per rule, not a stricter one for the API
// and a more lenient one for the event: the orders service is the only producer of these
// events, and a receiver that accepted more than any order can hold would only widen what
// it has to be ready for (a third-party producer follows the same published limits).

/// Most items in one order (and in the `quantity` of `order.paid`). The number README and
/// the OpenAPI document show users.
pub const MAX_QUANTITY: u32 = 1_000;
/// Longest product name, in characters.
pub const MAX_PRODUCT_NAME_CHARS: usize = 200;
/// Longest customer email address, in bytes (RFC 5321's path limit): the field error says
/// "characters", which it is for the ASCII addresses nearly everyone has.
pub const MAX_CUSTOMER_EMAIL_LEN: usize = 254;
/// Highest price of one item, in major units (so the highest total is
/// `MAX_QUANTITY × MAX_UNIT_PRICE_MAJOR`, which fits `i64` minor units in every currency).
pub const MAX_UNIT_PRICE_MAJOR: i64 = 1_000_000;

/// Whether `name` is a product name: 1 to [`MAX_PRODUCT_NAME_CHARS`] characters, without
/// leading or trailing whitespace or control characters.
pub fn product_name_is_valid(name: &str) -> bool {
    let chars = name.chars().count();
    (1..=MAX_PRODUCT_NAME_CHARS).contains(&chars)
        && name.trim() == name
        && !name.chars().any(char::is_control)
}

/// What a product name must be, as a field error says it.
pub fn product_name_rule() -> String {
    format!(
        "must be 1 to {MAX_PRODUCT_NAME_CHARS} characters without leading or trailing spaces \
         or control characters"
    )
}

/// Whether `quantity` is 1 to [`MAX_QUANTITY`]. Takes a `u64` so that the API can check a
/// JSON number before narrowing it.
pub fn quantity_is_valid(quantity: u64) -> bool {
    (1..=u64::from(MAX_QUANTITY)).contains(&quantity)
}

/// What a quantity must be, as a field error says it.
pub fn quantity_rule() -> String {
    format!("must be a whole number from 1 to {MAX_QUANTITY}")
}

/// Whether `email` is an email address of at most [`MAX_CUSTOMER_EMAIL_LEN`] bytes.
pub fn customer_email_is_valid(email: &str) -> bool {
    email.len() <= MAX_CUSTOMER_EMAIL_LEN && email.validate_email()
}

/// What a customer email must be, as a field error says it.
pub fn customer_email_rule() -> String {
    format!("must be a valid email address of at most {MAX_CUSTOMER_EMAIL_LEN} characters")
}

/// Whether `price` is a price of one item: more than 0 and at most [`MAX_UNIT_PRICE_MAJOR`]
/// in its currency.
pub fn unit_price_is_valid(price: Money) -> bool {
    let scale = 10_i64.pow(price.currency.minor_unit_exponent());
    price.minor_units > 0 && price.minor_units <= MAX_UNIT_PRICE_MAJOR.saturating_mul(scale)
}

/// What a price of one item must be, as a field error says it.
pub fn unit_price_rule() -> String {
    format!("must be more than 0 and at most {MAX_UNIT_PRICE_MAJOR}")
}

/// The total of an order, `unit_price × quantity`, exact; `None` on overflow (which valid
/// prices and quantities never reach).
pub fn order_total(unit_price: Money, quantity: u32) -> Option<Money> {
    unit_price.checked_mul(i64::from(quantity))
}

/// One event: when it happened and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When the event occurred (RFC 3339 on the wire), not when it was delivered.
    pub timestamp: OffsetDateTime,
    /// The typed `data`.
    pub payload: EventPayload,
}

impl Event {
    /// An event that happens now. The timestamp is truncated to whole microseconds so it
    /// survives storage and round trips unchanged.
    pub fn now(payload: EventPayload) -> Self {
        let now = OffsetDateTime::now_utc();
        let timestamp = now
            .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
            .unwrap_or(now);
        Event { timestamp, payload }
    }

    /// The wire `type`.
    pub fn type_name(&self) -> &str {
        self.payload.type_name()
    }

    /// The event as the JSON bytes that are signed and sent.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising plain structs with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Validate for Event {
    /// Validates the typed `data`; field paths come out as `data.<field>`. Unknown types have
    /// nothing to validate.
    fn validate(&self) -> Result<(), ValidationErrors> {
        self.payload.validate_data().map_err(|inner| {
            let mut outer = ValidationErrors::new();
            outer.errors_mut().insert(
                "data".into(),
                validator::ValidationErrorsKind::Struct(Box::new(inner)),
            );
            outer
        })
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let timestamp = self
            .timestamp
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        let mut s = serializer.serialize_struct("Event", 3)?;
        s.serialize_field("type", self.type_name())?;
        s.serialize_field("timestamp", &timestamp)?;
        self.payload.serialize_data(&mut s)?;
        s.end()
    }
}

/// The envelope as it arrives, before `data` is given its type.
#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    timestamp: OffsetDateTime,
    data: serde_json::Value,
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawEnvelope::deserialize(deserializer)?;
        let typed = |e: serde_json::Error| {
            D::Error::custom(format_args!("invalid `data` for {}: {e}", raw.event_type))
        };
        let payload = match raw.event_type.parse::<EventType>() {
            Ok(known) => EventPayload::from_data(known, raw.data.clone()).map_err(typed)?,
            Err(_) => EventPayload::Unknown {
                event_type: raw.event_type.clone(),
                data: raw.data.clone(),
            },
        };
        Ok(Event {
            timestamp: raw.timestamp,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn paid() -> OrderPaid {
        OrderPaid {
            order_id: Uuid::parse_str("0192f4d2-7c1e-7a51-9d3b-5c1e2f3a4b5c").unwrap(),
            customer_email: "ada@example.com".into(),
            product_name: "Mechanical keyboard".into(),
            quantity: 2,
            amount: 2500,
            currency: Currency::EUR,
        }
    }

    fn failed() -> OrderPaymentFailed {
        OrderPaymentFailed {
            order_id: Uuid::parse_str("0192f4d2-7c1e-7a51-9d3b-5c1e2f3a4b5d").unwrap(),
            customer_email: "ada@example.com".into(),
            product_name: "Mechanical keyboard".into(),
            amount: 2500,
            currency: Currency::EUR,
            reason: "card declined".into(),
        }
    }

    fn at(payload: EventPayload) -> Event {
        Event {
            timestamp: datetime!(2026-11-22 20:07:03.123456 UTC),
            payload,
        }
    }

    #[test]
    fn order_paid_round_trips_with_the_documented_shape() {
        let event = at(EventPayload::OrderPaid(paid()));
        let json: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "order.paid",
                "timestamp": "2026-11-22T20:07:03.123456Z",
                "data": {
                    "order_id": "0192f4d2-7c1e-7a51-9d3b-5c1e2f3a4b5c",
                    "customer_email": "ada@example.com",
                    "product_name": "Mechanical keyboard",
                    "quantity": 2,
                    "amount": 2500,
                    "currency": "EUR"
                }
            })
        );
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
        assert!(back.validate().is_ok());
    }

    #[test]
    fn order_payment_failed_round_trips() {
        let event = at(EventPayload::OrderPaymentFailed(failed()));
        let bytes = event.to_json_bytes();
        let back: Event = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, event);
        assert_eq!(back.type_name(), "order.payment_failed");
        assert!(back.validate().is_ok());
    }

    #[test]
    fn unknown_type_is_kept_not_rejected() {
        let json = r#"{"type":"order.shipped","timestamp":"2026-11-22T20:07:03Z","data":{"carrier":"DHL"}}"#;
        let event: Event = serde_json::from_str(json).unwrap();
        assert_eq!(event.type_name(), "order.shipped");
        assert_eq!(event.payload.event_type(), None);
        assert!(event.validate().is_ok());
        match &event.payload {
            EventPayload::Unknown { data, .. } => assert_eq!(data["carrier"], "DHL"),
            other => panic!("expected Unknown, got {other:?}"),
        }
        let again: serde_json::Value = serde_json::to_value(&event).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }

    #[test]
    fn known_type_with_wrong_data_is_an_error_naming_the_type() {
        let json =
            r#"{"type":"order.paid","timestamp":"2026-11-22T20:07:03Z","data":{"order_id":"x"}}"#;
        let err = serde_json::from_str::<Event>(json).unwrap_err().to_string();
        assert!(err.contains("order.paid"), "{err}");
        assert!(serde_json::from_str::<Event>(r#"{"type":"order.paid","data":{}}"#).is_err());
        let bad_ts = r#"{"type":"x","timestamp":"yesterday","data":{}}"#;
        assert!(serde_json::from_str::<Event>(bad_ts).is_err());
    }

    /// The domain rules of the check (validator's regex, run by whichever engine the regex
    /// crate's features give it): labels of letters, digits and inner hyphens, at most 63
    /// characters each; an IP literal in brackets.
    #[test]
    fn customer_emails_follow_the_domain_rules() {
        let label63 = "a".repeat(63);
        for good in [
            "ada@example.com",
            "ada@ex-ample.co.uk",
            "ADA@EXAMPLE.COM",
            "ada@localhost",
            "ada@[127.0.0.1]",
            &format!("ada@{label63}.com"),
        ] {
            assert!(customer_email_is_valid(good), "{good}");
        }
        for bad in [
            "ada@-example.com",
            "ada@example-.com",
            "ada@exa_mple.com",
            "ada@example..com",
            "ada@.example.com",
            "ada@",
            "@example.com",
            &format!("ada@{label63}a.com"),
        ] {
            assert!(!customer_email_is_valid(bad), "{bad}");
        }
    }

    #[test]
    fn validation_reports_each_bad_field_under_data() {
        let mut bad = paid();
        bad.customer_email = "not-an-email".into();
        bad.product_name = " ".into();
        bad.quantity = 0;
        bad.amount = -1;
        let errors = at(EventPayload::OrderPaid(bad)).validate().unwrap_err();
        let fields = crate::error_body::field_errors(&errors);
        let keys: Vec<_> = fields.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "data.amount",
                "data.customer_email",
                "data.product_name",
                "data.quantity"
            ]
        );

        let mut bad = failed();
        bad.reason = String::new();
        bad.product_name = "x".repeat(201);
        let errors = at(EventPayload::OrderPaymentFailed(bad))
            .validate()
            .unwrap_err();
        let fields = crate::error_body::field_errors(&errors);
        assert!(fields.contains_key("data.reason"), "{fields:?}");
        assert!(fields.contains_key("data.product_name"), "{fields:?}");
    }

    #[test]
    fn the_event_contract_takes_each_order_rule_up_to_its_bound_and_no_further() {
        let mut at_bounds = paid();
        at_bounds.quantity = MAX_QUANTITY;
        at_bounds.product_name = "x".repeat(MAX_PRODUCT_NAME_CHARS);
        let price = Money::new(MAX_UNIT_PRICE_MAJOR * 100, Currency::EUR);
        assert!(unit_price_is_valid(price));
        let total = order_total(price, MAX_QUANTITY).expect("the largest total fits i64");
        at_bounds.amount = total.minor_units;
        assert_eq!(at_bounds.validate(), Ok(()));

        let mut past = at_bounds.clone();
        past.quantity = MAX_QUANTITY + 1;
        past.product_name.push('x');
        let errors = past.validate().unwrap_err();
        let fields = crate::error_body::field_errors(&errors);
        assert_eq!(fields["quantity"], [quantity_rule()]);
        assert_eq!(fields["product_name"], [product_name_rule()]);
        assert!(!quantity_is_valid(u64::from(MAX_QUANTITY) + 1));
        assert!(!unit_price_is_valid(Money::new(
            price.minor_units + 1,
            Currency::EUR
        )));
        assert!(!unit_price_is_valid(Money::new(0, Currency::EUR)));
    }

    #[test]
    fn the_largest_order_total_fits_every_currency() {
        for code in ["JPY", "EUR", "KWD", "CLF"] {
            let currency: Currency = code.parse().unwrap();
            let scale = 10_i64.pow(currency.minor_unit_exponent());
            let price = Money::new(MAX_UNIT_PRICE_MAJOR * scale, currency);
            assert!(unit_price_is_valid(price), "{code}");
            assert!(order_total(price, MAX_QUANTITY).is_some(), "{code}");
        }
    }

    #[test]
    fn invalid_currency_and_negative_quantity_fail_to_deserialise() {
        let mut json = serde_json::to_value(at(EventPayload::OrderPaid(paid()))).unwrap();
        json["data"]["currency"] = "eur".into();
        assert!(serde_json::from_value::<Event>(json.clone()).is_err());
        json["data"]["currency"] = "EUR".into();
        json["data"]["quantity"] = (-1).into();
        assert!(serde_json::from_value::<Event>(json.clone()).is_err());
        json["data"]["quantity"] = 1.into();
        json["data"]["amount"] = 1.5.into();
        assert!(
            serde_json::from_value::<Event>(json).is_err(),
            "amounts are integers"
        );
    }

    #[test]
    fn event_types_parse_from_their_wire_names() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>().unwrap(), t);
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert!("order.unknown".parse::<EventType>().is_err());
    }

    #[test]
    fn an_unknown_type_is_refused_with_every_known_type_listed() {
        let err = "order.unknown".parse::<EventType>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown event type \"order.unknown\"; known types are order.paid and order.payment_failed"
        );
    }
}
