//! Request ids, `traceparent` on webhook attempts (and its trace id on the order's creation
//! log line), and `GET /readyz`.

use std::sync::Mutex;

use clap::Parser as _;
use orders_service::api::health::not_ready;
use orders_service::dispatcher::{Dispatcher, DispatcherSettings};
use orders_service::store::Store;
use orders_service::Config;
use tokio_util::sync::CancellationToken;
use webhook_common::telemetry::TraceParent;

use crate::support::{eventually, json_of, AppOptions, Receiver, Reply, TestApp, ADMIN_TOKEN};

#[tokio::test]
async fn every_response_carries_a_request_id_generated_or_echoed() {
    let app = TestApp::spawn(AppOptions::default()).await;

    for path in ["/healthz", "/no-such-route"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap();
        uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{path}: {id:?} is no UUID: {e}"));
    }
    // Two requests without one get two different ids.
    assert_ne!(request_id(&app).await, request_id(&app).await);

    let r = app
        .http
        .get(app.url("/orders/not-a-uuid"))
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "client-chosen-42");
    app.stop().await;
}

/// The `x-request-id` of a `GET /healthz` sent without one.
async fn request_id(app: &TestApp) -> String {
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    r.headers()["x-request-id"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_attempt_of_one_event_carries_a_traceparent_with_the_same_trace_id() {
    let mut receiver = Receiver::start(vec![Reply::status(500), Reply::status(503)]).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    app.create_order().await;

    let attempts = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    let parents: Vec<TraceParent> = attempts
        .iter()
        .map(|a| {
            // The header is not signed, so it leaves verification alone.
            assert!(a.verified);
            let value = a.headers["traceparent"].to_str().unwrap();
            TraceParent::parse(value).unwrap_or_else(|| panic!("malformed: {value:?}"))
        })
        .collect();
    assert!(parents.iter().all(|p| p.trace_id == parents[0].trace_id));
    assert!(parents.iter().all(|p| p.flags == 0x01));
    assert_ne!(parents[0].parent_id, parents[1].parent_id);
    assert_ne!(parents[1].parent_id, parents[2].parent_id);
    // Derived from the event's webhook-id, so it is found from either side.
    assert_eq!(
        parents[0].trace_id_hex(),
        attempts[0].id.trim_start_matches("msg_")
    );

    // Another event, another trace.
    app.create_order().await;
    let other = receiver.next().await;
    let other = TraceParent::parse(other.headers["traceparent"].to_str().unwrap()).unwrap();
    assert_ne!(other.trace_id, parents[0].trace_id);
    app.stop().await;
}

/// Log lines, as JSON, of every test in this binary from the first call on (captured by the
/// binary's one subscriber, which [`test_support::init_test_logging`] installs).
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    test_support::captured_logs()
}

#[tokio::test]
async fn the_order_created_line_carries_the_trace_id_its_webhook_attempts_send() {
    let logs = captured_logs();
    let mut receiver = Receiver::start(vec![]).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.create_order().await.to_string();

    let attempt = receiver.next().await;
    let value = attempt.headers["traceparent"].to_str().unwrap();
    let sent = TraceParent::parse(value).unwrap_or_else(|| panic!("malformed: {value:?}"));

    // The "order created" line of this order, in its `create_order` span.
    let line = eventually("the order's creation was logged", || async {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains("order created") && l.contains(&order))
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    })
    .await;
    let span = line["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "create_order")
        .unwrap_or_else(|| panic!("no create_order span: {line}"));
    assert_eq!(span["order_id"], order.as_str());
    assert_eq!(span["trace_id"], sent.trace_id_hex().as_str(), "{line}");
    app.stop().await;
}

#[tokio::test]
async fn readyz_answers_ready_while_the_service_runs() {
    let app = TestApp::spawn(AppOptions::default()).await;
    // Public: no token, and not behind the rate limit or the request bound.
    let body = eventually("/readyz answers 200", || async {
        let r = app.http.get(app.url("/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(r)
    })
    .await;
    assert!(body.headers().contains_key("x-request-id"));
    assert_eq!(json_of(body).await, serde_json::json!({"status": "ready"}));
    app.stop().await;
}

#[tokio::test]
async fn readyz_names_a_stopped_dispatcher_missing_migrations_and_a_gone_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("orders.db").display());
    let config = Config::try_parse_from([
        "orders-service",
        "--database-url",
        &url,
        "--admin-token",
        ADMIN_TOKEN,
    ])
    .unwrap();

    // Before migrating: the migrations are missing and the dispatcher is not running.
    let store = Store::connect(&url).await.unwrap();
    let dispatcher =
        Dispatcher::new(store.clone(), DispatcherSettings::from_config(&config)).unwrap();
    let running = dispatcher.liveness();
    let problems = not_ready(&store, &running).await;
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("database migrations not applied")),
        "{problems:?}"
    );
    assert!(problems.contains(&"dispatcher not running".to_owned()));

    // Migrated, dispatcher running: ready.
    store.migrate().await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(dispatcher.run(stop.clone()));
    eventually("ready", || async {
        not_ready(&store, &running).await.is_empty().then_some(())
    })
    .await;

    // The dispatcher stops: not ready, and the reason says why.
    stop.cancel();
    task.await.unwrap();
    assert_eq!(
        not_ready(&store, &running).await,
        ["dispatcher not running"]
    );

    // The database goes away.
    store.close().await;
    let problems = not_ready(&store, &running).await;
    assert!(
        problems[0].starts_with("database unavailable"),
        "{problems:?}"
    );
}

#[tokio::test]
async fn an_unknown_log_format_stops_the_binary_naming_log_format() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_orders-service"))
        .env("LOG_FORMAT", "yaml")
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(crate::support::DEADLINE, output)
        .await
        .expect("the binary exits in time")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("LOG_FORMAT"), "{stderr}");
}
