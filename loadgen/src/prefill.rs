//! The `history` scenario's pre-fill: many delivered orders written straight into both
//! databases with SQL, while the services are stopped (they have created the schema and the
//! configured endpoint on a first start).
//!
//! ALL the pre-fill SQL is in [`prefill`]: when a migration changes a table it writes, that
//! one function is what to update (checked against `orders-service/migrations/0001`–`0003`
//! and `notification-service/migrations/sqlite/0001`–`0004`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection as _, SqliteConnection};

/// Rows per table per transaction: large enough that commits cost nothing, small enough
/// that one transaction's WAL stays modest.
const CHUNK: u64 = 50_000;

/// The history spans this long, ending [`HISTORY_ENDS_BEFORE_NOW_MS`] ago: inside the
/// receiver's default 7-day dedup retention, so its cleanup does not start deleting the
/// pre-filled rows in the middle of a measurement.
const HISTORY_SPAN_MS: i64 = 5 * 86_400_000;
/// How long before now the history ends; loadgen's own rows come later, so they never mix.
const HISTORY_ENDS_BEFORE_NOW_MS: i64 = 3_600_000;

async fn open(path: &Path) -> anyhow::Result<SqliteConnection> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    SqliteConnection::connect_with(&options)
        .await
        .with_context(|| format!("opening {} for the pre-fill", path.display()))
}

/// Writes `count` delivered orders into both databases: per order, in the orders database an
/// order, its `order.paid` event, a delivered delivery to the configured endpoint and its one
/// successful attempt; in the notification database the received webhook, the order's state
/// and the sent confirmation email. Ids are fixed-pattern UUIDs that sort before any real
/// UUIDv7, and times spread over five days ending an hour ago, as if the shop had been running.
///
/// ===== THE PRE-FILL SQL: update this function when the schemas change. =====
pub async fn prefill(orders_db: &Path, notifications_db: &Path, count: u64) -> anyhow::Result<()> {
    let count_i64 = i64::try_from(count).context("pre-fill size")?;
    let step_ms = (HISTORY_SPAN_MS / count_i64.max(1)).max(1);
    let end_ms = crate::driver::unix_ms() - HISTORY_ENDS_BEFORE_NOW_MS;
    // Order i (1-based) was created at base_ms + i * step_ms.
    let base_ms = end_ms - count_i64 * step_ms;

    // Every statement numbers orders i = $1 ..= $2 and names them consistently:
    //   order    00000000-0000-7000-8000-<i as 12 hex digits>
    //   event    00000000-0000-7000-9000-<i>      webhook id  msg_0000000000007000a000<i>
    //   delivery 00000000-0000-7000-b000-<i>      notification 00000000-0000-7000-c000-<i>
    // $3 = base_ms, $4 = step_ms, $5 = the endpoint id.
    const SEQ: &str =
        "WITH RECURSIVE seq(i) AS (SELECT $1 UNION ALL SELECT i + 1 FROM seq WHERE i < $2), \
                       rows(i, t) AS (SELECT i, $3 + i * $4 FROM seq) ";
    let orders_sql = [
        "INSERT INTO orders (id, product_name, quantity, unit_price, total, currency, \
           customer_email, status, failure_reason, created_at) \
         SELECT printf('00000000-0000-7000-8000-%012x', i), 'Prefilled widget', 1, 2500, 2500, \
           'EUR', printf('history-%d@example.com', i), 'paid', NULL, t FROM rows",
        "INSERT INTO events (id, msg_id, event_type, order_id, payload, created_at) \
         SELECT printf('00000000-0000-7000-9000-%012x', i), \
           printf('msg_0000000000007000a000%012x', i), 'order.paid', \
           printf('00000000-0000-7000-8000-%012x', i), \
           CAST(printf('{\"type\":\"order.paid\",\"timestamp\":\"%s\",\"data\":{\"order_id\":\
             \"00000000-0000-7000-8000-%012x\",\"customer_email\":\"history-%d@example.com\",\
             \"product_name\":\"Prefilled widget\",\"quantity\":1,\"amount\":2500,\
             \"currency\":\"EUR\"}}', strftime('%Y-%m-%dT%H:%M:%SZ', t / 1000, 'unixepoch'), i, i) \
             AS BLOB), \
           t FROM rows",
        "INSERT INTO deliveries (id, event_id, endpoint_id, status, attempts, next_attempt_at, \
           lease_expires_at, claim_token, last_status, last_error, delivered_at, created_at, \
           updated_at, retry_base) \
         SELECT printf('00000000-0000-7000-b000-%012x', i), \
           printf('00000000-0000-7000-9000-%012x', i), $5, 'delivered', 1, t, NULL, NULL, 202, \
           NULL, t + 15, t, t + 15, 0 FROM rows",
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, \
           status_code, error_kind, response_body, outcome) \
         SELECT printf('00000000-0000-7000-b000-%012x', i), 1, t + 2, 12, 202, NULL, \
           printf('{\"status\":\"queued\",\"notification_id\":\"00000000-0000-7000-c000-%012x\"}', i), \
           'delivered' FROM rows",
    ];
    let notifications_sql = [
        "INSERT INTO received_webhooks (webhook_id, event_type, order_id, event_at, outcome, \
           received_at) \
         SELECT printf('msg_0000000000007000a000%012x', i), 'order.paid', \
           printf('00000000-0000-7000-8000-%012x', i), t, 'queued', t + 10 FROM rows",
        "INSERT INTO order_states (order_id, paid_at, last_failure_at, updated_at) \
         SELECT printf('00000000-0000-7000-8000-%012x', i), t, NULL, t + 10 FROM rows",
        "INSERT INTO notifications (id, webhook_id, event_type, order_id, recipient, subject, \
           body, status, attempts, next_attempt_at, claim_token, lease_expires_at, \
           last_error, created_at, sent_at) \
         SELECT printf('00000000-0000-7000-c000-%012x', i), \
           printf('msg_0000000000007000a000%012x', i), 'order.paid', \
           printf('00000000-0000-7000-8000-%012x', i), printf('history-%d@example.com', i), \
           'Order 00000000 confirmed: Prefilled widget', \
           printf('Hello,\n\nthank you for your order. We have received your payment and your \
order is confirmed.\n\nOrder:     00000000-0000-7000-8000-%012x\nProduct:   Prefilled widget\n\
Quantity:  1\nTotal paid: 25.00 EUR\n\nWe will let you know when it ships.\n\n-- \nThe Shop\n', i), \
           'sent', 1, t + 10, NULL, NULL, NULL, t + 10, t + 25 FROM rows",
    ];

    let mut orders = open(orders_db).await?;
    let endpoint: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM endpoints WHERE enabled = 1 ORDER BY config_key IS NULL, created_at LIMIT 1",
    )
    .fetch_optional(&mut orders)
    .await?;
    let (endpoint_id,) = endpoint.context(
        "the orders database has no enabled endpoint; orders-service should have created one \
         from NOTIFICATION_WEBHOOK_URL",
    )?;
    let mut notifications = open(notifications_db).await?;

    let orders_sql: Vec<String> = orders_sql.iter().map(|sql| format!("{SEQ}{sql}")).collect();
    let notifications_sql: Vec<String> = notifications_sql
        .iter()
        .map(|sql| format!("{SEQ}{sql}"))
        .collect();
    let mut lo = 1_u64;
    while lo <= count {
        let hi = (lo + CHUNK - 1).min(count);
        let (lo_i64, hi_i64) = (i64::try_from(lo)?, i64::try_from(hi)?);
        let mut tx = orders.begin().await?;
        for sql in &orders_sql {
            let mut query = sqlx::query(sql)
                .bind(lo_i64)
                .bind(hi_i64)
                .bind(base_ms)
                .bind(step_ms);
            if sql.contains("$5") {
                query = query.bind(&endpoint_id);
            }
            query
                .execute(&mut *tx)
                .await
                .with_context(|| format!("pre-filling the orders database: {sql}"))?;
        }
        tx.commit().await?;
        let mut tx = notifications.begin().await?;
        for sql in &notifications_sql {
            sqlx::query(sql)
                .bind(lo_i64)
                .bind(hi_i64)
                .bind(base_ms)
                .bind(step_ms)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("pre-filling the notification database: {sql}"))?;
        }
        tx.commit().await?;
        crate::report::progress(&format!(
            "pre-filled {} of {} orders",
            crate::report::fmt_count(hi),
            crate::report::fmt_count(count)
        ));
        lo = hi + 1;
    }

    // Leave no large WAL behind for the services to replay; they start from a checkpointed file.
    for connection in [&mut orders, &mut notifications] {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *connection)
            .await?;
    }
    orders.close().await?;
    notifications.close().await?;
    Ok(())
}
