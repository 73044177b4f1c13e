//! Orders and the transactional outbox on PostgreSQL: the order, its event, its deliveries
//! (one of them claimed at once when asked) and its `Idempotency-Key` in one transaction.

use std::sync::Arc;

use sqlx::PgConnection;
use uuid::Uuid;
use webhook_common::{Currency, Money};

use super::deliveries::{try_lock_endpoint, BUSY};
use super::idempotency::{claim_key, live_key};
use super::PgStore;
use crate::domain::{NewEvent, Order};
use crate::store::idempotency::{IdempotencyKey, KeyedOrder};
use crate::store::{now_ms, ClaimOnCreate, Claimed, ClaimedRow, CreatedOrder, EndpointRow};

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    product_name: String,
    quantity: i32,
    unit_price: i64,
    total: i64,
    currency: String,
    customer_email: String,
    status: String,
    failure_reason: Option<String>,
    created_at: i64,
    event_id: Option<Uuid>,
}

impl TryFrom<OrderRow> for Order {
    type Error = anyhow::Error;

    fn try_from(row: OrderRow) -> anyhow::Result<Order> {
        let currency: Currency = row.currency.parse()?;
        Ok(Order {
            id: row.id,
            product_name: row.product_name,
            quantity: u32::try_from(row.quantity)?,
            unit_price: Money::new(row.unit_price, currency),
            total: Money::new(row.total, currency),
            customer_email: row.customer_email,
            status: row.status.parse()?,
            failure_reason: row.failure_reason,
            created_at: row.created_at,
            event_id: row.event_id,
        })
    }
}

const ORDER_COLUMNS: &str = "id, product_name, quantity, unit_price, total, currency, \
     customer_email, status, failure_reason, created_at, \
     (SELECT e.id FROM events e WHERE e.order_id = orders.id \
      ORDER BY e.created_at, e.id LIMIT 1) AS event_id";

/// An enabled endpoint subscribed to the event, as the order's transaction reads it.
#[derive(sqlx::FromRow)]
struct Subscriber {
    id: Uuid,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<i64>,
}

/// What [`insert_order`] did: how many deliveries it queued and the claimed one.
struct Inserted {
    deliveries: usize,
    claimed: Option<ClaimedRow>,
}

impl PgStore {
    /// Writes an order with its event and deliveries, or answers from its live
    /// `Idempotency-Key`; see [`crate::store::Store::create_order_keyed`].
    pub async fn create_order_keyed(
        &self,
        order: &Order,
        event: &NewEvent,
        claim: Option<ClaimOnCreate>,
        key: Option<&IdempotencyKey>,
    ) -> anyhow::Result<KeyedOrder> {
        let token = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        // The clock is read once the transaction has its connection: time spent waiting for
        // the pool must not eat the lease (nor the key's lifetime).
        let now = now_ms();
        if let Some(key) = key {
            // First, so that of two transactions with one key the second waits here, on the
            // primary key, for the first to end, and then finds its row.
            if !claim_key(&mut tx, key, &order.id, now).await? {
                let row = live_key(&mut tx, &key.key).await?;
                tx.rollback().await?;
                return match row {
                    Some(row) => row.outcome(key),
                    // Deleted between the two statements: only an expired row is, so the
                    // next try creates the order.
                    None => Err(anyhow::anyhow!(
                        "the Idempotency-Key's row vanished while it was read; try again"
                    )),
                };
            }
        }
        let lease_expires_at = claim.map(|c| now.saturating_add(c.lease_ms));
        let claim = claim
            .zip(lease_expires_at)
            .map(|(c, until)| (c, until, token));
        let inserted = insert_order(&mut tx, order, event, now, claim).await?;
        tx.commit().await?;
        if inserted.deliveries > usize::from(inserted.claimed.is_some()) {
            // Deliveries this request did not claim for itself: any replica may take them.
            self.wake_dispatchers();
        }
        let claimed = inserted
            .claimed
            .zip(lease_expires_at)
            .map(|(row, until)| Claimed::from_rows(token, until, now, vec![row]));
        Ok(KeyedOrder::Created(CreatedOrder {
            deliveries: inserted.deliveries,
            claimed,
        }))
    }

    /// One order by id.
    pub async fn order(&self, id: Uuid) -> anyhow::Result<Option<Order>> {
        let row: Option<OrderRow> =
            sqlx::query_as(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
                .bind(id)
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
        // UUIDv7s compare (bytewise) in creation order, so the id is both key and cursor.
        let rows: Vec<OrderRow> = match before {
            Some(before) => {
                sqlx::query_as(&format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE id < $1 ORDER BY id DESC LIMIT $2"
                ))
                .bind(before)
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
        Ok(sqlx::query_as(
            "SELECT order_id, msg_id FROM events WHERE order_id IS NOT NULL \
             ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// The order, its event (unnumbered: see the events module), the subscribed endpoints, one
/// delivery per endpoint, the first endpoint below its cap's one already claimed when
/// `claim` says so, and a wake-up for every replica when a delivery is left pending.
///
/// The subscribed endpoints' rows are share-locked, so a concurrent disable commits before
/// (and this order queues nothing for the endpoint) or after (and pauses what this order
/// queued). The claim only tries the endpoint's claim lock: if a claim of that endpoint is
/// running, the delivery is left pending for the dispatchers instead of waiting.
async fn insert_order(
    conn: &mut PgConnection,
    order: &Order,
    event: &NewEvent,
    now: i64,
    claim: Option<(ClaimOnCreate, i64, Uuid)>,
) -> Result<Inserted, sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (id, product_name, quantity, unit_price, total, currency, \
         customer_email, status, failure_reason, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(order.id)
    .bind(&order.product_name)
    .bind(i32::try_from(order.quantity).unwrap_or(i32::MAX))
    .bind(order.unit_price.minor_units)
    .bind(order.total.minor_units)
    .bind(order.total.currency.as_str())
    .bind(&order.customer_email)
    .bind(order.status.as_str())
    .bind(&order.failure_reason)
    .bind(order.created_at)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO events (id, msg_id, event_type, order_id, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event.id)
    .bind(&event.msg_id)
    .bind(&event.event_type)
    .bind(event.order_id)
    .bind(&event.payload)
    .bind(event.created_at)
    .execute(&mut *conn)
    .await?;
    // The number of endpoints is capped by the API, which bounds the fan-out here.
    let subscribed: Vec<Subscriber> = sqlx::query_as(
        "SELECT id, url, secret, previous_secret, previous_secret_expires_at FROM endpoints \
         WHERE enabled AND event_types @> jsonb_build_array($1::text) ORDER BY id FOR SHARE",
    )
    .bind(&event.event_type)
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed_endpoint = None;
    if let Some((c, _, _)) = claim {
        for subscriber in &subscribed {
            if !try_lock_endpoint(conn, subscriber.id).await? {
                continue;
            }
            let busy: i64 = sqlx::query_scalar(BUSY)
                .bind(subscriber.id)
                .bind(now)
                .fetch_one(&mut *conn)
                .await?;
            if busy < i64::from(c.per_endpoint) {
                claimed_endpoint = Some(subscriber.id);
                break;
            }
        }
    }
    let mut inserted = Inserted {
        deliveries: 0,
        claimed: None,
    };
    for subscriber in subscribed {
        let id = Uuid::now_v7();
        let lease = claim
            .filter(|_| claimed_endpoint == Some(subscriber.id))
            .map(|(_, until, token)| (until, token));
        let written = sqlx::query(
            "INSERT INTO deliveries (id, event_id, endpoint_id, status, attempts, \
             next_attempt_at, created_at, updated_at, lease_expires_at, claim_token) \
             VALUES ($1, $2, $3, $4, 0, $5, $5, $5, $6, $7) \
             ON CONFLICT (event_id, endpoint_id) DO NOTHING",
        )
        .bind(id)
        .bind(event.id)
        .bind(subscriber.id)
        .bind(if lease.is_some() {
            "in_flight"
        } else {
            "pending"
        })
        .bind(event.created_at)
        .bind(lease.map(|(until, _)| until))
        .bind(lease.map(|(_, token)| token))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        inserted.deliveries += usize::try_from(written).unwrap_or(0);
        // A job is handed out only for a row that was written.
        if lease.is_some() && written == 1 {
            let endpoint_id = subscriber.id.to_string();
            inserted.claimed = Some(ClaimedRow {
                id: id.to_string(),
                attempts: 0,
                retry_base: 0,
                msg_id: event.msg_id.clone(),
                payload: event.payload.clone(),
                endpoint_id: endpoint_id.clone(),
                endpoint: Arc::new(EndpointRow {
                    id: endpoint_id,
                    url: subscriber.url,
                    secret: subscriber.secret,
                    previous_secret: subscriber.previous_secret,
                    previous_secret_expires_at: subscriber.previous_secret_expires_at,
                }),
            });
        }
    }
    Ok(inserted)
}
