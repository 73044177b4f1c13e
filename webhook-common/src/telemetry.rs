//! What both services share for logs, traces and health:
//!
//! - [`init_tracing`]: the one log setup of every binary (`RUST_LOG` filters, `LOG_FORMAT`
//!   picks human-readable text or one JSON object per line);
//! - [`request_tracing`]: the HTTP layers that give every request an `x-request-id`
//!   (generated UUID, or the caller's echoed back) and a span carrying it, the method, the
//!   matched route (never the raw URI: a query string may hold a token) and, when the request
//!   carries a valid W3C `traceparent`, its `trace_id`;
//! - [`TraceParent`]: the W3C Trace Context header a webhook sender adds to each attempt,
//!   with a trace id derived from the event so every attempt of one event shares it;
//! - [`Liveness`]: a cheap flag a background loop holds up while it runs, for readiness.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::MatchedPath;
use http::{HeaderName, Request};
use rand::Rng as _;
use sha2::{Digest as _, Sha256};
use tower::layer::util::{Identity, Stack};
use tower::ServiceBuilder;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{MakeSpan, TraceLayer};

/// The environment variable that picks the log format.
pub const LOG_FORMAT_VAR: &str = "LOG_FORMAT";

/// The request id header, set on every response.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The W3C Trace Context header.
pub const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (`LOG_FORMAT` unset, empty or `text`); colours only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, with the current span's fields (`LOG_FORMAT=json`).
    Json,
}

/// `LOG_FORMAT` holds something other than `text` or `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("LOG_FORMAT {0:?} is not a log format; use `text` (the default) or `json`")]
pub struct InvalidLogFormat(pub String);

impl LogFormat {
    /// The format named by a `LOG_FORMAT` value (`None` when unset); case-insensitive.
    pub fn parse(value: Option<&str>) -> Result<LogFormat, InvalidLogFormat> {
        match value.map(str::trim) {
            None | Some("") => Ok(LogFormat::Text),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(LogFormat::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(LogFormat::Json),
            Some(v) => Err(InvalidLogFormat(v.to_owned())),
        }
    }

    /// The format `LOG_FORMAT` names in this process's environment.
    pub fn from_env() -> Result<LogFormat, InvalidLogFormat> {
        match std::env::var(LOG_FORMAT_VAR) {
            Ok(v) => LogFormat::parse(Some(&v)),
            Err(std::env::VarError::NotPresent) => Ok(LogFormat::Text),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(InvalidLogFormat(v.to_string_lossy().into_owned()))
            }
        }
    }
}

/// Installs the process's log subscriber: `RUST_LOG` filters (`info` when unset or invalid),
/// `LOG_FORMAT` picks [`LogFormat`]. Fails, naming `LOG_FORMAT`, on an unknown format; call
/// it first thing in `main` and stop on the error. A second call in one process (the tests)
/// leaves the first subscriber in place.
pub fn init_tracing() -> Result<LogFormat, InvalidLogFormat> {
    use tracing_subscriber::EnvFilter;
    let format = LogFormat::from_env()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // `try_init`: only fails when a subscriber is already installed, which is fine.
    let _ = match format {
        // Colours only on a terminal, so log files and `docker logs` stay plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(format)
}

/// The span of one HTTP request: `request_id`, `method`, the matched `route` (or
/// `unmatched`), and `trace_id` from a valid `traceparent` header (empty otherwise; a
/// handler may record it later).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &Request<B>) -> tracing::Span {
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(RequestId::header_value)
            .or_else(|| request.headers().get(REQUEST_ID_HEADER))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str)
            .unwrap_or("unmatched");
        let span = tracing::info_span!(
            "request",
            request_id,
            method = %request.method(),
            route,
            trace_id = tracing::field::Empty,
        );
        if let Some(parent) = TraceParent::from_headers(request.headers()) {
            span.record("trace_id", tracing::field::display(parent.trace_id_hex()));
        }
        span
    }
}

/// The layers [`request_tracing`] returns, outermost first: set the request id, copy it to
/// the response, trace the request in a [`RequestSpan`].
pub type RequestTracingLayer = ServiceBuilder<
    Stack<
        TraceLayer<SharedClassifier<ServerErrorsAsFailures>, RequestSpan>,
        Stack<PropagateRequestIdLayer, Stack<SetRequestIdLayer<MakeRequestUuid>, Identity>>,
    >,
>;

/// The request-id and tracing layers of both services, as one layer for `Router::layer`
/// (put it outermost): a request without `x-request-id` gets a fresh UUID, a request with
/// one keeps it, the response carries it either way, and every log line of the request is in
/// its [`RequestSpan`].
pub fn request_tracing() -> RequestTracingLayer {
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        .layer(TraceLayer::new_for_http().make_span_with(RequestSpan))
}

/// A W3C Trace Context `traceparent` (version `00`): trace id, parent (span) id and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    pub parent_id: [u8; 8],
    /// Trace flags; `01` is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// A `traceparent` for one delivery attempt of the webhook message `msg_id`: the trace id
    /// is derived from the message, so every attempt of one event shares it (a `msg_<uuid>`
    /// id gives the UUID's bytes, any other the first 16 bytes of its SHA-256); the span id
    /// is random per attempt; flags `01` (sampled).
    pub fn for_message(msg_id: &str) -> TraceParent {
        TraceParent {
            trace_id: trace_id_for_message(msg_id),
            parent_id: random_nonzero(),
            flags: 0x01,
        }
    }

    /// Parses a header value; `None` when malformed (wrong length or separators, uppercase
    /// or non-hex digits, version `ff`, an all-zero id). A later version's extra fields
    /// after the fourth are ignored, as the specification asks.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        let bytes = value.as_bytes();
        if bytes.len() < 55 {
            return None;
        }
        let version = hex_bytes::<1>(&bytes[0..2])?[0];
        if version == 0xff || (version == 0 && bytes.len() != 55) {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        if bytes.len() > 55 && bytes[55] != b'-' {
            return None;
        }
        let trace_id = hex_bytes::<16>(&bytes[3..35])?;
        let parent_id = hex_bytes::<8>(&bytes[36..52])?;
        let flags = hex_bytes::<1>(&bytes[53..55])?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The valid `traceparent` in `headers`, if any.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceParent> {
        headers
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)
    }

    /// The trace id as 32 lowercase hex digits, as logged in `trace_id`.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

fn trace_id_for_message(msg_id: &str) -> [u8; 16] {
    let from_uuid = msg_id
        .strip_prefix("msg_")
        .and_then(|rest| uuid::Uuid::try_parse(rest).ok())
        .map(|u| *u.as_bytes())
        .filter(|b| *b != [0; 16]);
    from_uuid.unwrap_or_else(|| {
        let digest = Sha256::digest(msg_id.as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        if id == [0; 16] {
            id[15] = 1;
        }
        id
    })
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    let mut rng = rand::rng();
    loop {
        let mut id = [0u8; N];
        rng.fill(&mut id[..]);
        if id != [0; N] {
            return id;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Exactly `2 * N` lowercase hex digits.
fn hex_bytes<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Whether a background loop is running; cheap to clone (clones share the flag). The loop
/// holds a [`LivenessGuard`] from [`Liveness::mark_running`] while it runs; readiness reads
/// [`Liveness::is_running`].
#[derive(Debug, Clone, Default)]
pub struct Liveness(Arc<AtomicBool>);

impl Liveness {
    /// A flag that says "not running" until a loop marks it.
    pub fn new() -> Liveness {
        Liveness::default()
    }

    /// Marks the loop as running until the returned guard is dropped (the loop returns or
    /// panics).
    #[must_use = "the loop counts as running only while the guard lives"]
    pub fn mark_running(&self) -> LivenessGuard {
        self.0.store(true, Ordering::Release);
        LivenessGuard(self.0.clone())
    }

    /// Whether a loop holds the flag up right now.
    pub fn is_running(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Keeps a [`Liveness`] flag up; lowers it when dropped.
#[derive(Debug)]
pub struct LivenessGuard(Arc<AtomicBool>);

impl Drop for LivenessGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_parses_and_formats_back() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            parsed.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.to_string(), EXAMPLE);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let bad = [
            "",
            "00",
            // Uppercase hex, wrong separators, short ids, all-zero ids, version ff.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            // Version 00 has exactly four fields.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Not ASCII: refused, never a panic on a char boundary.
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for value in bad {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn a_later_version_keeps_its_first_four_fields() {
        let value = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        let parsed = TraceParent::parse(value).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            None
        );
    }

    #[test]
    fn every_attempt_of_one_message_shares_the_trace_id_with_a_fresh_span_id() {
        let msg_id = crate::signing::new_message_id();
        let first = TraceParent::for_message(&msg_id);
        let second = TraceParent::for_message(&msg_id);
        assert_eq!(first.trace_id, second.trace_id);
        assert_ne!(first.parent_id, second.parent_id);
        assert_eq!(first.flags, 1);
        // A `msg_<uuid>` id gives the UUID's hex, so logs can be matched by eye.
        assert_eq!(first.trace_id_hex(), msg_id["msg_".len()..]);
        // It formats as a valid header that parses back to itself.
        assert_eq!(TraceParent::parse(&first.to_string()), Some(first));
        let other = TraceParent::for_message("not-a-uuid-id");
        assert_eq!(
            other.trace_id,
            TraceParent::for_message("not-a-uuid-id").trace_id
        );
        assert_ne!(other.trace_id, first.trace_id);
    }

    #[test]
    fn log_format_values() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("text")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("JSON")), Ok(LogFormat::Json));
        let err = LogFormat::parse(Some("yaml")).unwrap_err();
        assert!(err.to_string().contains("LOG_FORMAT"), "{err}");
    }

    #[test]
    fn liveness_is_up_only_while_the_guard_lives() {
        let flag = Liveness::new();
        assert!(!flag.is_running());
        let guard = flag.clone().mark_running();
        assert!(flag.is_running());
        drop(guard);
        assert!(!flag.is_running());
    }
}
