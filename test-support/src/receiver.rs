//! A webhook receiver double for any service's tests: it listens on a port-0 address, checks
//! each request's Standard Webhooks signature with [`webhook_common::Verifier`], answers from
//! a script (then with a default reply), and hands every request it saw to the test through a
//! channel, so tests wait on the webhook itself rather than sleeping.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use webhook_common::{Secret, Verifier};

/// How long [`Receiver::next`] waits before the test fails.
pub const NEXT_DEADLINE: Duration = Duration::from_secs(20);

/// The path the receiver serves: its [`Receiver::url`] ends with it.
pub const PATH: &str = "/webhook";

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
    /// `webhook-id` (empty when the header is missing).
    pub id: String,
    /// Whether the signature verified against the receiver's secret.
    pub verified: bool,
    /// Raw body, exactly as sent.
    pub body: Bytes,
    /// All headers.
    pub headers: HeaderMap,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        self.parse()
    }

    /// The body parsed as `T` (e.g. `webhook_common::Event`); fails the test, showing the body,
    /// when it does not parse.
    pub fn parse<T: DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body does not parse as {} ({e}): {}",
                std::any::type_name::<T>(),
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[derive(Clone)]
struct ReceiverState {
    /// Replies still to give, in order; each request pops one under the lock, so concurrent
    /// requests each get a different scripted reply.
    script: Arc<Mutex<VecDeque<Reply>>>,
    default: Reply,
    verifier: Verifier,
    seen: mpsc::Sender<Received>,
}

/// A webhook receiver on a random port that verifies signatures and answers from a script
/// (then with a default reply). Dropping it stops its server.
pub struct Receiver {
    /// Its webhook URL (`http://127.0.0.1:<port>/webhook`).
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

    /// Starts a receiver on `listener` that verifies with `secret`, answers `script` in order,
    /// then `default`.
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
            .route(PATH, axum::routing::post(receive))
            .with_state(state);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Receiver {
            url: format!("http://{addr}{PATH}"),
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

    /// The next request; fails the test after [`NEXT_DEADLINE`].
    pub async fn next(&mut self) -> Received {
        self.next_within(NEXT_DEADLINE)
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
    // Verified on the raw bytes, before anything parses them.
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
