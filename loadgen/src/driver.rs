//! The load: `POST /orders` in a closed loop (N orders from C clients, each waiting for its
//! answer before the next) or an open loop (a fixed rate; every request leaves at its
//! scheduled time and its latency counts from that time, so a stall shows as latency rather
//! than as a lower send rate — no coordinated omission).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

/// How idle keep-alive connections may stay pooled. Below the services' 10 s header read
/// timeout, which is also how long they keep an idle connection: reusing a connection the
/// server is closing would show up as a transport error that is not the server's fault.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What load to offer.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// `orders` orders from `concurrency` clients, each sending its next order when the
    /// previous one is answered.
    Closed {
        /// Orders in all.
        orders: u64,
        /// Clients.
        concurrency: u64,
    },
    /// `rate` orders per second for `duration`, at most `max_in_flight` outstanding.
    Open {
        /// Orders per second.
        rate: u64,
        /// How long.
        duration: Duration,
        /// Outstanding requests at most; a request due beyond it is not sent, and the run
        /// fails (its latency would be missing from the percentiles).
        max_in_flight: u64,
    },
}

impl Load {
    /// How many requests are scheduled in all.
    pub fn scheduled(&self) -> u64 {
        match *self {
            Load::Closed { orders, .. } => orders,
            Load::Open { rate, duration, .. } => (u128::from(rate) * duration.as_millis() / 1_000)
                .try_into()
                .unwrap_or(u64::MAX),
        }
    }

    /// Idle connections worth keeping per host: one per request that can be in flight.
    fn pool_size(&self) -> usize {
        let n = match *self {
            Load::Closed { concurrency, .. } => concurrency,
            Load::Open { max_in_flight, .. } => max_in_flight,
        };
        usize::try_from(n).unwrap_or(usize::MAX).max(64)
    }

    /// A one-line description, e.g. `closed loop: 5,000 orders, concurrency 64`.
    pub fn describe(&self) -> String {
        use crate::report::fmt_count;
        match *self {
            Load::Closed {
                orders,
                concurrency,
            } => format!(
                "closed loop: {} orders, concurrency {concurrency}",
                fmt_count(orders)
            ),
            Load::Open {
                rate,
                duration,
                max_in_flight,
            } => format!(
                "open loop: {}/s for {:?} ({} orders), at most {max_in_flight} in flight",
                fmt_count(rate),
                duration,
                fmt_count(self.scheduled())
            ),
        }
    }
}

/// How one `POST /orders` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 2xx with the new order's id.
    Accepted(Uuid),
    /// Any other HTTP status.
    Status(u16),
    /// 2xx whose body had no order id.
    Invalid,
    /// No HTTP answer: connection refused or reset, or the request timed out.
    Transport,
}

/// One request's outcome and latency.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The request number (`i` of [`order_body`]), which the order's recipient carries.
    pub request: u64,
    /// How it ended.
    pub answer: Answer,
    /// Closed loop: from send to the end of the answer. Open loop: from the scheduled send
    /// time to the end of the answer.
    pub latency_us: u64,
}

/// Everything the driver saw.
#[derive(Debug, Default)]
pub struct Driven {
    /// One per request sent, in no particular order.
    pub samples: Vec<Sample>,
    /// Wall-clock time of the first send, unix microseconds.
    pub started_us: i64,
    /// From the first send to the last answer.
    pub elapsed: Duration,
    /// Open loop: requests that were due while `max_in_flight` were outstanding, and so were
    /// never sent. They have no sample, so their latency (that of a stall) is missing from the
    /// percentiles: a run with any fails.
    pub not_sent_on_schedule: u64,
}

/// Counts of the outcomes of [`Driven::samples`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// The ids of the accepted orders.
    pub accepted: Vec<Uuid>,
    /// The request numbers answered with a 2xx (with or without an order id). An order of any
    /// other request may still have been committed: the client gave up (timeout) or lost the
    /// connection before the answer came.
    pub acknowledged: HashSet<u64>,
    /// Non-2xx answers by status code.
    pub non_2xx: BTreeMap<u16, u64>,
    /// 2xx answers without an order id.
    pub invalid: u64,
    /// Requests without an HTTP answer.
    pub transport_errors: u64,
}

impl Driven {
    /// Sorts the samples' outcomes.
    pub fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for sample in &self.samples {
            if matches!(sample.answer, Answer::Accepted(_) | Answer::Invalid) {
                tally.acknowledged.insert(sample.request);
            }
            match sample.answer {
                Answer::Accepted(id) => tally.accepted.push(id),
                Answer::Status(code) => *tally.non_2xx.entry(code).or_default() += 1,
                Answer::Invalid => tally.invalid += 1,
                Answer::Transport => tally.transport_errors += 1,
            }
        }
        tally
    }
}

/// Sends orders to the `POST /orders` URL of one or more replicas (request `i` to replica
/// `i mod n`) through one pooled keep-alive client.
#[derive(Clone)]
pub struct Driver {
    http: reqwest::Client,
    urls: Arc<[String]>,
    /// Makes every customer email of this run unique, also across runs on the same database.
    tag: Arc<str>,
    /// Requests answered so far (any outcome), for progress lines.
    answered: Arc<AtomicU64>,
}

impl Driver {
    /// A driver for `base_urls` (`http://host:port` of each replica) sized for `load`.
    pub fn new(
        base_urls: &[String],
        load: &Load,
        request_timeout: Duration,
    ) -> anyhow::Result<Driver> {
        anyhow::ensure!(!base_urls.is_empty(), "no orders-service to send orders to");
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(load.pool_size())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(request_timeout)
            .build()
            .context("building the HTTP client")?;
        Ok(Driver {
            http,
            urls: base_urls
                .iter()
                .map(|base| format!("{}/orders", base.trim_end_matches('/')))
                .collect(),
            tag: Uuid::new_v4().simple().to_string()[..12].into(),
            answered: Arc::new(AtomicU64::new(0)),
        })
    }

    /// What every customer email of this run starts with, and no other run's does.
    pub fn recipient_prefix(&self) -> String {
        recipient_prefix(&self.tag)
    }

    /// The counter of answered requests, for a [`crate::fleet::Monitor`].
    pub fn answered(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.answered)
    }

    /// Offers `load` and returns what came back.
    pub async fn run(&self, load: Load) -> anyhow::Result<Driven> {
        match load {
            Load::Closed {
                orders,
                concurrency,
            } => self.closed_loop(orders, concurrency).await,
            Load::Open {
                rate,
                max_in_flight,
                ..
            } => self.open_loop(rate, load.scheduled(), max_in_flight).await,
        }
    }

    async fn closed_loop(&self, orders: u64, concurrency: u64) -> anyhow::Result<Driven> {
        // Each client takes the next order number; the counter is the only shared state.
        let next = Arc::new(AtomicU64::new(0));
        let started_us = unix_us();
        let started = Instant::now();
        let mut clients = JoinSet::new();
        for _ in 0..concurrency.min(orders) {
            let driver = self.clone();
            let next = Arc::clone(&next);
            clients.spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= orders {
                        return samples;
                    }
                    let sent = Instant::now();
                    let answer = driver.post_order(i).await;
                    samples.push(Sample {
                        request: i,
                        answer,
                        latency_us: micros(sent.elapsed()),
                    });
                }
            });
        }
        let mut driven = Driven {
            samples: Vec::with_capacity(usize::try_from(orders).unwrap_or(0)),
            started_us,
            ..Driven::default()
        };
        while let Some(samples) = clients.join_next().await {
            driven
                .samples
                .extend(samples.context("a client task failed")?);
        }
        driven.elapsed = started.elapsed();
        Ok(driven)
    }

    async fn open_loop(&self, rate: u64, total: u64, max_in_flight: u64) -> anyhow::Result<Driven> {
        let permits = Arc::new(Semaphore::new(
            usize::try_from(max_in_flight).unwrap_or(Semaphore::MAX_PERMITS),
        ));
        let started_us = unix_us();
        let started = Instant::now();
        let mut driven = Driven {
            samples: Vec::with_capacity(usize::try_from(total).unwrap_or(0)),
            started_us,
            ..Driven::default()
        };
        // Bounded by `permits`: a task exists only while it holds one.
        let mut in_flight = JoinSet::new();
        for i in 0..total {
            // Computed from the start, not by adding intervals, so rounding never drifts.
            let due = started + scheduled_offset(i, rate);
            tokio::time::sleep_until(due).await;
            while let Some(done) = in_flight.try_join_next() {
                driven.samples.push(done.context("a request task failed")?);
            }
            // Not queued for later: a queue would be unbounded, and a request sent late is
            // not the load asked for. Counted, and the run fails (see `RunReport::failures`).
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                driven.not_sent_on_schedule += 1;
                continue;
            };
            let driver = self.clone();
            in_flight.spawn(async move {
                let answer = driver.post_order(i).await;
                drop(permit);
                // From the scheduled time: if this loop itself ran late, that lateness is
                // part of what a client would have seen.
                Sample {
                    request: i,
                    answer,
                    latency_us: micros(due.elapsed()),
                }
            });
        }
        while let Some(done) = in_flight.join_next().await {
            driven.samples.push(done.context("a request task failed")?);
        }
        driven.elapsed = started.elapsed();
        Ok(driven)
    }

    /// One `POST /orders`; the body is read to the end so the connection can be reused.
    async fn post_order(&self, i: u64) -> Answer {
        let response = self
            .http
            .post(replica_url(&self.urls, i))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(order_body(&self.tag, i))
            .send()
            .await;
        let answer = match response {
            Err(_) => Answer::Transport,
            Ok(response) => {
                let status = response.status();
                match response.bytes().await {
                    Err(_) => Answer::Transport,
                    Ok(_) if !status.is_success() => Answer::Status(status.as_u16()),
                    Ok(body) => order_id(&body).map_or(Answer::Invalid, Answer::Accepted),
                }
            }
        };
        self.answered.fetch_add(1, Ordering::Relaxed);
        answer
    }
}

/// The URL request `i` goes to: round-robin over the replicas.
fn replica_url(urls: &[String], i: u64) -> &str {
    let at = usize::try_from(i % urls.len() as u64).unwrap_or(0);
    &urls[at]
}

/// When request `i` is due, counted from the start, at `rate` per second.
pub fn scheduled_offset(i: u64, rate: u64) -> Duration {
    let nanos = u128::from(i) * 1_000_000_000 / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The body of order `i`: a paid order (no `simulate_payment`, so the simulated payment
/// always succeeds) with a customer email unique to this run and order.
pub fn order_body(tag: &str, i: u64) -> String {
    serde_json::json!({
        "product_name": "Load test widget",
        "quantity": 1 + i % 3,
        "price_per_item": "25.00",
        "currency": "EUR",
        "customer_email": format!("{}{i}@example.com", recipient_prefix(tag)),
    })
    .to_string()
}

fn recipient_prefix(tag: &str) -> String {
    format!("loadgen-{tag}-")
}

/// The request number in a recipient of this run (`{prefix}{i}@example.com`, `prefix` from
/// [`Driver::recipient_prefix`]); `None` for any other address.
pub fn request_number(recipient: &str, prefix: &str) -> Option<u64> {
    let (number, _domain) = recipient.strip_prefix(prefix)?.split_once('@')?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse().ok()
}

/// The `id` of a `POST /orders` answer.
pub fn order_id(body: &[u8]) -> Option<Uuid> {
    #[derive(serde::Deserialize)]
    struct Created {
        id: Uuid,
    }
    serde_json::from_slice::<Created>(body).ok().map(|c| c.id)
}

/// Now, unix microseconds: the unit of every timestamp loadgen compares. The services record
/// milliseconds, which are multiplied up; the baseline records microseconds.
pub fn unix_us() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
}

/// Now, unix milliseconds (the unit the services record times in).
pub fn unix_ms() -> i64 {
    unix_us() / 1_000
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_bodies_are_paid_orders_with_unique_emails() {
        let a: serde_json::Value = serde_json::from_str(&order_body("abc", 1)).unwrap();
        let b: serde_json::Value = serde_json::from_str(&order_body("abc", 2)).unwrap();
        assert_ne!(a["customer_email"], b["customer_email"]);
        let email = a["customer_email"].as_str().unwrap();
        assert!(email.starts_with(&recipient_prefix("abc")), "{email}");
        assert!(!email.starts_with(&recipient_prefix("ab")), "{email}");
        assert_eq!(a["price_per_item"], "25.00");
        assert_eq!(a["currency"], "EUR");
        assert!(a.get("simulate_payment").is_none());
        let q = a["quantity"].as_u64().unwrap();
        assert!((1..=3).contains(&q));
    }

    #[test]
    fn the_request_number_is_read_back_from_the_recipient() {
        let prefix = recipient_prefix("abc");
        let body: serde_json::Value = serde_json::from_str(&order_body("abc", 4_711)).unwrap();
        let email = body["customer_email"].as_str().unwrap();
        assert_eq!(request_number(email, &prefix), Some(4_711));
        assert_eq!(request_number(email, &recipient_prefix("abd")), None);
        assert_eq!(request_number("loadgen-abc-@example.com", &prefix), None);
        assert_eq!(request_number("loadgen-abc-12x@example.com", &prefix), None);
        assert_eq!(request_number("loadgen-abc-12", &prefix), None);
        assert_eq!(request_number("someone@example.com", &prefix), None);
    }

    #[test]
    fn the_order_id_is_read_from_the_created_answer() {
        let id = Uuid::now_v7();
        let body = format!(r#"{{"id":"{id}","status":"paid","total":"25.00"}}"#);
        assert_eq!(order_id(body.as_bytes()), Some(id));
        assert_eq!(order_id(br#"{"status":"paid"}"#), None);
        assert_eq!(order_id(b"not json"), None);
    }

    #[test]
    fn requests_go_round_robin_over_the_replicas() {
        let urls = ["http://a/orders".to_owned(), "http://b/orders".to_owned()];
        let picked: Vec<&str> = (0..5).map(|i| replica_url(&urls, i)).collect();
        assert_eq!(
            picked,
            [
                "http://a/orders",
                "http://b/orders",
                "http://a/orders",
                "http://b/orders",
                "http://a/orders"
            ]
        );
        assert_eq!(replica_url(&urls[..1], u64::MAX), "http://a/orders");
        let driver = Driver::new(
            &[
                "http://127.0.0.1:1/".to_owned(),
                "http://127.0.0.1:2".to_owned(),
            ],
            &Load::Closed {
                orders: 1,
                concurrency: 1,
            },
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            &*driver.urls,
            ["http://127.0.0.1:1/orders", "http://127.0.0.1:2/orders"]
        );
        assert!(Driver::new(
            &[],
            &Load::Closed {
                orders: 1,
                concurrency: 1
            },
            Duration::from_secs(1)
        )
        .is_err());
    }

    #[test]
    fn open_loop_schedule_does_not_drift() {
        assert_eq!(scheduled_offset(0, 1_000), Duration::ZERO);
        assert_eq!(scheduled_offset(1, 1_000), Duration::from_millis(1));
        assert_eq!(scheduled_offset(3, 3), Duration::from_secs(1));
        // 1/3 s steps add up exactly at every whole second.
        assert_eq!(scheduled_offset(3_000, 3), Duration::from_secs(1_000));
    }

    #[test]
    fn scheduled_counts() {
        let open = Load::Open {
            rate: 500,
            duration: Duration::from_secs(10),
            max_in_flight: 10,
        };
        assert_eq!(open.scheduled(), 5_000);
        let closed = Load::Closed {
            orders: 7,
            concurrency: 2,
        };
        assert_eq!(closed.scheduled(), 7);
    }

    #[test]
    fn tally_sorts_outcomes() {
        let id = Uuid::now_v7();
        let driven = Driven {
            samples: vec![
                Sample {
                    request: 0,
                    answer: Answer::Accepted(id),
                    latency_us: 1,
                },
                Sample {
                    request: 1,
                    answer: Answer::Status(503),
                    latency_us: 1,
                },
                Sample {
                    request: 2,
                    answer: Answer::Status(503),
                    latency_us: 1,
                },
                Sample {
                    request: 3,
                    answer: Answer::Invalid,
                    latency_us: 1,
                },
                Sample {
                    request: 4,
                    answer: Answer::Transport,
                    latency_us: 1,
                },
            ],
            ..Driven::default()
        };
        let tally = driven.tally();
        assert_eq!(tally.accepted, vec![id]);
        // Requests 0 (accepted) and 3 (2xx without an id) were answered with a 2xx.
        assert_eq!(tally.acknowledged, HashSet::from([0, 3]));
        assert_eq!(tally.non_2xx, BTreeMap::from([(503, 2)]));
        assert_eq!((tally.invalid, tally.transport_errors), (1, 1));
    }
}
