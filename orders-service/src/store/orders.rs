//! Orders and the transactional outbox.

use uuid::Uuid;
use webhook_common::{Currency, Money};

use super::{parse_uuid, Store};
use crate::domain::{NewEvent, Order};

/// What writing an order produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreatedOrder {
    /// How many deliveries were queued (one per subscribed, enabled endpoint).
    pub deliveries: usize,
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
        let order = order.clone();
        let event = event.clone();
        let deliveries = self
            .writer
            .write(move |conn| Box::pin(async move { insert_order(conn, &order, &event).await }))
            .await?;
        Ok(CreatedOrder { deliveries })
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

/// The statements of [`Store::create_order_with_event`]; returns how many deliveries it queued.
async fn insert_order(
    conn: &mut sqlx::SqliteConnection,
    order: &Order,
    event: &NewEvent,
) -> Result<usize, sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (id, product_name, quantity, unit_price, total, currency, \
         customer_email, status, failure_reason, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
    .execute(&mut *conn)
    .await?;

    sqlx::query(
        "INSERT INTO events (id, msg_id, event_type, order_id, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event.id.to_string())
    .bind(&event.msg_id)
    .bind(&event.event_type)
    .bind(event.order_id.map(|id| id.to_string()))
    .bind(&event.payload)
    .bind(event.created_at)
    .execute(&mut *conn)
    .await?;

    let endpoints: Vec<(String, String)> =
        sqlx::query_as("SELECT id, event_types FROM endpoints WHERE enabled = 1")
            .fetch_all(&mut *conn)
            .await?;
    let mut deliveries = 0;
    for (endpoint_id, types) in endpoints {
        let types: Vec<String> = serde_json::from_str(&types).unwrap_or_default();
        if !types.iter().any(|t| t == &event.event_type) {
            continue;
        }
        let inserted = sqlx::query(
            "INSERT INTO deliveries (id, event_id, endpoint_id, status, attempts, \
             next_attempt_at, created_at, updated_at) \
             VALUES ($1, $2, $3, 'pending', 0, $4, $4, $4) \
             ON CONFLICT (event_id, endpoint_id) DO NOTHING",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(event.id.to_string())
        .bind(endpoint_id)
        .bind(event.created_at)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        deliveries += usize::try_from(inserted).unwrap_or(0);
    }
    Ok(deliveries)
}
