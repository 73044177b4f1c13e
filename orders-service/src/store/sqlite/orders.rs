//! Orders and the transactional outbox.

use uuid::Uuid;
use webhook_common::{Currency, Money};

use super::idempotency;
use super::SqliteStore;
use crate::domain::{NewEvent, Order};
use crate::store::idempotency::{IdempotencyKey, KeyRow, KeyedOrder};
use crate::store::{
    now_ms, parse_uuid, ClaimOnCreate, Claimed, ClaimedRow, CreatedOrder, EndpointRow,
};

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: String,
    product_name: String,
    quantity: i64,
    unit_price: i64,
    total: i64,
    currency: String,
    customer_email: String,
    status: String,
    failure_reason: Option<String>,
    created_at: i64,
    event_id: Option<String>,
}

impl TryFrom<OrderRow> for Order {
    type Error = anyhow::Error;

    fn try_from(row: OrderRow) -> anyhow::Result<Order> {
        let currency: Currency = row.currency.parse()?;
        Ok(Order {
            id: parse_uuid(&row.id)?,
            product_name: row.product_name,
            quantity: u32::try_from(row.quantity)?,
            unit_price: Money::new(row.unit_price, currency),
            total: Money::new(row.total, currency),
            customer_email: row.customer_email,
            status: row.status.parse()?,
            failure_reason: row.failure_reason,
            created_at: row.created_at,
            event_id: row.event_id.as_deref().map(parse_uuid).transpose()?,
        })
    }
}

const ORDER_COLUMNS: &str = "id, product_name, quantity, unit_price, total, currency, \
     customer_email, status, failure_reason, created_at, \
     (SELECT e.id FROM events e WHERE e.order_id = orders.id ORDER BY e.seq LIMIT 1) AS event_id";

impl SqliteStore {
    /// [`crate::store::Store::create_order_claiming`] for a request with an `Idempotency-Key`: in the same
    /// write, first looks the key up; a live key answers [`KeyedOrder::Replayed`] (same
    /// request hash) or [`KeyedOrder::KeyReused`] (another) and writes nothing; otherwise the
    /// order is written and the key stored with it (see the `idempotency` module). Without a
    /// key this is [`crate::store::Store::create_order_claiming`].
    pub async fn create_order_keyed(
        &self,
        order: &Order,
        event: &NewEvent,
        claim: Option<ClaimOnCreate>,
        key: Option<&IdempotencyKey>,
    ) -> anyhow::Result<KeyedOrder> {
        let token = Uuid::new_v4();
        let written = (
            order.clone(),
            event.clone(),
            token.to_string(),
            key.cloned(),
        );
        // The clock is read when the write runs on the writer, not when it is queued: time
        // spent waiting for the writer must not eat the lease (nor the key's lifetime).
        let (inserted, now, lease_expires_at) = self
            .writer
            .write(move |conn| {
                let (order, event, token, key) = &written;
                let now = now_ms();
                let lease_expires_at = claim.map(|c| now.saturating_add(c.lease_ms));
                let claim = claim
                    .zip(lease_expires_at)
                    .map(|(c, until)| (c, until, token.as_str()));
                let inserted = insert_order(conn, order, event, now, claim, key.as_ref())?;
                Ok((inserted, now, lease_expires_at))
            })
            .await?;
        let (deliveries, claimed) = match inserted {
            Inserted::Order {
                deliveries,
                claimed,
            } => (deliveries, claimed),
            Inserted::KeyTaken(row) => {
                let key = key.ok_or_else(|| anyhow::anyhow!("a key row found without a key"))?;
                return row.outcome(key);
            }
        };
        let claimed = claimed
            .zip(lease_expires_at)
            .map(|(row, until)| Claimed::from_rows(token, until, now, vec![row]));
        Ok(KeyedOrder::Created(CreatedOrder {
            deliveries,
            claimed,
        }))
    }

    /// One order by id.
    pub async fn order(&self, id: Uuid) -> anyhow::Result<Option<Order>> {
        let row: Option<OrderRow> =
            sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.map(Order::try_from).transpose()
    }

    /// Up to `limit` orders, newest first, strictly older than the order `before` if given.
    pub async fn list_orders(
        &self,
        before: Option<Uuid>,
        limit: u32,
    ) -> anyhow::Result<Vec<Order>> {
        // UUIDv7 text sorts in creation order, so the id is both key and cursor.
        let rows: Vec<OrderRow> = match before {
            Some(before) => {
                sqlx::query_as(&format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE id < $1 ORDER BY id DESC LIMIT $2"
                ))
                .bind(before.to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(&format!(
                    "SELECT {ORDER_COLUMNS} FROM orders ORDER BY id DESC LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.into_iter().map(Order::try_from).collect()
    }

    /// The `webhook-id` of the event of each order, for checking deliveries end to end.
    pub async fn event_msg_ids_by_order(&self) -> anyhow::Result<Vec<(Uuid, String)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT order_id, msg_id FROM events WHERE order_id IS NOT NULL ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(order, msg)| Ok((parse_uuid(&order)?, msg)))
            .collect()
    }
}

/// An enabled endpoint as the order's transaction reads it.
struct SubscriberRow {
    endpoint: EndpointRow,
    event_types: String,
    /// Attempts in flight to it under live leases; only counted when claiming.
    busy: i64,
}

/// What [`insert_order`] did.
enum Inserted {
    /// It wrote the order: how many deliveries it queued and the claimed one.
    Order {
        deliveries: usize,
        claimed: Option<ClaimedRow>,
    },
    /// It wrote nothing: the idempotency key is live, with this row.
    KeyTaken(KeyRow),
}

/// The statements of [`SqliteStore::create_order_keyed`], run on the writer's thread: with a key,
/// its lookup first (a live key stops here); then the order, its event, the subscribed
/// endpoints, one delivery per endpoint, the first endpoint below its cap's one already
/// claimed when `claim` says so, and last the key's row. Check and insert run in one
/// transaction holding the write lock, so one key can never create two orders.
fn insert_order(
    conn: &rusqlite::Connection,
    order: &Order,
    event: &NewEvent,
    now: i64,
    claim: Option<(ClaimOnCreate, i64, &str)>,
    key: Option<&IdempotencyKey>,
) -> rusqlite::Result<Inserted> {
    if let Some(key) = key {
        if let Some(row) = idempotency::find_live(conn, &key.key, now)? {
            return Ok(Inserted::KeyTaken(row));
        }
    }
    conn.prepare_cached(
        "INSERT INTO orders (id, product_name, quantity, unit_price, total, currency, \
         customer_email, status, failure_reason, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(rusqlite::params![
        order.id.to_string(),
        order.product_name,
        i64::from(order.quantity),
        order.unit_price.minor_units,
        order.total.minor_units,
        order.total.currency.as_str(),
        order.customer_email,
        order.status.as_str(),
        order.failure_reason,
        order.created_at,
    ])?;
    let event_id = event.id.to_string();
    conn.prepare_cached(
        "INSERT INTO events (id, msg_id, event_type, order_id, payload, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(rusqlite::params![
        event_id,
        event.msg_id,
        event.event_type,
        event.order_id.map(|id| id.to_string()),
        event.payload,
        event.created_at,
    ])?;
    let subscribed: Vec<SubscriberRow> = conn
        .prepare_cached(
            "SELECT p.id, p.url, p.secret, p.previous_secret, p.previous_secret_expires_at, \
                    p.event_types, \
                    CASE WHEN ?2 THEN (SELECT COUNT(*) FROM deliveries d \
                        WHERE d.endpoint_id = p.id AND d.status = 'in_flight' \
                        AND d.lease_expires_at > ?1) ELSE 0 END AS busy \
             FROM endpoints p WHERE p.enabled = 1",
        )?
        .query_map(rusqlite::params![now, claim.is_some()], |row| {
            Ok(SubscriberRow {
                endpoint: EndpointRow::from_row(row)?,
                event_types: row.get(5)?,
                busy: row.get(6)?,
            })
        })?
        .filter(|row| {
            row.as_ref().map_or(true, |e| {
                serde_json::from_str::<Vec<String>>(&e.event_types)
                    .unwrap_or_default()
                    .iter()
                    .any(|t| t == &event.event_type)
            })
        })
        .collect::<rusqlite::Result<_>>()?;
    let claimed_index = claim.and_then(|(c, _, _)| {
        subscribed
            .iter()
            .position(|e| e.busy < i64::from(c.per_endpoint))
    });
    // The number of endpoints is capped by the API, which bounds the fan-out here.
    let mut insert = conn.prepare_cached(
        "INSERT INTO deliveries (id, event_id, endpoint_id, status, attempts, \
         next_attempt_at, created_at, updated_at, lease_expires_at, claim_token) \
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5, ?5, ?6, ?7) \
         ON CONFLICT (event_id, endpoint_id) DO NOTHING",
    )?;
    let mut inserted = 0;
    let mut claimed = None;
    for (i, subscriber) in subscribed.into_iter().enumerate() {
        let id = Uuid::now_v7().to_string();
        let lease = claim
            .filter(|_| Some(i) == claimed_index)
            .map(|(_, until, token)| (until, token));
        let written = insert.execute(rusqlite::params![
            id,
            event_id,
            subscriber.endpoint.id,
            if lease.is_some() {
                "in_flight"
            } else {
                "pending"
            },
            event.created_at,
            lease.map(|(until, _)| until),
            lease.map(|(_, token)| token),
        ])?;
        inserted += written;
        // A job is handed out only for a row that was written.
        if lease.is_some() && written == 1 {
            claimed = Some(ClaimedRow {
                id,
                attempts: 0,
                retry_base: 0,
                msg_id: event.msg_id.clone(),
                payload: event.payload.clone(),
                endpoint_id: subscriber.endpoint.id.clone(),
                endpoint: std::sync::Arc::new(subscriber.endpoint),
            });
        }
    }
    if let Some(key) = key {
        idempotency::remember(conn, key, &order.id.to_string(), now)?;
    }
    Ok(Inserted::Order {
        deliveries: inserted,
        claimed,
    })
}
