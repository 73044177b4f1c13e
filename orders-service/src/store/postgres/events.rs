//! The event history on PostgreSQL: every event in one total order, for receivers that
//! missed some, paged with `seq > after`.
//!
//! A sequence value taken while inserting would not do: a transaction that took `seq` 5 can
//! commit after one that took 6, and a reader that already paged past 6 would never see 5.
//! (Nor would filtering by the oldest running transaction id: transaction ids are not taken
//! in `seq` order either.) So an event is written with `seq` NULL and numbered only once it
//! is committed, by the sequencer ([`PgStore::sequence_events`]):
//!
//! 1. It locks the one row of `event_sequencer` (`FOR UPDATE`), held until it commits, so
//!    runs on every replica take turns and each starts after the previous one committed.
//! 2. In a new statement, whose snapshot therefore holds every earlier run's numbers, it
//!    numbers the committed, unnumbered events in `(created_at, id)` order from the last
//!    number handed out, and stores the new last number.
//!
//! The numbered events any reader can see are then always a prefix of the final order:
//! numbers are only handed out above every number already visible, and an event that
//! commits late simply gets a later number. Readers run the sequencer before reading (cheap
//! when nothing is pending: one probe of an empty partial index), and a background task runs
//! it every second so the unnumbered backlog stays small.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::PgStore;
use crate::domain::EventRecord;

/// Most events one sequencer transaction numbers.
const SEQUENCE_BATCH: i64 = 1000;

/// How often the background task numbers what is pending.
pub const SEQUENCE_EVERY: Duration = Duration::from_secs(1);

/// Numbers up to `$2` committed, unnumbered events from `$1` + 1 on, in `(created_at, id)`
/// order (the partial index `events_unsequenced`), and returns their numbers.
const NUMBER: &str = "WITH batch AS ( \
         SELECT id, row_number() OVER (ORDER BY created_at, id) AS n \
         FROM (SELECT id, created_at FROM events WHERE seq IS NULL \
               ORDER BY created_at, id LIMIT $2) AS pending) \
     UPDATE events e SET seq = $1 + batch.n FROM batch WHERE e.id = batch.id \
     RETURNING e.seq";

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: Option<i64>,
    id: Uuid,
    msg_id: String,
    event_type: String,
    order_id: Option<Uuid>,
    payload: Vec<u8>,
    created_at: i64,
}

impl EventRow {
    fn into_record(self) -> Option<EventRecord> {
        Some(EventRecord {
            seq: self.seq?,
            id: self.id,
            msg_id: self.msg_id,
            event_type: self.event_type,
            order_id: self.order_id,
            payload: self.payload,
            created_at: self.created_at,
        })
    }
}

const EVENT_COLUMNS: &str = "seq, id, msg_id, event_type, order_id, payload, created_at";

impl PgStore {
    /// Numbers every event committed and not numbered yet (see the module docs), in
    /// transactions of at most [`SEQUENCE_BATCH`] events; returns how many it numbered.
    pub async fn sequence_events(&self) -> anyhow::Result<u64> {
        let mut total = 0_u64;
        loop {
            let pending: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE seq IS NULL)")
                    .fetch_one(&self.pool)
                    .await?;
            if !pending {
                return Ok(total);
            }
            let mut tx = self.pool.begin().await?;
            let last: i64 = sqlx::query_scalar("SELECT last_seq FROM event_sequencer FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
            let numbered: Vec<i64> = sqlx::query_scalar(NUMBER)
                .bind(last)
                .bind(SEQUENCE_BATCH)
                .fetch_all(&mut *tx)
                .await?;
            if let Some(max) = numbered.iter().max() {
                sqlx::query("UPDATE event_sequencer SET last_seq = $1")
                    .bind(max)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            let n = numbered.len();
            total += u64::try_from(n).unwrap_or(u64::MAX);
            if i64::try_from(n).unwrap_or(i64::MAX) < SEQUENCE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Numbers pending events every [`SEQUENCE_EVERY`] until `shutdown`.
    pub async fn run_event_sequencer(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(SEQUENCE_EVERY) => {}
            }
            if let Err(e) = self.sequence_events().await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "numbering new events for the history failed; trying again"
                );
            }
        }
    }

    /// Up to `limit` events with `seq > after`, oldest first, optionally of one type; every
    /// event committed before the call is numbered first.
    pub async fn list_events(
        &self,
        after: i64,
        event_type: Option<&str>,
        limit: u32,
    ) -> anyhow::Result<Vec<EventRecord>> {
        self.sequence_events().await?;
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
        Ok(rows.into_iter().filter_map(EventRow::into_record).collect())
    }

    /// One event by id, numbered first if it is not yet.
    pub async fn event(&self, id: Uuid) -> anyhow::Result<Option<EventRecord>> {
        let read = || async {
            sqlx::query_as::<_, EventRow>(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
        };
        let Some(row) = read().await? else {
            return Ok(None);
        };
        if row.seq.is_some() {
            return Ok(row.into_record());
        }
        self.sequence_events().await?;
        read()
            .await?
            .map(|row| {
                row.into_record()
                    .ok_or_else(|| anyhow::anyhow!("event {id} is still unnumbered"))
            })
            .transpose()
    }
}
