//! The baseline: the same HTTP hop as orders-service → notification-service with no storage
//! and no signing, run as `loadgen baseline-server` in a child process.
//!
//! Its front answers `POST /orders` with 201 and an id at once, after handing a forward to a
//! bounded set of tasks (a semaphore; when every slot is taken the answer waits, as a full
//! outbox would push back). Each forward is one pooled reqwest `POST /count` to the counter,
//! a second listener in the same process. The counter keeps, per order, when it was created,
//! when the forward arrived and how many times — the only state there is, in memory, and what
//! loadgen reads back through `GET /records` ("email sent" = the counter got the POST).

use std::collections::HashMap;
use std::future::IntoFuture as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::cli::BaselineServerArgs;
use crate::driver::unix_us;

/// Log marker followed by the front's address (where `POST /orders` goes).
pub const FRONT_MARK: &str = "baseline listening on http://";
/// Log marker followed by the counter's address.
pub const COUNTER_MARK: &str = "counter listening on http://";

/// Timeout of one forward; a forward that fails is not retried and shows as a lost email.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// What the front sends the counter for each order.
#[derive(Debug, Serialize, Deserialize)]
struct Forward {
    order_id: Uuid,
    created_us: i64,
}

/// What the counter knows about one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRecord {
    /// The id the front answered with.
    pub order_id: Uuid,
    /// When the front answered, unix microseconds.
    pub created_us: i64,
    /// When the first forward arrived, unix microseconds.
    pub received_us: i64,
    /// How many forwards arrived.
    pub count: u32,
}

/// `GET /records` of the counter.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CounterRecords {
    /// One per order, in no particular order.
    pub records: Vec<CounterRecord>,
}

#[derive(Clone)]
struct Front {
    http: reqwest::Client,
    counter_url: Arc<str>,
    /// One permit per forward in flight; an order is answered only once it holds one.
    slots: Arc<Semaphore>,
    /// Every forward task, so shutdown can wait for them.
    forwards: TaskTracker,
}

#[derive(Default)]
struct Counter {
    /// A std mutex, held only for one map update, never across an await.
    records: Mutex<HashMap<Uuid, CounterRecord>>,
    received: AtomicU64,
}

/// Runs the baseline until SIGTERM or SIGINT, then waits for the forwards in flight.
pub async fn serve(args: BaselineServerArgs) -> anyhow::Result<()> {
    let front_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let counter_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let counter_addr = counter_listener.local_addr()?;
    let slots = usize::try_from(args.forward_concurrency).unwrap_or(64);
    let front = Front {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(slots)
            .tcp_nodelay(true)
            .timeout(FORWARD_TIMEOUT)
            .build()?,
        counter_url: format!("http://{counter_addr}/count").into(),
        slots: Arc::new(Semaphore::new(slots)),
        forwards: TaskTracker::new(),
    };
    let forwards = front.forwards.clone();
    let front_app = Router::new()
        .route("/orders", post(create_order))
        .with_state(front);
    let counter_app = Router::new()
        .route("/count", post(count))
        .route("/stats", get(stats))
        .route("/records", get(records))
        .with_state(Arc::new(Counter::default()));

    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{FRONT_MARK}{}", front_listener.local_addr()?)?;
        writeln!(out, "{COUNTER_MARK}{counter_addr}")?;
        out.flush()?;
    }
    let front_server = axum::serve(front_listener, front_app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let counter_server = axum::serve(counter_listener, counter_app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let (front_result, counter_result) =
        tokio::join!(front_server.into_future(), counter_server.into_future());
    forwards.close();
    forwards.wait().await;
    signals.abort();
    front_result.context("serving the front")?;
    counter_result.context("serving the counter")?;
    Ok(())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still ends on SIGTERM, just not gracefully.
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}

/// `POST /orders`: parse the JSON, take a forward slot, hand the forward off, answer 201.
async fn create_order(State(front): State<Front>, body: Bytes) -> Response {
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Ok(slot) = Arc::clone(&front.slots).acquire_owned().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let forward = Forward {
        order_id: Uuid::now_v7(),
        created_us: unix_us(),
    };
    let answer = serde_json::json!({"id": forward.order_id, "status": "paid"}).to_string();
    let note = serde_json::to_vec(&forward).unwrap_or_default();
    let (http, url) = (front.http.clone(), Arc::clone(&front.counter_url));
    front.forwards.spawn(async move {
        let sent = http
            .post(&*url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(note)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        if let Err(e) = sent {
            let _ = writeln!(std::io::stderr().lock(), "baseline: forward failed: {e}");
        }
        drop(slot);
    });
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        answer,
    )
        .into_response()
}

/// `POST /count`: record one forward.
async fn count(State(counter): State<Arc<Counter>>, body: Bytes) -> StatusCode {
    let Ok(forward) = serde_json::from_slice::<Forward>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let now = unix_us();
    counter
        .records
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(forward.order_id)
        .or_insert(CounterRecord {
            order_id: forward.order_id,
            created_us: forward.created_us,
            received_us: now,
            count: 0,
        })
        .count += 1;
    counter.received.fetch_add(1, Ordering::Relaxed);
    StatusCode::ACCEPTED
}

/// `GET /stats`: `{"received": n}`, the cheap poll.
async fn stats(State(counter): State<Arc<Counter>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"received": counter.received.load(Ordering::Relaxed)}))
}

/// `GET /records`: every order the counter heard of.
async fn records(State(counter): State<Arc<Counter>>) -> Json<CounterRecords> {
    let records = counter
        .records
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .values()
        .copied()
        .collect();
    Json(CounterRecords { records })
}
