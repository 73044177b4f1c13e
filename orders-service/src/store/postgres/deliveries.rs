//! Deliveries on PostgreSQL: claiming due work under a lease, recording attempts and outcomes.
//!
//! Several replicas claim from one table at once. What keeps them apart:
//! - A claim locks the rows it takes (`FOR UPDATE SKIP LOCKED`) and marks them in flight
//!   under its own claim token and a lease; every later change of such a row (outcome,
//!   release) is guarded by that token and `status = 'in_flight'`, so a worker whose lease
//!   expired and whose row another worker claimed records nothing.
//! - The per-endpoint cap counts live leases, which two concurrent claims would both count
//!   before either commits. So claims of one endpoint take a transaction-scoped advisory lock
//!   on it ([`lock_endpoints`]) before counting: the second waits for the first's commit and
//!   then counts its leases. A claim locks every endpoint it may serve at once, in key
//!   order, so two claims never wait on each other in a cycle; an order's own claim only
//!   tries the lock (`pg_try_advisory_xact_lock`) and leaves its delivery pending if it is
//!   taken, so it never waits at all.
//! - Pausing follows the endpoint: a write that decides between a due time and the paused
//!   mark takes a share lock on the endpoint row first, so it waits for a concurrent
//!   disable (or enable) to commit and then sees it; disabling pauses every row committed
//!   before it. Locks are always taken endpoint row first, then delivery rows.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::domain::{
    Attempt, AttemptOutcome, Delivery, DeliveryJob, Recovered, RetryOutcome, UNLOADABLE,
};
use crate::store::{
    now_ms, AttemptRow, Claimed, ClaimedRow, EndpointRow, MAX_ERROR_CHARS, PAUSED_AT,
};

/// The first key of the advisory locks that serialise the claims of one endpoint (the second
/// is derived from the endpoint's id, [`endpoint_lock_key`]). Arbitrary, fixed: "ORDC".
const ENDPOINT_CLAIM_LOCK: i32 = 0x4f52_4443;

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    event_id: Uuid,
    endpoint_id: Uuid,
    status: String,
    attempts: i32,
    next_attempt_at: i64,
    last_status: Option<i32>,
    last_error: Option<String>,
    delivered_at: Option<i64>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = anyhow::Error;

    fn try_from(r: DeliveryRow) -> anyhow::Result<Delivery> {
        Ok(Delivery {
            id: r.id,
            event_id: r.event_id,
            endpoint_id: r.endpoint_id,
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

/// The second key of the advisory lock of `endpoint`'s claims: its id folded to 32 bits.
/// Two endpoints may share a key; they then merely take turns.
pub(super) fn endpoint_lock_key(endpoint: Uuid) -> i32 {
    let n = endpoint.as_u128();
    let folded = (n ^ (n >> 64)) as u64;
    ((folded ^ (folded >> 32)) as u32) as i32
}

/// Waits for the claim locks of `endpoints`, in key order (see the module docs); held until
/// the transaction ends.
async fn lock_endpoints(conn: &mut PgConnection, endpoints: &[Uuid]) -> Result<(), sqlx::Error> {
    let mut keys: Vec<i32> = endpoints.iter().copied().map(endpoint_lock_key).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(());
    }
    // A function scan yields the array's elements in order, so the locks are taken in order.
    sqlx::query("SELECT pg_advisory_xact_lock($1, k) FROM unnest($2::int4[]) AS k")
        .bind(ENDPOINT_CLAIM_LOCK)
        .bind(&keys)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the claim lock of `endpoint` if no other transaction holds it; held until the
/// transaction ends.
pub(super) async fn try_lock_endpoint(
    conn: &mut PgConnection,
    endpoint: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
        .bind(ENDPOINT_CLAIM_LOCK)
        .bind(endpoint_lock_key(endpoint))
        .fetch_one(conn)
        .await
}

/// Attempts of endpoint `$1` running at `$2` under live leases, whoever holds them: a probe
/// of the small `deliveries_endpoint_leased` index.
pub(super) const BUSY: &str = "SELECT COUNT(*) FROM deliveries WHERE endpoint_id = $1 \
     AND status = 'in_flight' AND lease_expires_at > $2";

/// Whether `endpoint` is enabled, taking a share lock on its row until the transaction ends,
/// so that a concurrent disable or enable commits before or after this transaction, not
/// across it. `None` if there is no such endpoint.
async fn endpoint_enabled_locked(
    conn: &mut PgConnection,
    endpoint: Uuid,
) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("SELECT enabled FROM endpoints WHERE id = $1 FOR SHARE")
        .bind(endpoint)
        .fetch_optional(conn)
        .await
}

/// The endpoint of delivery `delivery`, if there is such a delivery.
async fn endpoint_of(conn: &mut PgConnection, delivery: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT endpoint_id FROM deliveries WHERE id = $1")
        .bind(delivery)
        .fetch_optional(conn)
        .await
}

/// Pauses the pending deliveries of endpoint `$2` (just disabled): due at `$1`, the paused
/// mark. Rows in flight under a lease expired by `$3` are abandoned (their worker died) and
/// no claim takes them over while the endpoint is disabled, so they are paused too; rows
/// under a live lease are left to their worker, whose outcome pauses a retry itself.
const PAUSE: &str = "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, \
     lease_expires_at = NULL, claim_token = NULL \
     WHERE endpoint_id = $2 AND (status = 'pending' \
         OR (status = 'in_flight' AND (lease_expires_at IS NULL OR lease_expires_at <= $3)))";

/// Pauses the pending deliveries of `endpoint_id` (just disabled, its row locked by this
/// transaction), and those in flight under an expired lease.
pub(super) async fn pause_endpoint(
    conn: &mut PgConnection,
    endpoint_id: Uuid,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(PAUSE)
        .bind(PAUSED_AT)
        .bind(endpoint_id)
        .bind(now_ms())
        .execute(conn)
        .await?
        .rows_affected())
}

/// Makes the paused deliveries of `endpoint_id` (just enabled, its row locked by this
/// transaction) due at `now`; returns how many, so the caller wakes every replica's
/// dispatcher after its commit if there were any.
pub(super) async fn resume_endpoint(
    conn: &mut PgConnection,
    endpoint_id: Uuid,
    now: i64,
) -> Result<u64, sqlx::Error> {
    let resumed = sqlx::query(
        "UPDATE deliveries SET next_attempt_at = $1, updated_at = $1 \
         WHERE endpoint_id = $2 AND status = 'pending' AND next_attempt_at = $3",
    )
    .bind(now)
    .bind(endpoint_id)
    .bind(PAUSED_AT)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(resumed)
}

/// Pauses (due at `$2`, the paused mark) the deliveries of disabled endpoints left in flight
/// under a lease expired by `$1`: their worker died after the endpoint was disabled, and no
/// claim takes them over while it is, so without this they would stay in flight for good.
/// One probe of `deliveries_endpoint_leased` per disabled endpoint.
pub(super) const PAUSE_ABANDONED: &str =
    "UPDATE deliveries d SET status = 'pending', next_attempt_at = $2, \
     lease_expires_at = NULL, claim_token = NULL, updated_at = $1 \
     FROM endpoints p WHERE NOT p.enabled AND d.endpoint_id = p.id \
       AND d.status = 'in_flight' AND d.lease_expires_at <= $1";

/// Enabled endpoints with work due at `$1`, oldest due first, with what an attempt needs of
/// them: one probe of `deliveries_endpoint_due` per endpoint.
pub(super) const DUE_ENDPOINTS: &str =
    "SELECT p.id, p.url, p.secret, p.previous_secret, p.previous_secret_expires_at \
     FROM endpoints p CROSS JOIN LATERAL (SELECT d.due_at FROM deliveries d \
         WHERE d.endpoint_id = p.id AND d.due_at IS NOT NULL ORDER BY d.due_at LIMIT 1) n \
     WHERE p.enabled AND n.due_at <= $1 ORDER BY n.due_at";

/// Leases (`$1`, `$2`) the `$5` deliveries of endpoint `$4` that fell due first by `$3`,
/// skipping rows another transaction holds, and returns what an attempt needs of them. Reads
/// `deliveries_endpoint_due` in order and stops at the limit.
pub(super) const CLAIM: &str = "WITH picked AS ( \
         SELECT id FROM deliveries \
         WHERE endpoint_id = $4 AND due_at IS NOT NULL AND due_at <= $3 \
         ORDER BY due_at LIMIT $5 FOR UPDATE SKIP LOCKED) \
     UPDATE deliveries d SET status = 'in_flight', lease_expires_at = $1, claim_token = $2, \
         updated_at = $3 \
     FROM picked, events e WHERE d.id = picked.id AND e.id = d.event_id \
     RETURNING d.id, d.attempts, d.retry_base, e.msg_id, e.payload";

/// The earliest due time before `$1` (the paused mark) of any enabled endpoint.
pub(super) const NEXT_DUE: &str = "SELECT MIN(n.due_at) FROM endpoints p \
     CROSS JOIN LATERAL (SELECT d.due_at FROM deliveries d \
         WHERE d.endpoint_id = p.id AND d.due_at IS NOT NULL AND d.due_at < $1 \
         ORDER BY d.due_at LIMIT 1) n \
     WHERE p.enabled";

#[derive(sqlx::FromRow)]
struct DueEndpoint {
    id: Uuid,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<i64>,
}

impl From<DueEndpoint> for EndpointRow {
    fn from(e: DueEndpoint) -> Self {
        EndpointRow {
            id: e.id.to_string(),
            url: e.url,
            secret: e.secret,
            previous_secret: e.previous_secret,
            previous_secret_expires_at: e.previous_secret_expires_at,
        }
    }
}

/// The claim's statements, in one transaction. Costs O(enabled endpoints + rows claimed),
/// never O(backlog): every lookup reads an index in order and stops at its limit.
///
/// Fairness: endpoints are served oldest due work first, and each gets at most
/// `per_endpoint` deliveries in flight, counting live leases of every worker and replica.
async fn claim_rows(
    conn: &mut PgConnection,
    now: i64,
    lease_expires_at: i64,
    token: Uuid,
    limit: impl Fn() -> u32 + Send,
    per_endpoint: u32,
) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    let abandoned = sqlx::query(PAUSE_ABANDONED)
        .bind(now)
        .bind(PAUSED_AT)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if abandoned > 0 {
        tracing::warn!(
            deliveries = abandoned,
            "paused deliveries of disabled endpoints whose workers died mid-attempt"
        );
    }
    let due: Vec<DueEndpoint> = sqlx::query_as(DUE_ENDPOINTS)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = due.iter().map(|e| e.id).collect();
    lock_endpoints(conn, &ids).await?;
    // Read after the locks: slots freed while this claim waited for them are filled too.
    let mut left = i64::from(limit());
    let mut claimed = Vec::new();
    for endpoint in due {
        if left <= 0 {
            break;
        }
        // Counted after the lock, in a statement of its own: it sees every lease committed
        // by the claims this one waited for.
        let busy: i64 = sqlx::query_scalar(BUSY)
            .bind(endpoint.id)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
        let room = (i64::from(per_endpoint) - busy).min(left);
        if room <= 0 {
            continue;
        }
        let rows: Vec<(Uuid, i32, i32, String, Vec<u8>)> = sqlx::query_as(CLAIM)
            .bind(lease_expires_at)
            .bind(token)
            .bind(now)
            .bind(endpoint.id)
            .bind(room)
            .fetch_all(&mut *conn)
            .await?;
        left -= i64::try_from(rows.len()).unwrap_or(i64::MAX);
        let endpoint_id = endpoint.id.to_string();
        let endpoint = Arc::new(EndpointRow::from(endpoint));
        for (id, attempts, retry_base, msg_id, payload) in rows {
            claimed.push(ClaimedRow {
                id: id.to_string(),
                attempts: i64::from(attempts),
                retry_base: i64::from(retry_base),
                msg_id,
                payload,
                endpoint_id: endpoint_id.clone(),
                endpoint: endpoint.clone(),
            });
        }
    }
    Ok(claimed)
}

/// What [`finish_rows`] records.
struct FinishedJob {
    delivery_id: Uuid,
    claim_token: Uuid,
    endpoint_id: Uuid,
    attempt: Attempt,
    outcome: AttemptOutcome,
    error: Option<String>,
}

/// The statements of [`PgStore::finish_attempt`], in the caller's transaction.
async fn finish_rows(
    conn: &mut PgConnection,
    job: &FinishedJob,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let (status, next_at, delivered_at) = match job.outcome {
        AttemptOutcome::Delivered => ("delivered", now, Some(now)),
        AttemptOutcome::Retry { at } => ("pending", at, None),
        AttemptOutcome::Failed | AttemptOutcome::EndpointGone => ("failed", now, None),
    };
    // The endpoint row first (see the module docs): a retry of an endpoint disabled meanwhile
    // is paused with the endpoint's other rows; a 410 disables the endpoint, so its row is
    // locked for that update at once (two share locks upgrading would deadlock).
    let next_at = match job.outcome {
        AttemptOutcome::Retry { .. } => {
            match endpoint_enabled_locked(conn, job.endpoint_id).await? {
                Some(false) => PAUSED_AT,
                _ => next_at,
            }
        }
        AttemptOutcome::EndpointGone => {
            sqlx::query("SELECT 1 FROM endpoints WHERE id = $1 FOR NO KEY UPDATE")
                .bind(job.endpoint_id)
                .execute(&mut *conn)
                .await?;
            next_at
        }
        AttemptOutcome::Delivered | AttemptOutcome::Failed => next_at,
    };
    // Guarded by the claim token: a worker whose lease was lost (and whose delivery another
    // worker claimed) records nothing.
    let attempt = &job.attempt;
    let updated = sqlx::query(
        "UPDATE deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
         delivered_at = $3, last_status = $4, last_error = $5, lease_expires_at = NULL, \
         claim_token = NULL, updated_at = $6 \
         WHERE id = $7 AND claim_token = $8 AND status = 'in_flight'",
    )
    .bind(status)
    .bind(next_at)
    .bind(delivered_at)
    .bind(attempt.status_code.map(i32::from))
    .bind(&job.error)
    .bind(now)
    .bind(job.delivery_id)
    .bind(job.claim_token)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, \
         status_code, error_kind, response_body, outcome) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(job.delivery_id)
    .bind(i32::try_from(attempt.attempt).unwrap_or(i32::MAX))
    .bind(attempt.started_at)
    .bind(attempt.duration_ms)
    .bind(attempt.status_code.map(i32::from))
    .bind(&attempt.error_kind)
    .bind(&attempt.response_body)
    .bind(job.outcome.as_str())
    .execute(&mut *conn)
    .await?;
    if job.outcome == AttemptOutcome::EndpointGone {
        sqlx::query(
            "UPDATE endpoints SET enabled = false, disabled_reason = $1, updated_at = $2 \
             WHERE id = $3",
        )
        .bind("the endpoint answered 410 Gone")
        .bind(now)
        .bind(job.endpoint_id)
        .execute(&mut *conn)
        .await?;
        sqlx::query(PAUSE)
            .bind(PAUSED_AT)
            .bind(job.endpoint_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    Ok(true)
}

impl PgStore {
    /// [`crate::store::Store::claim_due_with`]: one transaction.
    pub async fn claim_due_with(
        &self,
        limit: impl Fn() -> u32 + Send + 'static,
        lease_ms: i64,
        per_endpoint: u32,
    ) -> anyhow::Result<Claimed> {
        let token = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        // The clock is read once the transaction has its connection: time spent waiting for
        // the pool must not eat the lease.
        let now = now_ms();
        let lease_expires_at = now.saturating_add(lease_ms);
        let rows = claim_rows(&mut tx, now, lease_expires_at, token, limit, per_endpoint).await?;
        tx.commit().await?;
        Ok(Claimed::from_rows(token, lease_expires_at, now, rows))
    }

    /// Records one attempt and its outcome in one transaction; `false` if the claim token no
    /// longer owns the delivery.
    pub async fn finish_attempt(
        &self,
        job: &DeliveryJob,
        attempt: &Attempt,
        outcome: &AttemptOutcome,
        error: Option<&str>,
    ) -> anyhow::Result<bool> {
        let finished = FinishedJob {
            delivery_id: job.delivery_id,
            claim_token: job.claim_token,
            endpoint_id: job.endpoint_id,
            attempt: attempt.clone(),
            outcome: outcome.clone(),
            error: error.map(|e| e.chars().take(MAX_ERROR_CHARS).collect()),
        };
        let mut tx = self.pool.begin().await?;
        let recorded = finish_rows(&mut tx, &finished, now_ms()).await?;
        tx.commit().await?;
        Ok(recorded)
    }

    /// Records a claimed delivery that could not be loaded as an attempt that sent nothing;
    /// see [`crate::store::Store::record_load_failure`].
    pub async fn record_load_failure(
        &self,
        delivery_id: Uuid,
        claim_token: Uuid,
        error: &str,
        next_delay: impl Fn(u32) -> Option<Duration> + Send + 'static,
    ) -> anyhow::Result<Option<AttemptOutcome>> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let owned: Option<(i32, i32, Uuid)> = sqlx::query_as(
            "SELECT attempts, retry_base, endpoint_id FROM deliveries \
             WHERE id = $1 AND claim_token = $2 AND status = 'in_flight'",
        )
        .bind(delivery_id)
        .bind(claim_token)
        .fetch_optional(&mut *tx)
        .await?;
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
                (
                    AttemptOutcome::Retry {
                        at: now.saturating_add(delay_ms),
                    },
                    why,
                )
            }
            None => (
                AttemptOutcome::Failed,
                format!("gave up after {number} attempts; last: {why}"),
            ),
        };
        let job = FinishedJob {
            delivery_id,
            claim_token,
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
        let recorded = finish_rows(&mut tx, &job, now).await?;
        tx.commit().await?;
        Ok(recorded.then_some(outcome))
    }

    /// Gives a claimed delivery back without counting an attempt, due again after
    /// `delay_ms`; due at once, it wakes every replica's dispatcher.
    pub async fn release(
        &self,
        delivery_id: Uuid,
        claim_token: Uuid,
        delay_ms: i64,
    ) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let Some(endpoint) = endpoint_of(&mut tx, delivery_id).await? else {
            return Ok(());
        };
        let now = now_ms();
        let due = match endpoint_enabled_locked(&mut tx, endpoint).await? {
            Some(false) => PAUSED_AT,
            _ => now.saturating_add(delay_ms.max(0)),
        };
        let released = sqlx::query(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, \
             lease_expires_at = NULL, claim_token = NULL, updated_at = $2 \
             WHERE id = $3 AND claim_token = $4 AND status = 'in_flight'",
        )
        .bind(due)
        .bind(now)
        .bind(delivery_id)
        .bind(claim_token)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if released > 0 && due <= now {
            self.wake_dispatchers();
        }
        Ok(())
    }

    /// When the earliest not-yet-due work falls due; `None` when there is none.
    pub async fn next_due_at(&self) -> anyhow::Result<Option<i64>> {
        Ok(sqlx::query_scalar(NEXT_DUE)
            .bind(PAUSED_AT)
            .fetch_one(&self.pool)
            .await?)
    }

    /// The deliveries of an order's events, oldest first.
    pub async fn deliveries_for_order(&self, order_id: Uuid) -> anyhow::Result<Vec<Delivery>> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id \
             WHERE e.order_id = $1 ORDER BY d.created_at, d.id"
        ))
        .bind(order_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Delivery::try_from).collect()
    }

    /// The first `limit` deliveries of one event, oldest first.
    pub async fn deliveries_for_event(
        &self,
        event_id: Uuid,
        limit: u32,
    ) -> anyhow::Result<Vec<Delivery>> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.event_id = $1 \
             ORDER BY d.created_at, d.id LIMIT $2"
        ))
        .bind(event_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Delivery::try_from).collect()
    }

    /// How many deliveries one event has.
    pub async fn count_deliveries_for_event(&self, event_id: Uuid) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n)?)
    }

    /// One delivery by id.
    pub async fn delivery(&self, id: Uuid) -> anyhow::Result<Option<Delivery>> {
        let row: Option<DeliveryRow> = sqlx::query_as(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Delivery::try_from).transpose()
    }

    /// Makes a delivery due now with a fresh retry schedule unless an attempt of it is
    /// running (see [`crate::store::Store::retry_delivery`]); wakes every replica's
    /// dispatcher.
    pub async fn retry_delivery(&self, id: Uuid) -> anyhow::Result<RetryOutcome> {
        let mut tx = self.pool.begin().await?;
        let Some(endpoint) = endpoint_of(&mut tx, id).await? else {
            return Ok(RetryOutcome::NotFound);
        };
        let enabled = endpoint_enabled_locked(&mut tx, endpoint).await?;
        let now = now_ms();
        let next = if enabled == Some(false) {
            PAUSED_AT
        } else {
            now
        };
        let returning = DELIVERY_COLUMNS.replace("d.", "");
        let row: Option<DeliveryRow> = sqlx::query_as(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $1, \
             retry_base = attempts, delivered_at = NULL, lease_expires_at = NULL, \
             claim_token = NULL, updated_at = $2 \
             WHERE id = $3 AND (status <> 'in_flight' OR lease_expires_at IS NULL \
                                OR lease_expires_at <= $2) \
             RETURNING {returning}"
        ))
        .bind(next)
        .bind(now)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            // Found above, so it is in flight under a live lease (or was deleted since).
            tx.commit().await?;
            return Ok(match self.delivery(id).await? {
                Some(_) => RetryOutcome::InFlight,
                None => RetryOutcome::NotFound,
            });
        };
        tx.commit().await?;
        if next != PAUSED_AT {
            self.wake_dispatchers();
        }
        Ok(RetryOutcome::Requeued(row.try_into()?))
    }

    /// Requeues up to `limit` failed deliveries of `endpoint_id` whose events were created in
    /// `[since, until)`, oldest event first; wakes every replica's dispatcher.
    pub async fn recover_endpoint(
        &self,
        endpoint_id: Uuid,
        since: i64,
        until: i64,
        limit: u32,
    ) -> anyhow::Result<Recovered> {
        let window = "FROM deliveries d JOIN events e ON e.id = d.event_id \
             WHERE d.endpoint_id = $1 AND d.status = 'failed' \
             AND e.created_at >= $2 AND e.created_at < $3";
        let mut tx = self.pool.begin().await?;
        let enabled = endpoint_enabled_locked(&mut tx, endpoint_id).await?;
        let now = now_ms();
        let next = if enabled == Some(false) {
            PAUSED_AT
        } else {
            now
        };
        // A row another recovery requeued meanwhile no longer matches `status = 'failed'`
        // once its lock is released, and is skipped.
        let requeued = sqlx::query(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $4, \
             retry_base = attempts, updated_at = $5 \
             WHERE id IN (SELECT d.id {window} ORDER BY e.created_at, e.id LIMIT $6) \
               AND status = 'failed'"
        ))
        .bind(endpoint_id)
        .bind(since)
        .bind(until)
        .bind(next)
        .bind(now)
        .bind(i64::from(limit))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let more: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 {window})"))
            .bind(endpoint_id)
            .bind(since)
            .bind(until)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        if requeued > 0 && next != PAUSED_AT {
            self.wake_dispatchers();
        }
        Ok(Recovered { requeued, more })
    }

    /// The last `limit` recorded attempts of a delivery, in order.
    pub async fn last_attempts(
        &self,
        delivery_id: Uuid,
        limit: u32,
    ) -> anyhow::Result<Vec<Attempt>> {
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT * FROM (SELECT id, attempt::bigint AS attempt, started_at, duration_ms, \
             status_code::bigint AS status_code, error_kind, response_body, outcome \
             FROM delivery_attempts WHERE delivery_id = $1 \
             ORDER BY attempt DESC, id DESC LIMIT $2) AS recent ORDER BY attempt, id",
        )
        .bind(delivery_id)
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
