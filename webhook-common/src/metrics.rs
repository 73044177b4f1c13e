//! Prometheus metrics shared by both services: the process-wide recorder, the text that
//! `GET /metrics` answers with, and a middleware counting HTTP requests by matched route.
//!
//! The recorder of the [`metrics`] facade is global, so it is installed once per process
//! ([`install`], idempotent) and every service in the process (tests run several) records into
//! it and renders the same text. Series of different services are told apart by their names.
//!
//! Labels are bounded: routes are axum's matched templates (`/orders/{id}`, never a concrete
//! path; `unmatched` for a 404 of the fallback), methods are the standard ones (`other`
//! beyond), and event types are the known ones ([`event_type_label`], `other` beyond).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::EventType;

/// `http_requests_total{route,method,status}`: requests answered.
pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
/// `http_request_duration_seconds{route,method}`: time to the response head.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "http_request_duration_seconds";

/// The `route` label of a request no route matched (the fallback's 404).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// How often the services refresh their query-backed gauges (and run the recorder's upkeep).
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Histogram buckets in seconds, from 1 ms to 30 s (HTTP handling, a webhook attempt,
/// processing a received webhook).
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder on the first call and returns its handle;
/// later calls return the same handle. If another recorder was installed globally first
/// (by an embedding program), the handle renders a recorder that nothing records into.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .expect("the bucket list is not empty")
        };
        builder()
            .install_recorder()
            .unwrap_or_else(|_| builder().build_recorder().handle())
    })
}

/// The current metrics in the Prometheus text format.
pub fn render() -> String {
    install().render()
}

/// The answer of `GET /metrics`: [`render`] as `text/plain; version=0.0.4`. Mount it behind
/// the service's admin guard.
pub async fn metrics_handler() -> Response {
    let mut response = render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Drains the recorder's histograms into their buckets; run every [`REFRESH_EVERY`] by each
/// service's gauge refresher so memory stays bounded between scrapes.
pub fn run_upkeep() {
    install().run_upkeep();
}

/// The `event_type` label of a wire type: the known types as themselves, anything else
/// `other`, so a sender cannot grow the label set.
pub fn event_type_label(event_type: &str) -> &'static str {
    event_type
        .parse::<EventType>()
        .map_or("other", |t| t.as_str())
}

/// The `method` label: the standard methods as themselves, anything else `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware (`axum::middleware::from_fn`) counting every request in
/// `http_requests_total{route,method,status}` and timing it in
/// `http_request_duration_seconds{route,method}`. Add it with `Router::layer`, which runs it
/// per route, so the matched route template is known; the fallback counts as
/// [`UNMATCHED_ROUTE`].
pub async fn track_http(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED_ROUTE.to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(
        HTTP_REQUESTS_TOTAL,
        "route" => route.clone(),
        "method" => method,
        "status" => status
    )
    .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt as _;

    use super::*;

    /// The value of the series whose line starts with `series` (name and labels), if any.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_method_and_status_never_by_raw_path() {
        install();
        // A route template only this test uses, so other tests in the process cannot move it.
        let app = Router::new()
            .route(
                "/middleware-test/{id}",
                get(|| async { StatusCode::NO_CONTENT }),
            )
            .layer(axum::middleware::from_fn(track_http));
        for uri in [
            "/middleware-test/123",
            "/middleware-test/456",
            "/nowhere-42",
        ] {
            let request = axum::http::Request::get(uri).body(Body::empty()).unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        let request = axum::http::Request::builder()
            .method("BREW")
            .uri("/middleware-test/7")
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request).await.unwrap();

        let text = render();
        let series =
            r#"http_requests_total{route="/middleware-test/{id}",method="GET",status="204"}"#;
        assert_eq!(value(&text, series), Some(2.0), "{text}");
        let other_method =
            r#"http_requests_total{route="/middleware-test/{id}",method="other",status="405"}"#;
        assert_eq!(value(&text, other_method), Some(1.0), "{text}");
        let unmatched = r#"http_requests_total{route="unmatched",method="GET",status="404"}"#;
        assert!(value(&text, unmatched).unwrap_or(0.0) >= 1.0, "{text}");
        let histogram =
            r#"http_request_duration_seconds_count{route="/middleware-test/{id}",method="GET"}"#;
        assert_eq!(value(&text, histogram), Some(2.0), "{text}");
        assert!(
            !text.contains(r#"route="/middleware-test/123""#) && !text.contains("/nowhere-42"),
            "a raw path leaked into a label:\n{text}"
        );
    }

    #[test]
    fn unknown_event_types_and_methods_collapse_to_other() {
        assert_eq!(event_type_label("order.paid"), "order.paid");
        assert_eq!(
            event_type_label("order.payment_failed"),
            "order.payment_failed"
        );
        assert_eq!(event_type_label("order.shipped-by-someone"), "other");
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
