//! One delivery attempt: a signed POST, and what its answer means.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use webhook_common::client::signed_request;
use webhook_common::telemetry::{TraceParent, TRACEPARENT_HEADER};

use super::retry::{parse_retry_after, RetryPolicy};
use crate::domain::{Attempt, AttemptOutcome, DeliveryJob};
use crate::ssrf;
use crate::store::now_ms;

/// How much of a response body is kept with the attempt.
pub const RESPONSE_PREFIX_BYTES: usize = 1024;

/// An attempt and what follows from it.
#[derive(Debug)]
pub struct AttemptReport {
    /// What happened, for the attempt log.
    pub attempt: Attempt,
    /// What to do with the delivery.
    pub outcome: AttemptOutcome,
    /// Why it did not succeed, for `last_error`.
    pub error: Option<String>,
}

/// What the receiver's answer (or its absence) says about trying again.
enum Verdict {
    Success,
    Retry(Option<Duration>),
    Gone,
}

fn verdict(status: StatusCode, retry_after: Option<Duration>) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Success,
        410 => Verdict::Gone,
        // Every other answer is retried on the schedule, as Standard Webhooks asks: a 401
        // during a secret rotation, a 403 from an allow-list or a 400 from a bad deploy is
        // usually fixed within the retry window, and failing at once would dead-letter the
        // event. A receiver that wants no retry answers 2xx. Redirects are not followed (a
        // signed body must not wander off to another host).
        _ => Verdict::Retry(retry_after),
    }
}

fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else if e.is_builder() {
        "invalid_request"
    } else {
        "request"
    }
}

/// Reads at most [`RESPONSE_PREFIX_BYTES`] of the body; the rest is never buffered.
async fn body_prefix(response: &mut reqwest::Response) -> String {
    let mut prefix = Vec::new();
    while prefix.len() < RESPONSE_PREFIX_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = RESPONSE_PREFIX_BYTES - prefix.len();
                prefix.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&prefix).into_owned()
}

/// The attempt log's `error_kind` for a target the SSRF guard refused.
pub const FORBIDDEN_TARGET: &str = "forbidden_target";

/// Makes one attempt of `job` and decides what comes next. With `guard` on, an IP-literal
/// URL is checked here; host names are checked by the client's resolver as it connects.
pub async fn attempt(
    client: &reqwest::Client,
    job: &DeliveryJob,
    policy: &RetryPolicy,
    guard: bool,
) -> AttemptReport {
    let number = job.attempts.saturating_add(1);
    let started_at = now_ms();
    let clock = Instant::now();
    let refused = guard
        .then(|| reqwest::Url::parse(&job.url).ok())
        .flatten()
        .and_then(|url| {
            let addr = ssrf::literal_ip(&url)?;
            ssrf::check_addr(&addr.to_string(), addr).err()
        });
    if let Some(refused) = refused {
        return forbidden_report(number, started_at, &refused);
    }
    // W3C Trace Context: the trace id is the event's (shared by every attempt of it), the
    // span id this attempt's. Not signed: it is not one of the Standard Webhooks headers.
    let traceparent = TraceParent::for_message(&job.msg_id);
    let sent = signed_request(
        client,
        job.url.as_str(),
        &job.secrets,
        &job.msg_id,
        job.payload.clone(),
    )
    .header(TRACEPARENT_HEADER, traceparent.to_string())
    .send()
    .await;
    let (status_code, error_kind, response_body, verdict, error) = match sent {
        Ok(mut response) => {
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()));
            let body = body_prefix(&mut response).await;
            let error = (!status.is_success()).then(|| format!("the endpoint answered {status}"));
            (
                Some(status.as_u16()),
                None,
                Some(body),
                verdict(status, retry_after),
                error,
            )
        }
        Err(e) => {
            if let Some(refused) = ssrf::find_forbidden(&e) {
                return forbidden_report(number, started_at, refused);
            }
            let kind = error_kind(&e);
            // A URL may carry a token in its query; the attempt log does not need it.
            let error = format!("{kind} error: {}", error_chain(&e.without_url()));
            (
                None,
                Some(kind.to_owned()),
                None,
                Verdict::Retry(None),
                Some(error),
            )
        }
    };
    let duration_ms = i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX);
    let (outcome, error) = match verdict {
        Verdict::Success => (AttemptOutcome::Delivered, None),
        Verdict::Gone => (AttemptOutcome::EndpointGone, error),
        // The schedule restarts after a manual retry or recover (`retry_base`).
        Verdict::Retry(retry_after) => {
            match policy.next_delay(number.saturating_sub(job.retry_base), retry_after) {
                Some(delay) => {
                    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                    (
                        AttemptOutcome::Retry {
                            at: now_ms().saturating_add(delay_ms),
                        },
                        error,
                    )
                }
                None => (
                    AttemptOutcome::Failed,
                    Some(format!(
                        "gave up after {number} attempts; last: {}",
                        error.unwrap_or_default()
                    )),
                ),
            }
        }
    };
    AttemptReport {
        attempt: Attempt {
            attempt: number,
            started_at,
            duration_ms,
            status_code,
            error_kind,
            response_body,
            outcome: outcome.as_str().to_owned(),
        },
        outcome,
        error,
    }
}

/// A refused target is not retried: the address will not become public by waiting, and
/// retrying would only probe the internal network again.
fn forbidden_report(
    number: u32,
    started_at: i64,
    refused: &ssrf::ForbiddenTarget,
) -> AttemptReport {
    let outcome = AttemptOutcome::Failed;
    AttemptReport {
        attempt: Attempt {
            attempt: number,
            started_at,
            duration_ms: now_ms().saturating_sub(started_at).max(0),
            status_code: None,
            error_kind: Some(FORBIDDEN_TARGET.to_owned()),
            response_body: None,
            outcome: outcome.as_str().to_owned(),
        },
        outcome,
        error: Some(format!("refused by the SSRF guard: {refused}")),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
