//! Two replicas of each service on PostgreSQL, one of each killed with `-9` and restarted in
//! the middle of 2,000 orders: exactly 2,000 emails, none twice.
//!
//! The orders are spread over both orders-service replicas (a client that loses its answer
//! retries on the other replica with the same `Idempotency-Key`, as a client behind a load
//! balancer would). Both orders replicas deliver to one URL: a round-robin TCP balancer in
//! this test in front of both notification-service replicas, so webhooks land on both and a
//! dead receiver's connections fail over to the live one.
//!
//! Needs `TEST_DATABASE_URL` (a PostgreSQL server; `.ci/run` sets it); says SKIPPED without.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orders_service::api::orders::OrderResponse;
use test_support::postgres::TestDatabase;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use webhook_common::Secret;

use crate::support::{notifications_env, orders_env, read_json, Demo, JsonBody, Kind, Service};

/// Orders in the stream.
const ORDERS: usize = 2_000;
/// Orders in flight at once.
const CONCURRENCY: usize = 32;
/// How long one order may keep failing over between replicas before the test gives up.
const ORDER_DEADLINE: Duration = Duration::from_secs(60);

/// A round-robin TCP balancer: each accepted connection goes to the next backend that accepts
/// a connection, and counts there.
struct Balancer {
    url: String,
    connections: Arc<Vec<AtomicUsize>>,
    task: JoinHandle<()>,
}

impl Balancer {
    async fn start(backends: Vec<SocketAddr>, path: &str) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let connections: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let first = next;
                next = next.wrapping_add(1);
                let backends = backends.clone();
                let counts = Arc::clone(&counts);
                tokio::spawn(async move {
                    for i in 0..backends.len() {
                        let index = (first + i) % backends.len();
                        if let Ok(mut outbound) = TcpStream::connect(backends[index]).await {
                            counts[index].fetch_add(1, Ordering::Relaxed);
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                    // No backend accepts: dropping `inbound` resets the caller's connection.
                });
            }
        });
        Balancer {
            url,
            connections,
            task,
        }
    }

    fn connections(&self) -> Vec<usize> {
        self.connections
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `env` with `DATABASE_URL` pointing at `database`.
fn on_postgres(mut env: Vec<(String, String)>, database: &TestDatabase) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != "DATABASE_URL");
    env.push(("DATABASE_URL".into(), database.url().to_owned()));
    // Four services and the tests of other binaries share one server.
    env.push(("DATABASE_MAX_CONNECTIONS".into(), "5".into()));
    env
}

fn replica_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Two replicas of each service; `demo` talks to the second of each (the survivors).
struct Cluster {
    demo: Demo,
    /// The replicas that get killed and restarted.
    orders_a: Service,
    notifications_a: Service,
    balancer: Balancer,
    _databases: (TestDatabase, TestDatabase),
}

impl Cluster {
    async fn start() -> Option<Cluster> {
        let orders_db = TestDatabase::create("e2e_replicas_orders").await?;
        let notifications_db = TestDatabase::create("e2e_replicas_notifications").await?;
        let dir = tempfile::tempdir().unwrap();
        let token = "e2e-admin-token-0123456789".to_owned();
        let secret = Secret::generate();

        let notification = |name: &str| {
            let dir = replica_dir(dir.path(), name);
            let env = notifications_env(&dir, &token, &secret.expose_whsec());
            Service::spawn(
                Kind::Notifications,
                &dir,
                on_postgres(env, &notifications_db),
            )
        };
        let notifications_a = notification("notifications-a");
        let notifications_b = notification("notifications-b");
        let backend = |s: &Service| -> SocketAddr {
            s.base_url.trim_start_matches("http://").parse().unwrap()
        };
        let balancer = Balancer::start(
            vec![backend(&notifications_a), backend(&notifications_b)],
            "/webhooks/orders",
        )
        .await;
        let orders = |name: &str| {
            let dir = replica_dir(dir.path(), name);
            let env = orders_env(&dir, &token, &secret, &balancer.url);
            Service::spawn(Kind::Orders, &dir, on_postgres(env, &orders_db))
        };
        let orders_a = orders("orders-a");
        let orders_b = orders("orders-b");
        let demo = Demo::from_services(orders_b, notifications_b, token, secret, dir);
        for service in [
            &notifications_a,
            &demo.notifications,
            &orders_a,
            &demo.orders,
        ] {
            demo.wait_healthy(service).await;
        }
        Some(Cluster {
            demo,
            orders_a,
            notifications_a,
            balancer,
            _databases: (orders_db, notifications_db),
        })
    }

    /// The orders replica for the `n`th try of order `i`: alternating, so both take orders
    /// and a retry goes to the other one.
    fn orders_replica(&self, i: usize, n: usize) -> &Service {
        if (i + n).is_multiple_of(2) {
            &self.orders_a
        } else {
            &self.demo.orders
        }
    }

    /// Creates order `i`, failing over between the replicas with one `Idempotency-Key` until
    /// one answers 201; returns the order id.
    async fn create_order(&self, run: u64, i: usize) -> String {
        let key = format!("e2e-replicas-{run:x}-{i}");
        let body = Demo::order_body(&format!("customer-{i}@example.com"));
        let deadline = Instant::now() + ORDER_DEADLINE;
        let mut last = String::new();
        for n in 0.. {
            if Instant::now() > deadline {
                self.demo.fail(&format!(
                    "order {i} was never acknowledged; last answer: {last}"
                ));
            }
            let replica = self.orders_replica(i, n);
            let sent = self
                .demo
                .http
                .post(replica.url("/orders"))
                .header("idempotency-key", &key)
                .json_body(&body)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().as_u16() == 201 => {
                    let order = read_json(response).await;
                    return serde_json::from_value::<OrderResponse>(order.clone())
                        .unwrap_or_else(|e| self.demo.fail(&format!("not an order ({e}): {order}")))
                        .id
                        .to_string();
                }
                // Busy or shedding load while a replica restarts: try the other one.
                Ok(response) if response.status().as_u16() == 503 => {
                    last = format!("503 {}", read_json(response).await);
                }
                Ok(response) => {
                    let status = response.status();
                    self.demo.fail(&format!(
                        "POST /orders answered {status}: {}",
                        read_json(response).await
                    ));
                }
                Err(e) => last = format!("{} failed: {e}", replica.base_url),
            }
            tokio::time::sleep(Duration::from_millis(20 * (n as u64 + 1).min(10))).await;
        }
        unreachable!()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_each_on_postgres_survive_kill_9_with_exactly_one_email_per_order() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let cluster = Arc::new(cluster);
    let run: u64 = rand::random();
    let acked = Arc::new(AtomicUsize::new(0));

    let stream = {
        let cluster = Arc::clone(&cluster);
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(ORDERS);
            let mut tasks = JoinSet::new();
            for i in 0..ORDERS {
                if tasks.len() >= CONCURRENCY {
                    ids.push(tasks.join_next().await.unwrap().unwrap());
                }
                let cluster = Arc::clone(&cluster);
                let acked = Arc::clone(&acked);
                tasks.spawn(async move {
                    let id = cluster.create_order(run, i).await;
                    acked.fetch_add(1, Ordering::SeqCst);
                    id
                });
            }
            while let Some(id) = tasks.join_next().await {
                ids.push(id.unwrap());
            }
            ids
        })
    };

    cluster
        .demo
        .eventually("a third of the orders are acknowledged", || {
            let acked = Arc::clone(&acked);
            async move { acked.load(Ordering::SeqCst) >= ORDERS / 3 }
        })
        .await;
    let emails_before = cluster.demo.notifications().await.map_or(0, |n| n.len());
    cluster.orders_a.kill9();
    cluster.notifications_a.kill9();
    eprintln!(
        "kill -9 of one replica of each service after {} acknowledged orders and {emails_before} emails",
        acked.load(Ordering::SeqCst)
    );
    cluster
        .demo
        .eventually("the survivors acknowledge more orders", || {
            let acked = Arc::clone(&acked);
            async move { acked.load(Ordering::SeqCst) >= ORDERS / 2 }
        })
        .await;
    cluster.orders_a.start();
    cluster.notifications_a.start();
    cluster.demo.wait_healthy(&cluster.orders_a).await;
    cluster.demo.wait_healthy(&cluster.notifications_a).await;

    let acknowledged = stream.await.unwrap();
    assert_eq!(acknowledged.len(), ORDERS);

    let committed = cluster.demo.committed_order_ids().await;
    let mut committed_sorted = committed.clone();
    committed_sorted.sort();
    let mut acknowledged_sorted = acknowledged.clone();
    acknowledged_sorted.sort();
    acknowledged_sorted.dedup();
    assert_eq!(
        acknowledged_sorted.len(),
        ORDERS,
        "one Idempotency-Key answered with two different orders"
    );
    assert_eq!(
        committed_sorted, acknowledged_sorted,
        "the committed orders are exactly the acknowledged ones (a retried key created no second order)"
    );

    let emails = cluster
        .demo
        .wait_for_one_sent_email_per_order(&committed)
        .await;
    assert_eq!(emails.len(), ORDERS, "exactly one email per order");

    let per_receiver = cluster.balancer.connections();
    eprintln!("webhook connections per notification-service replica: {per_receiver:?}");
    assert!(
        per_receiver.iter().all(|&n| n > 0),
        "both receivers took webhooks: {per_receiver:?}"
    );
}
