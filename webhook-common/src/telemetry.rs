//! What both services share for logs, traces and health:
//!
//! - [`init_tracing_for`]: the one log setup of every binary (`RUST_LOG` filters, `LOG_FORMAT`
//!   picks human-readable text or one JSON object per line), exporting spans over OTLP/HTTP
//!   when built with the `otlp` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` is set;
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

/// The environment variable that turns on OTLP trace export (with the `otlp` feature).
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Installs the process's log subscriber: `RUST_LOG` filters (`info` when unset or invalid),
/// `LOG_FORMAT` picks [`LogFormat`]. Fails, naming `LOG_FORMAT`, on an unknown format; call
/// it first thing in `main` and stop on the error. A second call in one process (the tests)
/// leaves the first subscriber in place.
///
/// Never exports spans; binaries call [`init_tracing_for`] with their service name instead.
pub fn init_tracing() -> Result<LogFormat, InvalidLogFormat> {
    install(None).map(|guard| guard.format)
}

/// [`init_tracing`], plus OTLP/HTTP span export under `service.name` = `service_name` when
/// the binary is built with the `otlp` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the
/// exporter appends `/v1/traces`; the other `OTEL_EXPORTER_OTLP_*` variables apply). Built
/// without `otlp`, a set endpoint only logs a warning. Keep the returned guard alive until
/// `main` returns: dropping it flushes the spans not yet sent.
pub fn init_tracing_for(service_name: &str) -> Result<TelemetryGuard, InvalidLogFormat> {
    install(Some(service_name))
}

/// What [`init_tracing_for`] set up; dropping it flushes and shuts down the OTLP exporter, if
/// one runs.
#[must_use = "dropping the guard shuts the OTLP exporter down"]
#[derive(Debug)]
pub struct TelemetryGuard {
    format: LogFormat,
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl TelemetryGuard {
    /// The log format in use.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otlp")]
        let exporting = self.provider.is_some();
        #[cfg(not(feature = "otlp"))]
        let exporting = false;
        exporting
    }
}

#[cfg(feature = "otlp")]
impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Exports what the batch still holds, waiting at most the export timeout.
            if let Err(e) = provider.shutdown() {
                eprintln!("OTLP exporter shutdown: {e}");
            }
        }
    }
}

fn install(service_name: Option<&str>) -> Result<TelemetryGuard, InvalidLogFormat> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let format = LogFormat::from_env()?;
    let endpoint = std::env::var(OTLP_ENDPOINT_VAR)
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer();
    let fmt = match format {
        // Colours only on a terminal, so log files and `docker logs` stay plain text.
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };

    #[cfg(feature = "otlp")]
    let (provider, otlp_error) = match (service_name, &endpoint) {
        // `None`: the exporter reads the endpoint (and headers, timeout) from the environment.
        (Some(name), Some(_)) => match otlp::tracer_provider(name, None) {
            Ok(provider) => (Some(provider), None),
            Err(e) => (None, Some(e)),
        },
        _ => (None, None),
    };
    #[cfg(feature = "otlp")]
    let otel = provider.as_ref().map(otlp::layer);
    #[cfg(not(feature = "otlp"))]
    let otel: Option<tracing_subscriber::layer::Identity> = None;

    // `try_init`: only fails when a subscriber is already installed, which is fine.
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();

    #[cfg(feature = "otlp")]
    {
        if let Some(e) = otlp_error {
            tracing::warn!(error = %e, "{OTLP_ENDPOINT_VAR} is set but the OTLP exporter could not be built; spans are not exported");
        } else if let Some(endpoint) = endpoint.as_deref().filter(|_| provider.is_some()) {
            if installed {
                tracing::info!(endpoint, "exporting spans over OTLP/HTTP");
            }
        }
        let provider = provider.filter(|_| installed);
        Ok(TelemetryGuard { format, provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        if endpoint.is_some() && service_name.is_some() && installed {
            tracing::warn!(
                "{OTLP_ENDPOINT_VAR} is set but this binary was built without the `otlp` feature \
                 (build with `--features otlp`); spans are not exported"
            );
        }
        Ok(TelemetryGuard { format })
    }
}

/// The OTLP/HTTP span exporter (feature `otlp`): protobuf over reqwest's blocking client,
/// run on the SDK's batch thread, so it never blocks an async task.
#[cfg(feature = "otlp")]
pub mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;

    pub use opentelemetry_otlp::ExporterBuildError;

    /// A tracer provider batching spans to an OTLP/HTTP collector under `service.name` =
    /// `service_name`. `endpoint` is the full traces URL (`http://host:4318/v1/traces`);
    /// `None` takes it from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (plus `/v1/traces`). Call `shutdown` (or
    /// `force_flush`) before exit to send the last batch.
    pub fn tracer_provider(
        service_name: &str,
        endpoint: Option<&str>,
    ) -> Result<SdkTracerProvider, ExporterBuildError> {
        let builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary);
        let exporter = match endpoint {
            Some(endpoint) => builder.with_endpoint(endpoint).build()?,
            None => builder.build()?,
        };
        let resource = Resource::builder()
            .with_service_name(service_name.to_owned())
            .build();
        Ok(SdkTracerProvider::builder()
            .with_resource(resource)
            .with_batch_exporter(exporter)
            .build())
    }

    /// The `tracing` layer turning spans into OpenTelemetry spans of `provider`.
    pub fn layer<S>(
        provider: &SdkTracerProvider,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("webhook-common"))
    }
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
            parent.adopt(&span);
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

    /// Makes `span` a child of this (remote) trace context in exported traces, so its OTLP
    /// trace id is this trace id and a receiver's spans join the sender's trace. Without the
    /// `otlp` feature (nothing is exported) it does nothing. Call it right after creating the
    /// span, before it is entered.
    pub fn adopt(&self, span: &tracing::Span) {
        #[cfg(feature = "otlp")]
        {
            use opentelemetry::trace::{
                SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
            };
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let remote = SpanContext::new(
                TraceId::from_bytes(self.trace_id),
                SpanId::from_bytes(self.parent_id),
                TraceFlags::new(self.flags),
                true,
                TraceState::default(),
            );
            // Fails only when no OpenTelemetry layer is installed (export not configured).
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        #[cfg(not(feature = "otlp"))]
        let _ = span;
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

/// Lowercase hex digits of `bytes`. By table, not `write!("{:02x}")`: it runs for every
/// request's span and every attempt's `traceparent`, where the formatting machinery took
/// about eleven times as many instructions (callgrind).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
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

    /// A fake OTLP/HTTP collector: answers every request `200` with an empty (valid)
    /// protobuf response and reports `(method, path, body length)` on the channel.
    #[cfg(feature = "otlp")]
    fn fake_collector() -> (
        std::net::SocketAddr,
        std::sync::mpsc::Receiver<(String, String, Vec<u8>)>,
    ) {
        use std::io::{BufRead as _, BufReader, Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = request_line.split_whitespace();
                        let method = parts.next().unwrap_or("").to_owned();
                        let path = parts.next().unwrap_or("").to_owned();
                        let mut length = 0;
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let line = line.trim_end();
                            if line.is_empty() {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':') {
                                if name.eq_ignore_ascii_case("content-length") {
                                    length = value.trim().parse().unwrap_or(0);
                                }
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        let _ = tx.send((method, path, body));
                        let response = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                        if stream.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    #[cfg(feature = "otlp")]
    #[test]
    fn spans_are_exported_to_an_otlp_http_collector() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let (addr, received) = fake_collector();
        let endpoint = format!("http://{addr}/v1/traces");
        let provider = otlp::tracer_provider("webhook-common-test", Some(&endpoint)).unwrap();
        // A scoped subscriber, so no global one clashes with the other tests.
        let subscriber = tracing_subscriber::registry().with(otlp::layer(&provider));
        // A span that adopts a sender's traceparent is exported under the sender's trace id.
        let sender = TraceParent::for_message("msg_0192f0c8a1b27c3d8e4f5a6b7c8d9e0f");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("deliver", msg_id = "msg_test");
            sender.adopt(&span);
            span.in_scope(|| tracing::info!("inside the span"));
        });
        provider.force_flush().unwrap();

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match received.recv_timeout(left) {
                Ok((method, path, body))
                    if method == "POST" && path == "/v1/traces" && !body.is_empty() =>
                {
                    // The protobuf carries the trace id as its 16 raw bytes.
                    assert!(
                        body.windows(16).any(|w| w == sender.trace_id),
                        "the exported span is not in the sender's trace"
                    );
                    break;
                }
                Ok((method, path, body)) => seen.push((method, path, body.len())),
                Err(_) => panic!("no POST /v1/traces with a body within 10s; saw {seen:?}"),
            }
        }
        provider.shutdown().unwrap();
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
