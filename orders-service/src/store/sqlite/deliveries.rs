//! Deliveries: claiming due work under a lease, recording attempts and outcomes.

use std::time::Duration;

use rusqlite::OptionalExtension as _;
use uuid::Uuid;

use super::SqliteStore;
use crate::domain::{
    Attempt, AttemptOutcome, Delivery, DeliveryJob, Recovered, RetryOutcome, UNLOADABLE,
};
use crate::store::{
    now_ms, parse_uuid, AttemptRow, Claimed, ClaimedRow, EndpointRow, MAX_ERROR_CHARS, PAUSED_AT,
};

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    event_id: String,
    endpoint_id: String,
    status: String,
    attempts: i64,
    next_attempt_at: i64,
    last_status: Option<i64>,
    last_error: Option<String>,
    delivered_at: Option<i64>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = anyhow::Error;

    fn try_from(r: DeliveryRow) -> anyhow::Result<Delivery> {
        Ok(Delivery {
            id: parse_uuid(&r.id)?,
            event_id: parse_uuid(&r.event_id)?,
            endpoint_id: parse_uuid(&r.endpoint_id)?,
            status: r.status.parse()?,
            attempts: u32::try_from(r.attempts)?,
            next_attempt_at: r.next_attempt_at,
            last_status: r.last_status.map(u16::try_from).transpose()?,
            last_error: r.last_error,
            delivered_at: r.delivered_at,
        })
    }
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, d.endpoint_id, d.status, d.attempts, \
     d.next_attempt_at, d.last_status, d.last_error, d.delivered_at";

/// The due time to store for a delivery of the row being updated: `at`, or [`PAUSED_AT`]
/// while its endpoint is disabled. Both are placeholders, e.g. `due_or_paused("$1", "$9")`.
pub(super) fn due_or_paused(at: &str, paused: &str) -> String {
    format!(
        "CASE WHEN EXISTS (SELECT 1 FROM endpoints p WHERE p.id = deliveries.endpoint_id \
         AND p.enabled = 0) THEN {paused} ELSE {at} END"
    )
}

/// Pauses the pending deliveries of endpoint `?2` (just disabled): due at `?1`, the paused
/// mark. Rows in flight under a lease expired by `?3` are abandoned (their worker died) and
/// no claim takes them over while the endpoint is disabled, so they are paused too; rows
/// under a live lease are left to their worker, whose outcome pauses a retry itself.
const PAUSE: &str = "UPDATE deliveries SET status = 'pending', next_attempt_at = ?1, \
     lease_expires_at = NULL, claim_token = NULL \
     WHERE endpoint_id = ?2 AND (status = 'pending' \
         OR (status = 'in_flight' AND (lease_expires_at IS NULL OR lease_expires_at <= ?3)))";

/// Pauses the pending deliveries of `endpoint_id` (just disabled), and those in flight under
/// an expired lease.
pub(super) async fn pause_endpoint(
    conn: &mut sqlx::SqliteConnection,
    endpoint_id: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(PAUSE)
        .bind(PAUSED_AT)
        .bind(endpoint_id)
        .bind(now_ms())
        .execute(conn)
        .await?
        .rows_affected())
}

/// Makes the paused deliveries of `endpoint_id` (just enabled) due at `now`.
pub(super) async fn resume_endpoint(
    conn: &mut sqlx::SqliteConnection,
    endpoint_id: &str,
    now: i64,
) -> anyhow::Result<u64> {
    Ok(sqlx::query(
        "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1 \
         WHERE endpoint_id = $2 AND status = 'pending' AND next_attempt_at = $3",
    )
    .bind(now)
    .bind(endpoint_id)
    .bind(PAUSED_AT)
    .execute(conn)
    .await?
    .rows_affected())
}

impl EndpointRow {
    /// Reads the first five columns of `row`: id, url, secret, previous_secret,
    /// previous_secret_expires_at.
    pub(super) fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(EndpointRow {
            id: row.get(0)?,
            url: row.get(1)?,
            secret: row.get(2)?,
            previous_secret: row.get(3)?,
            previous_secret_expires_at: row.get(4)?,
        })
    }
}

/// Enabled endpoints with work due at `?1`, oldest due first, with what an attempt needs of
/// them: one index probe per endpoint.
const DUE_ENDPOINTS: &str = "SELECT id, url, secret, previous_secret, previous_secret_expires_at \
     FROM (SELECT p.*, (SELECT d.due_at FROM deliveries d \
         WHERE d.endpoint_id = p.id AND d.due_at IS NOT NULL \
         ORDER BY d.due_at LIMIT 1) AS next \
       FROM endpoints p WHERE p.enabled = 1) \
     WHERE next <= ?1 ORDER BY next";

/// The `webhook-id` and signed bytes of event `?1`.
const EVENT: &str = "SELECT msg_id, payload FROM events WHERE id = ?1";

/// Attempts of endpoint `?1` running at `?2` under live leases, whoever holds them.
const BUSY: &str = "SELECT COUNT(*) FROM deliveries WHERE endpoint_id = ?1 \
     AND status = 'in_flight' AND lease_expires_at > ?2";

/// Leases (`?1`, `?2`) the `?5` deliveries of endpoint `?4` that fell due first by `?3`.
const CLAIM: &str = "UPDATE deliveries SET status = 'in_flight', lease_expires_at = ?1, \
     claim_token = ?2, updated_at = ?3 \
     WHERE id IN (SELECT id FROM deliveries WHERE endpoint_id = ?4 AND due_at <= ?3 \
                  ORDER BY due_at LIMIT ?5) \
     RETURNING id, attempts, retry_base, event_id";

/// Pauses (due at `?2`, the paused mark) the deliveries of disabled endpoints left in flight
/// under a lease expired by `?1`: their worker died after the endpoint was disabled, and no
/// claim takes them over while it is, so without this they would stay in flight for good.
/// One index probe per disabled endpoint: `CROSS JOIN` keeps SQLite from walking every
/// endpoint's open work instead.
const PAUSE_ABANDONED: &str = "UPDATE deliveries SET status = 'pending', next_attempt_at = ?2, \
     lease_expires_at = NULL, claim_token = NULL, updated_at = ?1 \
     WHERE id IN (SELECT d.id FROM endpoints p CROSS JOIN deliveries d \
                  WHERE p.enabled = 0 AND d.endpoint_id = p.id AND d.due_at <= ?1 \
                    AND d.status = 'in_flight')";

/// The earliest due time before `?1` (the paused mark) of any enabled endpoint.
const NEXT_DUE: &str = "SELECT MIN(next) FROM (SELECT (SELECT d.due_at FROM deliveries d \
         WHERE d.endpoint_id = p.id AND d.due_at < ?1 \
         ORDER BY d.due_at LIMIT 1) AS next \
       FROM endpoints p WHERE p.enabled = 1)";

/// The claim's statements, run on the writer's thread. Costs O(enabled endpoints + rows
/// claimed), never O(backlog): every lookup reads an index in order and stops at its limit.
///
/// Fairness: endpoints are served oldest due work first, and each gets at most
/// `per_endpoint` deliveries in flight, counting live leases of every worker and replica, so
/// one slow receiver cannot hold every slot while the others wait.
///
/// Expired leases on disabled endpoints, which no claim takes over, are paused first
/// ([`PAUSE_ABANDONED`]).
fn claim_rows(
    conn: &rusqlite::Connection,
    now: i64,
    lease_expires_at: i64,
    token: &str,
    limit: u32,
    per_endpoint: u32,
) -> rusqlite::Result<Vec<ClaimedRow>> {
    let abandoned = conn
        .prepare_cached(PAUSE_ABANDONED)?
        .execute(rusqlite::params![now, PAUSED_AT])?;
    if abandoned > 0 {
        tracing::warn!(
            deliveries = abandoned,
            "paused deliveries of disabled endpoints whose workers died mid-attempt"
        );
    }
    let due: Vec<EndpointRow> = conn
        .prepare_cached(DUE_ENDPOINTS)?
        .query_map([now], EndpointRow::from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let mut left = i64::from(limit);
    let mut claimed = Vec::new();
    let mut busy = conn.prepare_cached(BUSY)?;
    let mut claim = conn.prepare_cached(CLAIM)?;
    let mut event = conn.prepare_cached(EVENT)?;
    for endpoint in due {
        if left <= 0 {
            break;
        }
        let busy: i64 = busy.query_row(rusqlite::params![endpoint.id, now], |r| r.get(0))?;
        let room = (i64::from(per_endpoint) - busy).min(left);
        if room <= 0 {
            continue;
        }
        let rows: Vec<(String, i64, i64, String)> = claim
            .query_map(
                rusqlite::params![lease_expires_at, token, now, endpoint.id, room],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?
            .collect::<rusqlite::Result<_>>()?;
        left -= i64::try_from(rows.len()).unwrap_or(i64::MAX);
        let endpoint = std::sync::Arc::new(endpoint);
        for (id, attempts, retry_base, event_id) in rows {
            // A foreign key guarantees the event.
            let (msg_id, payload) = event.query_row([&event_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            claimed.push(ClaimedRow {
                id,
                attempts,
                retry_base,
                msg_id,
                payload,
                endpoint_id: endpoint.id.clone(),
                endpoint: endpoint.clone(),
            });
        }
    }
    Ok(claimed)
}

/// The statements of [`SqliteStore::finish_attempt`], run on the writer's thread.
fn finish_rows(conn: &rusqlite::Connection, job: &FinishedJob, now: i64) -> rusqlite::Result<bool> {
    let (status, next_at, delivered_at) = match job.outcome {
        AttemptOutcome::Delivered => ("delivered", now, Some(now)),
        AttemptOutcome::Retry { at } => ("pending", at, None),
        AttemptOutcome::Failed | AttemptOutcome::EndpointGone => ("failed", now, None),
    };
    // Guarded by the claim token: a worker whose lease was lost (and whose delivery another
    // worker claimed) records nothing. A retry of an endpoint disabled meanwhile is paused
    // with the endpoint's other rows.
    let attempt = &job.attempt;
    let updated = conn
        .prepare_cached(
            "UPDATE deliveries SET status = ?1, attempts = attempts + 1, \
             next_attempt_at = CASE WHEN ?1 = 'pending' AND EXISTS (SELECT 1 FROM endpoints p \
                 WHERE p.id = deliveries.endpoint_id AND p.enabled = 0) THEN ?9 ELSE ?2 END, \
             delivered_at = ?3, last_status = ?4, last_error = ?5, lease_expires_at = NULL, \
             claim_token = NULL, updated_at = ?6 \
             WHERE id = ?7 AND claim_token = ?8 AND status = 'in_flight'",
        )?
        .execute(rusqlite::params![
            status,
            next_at,
            delivered_at,
            attempt.status_code.map(i64::from),
            job.error,
            now,
            job.delivery_id,
            job.claim_token,
            PAUSED_AT,
        ])?;
    if updated == 0 {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, \
         status_code, error_kind, response_body, outcome) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(rusqlite::params![
        job.delivery_id,
        i64::from(attempt.attempt),
        attempt.started_at,
        attempt.duration_ms,
        attempt.status_code.map(i64::from),
        attempt.error_kind,
        attempt.response_body,
        job.outcome.as_str(),
    ])?;
    if job.outcome == AttemptOutcome::EndpointGone {
        conn.prepare_cached(
            "UPDATE endpoints SET enabled = 0, disabled_reason = ?1, updated_at = ?2 WHERE id = ?3",
        )?
        .execute(rusqlite::params![
            "the endpoint answered 410 Gone",
            now,
            job.endpoint_id
        ])?;
        conn.prepare_cached(PAUSE)?
            .execute(rusqlite::params![PAUSED_AT, job.endpoint_id, now])?;
    }
    Ok(true)
}

/// The statements of [`SqliteStore::record_load_failure`], run on the writer's thread: reads the
/// attempt count under the claim token, then records the failure through [`finish_rows`] as
/// the next attempt. `None`, recording nothing, if the token no longer owns the delivery.
fn load_failure_rows(
    conn: &rusqlite::Connection,
    delivery_id: &str,
    claim_token: &str,
    error: &str,
    next_delay: &dyn Fn(u32) -> Option<Duration>,
    now: i64,
) -> rusqlite::Result<Option<AttemptOutcome>> {
    let owned: Option<(i64, i64, String)> = conn
        .prepare_cached(
            "SELECT attempts, retry_base, endpoint_id FROM deliveries \
             WHERE id = ?1 AND claim_token = ?2 AND status = 'in_flight'",
        )?
        .query_row(rusqlite::params![delivery_id, claim_token], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let Some((attempts, retry_base, endpoint_id)) = owned else {
        return Ok(None);
    };
    let number = u32::try_from(attempts.saturating_add(1)).unwrap_or(u32::MAX);
    // The schedule restarts after a manual retry or recover, as for attempts that were sent.
    let since_base = number.saturating_sub(u32::try_from(retry_base).unwrap_or(0));
    let why = format!("the delivery could not be loaded: {error}");
    let (outcome, last_error) = match next_delay(since_base) {
        Some(delay) => {
            let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            let at = now.saturating_add(delay_ms);
            (AttemptOutcome::Retry { at }, why)
        }
        None => (
            AttemptOutcome::Failed,
            format!("gave up after {number} attempts; last: {why}"),
        ),
    };
    let job = FinishedJob {
        delivery_id: delivery_id.to_owned(),
        claim_token: claim_token.to_owned(),
        endpoint_id,
        attempt: Attempt {
            attempt: number,
            started_at: now,
            duration_ms: 0,
            status_code: None,
            error_kind: Some(UNLOADABLE.to_owned()),
            response_body: None,
            outcome: outcome.as_str().to_owned(),
        },
        outcome: outcome.clone(),
        error: Some(last_error.chars().take(MAX_ERROR_CHARS).collect()),
    };
    Ok(finish_rows(conn, &job, now)?.then_some(outcome))
}

/// What [`finish_rows`] records, owned so it can travel to the writer thread.
struct FinishedJob {
    delivery_id: String,
    claim_token: String,
    endpoint_id: String,
    attempt: Attempt,
    outcome: AttemptOutcome,
    error: Option<String>,
}

impl SqliteStore {
    /// [`crate::store::Store::claim_due`] with a limit read when the claim runs on the writer, not when it
    /// is queued: a dispatcher passes its free slots, so slots freed while the claim waited
    /// for its batch are filled too.
    pub async fn claim_due_with(
        &self,
        limit: impl Fn() -> u32 + Send + 'static,
        lease_ms: i64,
        per_endpoint: u32,
    ) -> anyhow::Result<Claimed> {
        let token = Uuid::new_v4();
        let token_text = token.to_string();
        // The clock is read when the claim runs on the writer, not when it is queued: time
        // spent waiting for the writer must not eat the lease.
        let (rows, now, lease_expires_at) = self
            .writer
            .write(move |conn| {
                let now = now_ms();
                let lease_expires_at = now.saturating_add(lease_ms);
                let rows = claim_rows(
                    conn,
                    now,
                    lease_expires_at,
                    &token_text,
                    limit(),
                    per_endpoint,
                )?;
                Ok((rows, now, lease_expires_at))
            })
            .await?;
        Ok(Claimed::from_rows(token, lease_expires_at, now, rows))
    }

    /// Records one attempt and its outcome in one transaction. Returns `false`, recording
    /// nothing, if this worker no longer owns the delivery (its lease expired and another
    /// worker claimed it).
    pub async fn finish_attempt(
        &self,
        job: &DeliveryJob,
        attempt: &Attempt,
        outcome: &AttemptOutcome,
        error: Option<&str>,
    ) -> anyhow::Result<bool> {
        let finished = FinishedJob {
            delivery_id: job.delivery_id.to_string(),
            claim_token: job.claim_token.to_string(),
            endpoint_id: job.endpoint_id.to_string(),
            attempt: attempt.clone(),
            outcome: outcome.clone(),
            error: error.map(|e| e.chars().take(MAX_ERROR_CHARS).collect()),
        };
        Ok(self
            .writer
            .write(move |conn| finish_rows(conn, &finished, now_ms()))
            .await?)
    }

    /// Records that a claimed delivery could not be loaded (its job could not be built: a
    /// stored secret that does not parse, say) as an attempt that sent nothing (`error_kind`
    /// [`UNLOADABLE`]), so such a delivery spends its retry schedule like one whose receiver
    /// keeps failing, instead of being given back forever.
    ///
    /// `next_delay(n)` is the pause after the `n`-th attempt since the last manual retry or
    /// recover, `None` once the schedule is used up: the delivery is then dead-lettered
    /// (`failed`), with a `last_error` saying it could not be loaded and why, and can be
    /// retried by hand once the cause is fixed. A retry of a disabled endpoint's delivery is
    /// paused with its other rows.
    ///
    /// Returns what was recorded, or `None` (recording nothing) if `claim_token` no longer
    /// owns the delivery. One group-committed write.
    pub async fn record_load_failure(
        &self,
        delivery_id: Uuid,
        claim_token: Uuid,
        error: &str,
        next_delay: impl Fn(u32) -> Option<Duration> + Send + 'static,
    ) -> anyhow::Result<Option<AttemptOutcome>> {
        let (id, token, error) = (
            delivery_id.to_string(),
            claim_token.to_string(),
            error.to_owned(),
        );
        Ok(self
            .writer
            .write(move |conn| load_failure_rows(conn, &id, &token, &error, &next_delay, now_ms()))
            .await?)
    }

    /// Gives a claimed delivery back without counting an attempt (shutdown cut it short, or
    /// its lease no longer covered an attempt), due again after `delay_ms`.
    pub async fn release(
        &self,
        delivery_id: Uuid,
        claim_token: Uuid,
        delay_ms: i64,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        let due = now.saturating_add(delay_ms.max(0));
        let (id, token) = (delivery_id.to_string(), claim_token.to_string());
        self.writer
            .write(move |conn| {
                let next = due_or_paused("?4", "?5");
                conn.prepare_cached(&format!(
                    "UPDATE deliveries SET status = 'pending', next_attempt_at = {next}, \
                     lease_expires_at = NULL, claim_token = NULL, updated_at = ?1 \
                     WHERE id = ?2 AND claim_token = ?3 AND status = 'in_flight'"
                ))?
                .execute(rusqlite::params![now, id, token, due, PAUSED_AT])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// When the earliest not-yet-due work falls due (a retry or an expiring lease), in unix
    /// milliseconds; `None` when there is none.
    ///
    /// One index probe per enabled endpoint (`deliveries_endpoint_due`), whatever the
    /// backlog; paused rows lie beyond the range searched.
    pub async fn next_due_at(&self) -> anyhow::Result<Option<i64>> {
        let (next,): (Option<i64>,) = sqlx::query_as(NEXT_DUE)
            .bind(PAUSED_AT)
            .fetch_one(&self.pool)
            .await?;
        Ok(next)
    }

    /// The deliveries of an order's events, oldest first.
    pub async fn deliveries_for_order(&self, order_id: Uuid) -> anyhow::Result<Vec<Delivery>> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id \
             WHERE e.order_id = $1 ORDER BY d.created_at, d.id"
        ))
        .bind(order_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Delivery::try_from).collect()
    }

    /// The first `limit` deliveries of one event (one per subscribed endpoint), oldest first.
    pub async fn deliveries_for_event(
        &self,
        event_id: Uuid,
        limit: u32,
    ) -> anyhow::Result<Vec<Delivery>> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.event_id = $1 \
             ORDER BY d.created_at, d.id LIMIT $2"
        ))
        .bind(event_id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Delivery::try_from).collect()
    }

    /// How many deliveries one event has.
    pub async fn count_deliveries_for_event(&self, event_id: Uuid) -> anyhow::Result<u64> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM deliveries WHERE event_id = $1")
            .bind(event_id.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n)?)
    }

    /// One delivery by id.
    pub async fn delivery(&self, id: Uuid) -> anyhow::Result<Option<Delivery>> {
        let row: Option<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Delivery::try_from).transpose()
    }

    /// Makes a delivery due now with a fresh retry schedule, whatever its state (also after
    /// success or dead-lettering), except while an attempt is running: resetting a row under
    /// a live lease would let a second worker send it while the first one still does.
    ///
    /// A row in flight under an expired lease has no attempt running: its worker died (or
    /// gave up on it), as a claim would also conclude. It is requeued like any other; its
    /// old claim token no longer records anything. This is what frees a row abandoned on an
    /// endpoint disabled meanwhile, which no claim takes over.
    pub async fn retry_delivery(&self, id: Uuid) -> anyhow::Result<RetryOutcome> {
        let now = now_ms();
        let returning = DELIVERY_COLUMNS.replace("d.", "");
        let next = due_or_paused("$1", "$3");
        let row: Option<DeliveryRow> = sqlx::query_as(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = {next}, \
             retry_base = attempts, delivered_at = NULL, lease_expires_at = NULL, \
             claim_token = NULL, updated_at = $1 \
             WHERE id = $2 AND (status <> 'in_flight' OR lease_expires_at IS NULL \
                                OR lease_expires_at <= $1) \
             RETURNING {returning}"
        ))
        .bind(now)
        .bind(id.to_string())
        .bind(PAUSED_AT)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            return Ok(RetryOutcome::Requeued(row.try_into()?));
        }
        Ok(match self.delivery(id).await? {
            Some(_) => RetryOutcome::InFlight,
            None => RetryOutcome::NotFound,
        })
    }

    /// Requeues up to `limit` failed deliveries to `endpoint_id` whose events were created in
    /// `[since, until)` (unix milliseconds), oldest event first, each with a fresh retry
    /// schedule. Says whether more remain, so a caller can repeat until done.
    pub async fn recover_endpoint(
        &self,
        endpoint_id: Uuid,
        since: i64,
        until: i64,
        limit: u32,
    ) -> anyhow::Result<Recovered> {
        let now = now_ms();
        let window = "FROM deliveries d JOIN events e ON e.id = d.event_id \
             WHERE d.endpoint_id = $1 AND d.status = 'failed' \
             AND e.created_at >= $2 AND e.created_at < $3";
        let mut tx = self.pool.begin().await?;
        // Writing first takes SQLite's write lock at once, so the count below sees exactly
        // what the update left.
        let next = due_or_paused("$4", "$6");
        let requeued = sqlx::query(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = {next}, \
             retry_base = attempts, updated_at = $4 \
             WHERE id IN (SELECT d.id {window} ORDER BY e.seq LIMIT $5) AND status = 'failed'"
        ))
        .bind(endpoint_id.to_string())
        .bind(since)
        .bind(until)
        .bind(now)
        .bind(i64::from(limit))
        .bind(PAUSED_AT)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let (more,): (bool,) = sqlx::query_as(&format!("SELECT EXISTS (SELECT 1 {window})"))
            .bind(endpoint_id.to_string())
            .bind(since)
            .bind(until)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Recovered { requeued, more })
    }

    /// The last `limit` recorded attempts of a delivery, in order.
    pub async fn last_attempts(
        &self,
        delivery_id: Uuid,
        limit: u32,
    ) -> anyhow::Result<Vec<Attempt>> {
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT * FROM (SELECT id, attempt, started_at, duration_ms, status_code, error_kind, \
             response_body, outcome FROM delivery_attempts WHERE delivery_id = $1 \
             ORDER BY attempt DESC, id DESC LIMIT $2) AS recent ORDER BY attempt, id",
        )
        .bind(delivery_id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Attempt::try_from).collect()
    }

    /// How many deliveries are in each status, as `(status, count)`.
    pub async fn delivery_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT status, COUNT(*) FROM deliveries GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim path's statements must read indexes in order and stop at their limits: no
    /// full scan of `deliveries`, no sort of its rows. A plan regression here is what turns a
    /// claim from O(batch) into O(backlog), which no functional test would notice.
    #[tokio::test]
    async fn claim_queries_are_served_by_indexes_without_scans_or_sorts() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::connect(&format!("sqlite://{}", dir.path().join("p.db").display()))
                .await
                .unwrap();
        store.migrate().await.unwrap();
        // A few rows and fresh statistics, so the planner cannot pick a plan just because
        // the table is empty.
        sqlx::query("ANALYZE").execute(&store.pool).await.unwrap();
        for (name, sql) in [
            ("due endpoints", DUE_ENDPOINTS),
            ("busy", BUSY),
            ("claim", CLAIM),
            ("next due", NEXT_DUE),
            ("pause abandoned", PAUSE_ABANDONED),
        ] {
            let rows: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .fetch_all(&store.pool)
                    .await
                    .unwrap();
            let plan: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
            let text = plan.join("\n");
            assert!(
                !plan
                    .iter()
                    .any(|step| step.starts_with("SCAN d") || step.starts_with("SCAN deliveries")),
                "{name}: full scan of deliveries:\n{text}"
            );
            assert!(
                !text.contains("TEMP B-TREE FOR ORDER BY") || name == "due endpoints",
                "{name}: sorts deliveries:\n{text}"
            );
            assert!(
                text.contains("deliveries_endpoint_due") || name == "busy",
                "{name}: not served by deliveries_endpoint_due:\n{text}"
            );
            // Counting live leases reads index entries only, never the rows (migration 0006).
            assert!(
                name != "busy"
                    || text.contains("USING COVERING INDEX deliveries_endpoint (endpoint_id=? AND status=? AND lease_expires_at>?)"),
                "{name}: not counted from the deliveries_endpoint index alone:\n{text}"
            );
        }
        store.close().await;
    }

    /// Writing a delivery and changing its status check `status` in place: a `CHECK (status
    /// IN (...))` of more than two values made SQLite build a temporary table for every such
    /// statement (migration 0007). The rule itself still holds.
    #[tokio::test]
    async fn the_status_check_needs_no_temporary_table_and_still_refuses_unknown_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::connect(&format!("sqlite://{}", dir.path().join("c.db").display()))
                .await
                .unwrap();
        store.migrate().await.unwrap();
        for sql in [
            "INSERT INTO deliveries (id, event_id, endpoint_id, status, attempts, \
             next_attempt_at, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5, ?5)",
            "UPDATE deliveries SET status = ?1, updated_at = ?2 WHERE id = ?3",
        ] {
            let ops = test_support::migrations::sqlite_opcodes(&store.pool, sql).await;
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql}: builds a temporary table: {ops:?}"
            );
        }
        sqlx::query(
            "INSERT INTO endpoints (id, url, secret, event_types, created_at, updated_at) \
             VALUES ('e', 'http://127.0.0.1:9/', 'whsec_x', '[]', 0, 0)",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO events (id, msg_id, event_type, payload, created_at) \
             VALUES ('v', 'msg_v', 'order.paid', x'7b7d', 0)",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let insert = |status: &'static str| {
            sqlx::query(
                "INSERT INTO deliveries (id, event_id, endpoint_id, status, attempts, \
                 next_attempt_at, created_at, updated_at) VALUES (?1, 'v', 'e', ?1, 0, 0, 0, 0)",
            )
            .bind(status)
        };
        let err = insert("sent").execute(&store.pool).await.unwrap_err();
        assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
        for status in ["pending", "in_flight", "delivered", "failed"] {
            sqlx::query("DELETE FROM deliveries")
                .execute(&store.pool)
                .await
                .unwrap();
            insert(status).execute(&store.pool).await.unwrap();
        }
        store.close().await;
    }

    /// Migration 0007 rebuilds `deliveries`, which `delivery_attempts` references with ON
    /// DELETE CASCADE: a database written before it keeps every delivery (with its lease and
    /// due time) and every attempt, and its foreign keys are enforced again afterwards.
    #[tokio::test]
    async fn rebuilding_deliveries_keeps_every_delivery_and_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::connect(&format!("sqlite://{}", dir.path().join("m.db").display()))
                .await
                .unwrap();
        let before =
            test_support::migrations::migrations_before(&super::super::MIGRATOR, "checks in place");
        before.run(&store.pool).await.unwrap();
        for sql in [
            "INSERT INTO endpoints (id, url, secret, event_types, created_at, updated_at) \
             VALUES ('e', 'http://127.0.0.1:9/', 'whsec_x', '[]', 0, 0)",
            "INSERT INTO events (id, msg_id, event_type, payload, created_at) \
             VALUES ('v', 'msg_v', 'order.paid', x'7b7d', 0)",
            "INSERT INTO events (id, msg_id, event_type, payload, created_at) \
             VALUES ('w', 'msg_w', 'order.paid', x'7b7d', 0)",
            "INSERT INTO deliveries (id, event_id, endpoint_id, status, attempts, \
             next_attempt_at, lease_expires_at, claim_token, created_at, updated_at, retry_base) \
             VALUES ('d1', 'v', 'e', 'in_flight', 1, 5, 99, 'token', 0, 0, 1), \
                    ('d2', 'w', 'e', 'pending', 2, 7, NULL, NULL, 0, 0, 0)",
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, outcome) \
             VALUES ('d1', 1, 0, 3, 'retry'), ('d2', 1, 0, 3, 'retry'), ('d2', 2, 0, 3, 'retry')",
        ] {
            sqlx::query(sql).execute(&store.pool).await.unwrap();
        }
        store.migrate().await.unwrap();

        type Row = (String, String, Option<i64>, i64, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, status, due_at, retry_base, claim_token FROM deliveries ORDER BY id",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert_eq!(
            rows,
            [
                (
                    "d1".into(),
                    "in_flight".into(),
                    Some(99),
                    1,
                    Some("token".into())
                ),
                ("d2".into(), "pending".into(), Some(7), 0, None),
            ]
        );
        let attempts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delivery_attempts")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(attempts, 3);
        // Enforced again: an attempt of no delivery is refused, and removing the endpoint
        // still cascades to its deliveries and their attempts.
        let orphan = sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, \
             outcome) VALUES ('nope', 1, 0, 0, 'retry')",
        )
        .execute(&store.pool)
        .await;
        assert!(orphan.is_err(), "{orphan:?}");
        sqlx::query("DELETE FROM endpoints")
            .execute(&store.pool)
            .await
            .unwrap();
        let left: (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM deliveries), (SELECT COUNT(*) FROM delivery_attempts)",
        )
        .fetch_one(&store.pool)
        .await
        .unwrap();
        assert_eq!(left, (0, 0));
        store.close().await;
    }
}
