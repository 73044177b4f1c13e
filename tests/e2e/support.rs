//! Spawns both services as separate processes (`webhooks-demo orders-service` and
//! `webhooks-demo notification-service`) on free ports with temporary databases, and waits on
//! conditions with deadlines. Each child's output goes to a log file that is printed when a
//! test fails, so a failure shows what the services saw.

use std::fs::File;
use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use orders_service::api::deliveries::{AttemptResponse, DeliveryResponse};
use orders_service::api::endpoints::{EndpointResponse, SecretResponse};
use orders_service::api::orders::OrderResponse;
use orders_service::api::Page;
use serde_json::Value;
use tempfile::TempDir;
use test_support::poll_within;
use webhook_common::Secret;

/// How long any single condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Reads a JSON `Value` as `$ty`, or fails the test (through `$demo`, with both logs) saying
/// why. A macro, not a generic function: this package has `serde_json` but not `serde`, so
/// the `DeserializeOwned` bound cannot be named here.
macro_rules! typed {
    ($demo:expr, $json:expr, $ty:ty) => {{
        let json: Value = $json;
        serde_json::from_value::<$ty>(json.clone())
            .unwrap_or_else(|e| $demo.fail(&format!("not a {}: {e}: {json}", stringify!($ty))))
    }};
}

/// Which service a process runs.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Orders,
    Notifications,
}

impl Kind {
    fn subcommand(self) -> &'static str {
        match self {
            Kind::Orders => "orders-service",
            Kind::Notifications => "notification-service",
        }
    }
}

/// A free TCP port on 127.0.0.1. The listener is dropped right away; the tiny race with other
/// processes is acceptable, and a restart must reuse the same port anyway.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One service process, restartable on the same port and database.
pub struct Service {
    kind: Kind,
    port: u16,
    env: Mutex<Vec<(String, String)>>,
    log_path: PathBuf,
    /// The running process; a std mutex is fine, it is never held across an await.
    child: Mutex<Option<Child>>,
    pub base_url: String,
}

impl Service {
    pub fn spawn(kind: Kind, dir: &Path, env: Vec<(String, String)>) -> Service {
        let port = free_port();
        let service = Service {
            kind,
            port,
            env: Mutex::new(env),
            log_path: dir.join(format!("{}.log", kind.subcommand())),
            child: Mutex::new(None),
            base_url: format!("http://127.0.0.1:{port}"),
        };
        service.start();
        service
    }

    /// Starts (or restarts) the process with the same port, database and settings.
    pub fn start(&self) {
        let mut child = self.child.lock().unwrap();
        assert!(child.is_none(), "{:?} is already running", self.kind);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_webhooks-demo"));
        cmd.arg(self.kind.subcommand())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // The writer's debug line says how many writes each commit held (see durability.rs).
            .env("RUST_LOG", "info,webhook_common::group_commit=debug")
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", self.port))
            .envs(
                self.env
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        *child = Some(cmd.spawn().expect("spawn webhooks-demo"));
    }

    /// Changes a setting for the next [`Service::start`].
    pub fn set_env(&self, key: &str, value: &str) {
        let mut env = self.env.lock().unwrap();
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }

    /// `kill -9`: no shutdown hook runs, in-flight work is cut off.
    pub fn kill9(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Graceful stop (SIGTERM), waiting for the process to exit.
    pub async fn stop(&self) {
        let child = self.child.lock().unwrap().take();
        if let Some(mut child) = child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let exited = poll_within(DEADLINE, || {
                std::future::ready(matches!(child.try_wait(), Ok(Some(_))).then_some(()))
            })
            .await;
            if exited.is_some() {
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} did not stop within {DEADLINE:?} of SIGTERM",
                self.kind
            );
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Both services wired together, each with its own temporary database.
pub struct Demo {
    pub orders: Service,
    pub notifications: Service,
    pub admin_token: String,
    pub secret: Secret,
    pub http: reqwest::Client,
    /// Holds both databases and logs; deleted when the test ends.
    _dir: TempDir,
}

/// Settings both services get in every test: fast retries so recovery takes milliseconds.
pub fn orders_env(
    dir: &Path,
    token: &str,
    secret: &Secret,
    receiver: &str,
) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), format!("sqlite://{}", dir.join("orders.db").display())),
        ("ADMIN_TOKEN".into(), token.into()),
        ("WEBHOOK_SECRET".into(), secret.expose_whsec()),
        ("NOTIFICATION_WEBHOOK_URL".into(), receiver.into()),
        ("RETRY_SCHEDULE".into(), "50ms,100ms,200ms,400ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms,500ms".into()),
        ("DISPATCH_SWEEP_INTERVAL".into(), "100ms".into()),
        // Short leases so work cut off by kill -9 is picked up again within seconds.
        ("WEBHOOK_TIMEOUT".into(), "2s".into()),
        ("DISPATCH_LEASE".into(), "7s".into()),
        ("ALLOW_PRIVATE_WEBHOOK_TARGETS".into(), "true".into()),
        // The tests send hundreds of orders from 127.0.0.1, faster than the per-client limit.
        ("ORDER_RATE_LIMIT_PER_SEC".into(), "0".into()),
    ]
}

pub fn notifications_env(dir: &Path, token: &str, secrets: &str) -> Vec<(String, String)> {
    vec![
        (
            "DATABASE_URL".into(),
            format!("sqlite://{}", dir.join("notifications.db").display()),
        ),
        ("ADMIN_TOKEN".into(), token.into()),
        ("WEBHOOK_SECRET".into(), secrets.into()),
        ("WORKER_LEASE".into(), "3s".into()),
        ("WORKER_POLL".into(), "100ms".into()),
    ]
}

impl Demo {
    /// A demo over services already spawned (the replica tests start their own), with the
    /// directory that holds their logs.
    pub fn from_services(
        orders: Service,
        notifications: Service,
        admin_token: String,
        secret: Secret,
        dir: TempDir,
    ) -> Demo {
        Demo {
            orders,
            notifications,
            admin_token,
            secret,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    /// Starts notification-service then orders-service, both healthy.
    pub async fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let admin_token = "e2e-admin-token-0123456789".to_owned();
        let secret = Secret::generate();
        let n_env = notifications_env(dir.path(), &admin_token, &secret.expose_whsec());
        let notifications = Service::spawn(Kind::Notifications, dir.path(), n_env);
        let receiver = notifications.url("/webhooks/orders");
        let orders = Service::spawn(
            Kind::Orders,
            dir.path(),
            orders_env(dir.path(), &admin_token, &secret, &receiver),
        );
        let demo = Demo::from_services(orders, notifications, admin_token, secret, dir);
        demo.wait_healthy(&demo.notifications).await;
        demo.wait_healthy(&demo.orders).await;
        demo
    }

    /// Polls `GET /healthz` until it answers 200.
    pub async fn wait_healthy(&self, service: &Service) {
        let url = service.url("/healthz");
        self.eventually(&format!("{url} answers 200"), || async {
            matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success())
        })
        .await;
    }

    /// Polls `check` ([`poll_within`]) until it returns true; fails with both services' logs
    /// after [`DEADLINE`]. `what` reads as the condition waited for, as in
    /// [`test_support::eventually`] (which fails without the logs).
    pub async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let done = poll_within(DEADLINE, || {
            let check = check();
            async move { check.await.then_some(()) }
        })
        .await;
        if done.is_none() {
            self.fail(&format!(
                "timed out after {DEADLINE:?} waiting until {what}"
            ));
        }
    }

    /// Panics with a message and both services' logs (the tail of each).
    pub fn fail(&self, message: &str) -> ! {
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        panic!(
            "{message}\n--- orders-service log (tail) ---\n{}\n--- notification-service log (tail) ---\n{}",
            tail(self.orders.log()),
            tail(self.notifications.log()),
        );
    }

    /// Sends `request` and returns its JSON body; `Err` saying what happened unless the status
    /// is in `expected` (a lost connection included, so callers decide whether that fails the
    /// test or is something to poll through).
    async fn call(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
        expected: RangeInclusive<u16>,
    ) -> Result<Value, String> {
        let response = request
            .send()
            .await
            .map_err(|e| format!("{what} failed: {e}"))?;
        let status = response.status();
        let json = read_json(response).await;
        if expected.contains(&status.as_u16()) {
            Ok(json)
        } else {
            Err(format!(
                "{what} answered {status}, expected {expected:?}: {json}"
            ))
        }
    }

    /// Every item of a list route, following `next_cursor` to the end.
    async fn all_pages(
        &self,
        service: &Service,
        path: &str,
        admin: bool,
    ) -> Result<Vec<Value>, String> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = service.url(&format!("{path}?limit=100"));
            if let Some(c) = &cursor {
                url.push_str(&format!("&cursor={c}"));
            }
            let mut request = self.http.get(&url);
            if admin {
                request = request.bearer_auth(&self.admin_token);
            }
            let page = self.call(&format!("GET {url}"), request, 200..=200).await?;
            // Both services page the same way (`webhook_common::pagination`).
            let page = typed!(self, page, Page<Value>);
            items.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// `POST /orders`; returns the created order.
    pub async fn create_order(&self, body: Value) -> OrderResponse {
        let request = self.http.post(self.orders.url("/orders")).json_body(&body);
        let order = self
            .call("POST /orders", request, 201..=201)
            .await
            .unwrap_or_else(|e| self.fail(&e));
        typed!(self, order, OrderResponse)
    }

    /// `POST /orders` from a client that may lose its connection (the service is being
    /// killed): `Some(order)` when acknowledged with 201, `None` when the request failed in
    /// transit. Any other status fails the test.
    pub async fn try_create_order(&self, body: Value) -> Option<OrderResponse> {
        let response = self
            .http
            .post(self.orders.url("/orders"))
            .json_body(&body)
            .send()
            .await
            .ok()?;
        let status = response.status();
        let json = read_json(response).await;
        if status.as_u16() != 201 {
            self.fail(&format!("POST /orders answered {status}: {json}"));
        }
        Some(typed!(self, json, OrderResponse))
    }

    /// Every order orders-service has committed, by id.
    pub async fn committed_order_ids(&self) -> Vec<String> {
        let orders = self
            .all_pages(&self.orders, "/orders", true)
            .await
            .unwrap_or_else(|e| self.fail(&e));
        orders
            .into_iter()
            .map(|o| typed!(self, o, OrderResponse).id.to_string())
            .collect()
    }

    /// A typical order for `email`.
    pub fn order_body(email: &str) -> Value {
        serde_json::json!({
            "product_name": "Mechanical keyboard",
            "quantity": 2,
            "price_per_item": "12.50",
            "customer_email": email,
        })
    }

    /// Every notification; `None` while notification-service cannot answer (restarting), so
    /// callers poll again rather than judge a partial list.
    pub async fn notifications(&self) -> Option<Vec<Notification>> {
        let all = self
            .all_pages(&self.notifications, "/notifications", true)
            .await
            .ok()?;
        Some(
            all.iter()
                .map(|n| Notification::from_json(n).unwrap_or_else(|e| self.fail(&e)))
                .collect(),
        )
    }

    /// Waits until every order in `order_ids` has exactly one *sent* notification and none
    /// has more than one; returns all notifications. On timeout, says which orders are missing
    /// or duplicated.
    pub async fn wait_for_one_sent_email_per_order(
        &self,
        order_ids: &[String],
    ) -> Vec<Notification> {
        let deadline = Instant::now() + DEADLINE * 2;
        let mut last = String::from("notification-service never answered GET /notifications");
        loop {
            if let Some(all) = self.notifications().await {
                let report = EmailReport::new(order_ids, &all);
                if !report.duplicated.is_empty() {
                    self.fail(&format!(
                        "orders with more than one email: {:?}",
                        report.duplicated
                    ));
                }
                if report.missing.is_empty() && report.unsent.is_empty() {
                    return all;
                }
                last = format!(
                    "not every order got its email: {} missing (first: {:?}), {} not yet sent",
                    report.missing.len(),
                    report.missing.first(),
                    report.unsent.len()
                );
            }
            if Instant::now() > deadline {
                self.fail(&last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A notification as `GET /notifications` lists it: the fields these tests read.
///
/// notification-service's own response type is private and only `Serialize`, and this
/// package cannot derive `Deserialize` (it has no `serde` dependency), so the list items are
/// read here, once; a missing field or a wrong type fails the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: String,
    pub order_id: String,
    pub event_type: String,
    pub to: String,
    /// `queued`, `sent`, `failed` or `cancelled`.
    pub status: String,
}

impl Notification {
    /// Reads a list item; `Err` names the field that is missing or not a string.
    pub fn from_json(item: &Value) -> Result<Notification, String> {
        let field = |name: &str| {
            item.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("notification without a string {name:?}: {item}"))
        };
        Ok(Notification {
            id: field("id")?,
            order_id: field("order_id")?,
            event_type: field("event_type")?,
            to: field("to")?,
            status: field("status")?,
        })
    }
}

/// What the notification list says about a set of orders.
pub struct EmailReport {
    pub missing: Vec<String>,
    pub duplicated: Vec<String>,
    pub unsent: Vec<String>,
}

impl EmailReport {
    pub fn new(order_ids: &[String], notifications: &[Notification]) -> EmailReport {
        let mut counts = std::collections::HashMap::<&str, usize>::new();
        let mut unsent = Vec::new();
        for n in notifications {
            let id = n.order_id.as_str();
            *counts.entry(id).or_default() += 1;
            if n.status != "sent" {
                unsent.push(id.to_owned());
            }
        }
        EmailReport {
            missing: order_ids
                .iter()
                .filter(|id| !counts.contains_key(id.as_str()))
                .cloned()
                .collect(),
            duplicated: counts
                .iter()
                .filter(|(_, n)| **n > 1)
                .map(|(id, _)| id.to_string())
                .collect(),
            unsent,
        }
    }
}

/// Reads a JSON body; a non-JSON body becomes a JSON string so failures still print it.
pub async fn read_json(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap_or_default();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

/// `reqwest` is built without its `json` feature; this sets a JSON body by hand.
pub trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap())
    }
}

/// The management API of orders-service, as the tests use it.
impl Demo {
    async fn admin_get(&self, path: &str) -> Value {
        let request = self
            .http
            .get(self.orders.url(path))
            .bearer_auth(&self.admin_token);
        self.call(&format!("GET {path}"), request, 200..=200)
            .await
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// `POST` to a management route; any 2xx is success.
    pub async fn admin_post(&self, path: &str, body: Value) -> Value {
        let request = self
            .http
            .post(self.orders.url(path))
            .bearer_auth(&self.admin_token)
            .json_body(&body);
        self.call(&format!("POST {path}"), request, 200..=299)
            .await
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// `GET /events/{id}` of an order's event: the event with its deliveries and attempts.
    pub async fn event_of(&self, order: &OrderResponse) -> Value {
        let event_id = order
            .event_id
            .unwrap_or_else(|| self.fail(&format!("order without event_id: {order:?}")));
        self.admin_get(&format!("/events/{event_id}")).await
    }

    /// The deliveries of an order's event (one per subscribed endpoint), with their latest
    /// attempts.
    pub async fn deliveries_of(&self, order: &OrderResponse) -> Vec<DeliveryResponse> {
        // orders-service's `EventDetail` is only `Serialize`; its deliveries are typed.
        let mut event = self.event_of(order).await;
        let deliveries = event
            .get_mut("deliveries")
            .map(Value::take)
            .unwrap_or_else(|| self.fail(&format!("event without deliveries: {event}")));
        typed!(self, deliveries, Vec<DeliveryResponse>)
    }

    /// The single endpoint subscribed from configuration.
    pub async fn endpoint_id(&self) -> String {
        let endpoints = self.admin_get("/endpoints").await;
        let endpoints = typed!(self, endpoints, Page<EndpointResponse>);
        match endpoints.items.as_slice() {
            [only] => only.id.to_string(),
            _ => self.fail(&format!(
                "expected exactly one endpoint, got {:?}",
                endpoints.items
            )),
        }
    }

    /// `POST /endpoints/{id}/rotate-secret`: the endpoint's new signing secret.
    pub async fn rotate_secret(&self, endpoint_id: &str) -> SecretResponse {
        let rotated = self
            .admin_post(
                &format!("/endpoints/{endpoint_id}/rotate-secret"),
                serde_json::json!({}),
            )
            .await;
        typed!(self, rotated, SecretResponse)
    }
}

/// The attempts of a delivery, as listed by `GET /events/{id}` (none elsewhere).
pub fn attempts(delivery: &DeliveryResponse) -> &[AttemptResponse] {
    delivery.attempts.as_deref().unwrap_or_default()
}
