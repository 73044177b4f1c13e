//! Deliveries: claiming due work under a lease, recording attempts and outcomes.

use uuid::Uuid;
use webhook_common::Secret;

use super::{now_ms, parse_uuid, Store};
use crate::domain::{Attempt, AttemptOutcome, Delivery, DeliveryJob, Recovered, RetryOutcome};

/// Longest stored `last_error` text.
const MAX_ERROR_CHARS: usize = 500;

#[derive(sqlx::FromRow)]
struct JobRow {
    attempts: i64,
    retry_base: i64,
    msg_id: String,
    payload: Vec<u8>,
    endpoint_id: String,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<i64>,
}

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

#[derive(sqlx::FromRow)]
struct AttemptRow {
    attempt: i64,
    started_at: i64,
    duration_ms: i64,
    status_code: Option<i64>,
    error_kind: Option<String>,
    response_body: Option<String>,
    outcome: String,
}

/// `next_attempt_at` of a pending delivery whose endpoint is disabled: beyond every real due
/// time, so paused rows sit outside the due range of the `(status, next_attempt_at)` index
/// and no claim or next-due query walks past them. Enabling the endpoint makes them due.
pub const PAUSED_AT: i64 = i64::MAX;

/// Due work: pending and due, or in flight with an expired lease (its worker died), and only
/// for enabled endpoints (a backstop: pending rows of disabled endpoints are paused).
const DUE: &str = "((d.status = 'pending' AND d.next_attempt_at <= $1) \
     OR (d.status = 'in_flight' AND d.lease_expires_at <= $1)) \
     AND d.endpoint_id IN (SELECT id FROM endpoints WHERE enabled = 1)";

/// Attempts running now (live leases) to the endpoint of the row `d`.
const BUSY: &str = "(SELECT COUNT(*) FROM deliveries x WHERE x.endpoint_id = d.endpoint_id \
     AND x.status = 'in_flight' AND x.lease_expires_at > $1)";

/// The due time to store for a delivery of the row being updated: `at`, or [`PAUSED_AT`]
/// while its endpoint is disabled. Both are placeholders, e.g. `due_or_paused("$1", "$9")`.
pub(super) fn due_or_paused(at: &str, paused: &str) -> String {
    format!(
        "CASE WHEN EXISTS (SELECT 1 FROM endpoints p WHERE p.id = deliveries.endpoint_id \
         AND p.enabled = 0) THEN {paused} ELSE {at} END"
    )
}

/// Pauses the pending deliveries of `endpoint_id` (just disabled).
pub(super) async fn pause_endpoint(
    conn: &mut sqlx::SqliteConnection,
    endpoint_id: &str,
) -> anyhow::Result<u64> {
    Ok(sqlx::query(
        "UPDATE deliveries SET next_attempt_at = $1 WHERE endpoint_id = $2 AND status = 'pending'",
    )
    .bind(PAUSED_AT)
    .bind(endpoint_id)
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

impl Store {
    /// Claims up to `limit` due deliveries for `lease_ms`, returning their ids and the claim
    /// token that every later update must present. At most `per_endpoint` deliveries to one
    /// endpoint are in flight at once (counting live leases held by any worker or replica),
    /// so a slow receiver cannot take every slot. A delivery claimed by another worker in the
    /// meantime is simply not returned: the outer condition is re-checked by the UPDATE.
    ///
    /// One claim may return fewer rows than could be taken (its candidate window is the
    /// `limit` oldest due rows of endpoints below the cap); claim again until none come back.
    pub async fn claim_due(
        &self,
        limit: u32,
        lease_ms: i64,
        per_endpoint: u32,
    ) -> anyhow::Result<Vec<(Uuid, Uuid)>> {
        let now = now_ms();
        let token = Uuid::new_v4();
        let sql = format!(
            "UPDATE deliveries SET status = 'in_flight', lease_expires_at = $2, claim_token = $3, \
             updated_at = $1 \
             WHERE id IN ( \
               SELECT id FROM ( \
                 SELECT c.id, c.busy, ROW_NUMBER() OVER ( \
                   PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at, c.id) AS rn \
                 FROM (SELECT d.id, d.endpoint_id, d.next_attempt_at, {BUSY} AS busy \
                       FROM deliveries d WHERE {DUE} AND {BUSY} < $5 \
                       ORDER BY d.next_attempt_at LIMIT $4) c \
               ) r WHERE r.rn + r.busy <= $5) \
             AND ((status = 'pending' AND next_attempt_at <= $1) \
                  OR (status = 'in_flight' AND lease_expires_at <= $1)) \
             RETURNING id"
        );
        let ids: Vec<(String,)> = sqlx::query_as(&sql)
            .bind(now)
            .bind(now.saturating_add(lease_ms))
            .bind(token.to_string())
            .bind(i64::from(limit))
            .bind(i64::from(per_endpoint))
            .fetch_all(&self.pool)
            .await?;
        ids.into_iter()
            .map(|(id,)| Ok((parse_uuid(&id)?, token)))
            .collect()
    }

    /// Loads what an attempt of a claimed delivery needs; `None` if the claim was lost.
    pub async fn load_job(
        &self,
        delivery_id: Uuid,
        claim_token: Uuid,
    ) -> anyhow::Result<Option<DeliveryJob>> {
        let row: Option<JobRow> = sqlx::query_as(
            "SELECT d.attempts, d.retry_base, e.msg_id, e.payload, d.endpoint_id, p.url, p.secret, \
                    p.previous_secret, p.previous_secret_expires_at \
             FROM deliveries d JOIN events e ON e.id = d.event_id \
                               JOIN endpoints p ON p.id = d.endpoint_id \
             WHERE d.id = $1 AND d.claim_token = $2 AND d.status = 'in_flight'",
        )
        .bind(delivery_id.to_string())
        .bind(claim_token.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut secrets = vec![Secret::parse(&row.secret)?];
        if let (Some(previous), Some(expires)) =
            (row.previous_secret, row.previous_secret_expires_at)
        {
            if expires > now_ms() {
                secrets.push(Secret::parse(&previous)?);
            }
        }
        Ok(Some(DeliveryJob {
            delivery_id,
            claim_token,
            attempts: u32::try_from(row.attempts)?,
            retry_base: u32::try_from(row.retry_base)?,
            msg_id: row.msg_id,
            payload: row.payload.into(),
            endpoint_id: parse_uuid(&row.endpoint_id)?,
            url: row.url,
            secrets,
        }))
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
        let now = now_ms();
        let error: Option<String> = error.map(|e| e.chars().take(MAX_ERROR_CHARS).collect());
        let (status, next_at, delivered_at) = match outcome {
            AttemptOutcome::Delivered => ("delivered", now, Some(now)),
            AttemptOutcome::Retry { at } => ("pending", *at, None),
            AttemptOutcome::Failed | AttemptOutcome::EndpointGone => ("failed", now, None),
        };
        let mut tx = self.pool.begin().await?;
        // A retry of an endpoint disabled meanwhile is paused with the endpoint's other rows.
        let next = "CASE WHEN $1 = 'pending' AND EXISTS (SELECT 1 FROM endpoints p \
             WHERE p.id = deliveries.endpoint_id AND p.enabled = 0) THEN $9 ELSE $2 END";
        let updated = sqlx::query(&format!(
            "UPDATE deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = {next}, \
             delivered_at = $3, last_status = $4, last_error = $5, lease_expires_at = NULL, \
             claim_token = NULL, updated_at = $6 \
             WHERE id = $7 AND claim_token = $8 AND status = 'in_flight'"
        ))
        .bind(status)
        .bind(next_at)
        .bind(delivered_at)
        .bind(attempt.status_code.map(i64::from))
        .bind(&error)
        .bind(now)
        .bind(job.delivery_id.to_string())
        .bind(job.claim_token.to_string())
        .bind(PAUSED_AT)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, duration_ms, \
             status_code, error_kind, response_body, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(job.delivery_id.to_string())
        .bind(i64::from(attempt.attempt))
        .bind(attempt.started_at)
        .bind(attempt.duration_ms)
        .bind(attempt.status_code.map(i64::from))
        .bind(&attempt.error_kind)
        .bind(&attempt.response_body)
        .bind(outcome.as_str())
        .execute(&mut *tx)
        .await?;
        if *outcome == AttemptOutcome::EndpointGone {
            sqlx::query(
                "UPDATE endpoints SET enabled = 0, disabled_reason = $1, updated_at = $2 WHERE id = $3",
            )
            .bind("the endpoint answered 410 Gone")
            .bind(now)
            .bind(job.endpoint_id.to_string())
            .execute(&mut *tx)
            .await?;
            pause_endpoint(&mut tx, &job.endpoint_id.to_string()).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Gives a claimed delivery back without counting an attempt (shutdown cut it short, or
    /// it could not be loaded), due again after `delay_ms`.
    pub async fn release(
        &self,
        delivery_id: Uuid,
        claim_token: Uuid,
        delay_ms: i64,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        let next = due_or_paused("$4", "$5");
        sqlx::query(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = {next}, \
             lease_expires_at = NULL, claim_token = NULL, updated_at = $1 \
             WHERE id = $2 AND claim_token = $3 AND status = 'in_flight'"
        ))
        .bind(now)
        .bind(delivery_id.to_string())
        .bind(claim_token.to_string())
        .bind(now.saturating_add(delay_ms.max(0)))
        .bind(PAUSED_AT)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When the earliest not-yet-due work falls due (a retry or an expiring lease), in unix
    /// milliseconds; `None` when there is none.
    ///
    /// Two index-ordered lookups (`deliveries_due`, `deliveries_lease`) that stop at the
    /// first row of an enabled endpoint, instead of one MIN over every pending and in-flight
    /// row; paused rows lie beyond the range searched.
    pub async fn next_due_at(&self) -> anyhow::Result<Option<i64>> {
        let enabled = "d.endpoint_id IN (SELECT id FROM endpoints WHERE enabled = 1)";
        let pending: Option<(i64,)> = sqlx::query_as(&format!(
            "SELECT d.next_attempt_at FROM deliveries d \
             WHERE d.status = 'pending' AND d.next_attempt_at < $1 AND {enabled} \
             ORDER BY d.next_attempt_at LIMIT 1"
        ))
        .bind(PAUSED_AT)
        .fetch_optional(&self.pool)
        .await?;
        let lease: Option<(i64,)> = sqlx::query_as(&format!(
            "SELECT d.lease_expires_at FROM deliveries d \
             WHERE d.status = 'in_flight' AND d.lease_expires_at IS NOT NULL AND {enabled} \
             ORDER BY d.lease_expires_at LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match (pending, lease) {
            (Some((a,)), Some((b,))) => Some(a.min(b)),
            (a, b) => a.or(b).map(|(at,)| at),
        })
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
    /// success or dead-lettering), except while an attempt is running: resetting a claimed
    /// row would let a second worker send it while the first one still does.
    pub async fn retry_delivery(&self, id: Uuid) -> anyhow::Result<RetryOutcome> {
        let now = now_ms();
        let returning = DELIVERY_COLUMNS.replace("d.", "");
        let next = due_or_paused("$1", "$3");
        let row: Option<DeliveryRow> = sqlx::query_as(&format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = {next}, \
             retry_base = attempts, delivered_at = NULL, lease_expires_at = NULL, \
             claim_token = NULL, updated_at = $1 \
             WHERE id = $2 AND status <> 'in_flight' RETURNING {returning}"
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

    /// The recorded attempts of a delivery, in order.
    pub async fn attempts(&self, delivery_id: Uuid) -> anyhow::Result<Vec<Attempt>> {
        self.last_attempts(delivery_id, u32::MAX).await
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
        rows.into_iter()
            .map(|r| {
                Ok(Attempt {
                    attempt: u32::try_from(r.attempt)?,
                    started_at: r.started_at,
                    duration_ms: r.duration_ms,
                    status_code: r.status_code.map(u16::try_from).transpose()?,
                    error_kind: r.error_kind,
                    response_body: r.response_body,
                    outcome: r.outcome,
                })
            })
            .collect()
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
