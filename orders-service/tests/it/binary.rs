//! The real binary: `kill -9` with a backlog, restart, and nothing is lost.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use orders_service::api::orders::OrderResponse;
use orders_service::store::Store;
use test_support::{eventually, poll_within};
use webhook_common::Secret;

use crate::support::{bind_port, body_as, free_port, order_body, Receiver, Reply, ADMIN_TOKEN};

/// Longest wait for the backlog to drain after the restart.
const DRAIN_DEADLINE: Duration = Duration::from_secs(90);

/// A child process that is killed when dropped, whatever happens to the test.
struct Service {
    child: tokio::process::Child,
    base: String,
}

impl Service {
    async fn start(dir: &Path, webhook_url: &str, secret: &Secret, run: u32) -> Service {
        let log = std::fs::File::create(dir.join(format!("service-{run}.log"))).unwrap();
        // The child binds port 0 itself and says where in its `listening on` line, so no
        // port is picked here and released for someone else to take.
        let out_path = dir.join(format!("service-{run}.out"));
        let out = std::fs::File::create(&out_path).unwrap();
        // Generous retries in milliseconds: the receiver stays down for a while.
        let mut schedule = vec!["100ms", "200ms", "400ms", "800ms"];
        schedule.extend(["1s"; 90]);
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orders-service"))
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}", dir.join("orders.db").display()),
            )
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("NOTIFICATION_WEBHOOK_URL", webhook_url)
            .env("WEBHOOK_SECRET", secret.expose_whsec())
            .env("RETRY_SCHEDULE", schedule.join(","))
            .env("WEBHOOK_TIMEOUT", "1s")
            .env("DISPATCH_LEASE", "6s")
            .env("DISPATCH_SWEEP_INTERVAL", "100ms")
            .env("ALLOW_PRIVATE_WEBHOOK_TARGETS", "true")
            // 200 orders from one address, as fast as they are answered.
            .env("ORDER_RATE_LIMIT_PER_SEC", "0")
            .env("RUST_LOG", "warn,orders_service=info")
            .env("NO_COLOR", "1")
            .stdout(out)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the orders-service binary");
        let mut service = Service {
            child,
            base: String::new(),
        };
        service.base = service.wait_listening(&out_path).await;
        service.wait_healthy().await;
        service
    }

    /// The `http://addr` from the child's `listening on http://…` log line.
    async fn wait_listening(&mut self, out: &Path) -> String {
        const MARK: &str = "listening on http://";
        // The check is synchronous, so it needs no borrow across an await.
        let check = || {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("orders-service exited early with {status}");
            }
            let text = std::fs::read_to_string(out).unwrap_or_default();
            let addr = text.find(MARK).map(|at| {
                text[at + MARK.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
                    .collect::<String>()
            });
            std::future::ready(
                addr.filter(|a| a.contains(':'))
                    .map(|a| format!("http://{a}")),
            )
        };
        eventually(
            "orders-service logs its address",
            crate::support::DEADLINE,
            check,
        )
        .await
    }

    async fn wait_healthy(&mut self) {
        let http = reqwest::Client::new();
        let health = format!("{}/healthz", self.base);
        let check = || {
            // Checked before each request, as the request itself owns everything it needs.
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("orders-service exited early with {status}");
            }
            let request = http.get(&health).send();
            async move {
                let r = request.await.ok()?;
                (r.status() == 200).then_some(())
            }
        };
        eventually("orders-service is healthy", crate::support::DEADLINE, check).await;
    }

    /// SIGKILL: no shutdown code runs.
    async fn kill_9(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

#[tokio::test]
async fn kill_9_with_200_undelivered_orders_then_restart_delivers_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let receiver_port = free_port().await;
    let url = format!("http://127.0.0.1:{receiver_port}/webhook");
    let secret = Secret::generate();

    // 200 orders while the receiver is down.
    let first = Service::start(dir.path(), &url, &secret, 1).await;
    let http = reqwest::Client::new();
    let mut order_ids = HashSet::new();
    for _ in 0..200 {
        let r = http
            .post(format!("{}/orders", first.base))
            .header("content-type", "application/json")
            .body(order_body().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        order_ids.insert(body_as::<OrderResponse>(r).await.id.to_string());
    }
    first.kill_9().await;

    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("orders.db").display()
    ))
    .await
    .unwrap();
    let counts = store.delivery_counts().await.unwrap();
    eprintln!("delivery states at kill -9: {counts:?}");
    let events: HashMap<String, String> = store
        .event_msg_ids_by_order()
        .await
        .unwrap()
        .into_iter()
        .map(|(order, msg)| (msg, order.to_string()))
        .collect();
    let stored_orders: HashSet<String> = events.values().cloned().collect();
    assert_eq!(
        stored_orders, order_ids,
        "every acknowledged order has its event"
    );

    // Restart, then bring the receiver up.
    let second = Service::start(dir.path(), &url, &secret, 2).await;
    let mut receiver = Receiver::start_on(
        bind_port(receiver_port).await,
        secret,
        Vec::new(),
        Reply::status(200),
    );
    let mut seen: HashMap<String, u32> = HashMap::new();
    let start = Instant::now();
    while !events.keys().all(|id| seen.contains_key(id)) {
        assert!(
            start.elapsed() < DRAIN_DEADLINE,
            "only {} of {} events arrived",
            seen.len(),
            events.len()
        );
        if let Some(got) = receiver.next_within(Duration::from_secs(1)).await {
            assert!(got.verified, "a webhook failed verification");
            *seen.entry(got.id).or_default() += 1;
        }
    }
    // Every delivery is recorded as delivered too (the last 200 OK may still be in transit).
    let recorded = poll_within(DRAIN_DEADLINE, || async {
        let counts = store.delivery_counts().await.unwrap();
        (counts == [("delivered".to_owned(), 200)]).then_some(())
    })
    .await;
    if recorded.is_none() {
        let counts = store.delivery_counts().await.unwrap();
        panic!("deliveries not all recorded: {counts:?}");
    }
    while let Some(got) = receiver.try_next() {
        *seen.entry(got.id).or_default() += 1;
    }
    let unknown: Vec<_> = seen.keys().filter(|id| !events.contains_key(*id)).collect();
    assert!(
        unknown.is_empty(),
        "webhooks for events that do not exist: {unknown:?}"
    );
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "kill -9 test: {} events, all delivered; {duplicates} duplicate deliveries (allowed by at-least-once)",
        events.len()
    );
    second.kill_9().await;
    store.close().await;
}
