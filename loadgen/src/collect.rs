//! After the load: wait (with a deadline) until every accepted order's email is sent, then
//! read what was recorded — straight from the services' databases (SQLite or PostgreSQL),
//! opened read-only, or from the baseline's counter — and reconcile it with the order ids the
//! driver got back: lost emails, duplicated emails and the end-to-end latencies. Every
//! recipient carries its request number, so an email is matched to its request even when the
//! driver never saw the order acknowledged (see [`reconcile`]).
//!
//! Only these stable tables and columns are read: `orders(id, created_at)` in the orders
//! database; `received_webhooks(webhook_id, received_at)` and
//! `notifications(id, webhook_id, order_id, recipient, status, created_at, sent_at)` in the
//! notification database. Never the deliveries tables, whose schema is being reworked. The
//! polling query looks up this run's orders by `notifications.order_id`, which is indexed.
//!
//! The databases are SQLite files or PostgreSQL databases (see [`Db`]), with the same tables
//! and columns; on PostgreSQL ids may be native `uuid` and timestamps `bigint` unix
//! milliseconds, so every id read is cast to `text` and every time to `bigint` in SQL, and the
//! polling query compares `order_id` in its own type (see [`pg_sent_query`]).
//!
//! `notifications.webhook_id` is UNIQUE, so the table cannot show an email sent twice (say,
//! after a lost lease). When loadgen started notification-service itself it also counts the
//! sends in the service's log, one line per simulated send (see [`count_sends`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::ConnectOptions as _;
use tokio::time::Instant;
use uuid::Uuid;

use crate::baseline::CounterRecords;
use crate::driver::request_number;
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
        orders: Db,
        /// notification-service's database, read-only.
        notifications: Db,
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
    /// of an order the driver never saw accepted is reconciled only then, so other traffic
    /// on services loadgen did not start is not blamed on them.
    pub this_run: bool,
    /// The request number its recipient carries (`loadgen-{tag}-{i}@…`), if it is this run's.
    /// `None` for the baseline, whose counter knows no recipients.
    pub request: Option<u64>,
}

/// Every order and notification recorded since the run started, by order id.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Observed {
    /// By order id.
    pub traces: HashMap<Uuid, Trace>,
    /// This run's notifications (recipient of this run) by notification id: whether each
    /// was recorded sent. Empty for the baseline.
    pub notifications: HashMap<Uuid, bool>,
}

/// [`Observed`] checked against the orders the driver saw accepted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Accepted orders with a sent email.
    pub emails_sent: u64,
    /// Accepted orders without a sent email.
    pub lost: u64,
    /// Notifications beyond the first per request number (or, without one, per accepted
    /// order), plus notifications of this run that match no request and no accepted order.
    pub duplicated: u64,
    /// Requests answered with no 2xx (timeout, reset, 408, 5xx…) whose order was committed
    /// anyway and its email sent. Not a failure by itself: the client just never heard.
    pub delivered_unacknowledged: u64,
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

/// Matches what was recorded with what was accepted (`accepted`: order ids the driver got
/// back; `acknowledged`: request numbers answered with a 2xx).
///
/// Notifications are counted per request number, which every recipient of this run carries:
/// the first one of a request is its email, any further one (of the same order or of a second
/// order for the same request) a duplicate. A request that got no 2xx may still have
/// committed its order (the client timed out or lost the connection first); its email is
/// "delivered although not acknowledged", not a duplicate. Notifications without a request
/// number (the baseline's) are counted per order: beyond the first of an accepted order they
/// are duplicates, and all of an order the driver never saw accepted are.
pub fn reconcile(
    accepted: &HashSet<Uuid>,
    acknowledged: &HashSet<u64>,
    observed: &Observed,
) -> Reconciled {
    #[derive(PartialEq, Eq, Hash)]
    enum Key {
        Request(u64),
        Order(Uuid),
    }
    #[derive(Default)]
    struct Group {
        notifications: u64,
        sent: bool,
    }

    let mut r = Reconciled::default();
    for id in accepted {
        let trace = observed.traces.get(id).copied().unwrap_or_default();
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

    let mut groups: HashMap<Key, Group> = HashMap::new();
    for (id, trace) in &observed.traces {
        // Other traffic (on services loadgen did not start) is none of this run's business.
        if trace.notifications == 0 || !(trace.this_run || accepted.contains(id)) {
            continue;
        }
        let key = trace.request.map_or(Key::Order(*id), Key::Request);
        let group = groups.entry(key).or_default();
        group.notifications += u64::from(trace.notifications);
        group.sent |= trace.sent_us.is_some();
    }
    for (key, group) in groups {
        match key {
            Key::Request(i) => {
                r.duplicated += group.notifications - 1;
                if !acknowledged.contains(&i) && group.sent {
                    r.delivered_unacknowledged += 1;
                }
            }
            Key::Order(id) if accepted.contains(&id) => r.duplicated += group.notifications - 1,
            // This run's, yet neither a request's nor an accepted order's: nobody asked.
            Key::Order(_) => r.duplicated += group.notifications,
        }
    }
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
    /// Opens both services' databases read-only (SQLite URLs or paths, or PostgreSQL URLs).
    pub async fn services(orders_db: &str, notifications_db: &str) -> anyhow::Result<Sink> {
        Ok(Sink::Services {
            orders: Db::open(orders_db).await?,
            notifications: Db::open(notifications_db).await?,
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
                    let sent = notifications.sent_among(&chunk).await?;
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
#[derive(Debug, Clone, sqlx::FromRow)]
struct NotificationRow {
    id: String,
    order_id: String,
    recipient: String,
    status: String,
    sent_at: Option<i64>,
    received_at: Option<i64>,
}

/// One service's database, opened read-only.
pub enum Db {
    /// A SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL database (a read-only session).
    Postgres {
        /// One connection.
        pool: PgPool,
        /// The type of `notifications.order_id` (notification database only).
        order_id: IdColumn,
    },
}

/// The type of `notifications.order_id` on PostgreSQL, which decides how the polling query
/// compares it with the order ids (a `text[]`) so that its index serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdColumn {
    /// Native `uuid`: the ids are cast to `uuid[]`.
    Uuid,
    /// `text` or `varchar`: compared as they are.
    Text,
    /// Anything else, or no such column: the column is cast to `text` (no index).
    Other,
}

impl IdColumn {
    /// From `format_type()` of the column, `None` when there is no such column.
    pub fn from_type(name: Option<&str>) -> IdColumn {
        match name {
            Some("uuid") => IdColumn::Uuid,
            Some(t) if t == "text" || t.starts_with("character varying") => IdColumn::Text,
            _ => IdColumn::Other,
        }
    }
}

/// SQLite: which of `n` order ids (bound as text, one `?` each) have a sent notification.
pub fn sqlite_sent_query(n: usize) -> String {
    format!(
        "SELECT DISTINCT order_id FROM notifications \
         WHERE order_id IN ({}) AND status = 'sent'",
        vec!["?"; n].join(", ")
    )
}

/// PostgreSQL: which of the order ids in `$1` (a `text[]`) have a sent notification.
pub fn pg_sent_query(column: IdColumn) -> &'static str {
    match column {
        IdColumn::Uuid => {
            "SELECT DISTINCT order_id::text FROM notifications \
             WHERE order_id = ANY($1::text[]::uuid[]) AND status::text = 'sent'"
        }
        IdColumn::Text => {
            "SELECT DISTINCT order_id::text FROM notifications \
             WHERE order_id = ANY($1::text[]) AND status::text = 'sent'"
        }
        IdColumn::Other => {
            "SELECT DISTINCT order_id::text FROM notifications \
             WHERE order_id::text = ANY($1::text[]) AND status::text = 'sent'"
        }
    }
}

/// The type of `notifications.order_id` in the current schema search path; no row when the
/// table or column does not exist.
const PG_ORDER_ID_TYPE: &str = "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
     WHERE a.attrelid = to_regclass('notifications') AND a.attname = 'order_id' \
     AND NOT a.attisdropped";

/// Orders created from `$1` (unix ms) on: id and creation time.
pub const SQLITE_ORDERS_SINCE: &str = "SELECT id, created_at FROM orders WHERE created_at >= $1";
/// The same on PostgreSQL, ids as text and times as `bigint` whatever their column types.
pub const PG_ORDERS_SINCE: &str = "SELECT id::text AS id, created_at::bigint AS created_at \
     FROM orders WHERE created_at >= $1";
/// Notifications created from `$1` (unix ms) on, with when their webhook arrived.
pub const SQLITE_NOTIFICATIONS_SINCE: &str =
    "SELECT n.id, n.order_id, n.recipient, n.status, n.sent_at, r.received_at \
     FROM notifications n LEFT JOIN received_webhooks r ON r.webhook_id = n.webhook_id \
     WHERE n.created_at >= $1";
/// The same on PostgreSQL, ids and status as text and times as `bigint`.
pub const PG_NOTIFICATIONS_SINCE: &str =
    "SELECT n.id::text AS id, n.order_id::text AS order_id, n.recipient::text AS recipient, \
     n.status::text AS status, n.sent_at::bigint AS sent_at, r.received_at::bigint AS received_at \
     FROM notifications n LEFT JOIN received_webhooks r ON r.webhook_id = n.webhook_id \
     WHERE n.created_at >= $1";

/// Whether `db` names a PostgreSQL database.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

impl Db {
    /// Opens `db` read-only: a `postgres://` URL, or a `sqlite:` URL or file path.
    pub async fn open(db: &str) -> anyhow::Result<Db> {
        if is_postgres_url(db) {
            let shown = crate::postgres::redact(db);
            let options = PgConnectOptions::from_str(db)
                .with_context(|| format!("parsing {shown:?}"))?
                .application_name("loadgen")
                .options([("default_transaction_read_only", "on")])
                .disable_statement_logging();
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .with_context(|| format!("opening {shown} read-only"))?;
            let column: Option<(String,)> = sqlx::query_as(PG_ORDER_ID_TYPE)
                .fetch_optional(&pool)
                .await
                .with_context(|| {
                    format!("reading the type of notifications.order_id in {shown}")
                })?;
            let order_id = IdColumn::from_type(column.as_ref().map(|(t,)| t.as_str()));
            return Ok(Db::Postgres { pool, order_id });
        }
        let options = sqlite_read_only(db)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("opening {db} read-only"))?;
        Ok(Db::Sqlite(pool))
    }

    /// Which of `orders` have a sent notification.
    async fn sent_among(&self, orders: &[Uuid]) -> anyhow::Result<HashSet<Uuid>> {
        let rows: Vec<(String,)> = match self {
            Db::Sqlite(pool) => {
                let sql = sqlite_sent_query(orders.len());
                let mut query = sqlx::query_as::<_, (String,)>(&sql);
                for id in orders {
                    query = query.bind(id.to_string());
                }
                query.fetch_all(pool).await
            }
            Db::Postgres { pool, order_id } => {
                let ids: Vec<String> = orders.iter().map(Uuid::to_string).collect();
                sqlx::query_as(pg_sent_query(*order_id))
                    .bind(ids)
                    .fetch_all(pool)
                    .await
            }
        }
        .context("checking for sent notifications")?;
        Ok(rows
            .into_iter()
            .filter_map(|(id,)| Uuid::parse_str(&id).ok())
            .collect())
    }

    /// Orders created from `since_ms` on: (id, created_at).
    async fn orders_since(&self, since_ms: i64) -> anyhow::Result<Vec<(String, i64)>> {
        match self {
            Db::Sqlite(pool) => {
                sqlx::query_as(SQLITE_ORDERS_SINCE)
                    .bind(since_ms)
                    .fetch_all(pool)
                    .await
            }
            Db::Postgres { pool, .. } => {
                sqlx::query_as(PG_ORDERS_SINCE)
                    .bind(since_ms)
                    .fetch_all(pool)
                    .await
            }
        }
        .context("reading orders")
    }

    /// Notifications created from `since_ms` on.
    async fn notifications_since(&self, since_ms: i64) -> anyhow::Result<Vec<NotificationRow>> {
        match self {
            Db::Sqlite(pool) => {
                sqlx::query_as(SQLITE_NOTIFICATIONS_SINCE)
                    .bind(since_ms)
                    .fetch_all(pool)
                    .await
            }
            Db::Postgres { pool, .. } => {
                sqlx::query_as(PG_NOTIFICATIONS_SINCE)
                    .bind(since_ms)
                    .fetch_all(pool)
                    .await
            }
        }
        .context("reading notifications")
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres { pool, .. } => pool.close().await,
        }
    }
}

async fn observe_services(
    orders: &Db,
    notifications: &Db,
    since_ms: i64,
    recipient_prefix: &str,
) -> anyhow::Result<Observed> {
    let created = orders.orders_since(since_ms).await?;
    let rows = notifications.notifications_since(since_ms).await?;
    Ok(observe_rows(created, rows, recipient_prefix))
}

/// The traces of orders (`created`: id, created_at) and notifications as read.
fn observe_rows(
    created: Vec<(String, i64)>,
    rows: Vec<NotificationRow>,
    recipient_prefix: &str,
) -> Observed {
    let mut observed = Observed::default();
    for (id, created_at) in created {
        if let Ok(id) = Uuid::parse_str(&id) {
            observed.traces.entry(id).or_default().created_us = Some(created_at * 1_000);
        }
    }
    for row in rows {
        // A notification whose order id is not a UUID cannot be an accepted order's; if it
        // is this run's it counts as a notification of an unknown order, under the nil id.
        let id = Uuid::parse_str(&row.order_id).unwrap_or(Uuid::nil());
        let trace = observed.traces.entry(id).or_default();
        trace.notifications += 1;
        if row.recipient.starts_with(recipient_prefix) {
            trace.this_run = true;
            trace.request = trace
                .request
                .or_else(|| request_number(&row.recipient, recipient_prefix));
            if let Ok(notification) = Uuid::parse_str(&row.id) {
                observed
                    .notifications
                    .insert(notification, row.status == "sent");
            }
        }
        if row.status == "sent" {
            if let Some(sent) = row.sent_at.map(|ms| ms * 1_000) {
                trace.sent_us = Some(trace.sent_us.map_or(sent, |s| s.min(sent)));
            }
        }
        if let Some(received) = row.received_at.map(|ms| ms * 1_000) {
            trace.received_us = Some(trace.received_us.map_or(received, |r| r.min(received)));
        }
    }
    observed
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
                request: None,
            };
            (r.order_id, trace)
        })
        .collect();
    Observed {
        traces,
        notifications: HashMap::new(),
    }
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
            let all_sent = accepted
                .iter()
                .all(|id| observed.traces.get(id).is_some_and(|t| t.sent_us.is_some()));
            if all_sent {
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

/// What notification-service's `SimulatedMailer` logs at INFO once per send, with the
/// email's [`NOTIFICATION_ID_FIELD`].
pub const SEND_MARK: &str = "email sent (simulated)";
/// The field of a send line naming the notification (`notification_id=<uuid>`).
pub const NOTIFICATION_ID_FIELD: &str = "notification_id=";

/// What notification-service's log says about how often each of this run's emails was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendCheck {
    /// Every email of this run recorded sent has its send line, so the count is complete.
    Counted {
        /// Sends beyond the first, summed over this run's emails. Must be 0.
        extra_sends: u64,
        /// This run's emails sent more than once.
        repeated_emails: u64,
    },
    /// The log cannot tell, and why.
    NotPossible(String),
}

/// Counts, in the logs of every notification-service replica (`logs`), the simulated sends
/// of this run's `notifications` (by id: whether each was recorded sent); a send logged by
/// two replicas counts twice. `rust_log` is the RUST_LOG the service ran with, if one was
/// given, to explain logs that show fewer sends than the database: then the check is not
/// possible, rather than a reassuring 0.
pub fn count_sends<P: AsRef<Path>>(
    logs: &[P],
    notifications: &HashMap<Uuid, bool>,
    rust_log: Option<&str>,
) -> SendCheck {
    let mut sends: HashMap<Uuid, u64> = HashMap::new();
    for log in logs {
        let log = log.as_ref();
        let read = std::fs::File::open(log).and_then(|file| {
            sends_in_log(std::io::BufReader::new(file), notifications, &mut sends)
        });
        if let Err(e) = read {
            return SendCheck::NotPossible(format!("reading {}: {e}", log.display()));
        }
    }
    let logs: Vec<&Path> = logs.iter().map(AsRef::as_ref).collect();
    judge_sends(&sends, notifications, rust_log, &logs)
}

/// Adds to `sends`, per notification of `notifications`, how many send lines `log` has for
/// it. Read a line at a time: the log of a long run is large.
fn sends_in_log(
    mut log: impl std::io::BufRead,
    notifications: &HashMap<Uuid, bool>,
    sends: &mut HashMap<Uuid, u64>,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if log.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if let Some(id) = sent_notification_id(&String::from_utf8_lossy(&line)) {
            if notifications.contains_key(&id) {
                *sends.entry(id).or_default() += 1;
            }
        }
    }
}

/// `logs` for a message: the one path, or the directory of several and their names.
fn describe_logs(logs: &[&Path]) -> String {
    match logs {
        [] => "no log".to_owned(),
        [one] => one.display().to_string(),
        [first, ..] => {
            let names: Vec<String> = logs
                .iter()
                .map(|log| {
                    log.file_name()
                        .map_or_else(|| log.display().to_string(), |n| n.to_string_lossy().into())
                })
                .collect();
            match first.parent() {
                Some(dir) if logs.iter().all(|log| log.parent() == Some(dir)) => {
                    format!("{} ({})", dir.display(), names.join(", "))
                }
                _ => logs
                    .iter()
                    .map(|log| log.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        }
    }
}

/// The notification id of a send line (see [`SEND_MARK`]); `None` for any other line.
pub fn sent_notification_id(line: &str) -> Option<Uuid> {
    let line = strip_ansi(line);
    let at = line.find(SEND_MARK)?;
    // The event's own field follows the message; the `email_job` span's (the same id)
    // precedes it, and serves if the event's is missing.
    let value = |text: &str| -> Option<Uuid> {
        let from = text.find(NOTIFICATION_ID_FIELD)? + NOTIFICATION_ID_FIELD.len();
        Uuid::parse_str(text.get(from..from + 36)?).ok()
    };
    value(&line[at + SEND_MARK.len()..]).or_else(|| value(&line[..at]))
}

/// `text` without ANSI colour sequences (`ESC [ … letter`), which the service writes only to
/// a terminal, but a wrapper might add.
fn strip_ansi(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\u{1b}') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref().skip(1) {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// The verdict on `sends` (send lines per notification): counted only if every email recorded
/// sent has at least one line (each send is logged before the database records it sent).
fn judge_sends(
    sends: &HashMap<Uuid, u64>,
    notifications: &HashMap<Uuid, bool>,
    rust_log: Option<&str>,
    logs: &[&Path],
) -> SendCheck {
    let log = describe_logs(logs);
    let recorded_sent = notifications.values().filter(|sent| **sent).count() as u64;
    let unlogged = notifications
        .iter()
        .filter(|(id, sent)| **sent && !sends.contains_key(id))
        .count() as u64;
    let why = || match rust_log {
        Some(filter) => format!(
            "notification-service ran with RUST_LOG={filter:?}, which may hide the mailer's \
             INFO lines; or the mailer is not the simulated one"
        ),
        None => "the mailer is not the simulated one, or its INFO lines are hidden".to_owned(),
    };
    if unlogged > 0 {
        return SendCheck::NotPossible(format!(
            "{} of {} emails recorded sent have no {SEND_MARK:?} line in {} ({})",
            crate::report::fmt_count(unlogged),
            crate::report::fmt_count(recorded_sent),
            log,
            why()
        ));
    }
    if recorded_sent == 0 && sends.is_empty() {
        return SendCheck::NotPossible(format!(
            "no email of this run was recorded sent and {} has no {SEND_MARK:?} line of this \
             run, so it cannot be told whether the log shows sends ({})",
            log,
            why()
        ));
    }
    let repeated = sends.values().filter(|n| **n > 1);
    SendCheck::Counted {
        extra_sends: repeated.clone().map(|n| n - 1).sum(),
        repeated_emails: repeated.count() as u64,
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
            request: None,
        }
    }

    /// A trace of this run's request `i`.
    fn of_request(i: u64, sent: Option<i64>, notifications: u32) -> Trace {
        Trace {
            request: Some(i),
            ..trace(1_000, 1_010, sent, notifications)
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
            ..Observed::default()
        };
        let r = reconcile(&HashSet::from([a, b]), &HashSet::new(), &observed);
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
            ..Observed::default()
        };
        let r = reconcile(&HashSet::from([queued, absent]), &HashSet::new(), &observed);
        assert_eq!((r.emails_sent, r.lost, r.duplicated), (0, 2, 0));
        assert_eq!(r.last_sent_us, None);
        assert!(r.created_to_sent_us.is_empty());
    }

    #[test]
    fn without_request_numbers_second_notifications_and_unknown_orders_are_duplicates() {
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
            ..Observed::default()
        };
        let r = reconcile(&HashSet::from([twice]), &HashSet::new(), &observed);
        assert_eq!((r.emails_sent, r.lost, r.duplicated), (1, 0, 2));
    }

    #[test]
    fn notifications_are_reconciled_per_request_number() {
        let [a, b, c, d, e, f, g] = [(); 7].map(|()| Uuid::now_v7());
        let observed = Observed {
            traces: HashMap::from([
                // 0: acknowledged, one email.
                (a, of_request(0, Some(1_020), 1)),
                // 1: a transport error (timeout, reset), yet committed and emailed.
                (b, of_request(1, Some(1_020), 1)),
                // 2: a 408, yet committed, and emailed twice: one duplicate.
                (c, of_request(2, Some(1_020), 2)),
                // 3: acknowledged as `d`, and a second order `e` for the same request.
                (d, of_request(3, Some(1_020), 1)),
                (e, of_request(3, Some(1_030), 1)),
                // 4: timed out, committed, its email still queued: nothing to report yet.
                (f, of_request(4, None, 1)),
                // 5: acknowledged, with two notifications of its one order.
                (g, of_request(5, Some(1_020), 2)),
            ]),
            ..Observed::default()
        };
        let accepted = HashSet::from([a, d, g]);
        let acknowledged = HashSet::from([0, 3, 5]);
        let r = reconcile(&accepted, &acknowledged, &observed);
        assert_eq!((r.emails_sent, r.lost), (3, 0));
        assert_eq!(r.delivered_unacknowledged, 2, "requests 1 and 2");
        assert_eq!(
            r.duplicated, 3,
            "request 2's second, order e, request 5's second"
        );
    }

    #[test]
    fn an_unacknowledged_order_alone_is_not_a_duplicate() {
        // The old way counted every notification of an order the driver never saw accepted
        // as a duplicate; a timed-out request whose order committed is not one.
        let late = Uuid::now_v7();
        let observed = Observed {
            traces: HashMap::from([(late, of_request(7, Some(1_020), 1))]),
            ..Observed::default()
        };
        let r = reconcile(&HashSet::new(), &HashSet::new(), &observed);
        assert_eq!(
            (r.duplicated, r.delivered_unacknowledged, r.lost),
            (0, 1, 0)
        );
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
            ..Observed::default()
        };
        let r = reconcile(&HashSet::from([ours]), &HashSet::new(), &observed);
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
        let r = reconcile(&HashSet::from([id]), &HashSet::new(), &observed);
        assert_eq!(r.received_to_sent_us, [0]);
        assert_eq!(r.created_to_sent_us, [4]);
    }

    const ID: &str = "0190f3c2-7a1b-7c3d-8e4f-5a6b7c8d9e0f";

    fn send_line(id: &str) -> String {
        format!(
            "2026-01-01T00:00:00.123456Z  INFO email_job{{notification_id={id} attempt=1}}: \
             notification_service::mailer: email sent (simulated) notification_id={id} \
             to=loadgen-abc-1@example.com subject=Your order body=\"Thanks\\n\"\n"
        )
    }

    #[test]
    fn send_lines_name_their_notification() {
        let id = Uuid::parse_str(ID).unwrap();
        assert_eq!(sent_notification_id(&send_line(ID)), Some(id));
        let coloured = format!(
            "\u{1b}[32m INFO\u{1b}[0m notification_service::mailer: email sent (simulated) \
             \u{1b}[3mnotification_id\u{1b}[0m\u{1b}[2m=\u{1b}[0m{ID} \u{1b}[3mto\u{1b}[0m=x"
        );
        assert_eq!(sent_notification_id(&coloured), Some(id));
        let other = format!("INFO email_job{{notification_id={ID}}}: mail failed, retrying");
        assert_eq!(sent_notification_id(&other), None);
        assert_eq!(
            sent_notification_id("INFO email sent (simulated) notification_id=nope"),
            None
        );
    }

    fn check(
        log_text: &str,
        notifications: &HashMap<Uuid, bool>,
        rust_log: Option<&str>,
    ) -> SendCheck {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("notification-service.log");
        std::fs::write(&log, log_text).unwrap();
        count_sends(&[&log], notifications, rust_log)
    }

    #[test]
    fn sends_are_counted_per_notification_of_this_run() {
        let [a, b, c] = [(); 3].map(|()| Uuid::now_v7());
        let other_run = Uuid::now_v7();
        let notifications = HashMap::from([(a, true), (b, true), (c, false)]);
        let log = [
            "2026-01-01T00:00:00Z  INFO notification_service: listening on http://127.0.0.1:1\n"
                .to_owned(),
            send_line(&a.to_string()),
            send_line(&b.to_string()),
            // `b` again after a lost lease, twice; another run's email, twice.
            send_line(&b.to_string()),
            send_line(&b.to_string()),
            send_line(&other_run.to_string()),
            send_line(&other_run.to_string()),
        ]
        .concat();
        assert_eq!(
            check(&log, &notifications, None),
            SendCheck::Counted {
                extra_sends: 2,
                repeated_emails: 1
            }
        );
    }

    #[test]
    fn a_log_that_hides_sends_makes_the_check_impossible_not_zero() {
        let [a, b] = [(); 2].map(|()| Uuid::now_v7());
        let notifications = HashMap::from([(a, true), (b, true)]);
        // RUST_LOG=warn: no send lines at all.
        let SendCheck::NotPossible(why) = check("", &notifications, Some("warn")) else {
            panic!("counted")
        };
        assert!(
            why.contains("2 of 2 emails") && why.contains("RUST_LOG=\"warn\""),
            "{why}"
        );
        // A filter that lets some through is caught as well.
        let partial = send_line(&a.to_string());
        let SendCheck::NotPossible(why) = check(&partial, &notifications, None) else {
            panic!("counted")
        };
        assert!(why.contains("1 of 2 emails"), "{why}");
        // Nothing sent and nothing logged: no telling.
        let none_sent = HashMap::from([(a, false)]);
        assert!(matches!(
            check("", &none_sent, None),
            SendCheck::NotPossible(_)
        ));
        // A missing log file.
        assert!(matches!(
            count_sends(
                &[Path::new("/nonexistent/loadgen.log")],
                &notifications,
                None
            ),
            SendCheck::NotPossible(_)
        ));
    }

    #[test]
    fn sends_are_counted_across_the_logs_of_every_replica() {
        let [a, b, c] = [(); 3].map(|()| Uuid::now_v7());
        let notifications = HashMap::from([(a, true), (b, true), (c, true)]);
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("01-notification-service-1.log");
        let second = dir.path().join("02-notification-service-2.log");
        std::fs::write(
            &first,
            [send_line(&a.to_string()), send_line(&b.to_string())].concat(),
        )
        .unwrap();
        std::fs::write(&second, send_line(&c.to_string())).unwrap();
        assert_eq!(
            count_sends(&[&first, &second], &notifications, None),
            SendCheck::Counted {
                extra_sends: 0,
                repeated_emails: 0
            }
        );
        // `b` sent again by the other replica (say, after its lease was taken over).
        std::fs::write(
            &second,
            [send_line(&c.to_string()), send_line(&b.to_string())].concat(),
        )
        .unwrap();
        assert_eq!(
            count_sends(&[&first, &second], &notifications, None),
            SendCheck::Counted {
                extra_sends: 1,
                repeated_emails: 1
            }
        );
        // One replica's log alone misses sends: not possible, naming both logs.
        std::fs::write(&second, "").unwrap();
        let SendCheck::NotPossible(why) = count_sends(&[&first, &second], &notifications, None)
        else {
            panic!("counted")
        };
        assert!(
            why.contains("1 of 3 emails")
                && why.contains("01-notification-service-1.log, 02-notification-service-2.log"),
            "{why}"
        );
        // A missing log of one replica makes the check impossible, not partial.
        let missing = dir.path().join("03-notification-service-3.log");
        assert!(matches!(
            count_sends(&[&first, &missing], &notifications, None),
            SendCheck::NotPossible(_)
        ));
    }

    #[test]
    fn the_polling_query_compares_order_ids_in_their_column_type() {
        assert_eq!(IdColumn::from_type(Some("uuid")), IdColumn::Uuid);
        assert_eq!(IdColumn::from_type(Some("text")), IdColumn::Text);
        assert_eq!(
            IdColumn::from_type(Some("character varying(36)")),
            IdColumn::Text
        );
        assert_eq!(IdColumn::from_type(Some("bytea")), IdColumn::Other);
        assert_eq!(IdColumn::from_type(None), IdColumn::Other);

        assert!(pg_sent_query(IdColumn::Uuid).contains("order_id = ANY($1::text[]::uuid[])"));
        assert!(pg_sent_query(IdColumn::Text).contains("order_id = ANY($1::text[])"));
        assert!(pg_sent_query(IdColumn::Other).contains("order_id::text = ANY($1::text[])"));
        for column in [IdColumn::Uuid, IdColumn::Text, IdColumn::Other] {
            let sql = pg_sent_query(column);
            assert!(
                sql.starts_with("SELECT DISTINCT order_id::text FROM notifications"),
                "{sql}"
            );
            assert!(!sql.contains('?'), "{sql}");
        }
        assert_eq!(
            sqlite_sent_query(3),
            "SELECT DISTINCT order_id FROM notifications \
             WHERE order_id IN (?, ?, ?) AND status = 'sent'"
        );
    }

    #[test]
    fn postgres_reads_cast_ids_to_text_and_times_to_bigint() {
        for sql in [PG_ORDERS_SINCE, PG_NOTIFICATIONS_SINCE] {
            assert!(sql.contains("id::text AS id"), "{sql}");
        }
        assert!(PG_ORDERS_SINCE.contains("created_at::bigint AS created_at"));
        for cast in [
            "n.order_id::text AS order_id",
            "n.status::text AS status",
            "n.recipient::text AS recipient",
            "n.sent_at::bigint AS sent_at",
            "r.received_at::bigint AS received_at",
        ] {
            assert!(PG_NOTIFICATIONS_SINCE.contains(cast), "{cast}");
        }
        assert!(is_postgres_url("postgres://h/db") && is_postgres_url("postgresql://h/db"));
        assert!(!is_postgres_url("sqlite://x.db") && !is_postgres_url("data/postgres.db"));
    }

    fn row(
        id: Uuid,
        order: Uuid,
        recipient: &str,
        status: &str,
        sent: Option<i64>,
    ) -> NotificationRow {
        NotificationRow {
            id: id.to_string(),
            order_id: order.to_string(),
            recipient: recipient.to_owned(),
            status: status.to_owned(),
            sent_at: sent,
            received_at: Some(1_010),
        }
    }

    #[test]
    fn rows_become_traces_in_microseconds() {
        let [order, other, n1, n2, n3] = [(); 5].map(|()| Uuid::now_v7());
        let prefix = "loadgen-abc-";
        let observed = observe_rows(
            vec![(order.to_string(), 1_000), ("not-a-uuid".to_owned(), 1)],
            vec![
                row(n1, order, "loadgen-abc-7@example.com", "sent", Some(1_030)),
                row(n2, order, "loadgen-abc-7@example.com", "queued", None),
                row(n3, other, "someone@example.com", "sent", Some(1_040)),
            ],
            prefix,
        );
        let trace = observed.traces[&order];
        assert_eq!(trace.created_us, Some(1_000_000));
        assert_eq!(trace.received_us, Some(1_010_000));
        assert_eq!(trace.sent_us, Some(1_030_000));
        assert_eq!(
            (trace.notifications, trace.this_run, trace.request),
            (2, true, Some(7))
        );
        assert!(!observed.traces[&other].this_run);
        assert_eq!(
            observed.notifications,
            HashMap::from([(n1, true), (n2, false)])
        );
    }

    /// The reads against a real PostgreSQL server (`TEST_DATABASE_URL`, as the services'
    /// tests use), on a schema like the services', with ids as `uuid` and as `text`.
    #[tokio::test]
    async fn postgres_reads_work_with_uuid_and_text_ids() {
        let Ok(admin_url) = std::env::var("TEST_DATABASE_URL") else {
            eprintln!("SKIPPED: TEST_DATABASE_URL is not set");
            return;
        };
        for id_type in ["uuid", "text"] {
            let server = crate::postgres::Server::connect(&admin_url).await.unwrap();
            let pair = server.create_pair().await.unwrap();
            let checked = check_postgres_reads(&pair, id_type).await;
            assert!(server.drop_all().await.is_empty());
            checked.unwrap();
        }
    }

    async fn check_postgres_reads(
        pair: &crate::postgres::DatabasePair,
        id_type: &str,
    ) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let mut orders = sqlx::PgConnection::connect(&pair.orders_url).await?;
        sqlx::raw_sql(&format!(
            "CREATE TABLE orders (id {id_type} PRIMARY KEY, created_at BIGINT NOT NULL)"
        ))
        .execute(&mut orders)
        .await?;
        let mut notifications = sqlx::PgConnection::connect(&pair.notifications_url).await?;
        sqlx::raw_sql(&format!(
            "CREATE TABLE received_webhooks (webhook_id TEXT PRIMARY KEY, received_at BIGINT NOT NULL); \
             CREATE TABLE notifications (id {id_type} PRIMARY KEY, webhook_id TEXT NOT NULL UNIQUE, \
               order_id {id_type} NOT NULL, recipient TEXT NOT NULL, status TEXT NOT NULL, \
               created_at BIGINT NOT NULL, sent_at BIGINT); \
             CREATE INDEX notifications_order ON notifications (order_id, status);"
        ))
        .execute(&mut notifications)
        .await?;
        let [sent_order, queued_order, n1, n2] = [(); 4].map(|()| Uuid::now_v7());
        sqlx::query(&format!(
            "INSERT INTO orders VALUES ($1::text::{id_type}, 5000), ($2::text::{id_type}, 5001)"
        ))
        .bind(sent_order.to_string())
        .bind(queued_order.to_string())
        .execute(&mut orders)
        .await?;
        sqlx::raw_sql(&format!(
            "INSERT INTO received_webhooks VALUES ('msg_1', 5010), ('msg_2', 5011); \
             INSERT INTO notifications VALUES \
               ('{n1}', 'msg_1', '{sent_order}', 'loadgen-t-0@example.com', 'sent', 5010, 5020), \
               ('{n2}', 'msg_2', '{queued_order}', 'loadgen-t-1@example.com', 'queued', 5011, NULL);"
        ))
        .execute(&mut notifications)
        .await?;

        let sink = Sink::services(&pair.orders_url, &pair.notifications_url).await?;
        let Sink::Services {
            notifications: db, ..
        } = &sink
        else {
            unreachable!()
        };
        let expected = if id_type == "uuid" {
            IdColumn::Uuid
        } else {
            IdColumn::Text
        };
        assert!(matches!(db, Db::Postgres { order_id, .. } if *order_id == expected));
        let mut pending = VecDeque::from([sent_order, queued_order]);
        sink.drop_sent(&mut pending, 2).await?;
        assert_eq!(pending, [queued_order]);
        let observed = sink.observe(4_000, "loadgen-t-").await?;
        assert_eq!(observed.traces[&sent_order].created_us, Some(5_000_000));
        assert_eq!(observed.traces[&sent_order].received_us, Some(5_010_000));
        assert_eq!(observed.traces[&sent_order].sent_us, Some(5_020_000));
        assert_eq!(observed.traces[&queued_order].sent_us, None);
        assert_eq!(
            observed.notifications,
            HashMap::from([(n1, true), (n2, false)])
        );
        // The session is read-only.
        let Sink::Services { orders: db, .. } = &sink else {
            unreachable!()
        };
        let Db::Postgres { pool, .. } = db else {
            unreachable!()
        };
        assert!(sqlx::query("CREATE TABLE t (x int)")
            .execute(pool)
            .await
            .is_err());
        sink.close().await;
        Ok(())
    }

    #[test]
    fn database_arguments_may_be_urls_or_paths() {
        let url = sqlite_read_only("sqlite:///tmp/x/orders.db").unwrap();
        assert_eq!(url.get_filename(), std::path::Path::new("/tmp/x/orders.db"));
        let path = sqlite_read_only("data/orders.db").unwrap();
        assert_eq!(path.get_filename(), std::path::Path::new("data/orders.db"));
    }
}
