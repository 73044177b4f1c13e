//! After the load: wait (with a deadline) until every accepted order's email is sent, then
//! read what was recorded — straight from the services' SQLite databases, opened read-only,
//! or from the baseline's counter — and reconcile it with the order ids the driver got back:
//! lost emails, duplicated emails and the end-to-end latencies.
//!
//! Only these stable tables and columns are read: `orders(id, created_at)` in the orders
//! database; `received_webhooks(webhook_id, received_at)` and
//! `notifications(webhook_id, order_id, recipient, status, created_at, sent_at)` in the
//! notification database. Never the deliveries tables, whose schema is being reworked. The
//! polling query looks up this run's orders by `notifications.order_id`, which is indexed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use tokio::time::Instant;
use uuid::Uuid;

use crate::baseline::CounterRecords;
use crate::stats::span_us;

/// How often progress is polled: often enough to notice the last email soon, rarely enough
/// to cost the services nothing measurable. (The timings themselves come from the recorded
/// timestamps, not from when loadgen noticed.)
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Order ids per query when checking which of this run's orders have a sent email: each is
/// one lookup in the `notifications (order_id, status)` index, so a query costs about a
/// millisecond whatever the table's size (a `COUNT(*) ... WHERE status = 'sent'` would scan
/// every notification ever sent: the status index is gone).
const CHECK_CHUNK: usize = 500;
/// Order ids checked per poll at most (10,000/s): a few milliseconds of SQLite a poll,
/// whatever the backlog. The pending orders are checked round-robin, so the count of
/// confirmed emails keeps up with the sending and the last one is noticed within a poll or
/// two of the last email.
const CHECK_PER_POLL: usize = 2_000;
/// How often a progress line is printed while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Rows created this long before the first order still count as this run's: the services and
/// loadgen read the same clock, but a clock step must not hide a row. (Another run's rows in
/// the window are told apart by their recipients, see [`Trace::this_run`].)
const WINDOW_SLACK_MS: i64 = 5_000;

/// Where the emails are counted.
pub enum Sink {
    /// The real services' databases.
    Services {
        /// orders-service's database, read-only.
        orders: SqlitePool,
        /// notification-service's database, read-only.
        notifications: SqlitePool,
    },
    /// The baseline's counter server.
    Baseline {
        /// Client for the counter.
        http: reqwest::Client,
        /// `http://addr` of the counter.
        counter: String,
    },
}

/// What was recorded for one order, unix microseconds (the services' milliseconds × 1,000).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    /// `orders.created_at` (baseline: when the front answered).
    pub created_us: Option<i64>,
    /// The earliest `received_webhooks.received_at` of its notifications (baseline: when the
    /// counter got it).
    pub received_us: Option<i64>,
    /// The earliest `notifications.sent_at` of a sent notification (baseline: as received).
    pub sent_us: Option<i64>,
    /// Notifications for the order, whatever their status.
    pub notifications: u32,
    /// Whether a notification went to one of this run's customer addresses: a notification
    /// of an order the driver never saw accepted counts as a duplicate only then, so other
    /// traffic on services loadgen did not start is not blamed on them.
    pub this_run: bool,
}

/// Every order and notification recorded since the run started, by order id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    /// By order id.
    pub traces: HashMap<Uuid, Trace>,
}

/// [`Observed`] checked against the orders the driver saw accepted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Accepted orders with a sent email.
    pub emails_sent: u64,
    /// Accepted orders without a sent email.
    pub lost: u64,
    /// Notifications beyond the first of an accepted order, plus notifications of orders the
    /// driver never saw accepted.
    pub duplicated: u64,
    /// Order created → webhook accepted by the receiver, per order, microseconds.
    pub created_to_received_us: Vec<u64>,
    /// Webhook accepted → email sent, per order, microseconds.
    pub received_to_sent_us: Vec<u64>,
    /// Order created → email sent, per order, microseconds.
    pub created_to_sent_us: Vec<u64>,
    /// When the last email of an accepted order was sent, unix microseconds.
    pub last_sent_us: Option<i64>,
}

/// Where, in the services' unix milliseconds, the rows of a run that started sending at
/// `started_us` (unix microseconds) begin.
pub fn window_start_ms(started_us: i64) -> i64 {
    started_us / 1_000 - WINDOW_SLACK_MS
}

/// Matches what was recorded with what was accepted.
pub fn reconcile(accepted: &HashSet<Uuid>, observed: &Observed) -> Reconciled {
    let mut r = Reconciled::default();
    for id in accepted {
        let trace = observed.traces.get(id).copied().unwrap_or_default();
        r.duplicated += u64::from(trace.notifications.saturating_sub(1));
        let Some(sent) = trace.sent_us else {
            r.lost += 1;
            continue;
        };
        r.emails_sent += 1;
        r.last_sent_us = r.last_sent_us.max(Some(sent));
        if let Some(created) = trace.created_us {
            r.created_to_sent_us.push(span_us(created, sent));
            if let Some(received) = trace.received_us {
                r.created_to_received_us.push(span_us(created, received));
            }
        }
        if let Some(received) = trace.received_us {
            r.received_to_sent_us.push(span_us(received, sent));
        }
    }
    r.duplicated += observed
        .traces
        .iter()
        .filter(|(id, trace)| trace.this_run && !accepted.contains(id))
        .map(|(_, trace)| u64::from(trace.notifications))
        .sum::<u64>();
    r
}

/// Read-only options for `db`, a `sqlite:` URL or a file path.
pub fn sqlite_read_only(db: &str) -> anyhow::Result<SqliteConnectOptions> {
    let options = if db.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(db).with_context(|| format!("parsing {db:?}"))?
    } else {
        SqliteConnectOptions::new().filename(db)
    };
    Ok(options.read_only(true).create_if_missing(false))
}

impl Sink {
    /// Opens both services' databases read-only.
    pub async fn services(orders_db: &str, notifications_db: &str) -> anyhow::Result<Sink> {
        let open = |db: &str| -> anyhow::Result<_> {
            let options = sqlite_read_only(db)?;
            Ok(SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options))
        };
        let orders = open(orders_db)?
            .await
            .with_context(|| format!("opening {orders_db} read-only"))?;
        let notifications = open(notifications_db)?
            .await
            .with_context(|| format!("opening {notifications_db} read-only"))?;
        Ok(Sink::Services {
            orders,
            notifications,
        })
    }

    /// The baseline's counter at `counter` (`http://addr`).
    pub fn baseline(counter: &str) -> anyhow::Result<Sink> {
        Ok(Sink::Baseline {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            counter: counter.to_owned(),
        })
    }

    /// Removes from `pending` orders whose email has been sent, out of `accepted` in all.
    /// Cheap: this is the polling query.
    async fn drop_sent(&self, pending: &mut VecDeque<Uuid>, accepted: usize) -> anyhow::Result<()> {
        match self {
            Sink::Services { notifications, .. } => {
                // At most one pass over the pending orders per poll.
                let mut budget = pending.len().min(CHECK_PER_POLL);
                while budget > 0 {
                    let n = budget.min(CHECK_CHUNK);
                    budget -= n;
                    let chunk: Vec<Uuid> = pending.drain(..n).collect();
                    let sql = format!(
                        "SELECT DISTINCT order_id FROM notifications \
                         WHERE order_id IN ({}) AND status = 'sent'",
                        vec!["?"; n].join(", ")
                    );
                    let mut query = sqlx::query_as::<_, (String,)>(&sql);
                    for id in &chunk {
                        query = query.bind(id.to_string());
                    }
                    let sent: HashSet<Uuid> = query
                        .fetch_all(notifications)
                        .await
                        .context("checking for sent notifications")?
                        .into_iter()
                        .filter_map(|(id,)| Uuid::parse_str(&id).ok())
                        .collect();
                    // The unsent go to the back: next time the others come first.
                    pending.extend(chunk.into_iter().filter(|id| !sent.contains(id)));
                }
            }
            Sink::Baseline { http, counter } => {
                // Only this run's driver talks to this counter, so its count is exact; which
                // orders are still pending does not matter, only how many.
                let stats: serde_json::Value = serde_json::from_slice(
                    &http
                        .get(format!("{counter}/stats"))
                        .send()
                        .await?
                        .error_for_status()?
                        .bytes()
                        .await?,
                )?;
                let received = stats["received"].as_u64().unwrap_or(0);
                let received = usize::try_from(received).unwrap_or(usize::MAX);
                pending.truncate(accepted.saturating_sub(received));
            }
        }
        Ok(())
    }

    /// Everything recorded from `since_ms` (unix milliseconds) on; this run's emails go to
    /// addresses starting with `recipient_prefix`.
    pub async fn observe(&self, since_ms: i64, recipient_prefix: &str) -> anyhow::Result<Observed> {
        match self {
            Sink::Services {
                orders,
                notifications,
            } => observe_services(orders, notifications, since_ms, recipient_prefix).await,
            Sink::Baseline { http, counter } => {
                let body = http
                    .get(format!("{counter}/records"))
                    .send()
                    .await?
                    .error_for_status()?
                    .bytes()
                    .await?;
                let records: CounterRecords =
                    serde_json::from_slice(&body).context("reading the counter's records")?;
                Ok(observe_counter(&records))
            }
        }
    }

    /// Closes the database pools.
    pub async fn close(&self) {
        if let Sink::Services {
            orders,
            notifications,
        } = self
        {
            orders.close().await;
            notifications.close().await;
        }
    }
}

/// One notification with the arrival time of its webhook.
#[derive(sqlx::FromRow)]
struct NotificationRow {
    order_id: String,
    recipient: String,
    status: String,
    sent_at: Option<i64>,
    received_at: Option<i64>,
}

async fn observe_services(
    orders: &SqlitePool,
    notifications: &SqlitePool,
    since_ms: i64,
    recipient_prefix: &str,
) -> anyhow::Result<Observed> {
    let mut observed = Observed::default();
    let created: Vec<(String, i64)> =
        sqlx::query_as("SELECT id, created_at FROM orders WHERE created_at >= $1")
            .bind(since_ms)
            .fetch_all(orders)
            .await
            .context("reading orders")?;
    for (id, created_at) in created {
        if let Ok(id) = Uuid::parse_str(&id) {
            observed.traces.entry(id).or_default().created_us = Some(created_at * 1_000);
        }
    }
    let rows: Vec<NotificationRow> = sqlx::query_as(
        "SELECT n.order_id, n.recipient, n.status, n.sent_at, r.received_at \
         FROM notifications n LEFT JOIN received_webhooks r ON r.webhook_id = n.webhook_id \
         WHERE n.created_at >= $1",
    )
    .bind(since_ms)
    .fetch_all(notifications)
    .await
    .context("reading notifications")?;
    for row in rows {
        // A notification whose order id is not a UUID cannot be an accepted order's; if it
        // is this run's it counts as a notification of an unknown order, under the nil id.
        let id = Uuid::parse_str(&row.order_id).unwrap_or(Uuid::nil());
        let trace = observed.traces.entry(id).or_default();
        trace.notifications += 1;
        trace.this_run |= row.recipient.starts_with(recipient_prefix);
        if row.status == "sent" {
            if let Some(sent) = row.sent_at.map(|ms| ms * 1_000) {
                trace.sent_us = Some(trace.sent_us.map_or(sent, |s| s.min(sent)));
            }
        }
        if let Some(received) = row.received_at.map(|ms| ms * 1_000) {
            trace.received_us = Some(trace.received_us.map_or(received, |r| r.min(received)));
        }
    }
    Ok(observed)
}

/// The counter's records as traces: "webhook accepted" and "email sent" are both the moment
/// the counter received the forward. Only this run's driver talks to the baseline, so every
/// record is this run's.
pub fn observe_counter(records: &CounterRecords) -> Observed {
    let traces = records
        .records
        .iter()
        .map(|r| {
            let trace = Trace {
                created_us: Some(r.created_us),
                received_us: Some(r.received_us),
                sent_us: Some(r.received_us),
                notifications: r.count,
                this_run: true,
            };
            (r.order_id, trace)
        })
        .collect();
    Observed { traces }
}

/// Polls until every accepted order's email is sent or `deadline` passes; returns what was
/// recorded from `since_ms` on and whether the deadline passed first.
pub async fn wait_for_emails(
    sink: &Sink,
    accepted: &HashSet<Uuid>,
    since_ms: i64,
    recipient_prefix: &str,
    deadline: Instant,
) -> anyhow::Result<(Observed, bool)> {
    // Oldest first (the services' ids are UUIDv7, ordered by creation): the likeliest sent.
    let mut pending: Vec<Uuid> = accepted.iter().copied().collect();
    pending.sort_unstable();
    let mut pending = VecDeque::from(pending);
    let expected = accepted.len() as u64;
    let started = Instant::now();
    let mut next_progress = started + PROGRESS_EVERY;
    loop {
        sink.drop_sent(&mut pending, accepted.len()).await?;
        if pending.is_empty() {
            let observed = sink.observe(since_ms, recipient_prefix).await?;
            if reconcile(accepted, &observed).lost == 0 {
                return Ok((observed, false));
            }
            // Seen sent by the poll but not by the full read: cannot happen with one
            // database, so only a deadline ends this.
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok((sink.observe(since_ms, recipient_prefix).await?, true));
        }
        if now >= next_progress {
            next_progress += PROGRESS_EVERY;
            crate::report::progress(&format!(
                "waiting for emails: {} of {} confirmed sent after {:.0} s",
                crate::report::fmt_count(expected - pending.len() as u64),
                crate::report::fmt_count(expected),
                started.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::CounterRecord;

    fn trace(created: i64, received: i64, sent: Option<i64>, notifications: u32) -> Trace {
        Trace {
            created_us: Some(created),
            received_us: Some(received),
            sent_us: sent,
            notifications,
            this_run: true,
        }
    }

    #[test]
    fn every_accepted_order_with_one_sent_email_is_neither_lost_nor_duplicated() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        let observed = Observed {
            traces: HashMap::from([
                (a, trace(1_000, 1_010, Some(1_030), 1)),
                (b, trace(1_001, 1_021, Some(1_051), 1)),
            ]),
        };
        let r = reconcile(&HashSet::from([a, b]), &observed);
        assert_eq!((r.emails_sent, r.lost, r.duplicated), (2, 0, 0));
        assert_eq!(r.last_sent_us, Some(1_051));
        let mut total = r.created_to_sent_us.clone();
        total.sort_unstable();
        assert_eq!(total, [30, 50]);
        let mut hop = r.created_to_received_us.clone();
        hop.sort_unstable();
        assert_eq!(hop, [10, 20]);
        let mut queue = r.received_to_sent_us.clone();
        queue.sort_unstable();
        assert_eq!(queue, [20, 30]);
    }

    #[test]
    fn missing_and_unsent_emails_are_lost() {
        let queued = Uuid::now_v7();
        let absent = Uuid::now_v7();
        let observed = Observed {
            traces: HashMap::from([(queued, trace(1_000, 1_010, None, 1))]),
        };
        let r = reconcile(&HashSet::from([queued, absent]), &observed);
        assert_eq!((r.emails_sent, r.lost, r.duplicated), (0, 2, 0));
        assert_eq!(r.last_sent_us, None);
        assert!(r.created_to_sent_us.is_empty());
    }

    #[test]
    fn second_notifications_and_unknown_orders_are_duplicates() {
        let twice = Uuid::now_v7();
        let stranger = Uuid::now_v7();
        let order_without_email = Uuid::now_v7();
        let observed = Observed {
            traces: HashMap::from([
                (twice, trace(1_000, 1_010, Some(1_020), 2)),
                (stranger, trace(1_000, 1_010, Some(1_020), 1)),
                // An order row of someone else's, without a notification: not a duplicate.
                (
                    order_without_email,
                    Trace {
                        created_us: Some(1_000),
                        ..Trace::default()
                    },
                ),
            ]),
        };
        let r = reconcile(&HashSet::from([twice]), &observed);
        assert_eq!((r.emails_sent, r.lost, r.duplicated), (1, 0, 2));
    }

    #[test]
    fn other_traffic_is_not_counted_as_duplicates() {
        let ours = Uuid::now_v7();
        let theirs = Uuid::now_v7();
        let observed = Observed {
            traces: HashMap::from([
                (ours, trace(1_000, 1_010, Some(1_020), 1)),
                (
                    theirs,
                    Trace {
                        this_run: false,
                        ..trace(1_000, 1_010, Some(1_020), 1)
                    },
                ),
            ]),
        };
        let r = reconcile(&HashSet::from([ours]), &observed);
        assert_eq!((r.emails_sent, r.lost, r.duplicated), (1, 0, 0));
    }

    #[test]
    fn counter_records_become_traces_sent_when_received() {
        let id = Uuid::now_v7();
        let records = CounterRecords {
            records: vec![CounterRecord {
                order_id: id,
                created_us: 5,
                received_us: 9,
                count: 1,
            }],
        };
        let observed = observe_counter(&records);
        assert_eq!(observed.traces[&id], trace(5, 9, Some(9), 1));
        let r = reconcile(&HashSet::from([id]), &observed);
        assert_eq!(r.received_to_sent_us, [0]);
        assert_eq!(r.created_to_sent_us, [4]);
    }

    #[test]
    fn database_arguments_may_be_urls_or_paths() {
        let url = sqlite_read_only("sqlite:///tmp/x/orders.db").unwrap();
        assert_eq!(url.get_filename(), std::path::Path::new("/tmp/x/orders.db"));
        let path = sqlite_read_only("data/orders.db").unwrap();
        assert_eq!(path.get_filename(), std::path::Path::new("data/orders.db"));
    }
}
