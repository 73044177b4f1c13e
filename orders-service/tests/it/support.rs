//! Helpers: spawn the service on a random port with a temporary database, a scriptable
//! receiver that verifies signatures, and waiting on conditions with a deadline.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use clap::Parser as _;
use orders_service::domain::{Attempt, Delivery, DeliveryStatus};
use orders_service::store::Store;
use orders_service::Config;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use webhook_common::{Secret, Verifier};

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
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// Sends `body` (if any) as JSON to a management route; returns the status and the JSON
    /// answer (`null` for an empty body).
    pub async fn admin_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.admin(method, path);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("admin request");
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

    /// Creates an endpoint through the API; returns its JSON (with `id` and `secret`).
    pub async fn create_endpoint(&self, url: &str, types: &[&str]) -> Value {
        let (status, body) = self
            .admin_json(
                reqwest::Method::POST,
                "/endpoints",
                Some(serde_json::json!({"url": url, "event_types": types})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Creates an order from `body` and returns its JSON.
    pub async fn order_json(&self, body: Value) -> Value {
        let r = self.post_order(body).await;
        assert_eq!(r.status(), 201);
        json_of(r).await
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

    /// Creates a valid order and returns its id.
    pub async fn create_order(&self) -> Uuid {
        let r = self.post_order(order_body()).await;
        assert_eq!(r.status(), 201);
        let v = json_of(r).await;
        v["id"].as_str().expect("id").parse().expect("uuid")
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

/// What the receiver answers to one request.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After` value, if any.
    pub retry_after: Option<String>,
    /// Other headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body; `receiver says <status>` when `None`.
    pub body: Option<String>,
}

impl Reply {
    /// A reply with `status` and nothing else.
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            retry_after: None,
            headers: Vec::new(),
            body: None,
        }
    }
}

/// One request the receiver saw.
#[derive(Debug)]
pub struct Received {
    /// `webhook-id`.
    pub id: String,
    /// Whether the signature verified.
    pub verified: bool,
    /// Raw body.
    pub body: Bytes,
    /// All headers.
    pub headers: HeaderMap,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

#[derive(Clone)]
struct ReceiverState {
    script: Arc<Mutex<VecDeque<Reply>>>,
    default: Reply,
    verifier: Verifier,
    seen: mpsc::Sender<Received>,
}

/// A webhook receiver on a random port that verifies signatures and answers from a script
/// (then with a default reply).
pub struct Receiver {
    /// Its webhook URL.
    pub url: String,
    /// The secret it verifies with.
    pub secret: Secret,
    seen: mpsc::Receiver<Received>,
    shutdown: CancellationToken,
}

impl Receiver {
    /// Starts a receiver answering `script` in order, then 200.
    pub async fn start(script: Vec<Reply>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Receiver::start_on(listener, Secret::generate(), script, Reply::status(200))
    }

    /// Starts a receiver that always answers `default`.
    pub async fn always(default: Reply) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Receiver::start_on(listener, Secret::generate(), Vec::new(), default)
    }

    /// Starts a receiver on `listener`.
    pub fn start_on(
        listener: tokio::net::TcpListener,
        secret: Secret,
        script: Vec<Reply>,
        default: Reply,
    ) -> Receiver {
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel(10_000);
        let state = ReceiverState {
            script: Arc::new(Mutex::new(script.into())),
            default,
            verifier: Verifier::new(vec![secret.clone()]),
            seen: tx,
        };
        let app = axum::Router::new()
            .route("/webhook", axum::routing::post(receive))
            .with_state(state);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Receiver {
            url: format!("http://{addr}/webhook"),
            secret,
            seen: rx,
            shutdown,
        }
    }

    /// The next request, or `None` if none comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.seen.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next request; fails the test after [`DEADLINE`].
    pub async fn next(&mut self) -> Received {
        self.next_within(DEADLINE)
            .await
            .expect("the receiver got a webhook in time")
    }

    /// A request already received and not yet taken, without waiting.
    pub fn try_next(&mut self) -> Option<Received> {
        self.seen.try_recv().ok()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let verified = state.verifier.verify(&headers, &body).is_ok();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let reply = {
        let mut script = state.script.lock().expect("script lock");
        script.pop_front().unwrap_or_else(|| state.default.clone())
    };
    let _ = state.seen.try_send(Received {
        id,
        verified,
        body,
        headers,
        at: Instant::now(),
    });
    let body = reply
        .body
        .unwrap_or_else(|| format!("receiver says {}", reply.status));
    let mut response = (StatusCode::from_u16(reply.status).expect("status"), body).into_response();
    for (name, value) in reply.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("header value"));
    }
    if let Some(ra) = reply.retry_after {
        response
            .headers_mut()
            .insert("retry-after", ra.parse().expect("header value"));
    }
    response
}

/// A port on 127.0.0.1 with nothing listening (yet): bound, read, released.
pub async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

/// Binds `port`, retrying briefly in case the OS still holds it.
pub async fn bind_port(port: u16) -> tokio::net::TcpListener {
    eventually(&format!("port {port} can be bound"), || async move {
        tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .ok()
    })
    .await
}
