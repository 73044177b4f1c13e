//! Helpers: spawn the service on a random port with a temporary database, typed calls to its
//! API, and waiting on conditions with a deadline. The signature-verifying receiver double and
//! the port helpers come from `test_support` and are re-exported here.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use orders_service::api::deliveries::DeliveryResponse;
use orders_service::api::endpoints::{
    CreatedEndpoint, EndpointResponse, RecoverResponse, SecretResponse,
};
use orders_service::api::events::EventResponse;
use orders_service::api::orders::OrderResponse;
use orders_service::api::Page;
use orders_service::domain::{Attempt, Delivery, DeliveryStatus};
use orders_service::store::Store;
use orders_service::Config;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use webhook_common::Secret;

pub use test_support::ports::{bind_port, free_port};
pub use test_support::receiver::{Received, Receiver, Reply};

/// Admin token used by every test instance.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How a test instance is configured.
pub struct AppOptions {
    /// `NOTIFICATION_WEBHOOK_URL`.
    pub webhook_url: Option<String>,
    /// `WEBHOOK_SECRET`.
    pub secret: Option<Secret>,
    /// `RETRY_SCHEDULE`.
    pub schedule: String,
    /// Further `--flag value` pairs.
    pub extra: Vec<String>,
    /// Reuse the database directory of an earlier instance (restart tests).
    pub dir: Option<Arc<TempDir>>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            webhook_url: None,
            secret: None,
            schedule: "20ms,20ms,20ms,20ms,20ms".into(),
            extra: Vec::new(),
            dir: None,
        }
    }
}

impl AppOptions {
    /// Sends to `receiver`, signing with its secret.
    pub fn to(receiver: &Receiver) -> Self {
        AppOptions {
            webhook_url: Some(receiver.url.clone()),
            secret: Some(receiver.secret.clone()),
            ..AppOptions::default()
        }
    }
}

/// A running service instance.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A second handle on its database, for assertions.
    pub store: Store,
    /// Cancels the instance.
    pub shutdown: CancellationToken,
    /// The database directory (kept alive for restarts).
    pub dir: Arc<TempDir>,
    /// HTTP client for requests to it.
    pub http: reqwest::Client,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts an instance and waits until `/healthz` answers.
    pub async fn spawn(options: AppOptions) -> TestApp {
        test_support::init_test_logging();
        let dir = options
            .dir
            .unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("temp dir")));
        let db_url = format!("sqlite://{}", dir.path().join("orders.db").display());
        let defaults = [
            ("--retry-jitter-percent", "0"),
            ("--webhook-timeout", "2s"),
            ("--dispatch-lease", "7s"),
            ("--dispatch-sweep-interval", "100ms"),
            ("--shutdown-grace", "2s"),
            // Test receivers listen on 127.0.0.1; the SSRF tests pass `false` to turn the
            // guard back on.
            ("--allow-private-webhook-targets", "true"),
            // Tests send many orders from 127.0.0.1; the rate-limit tests pass their own.
            ("--order-rate-limit-per-sec", "0"),
        ];
        let mut args = vec![
            "orders-service".to_owned(),
            "--database-url".into(),
            db_url.clone(),
            "--admin-token".into(),
            ADMIN_TOKEN.into(),
            "--retry-schedule".into(),
            options.schedule,
        ];
        // clap refuses a flag given twice, so `extra` replaces a default rather than repeating it.
        for (flag, value) in defaults {
            if !options.extra.iter().any(|e| e == flag) {
                args.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        if let Some(url) = options.webhook_url {
            args.extend(["--notification-webhook-url".into(), url]);
        }
        if let Some(secret) = options.secret {
            args.extend(["--webhook-secret".into(), secret.expose_whsec()]);
        }
        args.extend(options.extra);
        let config = Config::try_parse_from(args).expect("test config parses");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(orders_service::run(config, listener, shutdown.clone()));
        let http = reqwest::Client::new();
        let health = format!("http://{addr}/healthz");
        eventually("the service answers /healthz", || {
            let http = http.clone();
            let health = health.clone();
            async move {
                let r = http.get(&health).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        })
        .await;
        let store = Store::connect(&db_url)
            .await
            .expect("second handle on the database");
        TestApp {
            addr,
            store,
            shutdown,
            dir,
            http,
            handle: Some(handle),
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request to a management route, with the admin token.
    pub fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Sends `body` (if any) as JSON to a management route.
    async fn send_admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.admin(method, path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        request.send().await.expect("admin request")
    }

    /// Sends `body` (if any) as JSON to a management route; returns the status and the JSON
    /// answer (`null` for an empty body). For tests that check error bodies or the exact
    /// JSON shape; the typed calls below serve the rest.
    pub async fn admin_json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let response = self.send_admin(method, path, body).await;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
        };
        (status, value)
    }

    /// Sends `body` (if any) as JSON to a management route, checks the answer is `expected`
    /// and reads it as `T`; fails the test, showing the body, otherwise.
    pub async fn admin_as<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        expected: u16,
    ) -> T {
        let what = format!("{method} {path}");
        typed_answer(self.send_admin(method, path, body).await, expected, &what).await
    }

    /// POSTs `body` as JSON to `/orders`.
    pub async fn post_order(&self, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/orders"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST /orders")
    }

    /// `POST /orders` with `body`, which must create the order (201).
    pub async fn place_order(&self, body: Value) -> OrderResponse {
        typed_answer(self.post_order(body).await, 201, "POST /orders").await
    }

    /// Creates a valid order and returns its id.
    pub async fn create_order(&self) -> Uuid {
        self.place_order(order_body()).await.id
    }

    /// `GET /orders/{id}` (public), which must find the order.
    pub async fn order(&self, id: Uuid) -> OrderResponse {
        let path = format!("/orders/{id}");
        let response = self
            .http
            .get(self.url(&path))
            .send()
            .await
            .expect("GET /orders/{id}");
        typed_answer(response, 200, &format!("GET {path}")).await
    }

    /// `GET /orders?{query}`: one page of orders, newest first.
    pub async fn orders_page(&self, query: &str) -> Page<OrderResponse> {
        self.admin_as(Method::GET, &with_query("/orders", query), None, 200)
            .await
    }

    /// `POST /endpoints` subscribing `url` to `types`; returns the endpoint with its secret.
    pub async fn create_endpoint(&self, url: &str, types: &[&str]) -> CreatedEndpoint {
        let body = serde_json::json!({"url": url, "event_types": types});
        self.create_endpoint_from(body).await
    }

    /// `POST /endpoints` with `body`, which must create the endpoint (201).
    pub async fn create_endpoint_from(&self, body: Value) -> CreatedEndpoint {
        self.admin_as(Method::POST, "/endpoints", Some(body), 201)
            .await
    }

    /// `GET /endpoints/{id}`.
    pub async fn endpoint(&self, id: Uuid) -> EndpointResponse {
        self.admin_as(Method::GET, &format!("/endpoints/{id}"), None, 200)
            .await
    }

    /// `PATCH /endpoints/{id}` with `patch`, which must be accepted.
    pub async fn update_endpoint(&self, id: Uuid, patch: Value) -> EndpointResponse {
        let path = format!("/endpoints/{id}");
        self.admin_as(Method::PATCH, &path, Some(patch), 200).await
    }

    /// `DELETE /endpoints/{id}`, which must delete it (204).
    pub async fn delete_endpoint(&self, id: Uuid) {
        let (status, body) = self
            .admin_json(Method::DELETE, &format!("/endpoints/{id}"), None)
            .await;
        assert_eq!(status, 204, "DELETE /endpoints/{id}: {body}");
    }

    /// `GET /endpoints/{id}/secret`.
    pub async fn endpoint_secret(&self, id: Uuid) -> SecretResponse {
        let path = format!("/endpoints/{id}/secret");
        self.admin_as(Method::GET, &path, None, 200).await
    }

    /// `POST /endpoints/{id}/rotate-secret` with `body` (`None`: no body, the default grace).
    pub async fn rotate_secret(&self, id: Uuid, body: Option<Value>) -> SecretResponse {
        let path = format!("/endpoints/{id}/rotate-secret");
        self.admin_as(Method::POST, &path, body, 200).await
    }

    /// `POST /endpoints/{id}/recover` with `body`.
    pub async fn recover(&self, id: Uuid, body: Value) -> RecoverResponse {
        let path = format!("/endpoints/{id}/recover");
        self.admin_as(Method::POST, &path, Some(body), 200).await
    }

    /// `GET /events?{query}`: one page of the event history, oldest first.
    pub async fn events_page(&self, query: &str) -> Page<EventResponse> {
        self.admin_as(Method::GET, &with_query("/events", query), None, 200)
            .await
    }

    /// `GET /events/{id}`: the event with its deliveries and their latest attempts.
    pub async fn event(&self, id: Uuid) -> EventView {
        let path = format!("/events/{id}");
        let response = self.send_admin(Method::GET, &path, None).await;
        let what = format!("GET {path}");
        let bytes = answer_bytes(response, 200, &what).await;
        let event = parse_as(&bytes, &what);
        let rest: EventDeliveries = parse_as(&bytes, &what);
        EventView {
            event,
            delivery_count: rest.delivery_count,
            deliveries: rest.deliveries,
        }
    }

    /// The event an order emitted, through `GET /events/{id}`.
    pub async fn event_of(&self, order: &OrderResponse) -> EventView {
        let id = order.event_id.expect("the order emitted an event");
        self.event(id).await
    }

    /// `POST /deliveries/{id}/retry`, which must requeue it (202).
    pub async fn retry_delivery(&self, id: Uuid) -> DeliveryResponse {
        let path = format!("/deliveries/{id}/retry");
        self.admin_as(Method::POST, &path, None, 202).await
    }

    /// The deliveries of an order (usually one).
    pub async fn deliveries(&self, order: Uuid) -> Vec<Delivery> {
        self.store
            .deliveries_for_order(order)
            .await
            .expect("deliveries")
    }

    /// Waits until the order's single delivery reaches `status`, and returns it.
    pub async fn wait_for_delivery(&self, order: Uuid, status: DeliveryStatus) -> Delivery {
        eventually(&format!("the delivery of {order} is {status}"), || async {
            let d = self.deliveries(order).await;
            d.into_iter().next().filter(|d| d.status == status)
        })
        .await
    }

    /// The attempts of a delivery.
    pub async fn attempts(&self, delivery: Uuid) -> Vec<Attempt> {
        self.store.attempts(delivery).await.expect("attempts")
    }

    /// Cancels the instance and waits for `run` to return.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(DEADLINE, handle)
                .await
                .expect("run returns after shutdown")
                .expect("run task")
                .expect("run succeeds");
        }
        self.store.close().await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A valid `POST /orders` body whose payment is declined.
pub fn declined_order_body() -> Value {
    let mut body = order_body();
    body["simulate_payment"] = "declined".into();
    body
}

/// A valid `POST /orders` body.
pub fn order_body() -> Value {
    serde_json::json!({
        "product_name": "Mechanical keyboard",
        "quantity": 2,
        "price_per_item": 12.5,
        "customer_email": "ada@example.com"
    })
}

/// `GET /events/{id}` read back. `EventDetail` only serialises: its flattened event holds the
/// `payload` as a `RawValue`, which serde cannot read through `flatten` (serde-rs/json#883).
/// So [`TestApp::event`] reads the body twice, as the [`EventResponse`] it flattens and for the
/// fields it adds.
#[derive(Debug)]
pub struct EventView {
    /// The event (its fields are at the top level of the answer).
    pub event: EventResponse,
    /// How many deliveries it has.
    pub delivery_count: u64,
    /// The first of them, each with its latest attempts.
    pub deliveries: Vec<DeliveryResponse>,
}

/// The fields `GET /events/{id}` adds to the event.
#[derive(Deserialize)]
struct EventDeliveries {
    delivery_count: u64,
    deliveries: Vec<DeliveryResponse>,
}

/// The body of `response`, after checking its status is `expected`; `what` names the request
/// in the failure.
async fn answer_bytes(response: reqwest::Response, expected: u16, what: &str) -> bytes::Bytes {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("response body");
    assert_eq!(
        status,
        expected,
        "{what}: {}",
        String::from_utf8_lossy(&bytes)
    );
    bytes
}

/// The body of `response` as `T`, after checking its status is `expected`.
async fn typed_answer<T: DeserializeOwned>(
    response: reqwest::Response,
    expected: u16,
    what: &str,
) -> T {
    let bytes = answer_bytes(response, expected, what).await;
    parse_as(&bytes, what)
}

/// `path`, with `?query` unless `query` is empty.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

/// `bytes` as `T`; fails the test, showing them, when they do not parse.
fn parse_as<T: DeserializeOwned>(bytes: &[u8], what: &str) -> T {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what}: not a {} ({e}): {}",
            std::any::type_name::<T>(),
            String::from_utf8_lossy(bytes)
        )
    })
}

/// The body of `response` as `T` (a response DTO); fails the test, showing the body, when it
/// does not parse. The caller checks the status.
pub async fn body_as<T: DeserializeOwned>(response: reqwest::Response) -> T {
    let bytes = response.bytes().await.expect("response body");
    parse_as(&bytes, "the answer")
}

/// The body of `response` as JSON.
pub async fn json_of(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.expect("response body");
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`]
/// ([`test_support::eventually`] with this harness's deadline).
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    test_support::eventually(what, DEADLINE, check).await
}
