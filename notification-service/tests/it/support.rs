//! Helpers: spawn the app on 127.0.0.1:0 with a temporary database and a recording mailer,
//! build and sign events, read the API, and wait on conditions with a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;
use notification_service::mailer::Mailer;
use notification_service::{build_app, AppState, Config, EmailWorker, RecordingMailer, Store};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use webhook_common::{
    Currency, Event, EventPayload, OrderPaid, OrderPaymentFailed, Secret, SignedHeaders,
};

/// The webhook secret of every test instance unless a test says otherwise.
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Admin token of every test instance.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
/// How long any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The default secret, parsed.
pub fn secret() -> Secret {
    Secret::parse(SECRET).unwrap()
}

/// A `Config` for a test: temp database, test secrets and fast retries; `extra` flags are
/// added and override these defaults.
pub fn config(dir: &TempDir, extra: &[&str]) -> Config {
    let db = format!("sqlite://{}/notifications.db", dir.path().display());
    let defaults = [
        ("--listen-addr", "127.0.0.1:0"),
        ("--database-url", db.as_str()),
        ("--admin-token", ADMIN_TOKEN),
        ("--webhook-secret", SECRET),
        ("--worker-retry-base", "1ms"),
        ("--worker-retry-max", "1s"),
    ];
    let mut args = vec!["notification-service".to_owned()];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag.to_owned(), value.to_owned()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Config::try_parse_from(args).unwrap()
}

/// A running app whose email worker the test drives (it does not run on its own).
pub struct TestApp {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub base: String,
    /// Its database.
    pub store: Store,
    /// The worker, driven with `run_once` / `drain`.
    pub worker: EmailWorker,
    /// What the worker sent.
    pub mailer: RecordingMailer,
    /// HTTP client.
    pub http: reqwest::Client,
    /// Stops the server.
    pub shutdown: CancellationToken,
    _dir: TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    /// Defaults, recording mailer.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(&[], None).await
    }

    /// With extra config flags and optionally another mailer than the recording one.
    pub async fn spawn_with(extra: &[&str], mailer: Option<Arc<dyn Mailer>>) -> TestApp {
        test_support::init_test_logging();
        let dir = tempfile::tempdir().unwrap();
        let settings = config(&dir, extra).validate().unwrap();
        let store = Store::connect(&settings.database_url, settings.database_max_connections)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let wake = Arc::new(Notify::new());
        let state = AppState::new(&settings, store.clone(), wake.clone());
        let recording = RecordingMailer::new();
        let mailer = mailer.unwrap_or_else(|| Arc::new(recording.clone()));
        let worker = EmailWorker::new(store.clone(), mailer, settings.worker.clone(), wake);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        // The same server `run` uses, so tests see its limits and client addresses.
        tokio::spawn(webhook_common::server::serve(
            listener,
            build_app(state),
            webhook_common::server::ServeLimits::default(),
            shutdown.clone().cancelled_owned(),
        ));
        TestApp {
            base: format!("http://{addr}"),
            store,
            worker,
            mailer: recording,
            http: reqwest::Client::new(),
            shutdown,
            _dir: dir,
        }
    }

    /// The app's SQLite database (these tests run on SQLite; the store's own suite runs
    /// on both backends), for reading and arranging rows directly.
    pub fn db(&self) -> &sqlx::SqlitePool {
        self.store
            .sqlite_pool()
            .expect("the integration tests run on SQLite")
    }

    /// The intake URL.
    pub fn intake(&self) -> String {
        format!("{}/webhooks/orders", self.base)
    }

    /// Posts `event` signed with the default secret under `webhook_id`.
    pub async fn deliver(&self, webhook_id: &str, event: &Event) -> reqwest::Response {
        self.deliver_bytes(webhook_id, &event.to_json_bytes(), &[secret()])
            .await
    }

    /// Posts `body` signed now with `secrets` under `webhook_id`.
    pub async fn deliver_bytes(
        &self,
        webhook_id: &str,
        body: &[u8],
        secrets: &[Secret],
    ) -> reqwest::Response {
        webhook_common::client::signed_request(
            &self.http,
            self.intake(),
            secrets,
            webhook_id,
            body.to_vec(),
        )
        .send()
        .await
        .unwrap()
    }

    /// Posts `event` signed with the default secret under `webhook_id` and reads the answer
    /// of an accepted delivery; fails the test on any other answer (use [`TestApp::deliver`]
    /// to check a rejection).
    pub async fn submit(&self, webhook_id: &str, event: &Event) -> (u16, IntakeAnswer) {
        read_answer(self.deliver(webhook_id, event).await).await
    }

    /// [`TestApp::submit`] for a hand-made `body` signed with `secrets`.
    pub async fn submit_bytes(
        &self,
        webhook_id: &str,
        body: &[u8],
        secrets: &[Secret],
    ) -> (u16, IntakeAnswer) {
        read_answer(self.deliver_bytes(webhook_id, body, secrets).await).await
    }

    /// GET with the admin token; returns status and JSON body.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// GET with the admin token, which must answer 200 with a body of type `T`.
    pub async fn admin_get_ok<T: DeserializeOwned>(&self, path: &str) -> T {
        let (status, body) = self.admin_get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_value(body.clone())
            .unwrap_or_else(|e| panic!("GET {path}: unexpected body ({e}): {body}"))
    }

    /// `GET /notifications?{query}`: one page.
    pub async fn notifications_page(&self, query: &str) -> NotificationPage {
        self.admin_get_ok(&format!("/notifications?{query}")).await
    }

    /// `GET /notifications/{id}`: one notification, with its email text.
    pub async fn notification(&self, id: Uuid) -> NotificationView {
        self.admin_get_ok(&format!("/notifications/{id}")).await
    }

    /// `GET /webhooks/received`: the latest deliveries, newest first.
    pub async fn received(&self) -> Vec<ReceivedView> {
        self.admin_get_ok::<ReceivedList>("/webhooks/received")
            .await
            .items
    }

    /// Every notification, newest first, following cursors.
    pub async fn notifications(&self) -> Vec<NotificationView> {
        all_notifications(&self.http, &self.base).await
    }
}

/// Every notification of the service at `base`, following `next_cursor`.
pub async fn all_notifications(http: &reqwest::Client, base: &str) -> Vec<NotificationView> {
    let mut items = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = http
            .get(format!("{base}/notifications?limit=200&cursor={cursor}"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET /notifications");
        let page: NotificationPage = r.json().await.unwrap();
        items.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = next,
            None => return items,
        }
    }
}

/// Reads the answer to an accepted delivery (200 or 202), failing the test on any other.
pub async fn read_answer(r: reqwest::Response) -> (u16, IntakeAnswer) {
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert!(
        status == 200 || status == 202,
        "delivery answered {status}: {body}"
    );
    let answer = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("delivery answered {status} with ({e}): {body}"));
    (status, answer)
}

// The service's response types are private and only `Serialize`, so the tests read the wire
// format into these. A missing field or a changed type fails the read, and so the test.

/// What the intake did with a delivery (`status` of its answer, `outcome` of
/// `GET /webhooks/received`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Queued,
    Duplicate,
    Ignored,
    Stale,
}

/// The answer to an accepted delivery.
#[derive(Debug, Clone, Deserialize)]
pub struct IntakeAnswer {
    pub status: Outcome,
    /// Only with [`Outcome::Queued`].
    pub notification_id: Option<Uuid>,
}

/// What `GET /notifications` and `GET /notifications/{id}` answer, read into the types the
/// service writes them from.
pub use notification_service::api::notifications::{
    Item as NotificationView, Page as NotificationPage,
};
/// Where a notification is in its life.
pub use notification_service::domain::NotificationStatus as Status;

/// A delivery as `GET /webhooks/received` shows it.
#[derive(Debug, Clone, Deserialize)]
#[allow(
    dead_code,
    reason = "every field is read so that the wire format is checked, whether or not a test looks at it"
)]
pub struct ReceivedView {
    pub webhook_id: String,
    pub event_type: String,
    pub order_id: Option<String>,
    pub outcome: Outcome,
    #[serde(with = "time::serde::rfc3339")]
    pub event_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// The body of `GET /webhooks/received`.
#[derive(Debug, Clone, Deserialize)]
struct ReceivedList {
    items: Vec<ReceivedView>,
}

/// A fresh webhook id.
pub fn msg_id() -> String {
    webhook_common::signing::new_message_id()
}

/// An `order.paid` of `order_id` that happened at `at`.
pub fn paid(order_id: Uuid, at: OffsetDateTime) -> Event {
    Event {
        timestamp: at,
        payload: EventPayload::OrderPaid(OrderPaid {
            order_id,
            customer_email: "ada@example.com".into(),
            product_name: "Mechanical keyboard".into(),
            quantity: 2,
            amount: 2500,
            currency: Currency::EUR,
        }),
    }
}

/// An `order.payment_failed` of `order_id` that happened at `at`.
pub fn payment_failed(order_id: Uuid, at: OffsetDateTime) -> Event {
    Event {
        timestamp: at,
        payload: EventPayload::OrderPaymentFailed(OrderPaymentFailed {
            order_id,
            customer_email: "ada@example.com".into(),
            product_name: "Mechanical keyboard".into(),
            amount: 2500,
            currency: Currency::EUR,
            reason: "card declined".into(),
        }),
    }
}

/// Now, whole microseconds (what survives a round trip).
pub fn now() -> OffsetDateTime {
    Event::now(EventPayload::Unknown {
        event_type: String::new(),
        data: Value::Null,
    })
    .timestamp
}

/// Signed headers for `body`, timestamped `ts`, as a reqwest header map.
pub fn signed_headers(
    id: &str,
    ts: i64,
    body: &[u8],
    secrets: &[Secret],
) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    SignedHeaders::sign(secrets, id, ts, body)
        .apply(&mut headers)
        .unwrap();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers
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

/// Asserts an error response has our JSON shape with `code`; returns the body.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}
