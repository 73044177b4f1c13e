//! The event history: every event in commit order, for receivers that missed some.

use uuid::Uuid;

use super::SqliteStore;
use crate::domain::EventRecord;
use crate::store::parse_uuid;

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    id: String,
    msg_id: String,
    event_type: String,
    order_id: Option<String>,
    payload: Vec<u8>,
    created_at: i64,
}

impl TryFrom<EventRow> for EventRecord {
    type Error = anyhow::Error;

    fn try_from(r: EventRow) -> anyhow::Result<EventRecord> {
        Ok(EventRecord {
            seq: r.seq,
            id: parse_uuid(&r.id)?,
            msg_id: r.msg_id,
            event_type: r.event_type,
            order_id: r.order_id.as_deref().map(parse_uuid).transpose()?,
            payload: r.payload,
            created_at: r.created_at,
        })
    }
}

const EVENT_COLUMNS: &str = "seq, id, msg_id, event_type, order_id, payload, created_at";

impl SqliteStore {
    /// Up to `limit` events with `seq > after`, oldest first, optionally of one type.
    ///
    /// Paging by `seq` has no gaps or repeats even while events are being inserted, because
    /// on SQLite writers are serialised: `seq` is assigned inside the single write
    /// transaction, so a larger `seq` never commits before a smaller one and every reader's
    /// snapshot holds a gap-free prefix. (PostgreSQL needs more: see its events module.)
    pub async fn list_events(
        &self,
        after: i64,
        event_type: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<EventRecord>> {
        let rows: Vec<EventRow> = match event_type {
            Some(t) => {
                sqlx::query_as(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 AND event_type = $2 \
                     ORDER BY seq LIMIT $3"
                ))
                .bind(after)
                .bind(t)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query_as(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
                ))
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.into_iter().map(EventRecord::try_from).collect()
    }

    /// One event by id.
    pub async fn event(&self, id: Uuid) -> anyhow::Result<Option<EventRecord>> {
        let row: Option<EventRow> =
            sqlx::query_as(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        row.map(EventRecord::try_from).transpose()
    }
}
