//! `GET /metrics` (admin): Prometheus text; and the intake's series,
//! `webhooks_received_total{event_type,outcome}` and `webhook_processing_seconds`.

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::store::IntakeOutcome;
use crate::AppState;

/// `webhooks_received_total{event_type,outcome}`: deliveries to the intake, by what became of
/// them.
pub const RECEIVED_TOTAL: &str = "webhooks_received_total";
/// `webhook_processing_seconds`: one delivery to the intake, from the first byte handled
/// (allow-list, verification) to its answer.
pub const PROCESSING_SECONDS: &str = "webhook_processing_seconds";

/// The metrics route (mounted behind the admin token by [`crate::api::admin_router`]).
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(webhook_common::metrics::metrics_handler))
}

/// Counts an accepted delivery: `queued`, `duplicate`, `ignored` or `stale`.
pub fn count_recorded(event_type: &str, outcome: &IntakeOutcome) {
    let outcome = match outcome {
        IntakeOutcome::Queued { .. } => "queued",
        IntakeOutcome::Duplicate => "duplicate",
        IntakeOutcome::Ignored => "ignored",
        IntakeOutcome::Stale => "stale",
    };
    metrics::counter!(
        RECEIVED_TOTAL,
        "event_type" => webhook_common::metrics::event_type_label(event_type),
        "outcome" => outcome
    )
    .increment(1);
}

/// Counts a delivery the intake did not record, by what it was answered. Its type is not
/// known (it was not verified, or did not parse), so `event_type` is `other`.
pub fn count_rejected(reason: &'static str) {
    metrics::counter!(RECEIVED_TOTAL, "event_type" => "other", "outcome" => reason).increment(1);
}

/// Records how long one delivery to the intake took.
pub fn observe_processing(took: std::time::Duration) {
    metrics::histogram!(PROCESSING_SECONDS).record(took.as_secs_f64());
}

/// The `outcome` of a rejection answered with `status`, `None` for a success (counted by the
/// handler with its outcome).
pub fn rejection_reason(status: StatusCode) -> Option<&'static str> {
    if status.is_success() {
        return None;
    }
    Some(match status.as_u16() {
        400 => "malformed",
        401 => "unverified",
        403 => "forbidden",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid_payload",
        429 => "rate_limited",
        503 => "unavailable",
        _ if status.is_client_error() => "rejected_other",
        _ => "error",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_map_to_a_small_fixed_set_of_reasons() {
        assert_eq!(rejection_reason(StatusCode::ACCEPTED), None);
        assert_eq!(rejection_reason(StatusCode::OK), None);
        assert_eq!(
            rejection_reason(StatusCode::UNAUTHORIZED),
            Some("unverified")
        );
        assert_eq!(
            rejection_reason(StatusCode::IM_A_TEAPOT),
            Some("rejected_other")
        );
        assert_eq!(
            rejection_reason(StatusCode::INTERNAL_SERVER_ERROR),
            Some("error")
        );
    }
}
