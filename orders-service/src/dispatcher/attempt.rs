//! One delivery attempt: a signed POST, and what its answer means.
//!
//! [`attempt`] runs named steps over typed states: [`prepare_request`] checks and signs
//! ([`PreparedRequest`]), [`make_http_call`] sends it and reads the answer ([`Response`]) or
//! says why none came ([`Failure`]), and [`handle_response`] / [`handle_failure`] turn that
//! into the [`Attempt`] record and the delivery's [`AttemptOutcome`].

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use webhook_common::client::signed_request;
use webhook_common::telemetry::{TraceParent, TRACEPARENT_HEADER};

use super::retry::{parse_retry_after, RetryPolicy};
use crate::domain::{Attempt, AttemptOutcome, DeliveryJob};
use crate::ssrf;
use crate::store::now_ms;

/// How much of a response body is kept with the attempt.
pub const RESPONSE_PREFIX_BYTES: usize = 1024;

/// The attempt log's `error_kind` for a target the SSRF guard refused.
pub const FORBIDDEN_TARGET: &str = "forbidden_target";

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

/// Which attempt this is and when it began, fixed before anything is checked or sent.
#[derive(Debug, Clone, Copy)]
struct Start {
    /// 1 for the first attempt.
    number: u32,
    /// Wall clock (unix milliseconds), for the attempt log.
    started_at: i64,
    /// Monotonic clock, for the `duration_ms` of an attempt that reached the network.
    clock: Instant,
}

impl Start {
    /// The attempt that follows `job`'s previous ones, starting now.
    fn now(job: &DeliveryJob) -> Start {
        Start {
            number: job.attempts.saturating_add(1),
            started_at: now_ms(),
            clock: Instant::now(),
        }
    }
}

/// A signed request whose target passed the SSRF pre-check, ready to send.
struct PreparedRequest {
    /// Target, body, Standard Webhooks headers and `traceparent`.
    request: reqwest::RequestBuilder,
    /// The attempt's [`Start::clock`]: the answer's duration counts from there.
    clock: Instant,
}

/// The receiver's answer, read as far as the attempt log keeps it.
#[derive(Debug)]
struct Response {
    /// The HTTP status.
    status: StatusCode,
    /// The answer's `Retry-After`, when present and well formed.
    retry_after: Option<Duration>,
    /// The first [`RESPONSE_PREFIX_BYTES`] of the body, decoded lossily.
    body: String,
    /// From the attempt's start to the end of the body prefix.
    duration_ms: i64,
}

/// Why no answer came.
#[derive(Debug)]
enum Failure {
    /// The SSRF guard refused the target: before sending for an IP literal, while connecting
    /// (in the client's resolver) for a host name.
    Refused(ssrf::ForbiddenTarget),
    /// The request failed on its way: no connection, a timeout, a broken body...
    Transport {
        /// The attempt log's `error_kind` (`connect`, `timeout`, ...).
        kind: &'static str,
        /// For `last_error`; never holds the URL.
        error: String,
        /// From the attempt's start to the failure.
        duration_ms: i64,
    },
}

/// What the receiver's answer (or its absence) says about trying again.
enum Verdict {
    Success,
    Retry(Option<Duration>),
    Gone,
}

/// What the delivery does next and why, before it is written down with the attempt.
struct Decision {
    outcome: AttemptOutcome,
    error: Option<String>,
}

impl Decision {
    /// The report of `attempt`, whose `outcome` must already name this decision's outcome.
    fn into_report(self, attempt: Attempt) -> AttemptReport {
        debug_assert_eq!(attempt.outcome, self.outcome.as_str());
        AttemptReport {
            attempt,
            outcome: self.outcome,
            error: self.error,
        }
    }
}

/// Makes one attempt of `job` and decides what comes next. With `guard` on, an IP-literal
/// URL is checked here; host names are checked by the client's resolver as it connects.
pub async fn attempt(
    client: &reqwest::Client,
    job: &DeliveryJob,
    policy: &RetryPolicy,
    guard: bool,
) -> AttemptReport {
    let start = Start::now(job);
    let answer = match prepare_request(client, job, guard, start.clock) {
        Ok(prepared) => make_http_call(prepared).await,
        Err(refused) => Err(Failure::Refused(refused)),
    };
    match answer {
        Ok(response) => handle_response(job, policy, start, response),
        Err(failure) => handle_failure(job, policy, start, failure),
    }
}

/// Step 1: refuses a forbidden IP-literal target (when `guard` is on), then signs the
/// request. Host names pass here; the guard's resolver checks them as the client connects.
fn prepare_request(
    client: &reqwest::Client,
    job: &DeliveryJob,
    guard: bool,
    clock: Instant,
) -> Result<PreparedRequest, ssrf::ForbiddenTarget> {
    if let Some(refused) = guard.then(|| refused_literal(&job.url)).flatten() {
        return Err(refused);
    }
    // W3C Trace Context: the trace id is the event's (shared by every attempt of it), the
    // span id this attempt's. Not signed: it is not one of the Standard Webhooks headers.
    let traceparent = TraceParent::for_message(&job.msg_id);
    let request = signed_request(
        client,
        job.url.clone(),
        &job.secrets,
        &job.msg_id,
        job.payload.clone(),
    )
    .header(TRACEPARENT_HEADER, traceparent.to_string());
    Ok(PreparedRequest { request, clock })
}

/// The guard's refusal of `url` when its host is a forbidden IP literal.
fn refused_literal(url: &reqwest::Url) -> Option<ssrf::ForbiddenTarget> {
    let addr = ssrf::literal_ip(url)?;
    ssrf::check_addr(&addr.to_string(), addr).err()
}

/// Step 2: sends the request and reads the answer's status, `Retry-After` and body prefix,
/// or classifies why there was none.
async fn make_http_call(prepared: PreparedRequest) -> Result<Response, Failure> {
    let PreparedRequest { request, clock } = prepared;
    match request.send().await {
        Ok(mut response) => {
            let status = response.status();
            let retry_after = retry_after(response.headers());
            let body = body_prefix(&mut response).await;
            Ok(Response {
                status,
                retry_after,
                body,
                duration_ms: elapsed_ms(clock),
            })
        }
        Err(e) => Err(transport_failure(e, clock)),
    }
}

/// The answer's `Retry-After` (delay seconds or an HTTP date); a malformed one is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, time::OffsetDateTime::now_utc()))
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

/// Classifies a request that got no answer. A refusal by the guard's resolver arrives here,
/// wrapped in the client's connect error, and is told apart from a plain failure.
fn transport_failure(e: reqwest::Error, clock: Instant) -> Failure {
    if let Some(refused) = ssrf::find_forbidden(&e) {
        return Failure::Refused(refused.clone());
    }
    let kind = error_kind(&e);
    // A URL may carry a token in its query; the attempt log does not need it.
    let error = format!("{kind} error: {}", error_chain(&e.without_url()));
    Failure::Transport {
        kind,
        error,
        duration_ms: elapsed_ms(clock),
    }
}

/// The attempt log's `error_kind` for a request that failed.
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

/// Step 3 for an answer: 2xx delivers, 410 gives the endpoint up, anything else is retried
/// on the schedule.
fn handle_response(
    job: &DeliveryJob,
    policy: &RetryPolicy,
    start: Start,
    response: Response,
) -> AttemptReport {
    let status = response.status;
    let error = (!status.is_success()).then(|| format!("the endpoint answered {status}"));
    let decision = match verdict(status, response.retry_after) {
        Verdict::Success => Decision {
            outcome: AttemptOutcome::Delivered,
            error: None,
        },
        Verdict::Gone => Decision {
            outcome: AttemptOutcome::EndpointGone,
            error,
        },
        Verdict::Retry(retry_after) => retry_or_give_up(job, policy, start, retry_after, error),
    };
    let attempt = Attempt {
        attempt: start.number,
        started_at: start.started_at,
        duration_ms: response.duration_ms,
        status_code: Some(status.as_u16()),
        error_kind: None,
        response_body: Some(response.body),
        outcome: decision.outcome.as_str().to_owned(),
    };
    decision.into_report(attempt)
}

/// What a status says about trying again.
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

/// Step 3 without an answer: a refused target fails for good, any other failure is retried
/// on the schedule.
fn handle_failure(
    job: &DeliveryJob,
    policy: &RetryPolicy,
    start: Start,
    failure: Failure,
) -> AttemptReport {
    match failure {
        Failure::Refused(refused) => refused_report(start, &refused),
        Failure::Transport {
            kind,
            error,
            duration_ms,
        } => {
            let decision = retry_or_give_up(job, policy, start, None, Some(error));
            let attempt = Attempt {
                attempt: start.number,
                started_at: start.started_at,
                duration_ms,
                status_code: None,
                error_kind: Some(kind.to_owned()),
                response_body: None,
                outcome: decision.outcome.as_str().to_owned(),
            };
            decision.into_report(attempt)
        }
    }
}

/// A refused target is not retried: the address will not become public by waiting, and
/// retrying would only probe the internal network again.
fn refused_report(start: Start, refused: &ssrf::ForbiddenTarget) -> AttemptReport {
    let outcome = AttemptOutcome::Failed;
    AttemptReport {
        attempt: Attempt {
            attempt: start.number,
            started_at: start.started_at,
            duration_ms: now_ms().saturating_sub(start.started_at).max(0),
            status_code: None,
            error_kind: Some(FORBIDDEN_TARGET.to_owned()),
            response_body: None,
            outcome: outcome.as_str().to_owned(),
        },
        outcome,
        error: Some(format!("refused by the SSRF guard: {refused}")),
    }
}

/// Schedules the next attempt after a failed one, or gives up once the schedule is used up.
/// The schedule restarts after a manual retry or recover (`retry_base`).
fn retry_or_give_up(
    job: &DeliveryJob,
    policy: &RetryPolicy,
    start: Start,
    retry_after: Option<Duration>,
    error: Option<String>,
) -> Decision {
    let number = start.number;
    match policy.next_delay(number.saturating_sub(job.retry_base), retry_after) {
        Some(delay) => {
            let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            Decision {
                outcome: AttemptOutcome::Retry {
                    at: now_ms().saturating_add(delay_ms),
                },
                error,
            }
        }
        None => Decision {
            outcome: AttemptOutcome::Failed,
            error: Some(format!(
                "gave up after {number} attempts; last: {}",
                error.unwrap_or_default()
            )),
        },
    }
}

/// Milliseconds since `clock`, saturating.
fn elapsed_ms(clock: Instant) -> i64 {
    i64::try_from(clock.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// `e` and its sources, joined with `: `.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetrySchedule;

    fn job(attempts: u32, retry_base: u32, url: &str) -> DeliveryJob {
        DeliveryJob {
            delivery_id: uuid::Uuid::new_v4(),
            claim_token: uuid::Uuid::new_v4(),
            attempts,
            retry_base,
            msg_id: "msg_test".to_owned(),
            payload: bytes::Bytes::from_static(b"{}"),
            endpoint_id: uuid::Uuid::new_v4(),
            url: url.parse().expect("a valid test URL"),
            secrets: Vec::new(),
        }
    }

    /// No jitter, so the scheduled delays are exact.
    fn policy(delays_ms: &[u64]) -> RetryPolicy {
        RetryPolicy {
            schedule: RetrySchedule {
                delays: delays_ms
                    .iter()
                    .copied()
                    .map(Duration::from_millis)
                    .collect(),
            },
            jitter_percent: 0,
            retry_after_max: Duration::from_secs(60),
        }
    }

    fn answer(status: u16, retry_after: Option<Duration>) -> Response {
        Response {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after,
            body: "answer".to_owned(),
            duration_ms: 7,
        }
    }

    #[test]
    fn a_2xx_answer_is_delivered_and_recorded_with_its_body() {
        let job = job(0, 0, "http://receiver.test/");
        let report = handle_response(&job, &policy(&[10]), Start::now(&job), answer(204, None));
        assert_eq!(report.outcome, AttemptOutcome::Delivered);
        assert_eq!(report.error, None);
        let attempt = report.attempt;
        assert_eq!(attempt.attempt, 1);
        assert_eq!(attempt.status_code, Some(204));
        assert_eq!(attempt.duration_ms, 7);
        assert_eq!(attempt.error_kind, None);
        assert_eq!(attempt.response_body.as_deref(), Some("answer"));
        assert_eq!(attempt.outcome, "delivered");
    }

    #[test]
    fn a_410_answer_gives_the_endpoint_up_without_a_retry() {
        let job = job(0, 0, "http://receiver.test/");
        let report = handle_response(&job, &policy(&[10]), Start::now(&job), answer(410, None));
        assert_eq!(report.outcome, AttemptOutcome::EndpointGone);
        assert_eq!(
            report.error.as_deref(),
            Some("the endpoint answered 410 Gone")
        );
        assert_eq!(report.attempt.outcome, "endpoint_disabled");
        assert_eq!(report.attempt.status_code, Some(410));
    }

    #[test]
    fn a_failed_answer_is_retried_no_sooner_than_its_retry_after() {
        let job = job(0, 0, "http://receiver.test/");
        let before = now_ms();
        let report = handle_response(
            &job,
            &policy(&[10]),
            Start::now(&job),
            answer(503, Some(Duration::from_secs(30))),
        );
        let AttemptOutcome::Retry { at } = report.outcome else {
            panic!("expected a retry, got {:?}", report.outcome);
        };
        assert!((before + 30_000..=now_ms() + 30_000).contains(&at), "{at}");
        assert_eq!(
            report.error.as_deref(),
            Some("the endpoint answered 503 Service Unavailable")
        );
        assert_eq!(report.attempt.outcome, "retry");
    }

    #[test]
    fn a_4xx_answer_is_retried_on_the_schedule() {
        let job = job(0, 0, "http://receiver.test/");
        let before = now_ms();
        let report = handle_response(&job, &policy(&[5000]), Start::now(&job), answer(400, None));
        let AttemptOutcome::Retry { at } = report.outcome else {
            panic!("expected a retry, got {:?}", report.outcome);
        };
        assert!((before + 5000..=now_ms() + 5000).contains(&at), "{at}");
    }

    #[test]
    fn the_attempt_after_the_last_scheduled_retry_gives_up() {
        // Two retries scheduled: the third attempt is the last.
        let job = job(2, 0, "http://receiver.test/");
        let report = handle_response(
            &job,
            &policy(&[10, 20]),
            Start::now(&job),
            answer(500, None),
        );
        assert_eq!(report.outcome, AttemptOutcome::Failed);
        assert_eq!(report.attempt.attempt, 3);
        assert_eq!(report.attempt.outcome, "failed");
        assert_eq!(
            report.error.as_deref(),
            Some("gave up after 3 attempts; last: the endpoint answered 500 Internal Server Error")
        );
    }

    #[test]
    fn the_schedule_counts_attempts_from_the_retry_base() {
        // Six attempts in all, but only two since the manual retry: one retry is left.
        let job = job(5, 4, "http://receiver.test/");
        let report = handle_response(
            &job,
            &policy(&[10, 20]),
            Start::now(&job),
            answer(500, None),
        );
        assert!(matches!(report.outcome, AttemptOutcome::Retry { .. }));
        assert_eq!(report.attempt.attempt, 6);
    }

    #[test]
    fn a_refused_target_fails_for_good_as_forbidden() {
        let job = job(0, 0, "http://127.0.0.1/");
        let refused = refused_literal(&job.url).expect("loopback is refused");
        let report = handle_failure(
            &job,
            &policy(&[10]),
            Start::now(&job),
            Failure::Refused(refused),
        );
        assert_eq!(report.outcome, AttemptOutcome::Failed);
        assert_eq!(report.attempt.error_kind.as_deref(), Some(FORBIDDEN_TARGET));
        assert_eq!(report.attempt.status_code, None);
        assert_eq!(report.attempt.outcome, "failed");
        let error = report.error.unwrap();
        assert!(
            error.starts_with("refused by the SSRF guard: 127.0.0.1 is a loopback"),
            "{error}"
        );
    }

    #[test]
    fn a_transport_failure_is_retried_and_recorded_with_its_kind() {
        let job = job(0, 0, "http://receiver.test/");
        let failure = Failure::Transport {
            kind: "timeout",
            error: "timeout error: operation timed out".to_owned(),
            duration_ms: 9,
        };
        let report = handle_failure(&job, &policy(&[10]), Start::now(&job), failure);
        assert!(matches!(report.outcome, AttemptOutcome::Retry { .. }));
        assert_eq!(
            report.error.as_deref(),
            Some("timeout error: operation timed out")
        );
        let attempt = report.attempt;
        assert_eq!(attempt.error_kind.as_deref(), Some("timeout"));
        assert_eq!(attempt.duration_ms, 9);
        assert_eq!((attempt.status_code, attempt.response_body), (None, None));
        assert_eq!(attempt.outcome, "retry");
    }

    #[test]
    fn only_a_guarded_ip_literal_target_is_refused_before_sending() {
        let client = reqwest::Client::new();
        let clock = Instant::now();
        let private = job(0, 0, "http://10.1.2.3:8080/hook");
        let refused = prepare_request(&client, &private, true, clock).err();
        assert_eq!(refused.map(|r| r.kind), Some("private"));
        assert!(prepare_request(&client, &private, false, clock).is_ok());
        // Host names are left to the guard's resolver.
        let named = job(0, 0, "http://localhost:8080/hook");
        assert!(prepare_request(&client, &named, true, clock).is_ok());
        assert!(refused_literal(&"http://93.184.215.14/".parse().unwrap()).is_none());
    }

    #[test]
    fn retry_after_takes_seconds_and_ignores_a_malformed_value() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[tokio::test]
    async fn only_the_body_prefix_is_kept() {
        let long = axum::http::Response::new(vec![b'a'; RESPONSE_PREFIX_BYTES + 500]);
        let kept = body_prefix(&mut reqwest::Response::from(long)).await;
        assert_eq!(kept, "a".repeat(RESPONSE_PREFIX_BYTES));
        let short = axum::http::Response::new("short".to_owned());
        assert_eq!(
            body_prefix(&mut reqwest::Response::from(short)).await,
            "short"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure_that_hides_the_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let job = job(0, 0, &format!("http://127.0.0.1:{port}/hook?token=s3cret"));
        let client = reqwest::Client::new();
        let prepared = prepare_request(&client, &job, false, Instant::now()).unwrap();
        match make_http_call(prepared).await {
            Err(Failure::Transport { kind, error, .. }) => {
                assert_eq!(kind, "connect");
                assert!(error.starts_with("connect error: "), "{error}");
                assert!(!error.contains("s3cret"), "{error}");
            }
            other => panic!("expected a connect failure, got {other:?}"),
        }
    }
}
