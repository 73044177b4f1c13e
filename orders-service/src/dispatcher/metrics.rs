//! The dispatcher's Prometheus series: `webhook_deliveries_total{event_type,outcome}` and
//! `webhook_delivery_attempt_seconds`. Recorded into the process-wide recorder of
//! `webhook_common::metrics`.

use serde::Deserialize;

use crate::domain::AttemptOutcome;

/// `webhook_deliveries_total{event_type,outcome}`: attempt outcomes recorded.
pub const DELIVERIES_TOTAL: &str = "webhook_deliveries_total";
/// `webhook_delivery_attempt_seconds`: how long one attempt's request took.
pub const ATTEMPT_SECONDS: &str = "webhook_delivery_attempt_seconds";

/// The `outcome` label: `delivered`, `retrying`, `failed` or `endpoint_disabled`.
pub fn outcome_label(outcome: &AttemptOutcome) -> &'static str {
    match outcome {
        AttemptOutcome::Delivered => "delivered",
        AttemptOutcome::Retry { .. } => "retrying",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::EndpointGone => "endpoint_disabled",
    }
}

/// Only the `type` of a stored event; its data is skipped, not copied.
#[derive(Deserialize)]
struct TypeOnly<'a> {
    #[serde(rename = "type", borrow)]
    event_type: &'a str,
}

/// The `event_type` label of a stored event: a known type, or `other`.
pub fn event_type_of(payload: &[u8]) -> &'static str {
    serde_json::from_slice::<TypeOnly<'_>>(payload).map_or("other", |e| {
        webhook_common::metrics::event_type_label(e.event_type)
    })
}

/// Counts one recorded outcome.
pub fn count_outcome(event_type: &'static str, outcome: &AttemptOutcome) {
    metrics::counter!(
        DELIVERIES_TOTAL,
        "event_type" => event_type,
        "outcome" => outcome_label(outcome)
    )
    .increment(1);
}

/// Records how long an attempt took.
pub fn observe_attempt(duration_ms: i64) {
    // i64 milliseconds to f64 seconds: exact far beyond any attempt's length.
    #[allow(clippy::cast_precision_loss)]
    let seconds = duration_ms.max(0) as f64 / 1000.0;
    metrics::histogram!(ATTEMPT_SECONDS).record(seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_type_label_is_a_known_type_or_other() {
        let paid = br#"{"type":"order.paid","timestamp":"2024-01-01T00:00:00Z","data":{}}"#;
        assert_eq!(event_type_of(paid), "order.paid");
        assert_eq!(
            event_type_of(br#"{"type":"order.mystery","data":{}}"#),
            "other"
        );
        assert_eq!(event_type_of(b"not json"), "other");
    }
}
