//! Request ids, the `trace_id` of an incoming `traceparent` on the request's log lines and on
//! its email job's, and `GET /readyz`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use notification_service::mailer::SimulatedMailer;
use notification_service::{build_app, AppState, EmailWorker, RecordingMailer, Store};
use serde_json::{json, Value};
use tempfile::TempDir;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::{self, eventually, msg_id, paid, read_answer, secret, Outcome, TestApp};

/// A service whose email worker runs on its own, as under `run`, with handles to stop the
/// worker and to close the database.
struct RunningApp {
    base: String,
    http: reqwest::Client,
    store: Store,
    stop_worker: CancellationToken,
    shutdown: CancellationToken,
    _dir: TempDir,
}

impl RunningApp {
    async fn spawn() -> RunningApp {
        test_support::init_test_logging();
        let dir = tempfile::tempdir().unwrap();
        let settings = support::config(&dir, &[]).validate().unwrap();
        let store = Store::connect(&settings.database_url, settings.database_max_connections)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let wake = Arc::new(Notify::new());
        let state = AppState::new(&settings, store.clone(), wake.clone());
        let worker = EmailWorker::new(
            store.clone(),
            Arc::new(RecordingMailer::new()),
            settings.worker.clone(),
            wake,
        )
        .with_liveness(state.worker_running.clone());
        let stop_worker = CancellationToken::new();
        tokio::spawn(worker.run(stop_worker.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(webhook_common::server::serve(
            listener,
            build_app(state),
            webhook_common::server::ServeLimits::default(),
            shutdown.clone().cancelled_owned(),
        ));
        RunningApp {
            base,
            http: reqwest::Client::new(),
            store,
            stop_worker,
            shutdown,
            _dir: dir,
        }
    }

    /// Polls `/readyz` until it answers `status`; returns its body.
    async fn readyz_until(&self, status: u16) -> Value {
        eventually(&format!("/readyz answers {status}"), || async {
            let r = self
                .http
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .ok()?;
            if r.status() != status {
                return None;
            }
            r.json::<Value>().await.ok()
        })
        .await
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.stop_worker.cancel();
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_generated_or_echoed() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz", "/notifications", "/no-such-route"] {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap();
        Uuid::parse_str(id).unwrap_or_else(|e| panic!("{path}: {id:?} is no UUID: {e}"));
    }
    let r = webhook_common::client::signed_request(
        &app.http,
        app.intake(),
        &[secret()],
        &msg_id(),
        paid(Uuid::now_v7(), OffsetDateTime::now_utc()).to_json_bytes(),
    )
    .header("x-request-id", "from-the-sender-7")
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-request-id"], "from-the-sender-7");
}

#[tokio::test]
async fn readyz_is_ready_while_the_worker_runs_and_names_a_stopped_worker() {
    let app = RunningApp::spawn().await;
    assert_eq!(app.readyz_until(200).await, json!({"status": "ready"}));

    app.stop_worker.cancel();
    let body = app.readyz_until(503).await;
    assert_eq!(
        body,
        json!({"status": "not_ready", "reason": "email worker not running"})
    );
}

#[tokio::test]
async fn readyz_names_the_database_when_it_is_gone() {
    let app = RunningApp::spawn().await;
    app.readyz_until(200).await;

    app.store.close().await;
    let body = app.readyz_until(503).await;
    assert_eq!(body["status"], "not_ready");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.starts_with("database unavailable"), "{reason}");
    // Liveness is not readiness: the process still answers.
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop_worker.cancel();
}

/// Log lines, as JSON, of every test in this binary from the first call on (captured by the
/// binary's one subscriber, which [`test_support::init_test_logging`] installs).
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    test_support::captured_logs()
}

#[tokio::test]
async fn the_intake_logs_carry_the_request_id_and_the_senders_trace_id() {
    let logs = captured_logs();
    let app = TestApp::spawn().await;
    let send = |request_id: &'static str, traceparent: &'static str| {
        webhook_common::client::signed_request(
            &app.http,
            app.intake(),
            &[secret()],
            &msg_id(),
            paid(Uuid::now_v7(), OffsetDateTime::now_utc()).to_json_bytes(),
        )
        .header("x-request-id", request_id)
        .header("traceparent", traceparent)
        .send()
    };
    let r = send(
        "trace-test-valid",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    // A malformed one is ignored: the webhook is still taken, without a trace id.
    let r = send("trace-test-malformed", "00-not-a-trace")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let line_of = |request_id: &str| {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        text.lines()
            .find(|l| l.contains("webhook recorded") && l.contains(request_id))
            .map(str::to_owned)
    };
    let valid = eventually("the intake logged the valid one", || async {
        line_of("trace-test-valid")
    })
    .await;
    let line: Value = serde_json::from_str(&valid).unwrap();
    let request = line["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "request")
        .unwrap_or_else(|| panic!("no request span: {valid}"));
    assert_eq!(request["request_id"], "trace-test-valid");
    assert_eq!(request["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(request["method"], "POST");
    assert_eq!(request["route"], "/webhooks/orders");

    let malformed = eventually("the intake logged the malformed one", || async {
        line_of("trace-test-malformed")
    })
    .await;
    assert!(!malformed.contains("trace_id"), "{malformed}");
}

#[tokio::test]
async fn the_email_jobs_log_lines_carry_the_trace_id_its_webhook_arrived_with() {
    let logs = captured_logs();
    // A mailer that logs each email at info, inside the worker's `email_job` span.
    let app = TestApp::spawn_with(&[], Some(Arc::new(SimulatedMailer::new(Duration::ZERO)))).await;
    let send = |traceparent: Option<&'static str>| {
        let request = webhook_common::client::signed_request(
            &app.http,
            app.intake(),
            &[secret()],
            &msg_id(),
            paid(Uuid::now_v7(), OffsetDateTime::now_utc()).to_json_bytes(),
        );
        let request = match traceparent {
            Some(value) => request.header("traceparent", value),
            None => request,
        };
        async move {
            let (status, answer) = read_answer(request.send().await.unwrap()).await;
            assert_eq!((status, answer.status), (202, Outcome::Queued));
            answer
                .notification_id
                .expect("a queued answer names its job")
                .to_string()
        }
    };
    let traced = send(Some(
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ))
    .await;
    let untraced = send(None).await;
    let malformed = send(Some("00-not-a-trace")).await;
    assert_eq!(app.worker.drain().await.unwrap(), 3);

    // The email line of notification `id`, parsed.
    let line_of = |id: String| async move {
        eventually(&format!("the email of {id} was logged"), || async {
            let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
            text.lines()
                .filter(|l| l.contains("email sent (simulated)") && l.contains(&id))
                .find_map(|l| serde_json::from_str::<Value>(l).ok())
        })
        .await
    };
    let job_span = |line: &Value| {
        line["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "email_job")
            .cloned()
            .unwrap_or_else(|| panic!("no email_job span: {line}"))
    };
    let line = line_of(traced.clone()).await;
    let span = job_span(&line);
    assert_eq!(span["notification_id"], traced.as_str());
    assert_eq!(
        span["trace_id"], "0af7651916cd43dd8448eb211c80319c",
        "{line}"
    );

    // Without a valid `traceparent`, the job's lines have no trace id.
    for id in [untraced, malformed] {
        let line = line_of(id.clone()).await;
        assert_eq!(job_span(&line)["notification_id"], id.as_str());
        assert!(!line.to_string().contains("trace_id"), "{line}");
    }
}
