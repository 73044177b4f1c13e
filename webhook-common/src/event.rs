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

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;
use validator::{Validate, ValidationError, ValidationErrors};

use crate::money::{Currency, Money};

/// The event types this version knows, with their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventType {
    /// `order.paid`: the payment of an order succeeded.
    #[serde(rename = "order.paid")]
    OrderPaid,
    /// `order.payment_failed`: the payment of an order was declined.
    #[serde(rename = "order.payment_failed")]
    OrderPaymentFailed,
}

/// A `type` string that is not one of [`EventType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}; known types are order.paid and order.payment_failed")]
pub struct UnknownEventType(pub String);

impl EventType {
    /// Every known type, in a stable order.
    pub const ALL: [EventType; 2] = [EventType::OrderPaid, EventType::OrderPaymentFailed];

    /// The wire name, e.g. `"order.paid"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::OrderPaid => "order.paid",
            EventType::OrderPaymentFailed => "order.payment_failed",
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

/// `data` of `order.paid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Validate)]
pub struct OrderPaid {
    /// The order's id.
    pub order_id: Uuid,
    /// Where the confirmation goes.
    #[validate(
        email(message = "must be a valid email address"),
        length(max = 254, message = "must be at most 254 characters")
    )]
    pub customer_email: String,
    /// What was bought.
    #[validate(custom(function = "validate_product_name"))]
    pub product_name: String,
    /// How many items; at least 1.
    #[validate(range(min = 1, max = 1_000_000, message = "must be between 1 and 1000000"))]
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
    #[validate(
        email(message = "must be a valid email address"),
        length(max = 254, message = "must be at most 254 characters")
    )]
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

fn validate_product_name(name: &str) -> Result<(), ValidationError> {
    let trimmed = name.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > 200 || trimmed.len() != name.len() {
        let mut err = ValidationError::new("product_name");
        err.message = Some("must be 1 to 200 characters without leading or trailing spaces".into());
        return Err(err);
    }
    if name.chars().any(char::is_control) {
        let mut err = ValidationError::new("product_name");
        err.message = Some("must not contain control characters".into());
        return Err(err);
    }
    Ok(())
}

/// The typed `data` of an event, selected by its `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum EventPayload {
    /// `order.paid`.
    OrderPaid(OrderPaid),
    /// `order.payment_failed`.
    OrderPaymentFailed(OrderPaymentFailed),
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
            EventPayload::OrderPaid(_) => EventType::OrderPaid.as_str(),
            EventPayload::OrderPaymentFailed(_) => EventType::OrderPaymentFailed.as_str(),
            EventPayload::Unknown { event_type, .. } => event_type,
        }
    }

    /// The known type, or `None` for [`EventPayload::Unknown`].
    pub fn event_type(&self) -> Option<EventType> {
        match self {
            EventPayload::OrderPaid(_) => Some(EventType::OrderPaid),
            EventPayload::OrderPaymentFailed(_) => Some(EventType::OrderPaymentFailed),
            EventPayload::Unknown { .. } => None,
        }
    }

    /// The order this event is about, for the known types.
    pub fn order_id(&self) -> Option<Uuid> {
        match self {
            EventPayload::OrderPaid(d) => Some(d.order_id),
            EventPayload::OrderPaymentFailed(d) => Some(d.order_id),
            EventPayload::Unknown { .. } => None,
        }
    }
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
        let result = match &self.payload {
            EventPayload::OrderPaid(d) => d.validate(),
            EventPayload::OrderPaymentFailed(d) => d.validate(),
            EventPayload::Unknown { .. } => Ok(()),
        };
        result.map_err(|inner| {
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
        match &self.payload {
            EventPayload::OrderPaid(d) => s.serialize_field("data", d)?,
            EventPayload::OrderPaymentFailed(d) => s.serialize_field("data", d)?,
            EventPayload::Unknown { data, .. } => s.serialize_field("data", data)?,
        }
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
            Ok(EventType::OrderPaid) => {
                EventPayload::OrderPaid(serde_json::from_value(raw.data.clone()).map_err(typed)?)
            }
            Ok(EventType::OrderPaymentFailed) => EventPayload::OrderPaymentFailed(
                serde_json::from_value(raw.data.clone()).map_err(typed)?,
            ),
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
}
