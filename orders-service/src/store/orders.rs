//! Orders and the transactional outbox.

use uuid::Uuid;
use webhook_common::{Currency, Money};

use super::deliveries::{ClaimedRow, EndpointRow};
use super::{now_ms, parse_uuid, Claimed, Store};
use crate::domain::{NewEvent, Order};

/// What writing an order produced.
#[derive(Debug)]
pub struct CreatedOrder {
    /// How many deliveries were queued (one per subscribed, enabled endpoint).
    pub deliveries: usize,
    /// The delivery the order's own transaction claimed, when asked to ([`ClaimOnCreate`]).
    pub claimed: Option<Claimed>,
}

/// Asks the order's transaction to claim one of its deliveries, leased like any claim, so
/// the caller can attempt it at once instead of waiting for the dispatcher's next claim (one
/// commit, and its fsync, less between an order and its webhook). The per-endpoint cap holds:
/// an endpoint at its cap gets a plain pending delivery.
#[derive(Debug, Clone, Copy)]
pub struct ClaimOnCreate {
    /// How long the lease lasts.
    pub lease_ms: i64,
    /// Attempts in flight to one endpoint, at most.
    pub per_endpoint: u32,
}

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

impl Store {
    /// Writes the order, its event and one pending delivery per enabled endpoint subscribed
    /// to the event's type, in ONE transaction: either all of it is stored or none. The
    /// number of endpoints is capped by the API, which bounds the fan-out here.
    ///
    /// The write is group-committed with others (see the module docs); it returns once its
    /// batch is on disk.
    #[tracing::instrument(skip_all, fields(order_id = %order.id, event_type = %event.event_type))]
    pub async fn create_order_with_event(
        &self,
        order: &Order,
        event: &NewEvent,
    ) -> anyhow::Result<CreatedOrder> {
        self.create_order_claiming(order, event, None).await
    }

    /// [`Store::create_order_with_event`], claiming one delivery in the same transaction when
    /// `claim` asks for it (see [`ClaimOnCreate`]).
    pub async fn create_order_claiming(
        &self,
        order: &Order,
        event: &NewEvent,
        claim: Option<ClaimOnCreate>,
    ) -> anyhow::Result<CreatedOrder> {
        let token = Uuid::new_v4();
        let written = std::sync::Arc::new((order.clone(), event.clone(), token.to_string()));
        // The clock is read when the write runs on the writer, not when it is queued: time
        // spent waiting for the writer must not eat the lease.
        let (deliveries, claimed, now, lease_until) = self
            .writer
            .write(move |conn| {
                let written = written.clone();
                Box::pin(async move {
                    let (order, event, token) = &*written;
                    let now = now_ms();
                    let lease_until = claim.map(|c| now.saturating_add(c.lease_ms));
                    let claim = claim
                        .zip(lease_until)
                        .map(|(c, until)| (c, until, token.as_str()));
                    let (deliveries, claimed) =
                        insert_order(conn, order, event, now, claim).await?;
                    Ok((deliveries, claimed, now, lease_until))
                })
            })
            .await?;
        let claimed = claimed
            .zip(lease_until)
            .map(|(row, until)| Claimed::from_rows(token, until, now, vec![row]));
        Ok(CreatedOrder {
            deliveries,
            claimed,
        })
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
#[derive(sqlx::FromRow)]
struct SubscriberRow {
    id: String,
    event_types: String,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<i64>,
    /// Attempts in flight to it under live leases; only counted when claiming.
    busy: i64,
}

/// The statements of [`Store::create_order_claiming`], in two round trips to the database
/// (each statement would otherwise be one): the order, its event and the read of the
/// subscribed endpoints; then all its deliveries, the first endpoint below its cap's one
/// already claimed when `claim` says so. Returns how many deliveries it queued and the
/// claimed one.
async fn insert_order(
    conn: &mut sqlx::SqliteConnection,
    order: &Order,
    event: &NewEvent,
    now: i64,
    claim: Option<(ClaimOnCreate, i64, &str)>,
) -> Result<(usize, Option<ClaimedRow>), sqlx::Error> {
    let endpoints: Vec<SubscriberRow> = sqlx::query_as(
        "INSERT INTO orders (id, product_name, quantity, unit_price, total, currency, \
         customer_email, status, failure_reason, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10); \
         INSERT INTO events (id, msg_id, event_type, order_id, payload, created_at) \
         VALUES ($11, $12, $13, $14, $15, $16); \
         SELECT p.id, p.event_types, p.url, p.secret, p.previous_secret, \
                p.previous_secret_expires_at, \
                CASE WHEN $18 THEN (SELECT COUNT(*) FROM deliveries d \
                    WHERE d.endpoint_id = p.id AND d.status = 'in_flight' \
                    AND d.lease_expires_at > $17) ELSE 0 END AS busy \
         FROM endpoints p WHERE p.enabled = 1",
    )
    .bind(order.id.to_string())
    .bind(&order.product_name)
    .bind(i64::from(order.quantity))
    .bind(order.unit_price.minor_units)
    .bind(order.total.minor_units)
    .bind(order.total.currency.as_str())
    .bind(&order.customer_email)
    .bind(order.status.as_str())
    .bind(&order.failure_reason)
    .bind(order.created_at)
    .bind(event.id.to_string())
    .bind(&event.msg_id)
    .bind(&event.event_type)
    .bind(event.order_id.map(|id| id.to_string()))
    .bind(&event.payload)
    .bind(event.created_at)
    .bind(now)
    .bind(claim.is_some())
    .fetch_all(&mut *conn)
    .await?;
    let subscribed: Vec<SubscriberRow> = endpoints
        .into_iter()
        .filter(|e| {
            serde_json::from_str::<Vec<String>>(&e.event_types)
                .unwrap_or_default()
                .iter()
                .any(|t| t == &event.event_type)
        })
        .collect();
    if subscribed.is_empty() {
        return Ok((0, None));
    }
    let claimed_index = claim.and_then(|(c, _, _)| {
        subscribed
            .iter()
            .position(|e| e.busy < i64::from(c.per_endpoint))
    });
    // One multi-row INSERT; the number of endpoints is capped by the API (and SQLite binds
    // up to 32,766 values), so the statement stays bounded. Numbered placeholders only:
    // sqlx counts bare `?` from 1 and would collide with `$1`.
    let ids: Vec<String> = subscribed
        .iter()
        .map(|_| Uuid::now_v7().to_string())
        .collect();
    let rows: Vec<String> = (0..subscribed.len())
        .map(|i| {
            let (id, endpoint) = (5 + 2 * i, 6 + 2 * i);
            if Some(i) == claimed_index {
                format!("(${id}, $1, ${endpoint}, 'in_flight', 0, $2, $2, $2, $3, $4)")
            } else {
                format!("(${id}, $1, ${endpoint}, 'pending', 0, $2, $2, $2, NULL, NULL)")
            }
        })
        .collect();
    let sql = format!(
        "INSERT INTO deliveries (id, event_id, endpoint_id, status, attempts, \
         next_attempt_at, created_at, updated_at, lease_expires_at, claim_token) VALUES {} \
         ON CONFLICT (event_id, endpoint_id) DO NOTHING",
        rows.join(", ")
    );
    let (lease_until, token) =
        claim.map_or((None, None), |(_, until, token)| (Some(until), Some(token)));
    let mut insert = sqlx::query(&sql)
        .bind(event.id.to_string())
        .bind(event.created_at)
        .bind(lease_until)
        .bind(token);
    for (id, endpoint) in ids.iter().zip(&subscribed) {
        insert = insert.bind(id).bind(&endpoint.id);
    }
    let inserted = insert.execute(&mut *conn).await?.rows_affected();
    let inserted = usize::try_from(inserted).unwrap_or(usize::MAX);
    // A new event has no deliveries yet, so every row went in; were one skipped, it could be
    // the claimed one, and a job must never be handed out for a row that was not written.
    let claimed = claimed_index
        .filter(|_| inserted == subscribed.len())
        .map(|i| {
            let e = &subscribed[i];
            ClaimedRow {
                id: ids[i].clone(),
                attempts: 0,
                retry_base: 0,
                msg_id: event.msg_id.clone(),
                payload: event.payload.clone(),
                endpoint_id: e.id.clone(),
                endpoint: std::sync::Arc::new(EndpointRow {
                    id: e.id.clone(),
                    url: e.url.clone(),
                    secret: e.secret.clone(),
                    previous_secret: e.previous_secret.clone(),
                    previous_secret_expires_at: e.previous_secret_expires_at,
                }),
            }
        });
    Ok((inserted, claimed))
}
