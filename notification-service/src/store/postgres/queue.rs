//! The email job queue on PostgreSQL: claiming due jobs under leases with `FOR UPDATE SKIP
//! LOCKED` (replicas never wait for each other's candidates and never claim one job twice),
//! renewing the leases a live worker holds, and recording what became of each job.
//!
//! A claim costs O(batch), never O(backlog): [`CANDIDATES`] reads the partial index on
//! `due_at` in due order and stops at the limit; only those candidates are settled
//! (cancelled, given up) or leased ([`CLAIM`]).
//!
//! The ordering rule across replicas: a claim or renewal of a failure notice must not
//! interleave with an intake of the notice's order (which reads the order's leases and
//! decides when its confirmation may go). Both only *try* the order's advisory lock and pass
//! the notice over while an intake holds it, so they never wait on one; and they read the
//! order's confirmation in a second statement, whose snapshot is taken after the lock is
//! held, so an intake that committed just before is seen.

use std::time::Duration;

use sqlx::{PgConnection, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{order_lock_key, PgStore};
use crate::domain::{duration_ms, now_ms, MAX_SETTLED_PER_CLAIM};
use crate::store::rows::ClaimedRow;
use crate::store::{from_ms, to_ms, ClaimedJob, RenewedLease};

/// The first `$2` due jobs (`due_at <= $1`, now), oldest due first, read from
/// `notifications_due_at` in index order, locked, skipping those another transaction has
/// locked (another replica's claim, an outcome being written). A failure notice is taken
/// only with its order's advisory lock, tried without waiting: while an intake of its order
/// runs, it is passed over (due as before, the next claim takes it).
const CANDIDATES: &str = concat!(
    "SELECT id::text FROM notifications
     WHERE due_at <= $1
       AND (event_type <> 'order.payment_failed'
            OR pg_try_advisory_xact_lock(",
    order_lock_key!(),
    "))
     ORDER BY due_at
     LIMIT $2
     FOR UPDATE SKIP LOCKED"
);

/// The candidates `$1` (locked by [`CANDIDATES`] in this transaction), each given its
/// verdict and updated by it, as the SQLite claim does:
/// - `cancelled`: a failure notice of an order that has a confirmation (any confirmation,
///   whatever its status: once it exists no failure notice may follow, rule 1 of `decide`);
/// - `failed`: a job that already used `$2` (max) attempts: its worker died during every
///   one of them, so no outcome was ever recorded;
/// - `queued`: leased under claim token `$3` until `$4` (its `lease_expires_at`), with one more attempt counted.
///
/// Returns every candidate with its new status; the leased ones are the jobs.
/// `MATERIALIZED`: each verdict is computed once per candidate, not once per `SET` clause
/// that reads it.
const CLAIM: &str = "WITH candidates AS MATERIALIZED (
         SELECT id,
                CASE WHEN event_type = 'order.payment_failed'
                          AND EXISTS (SELECT 1 FROM notifications AS paid
                                      WHERE paid.order_id = candidate.order_id
                                        AND paid.event_type = 'order.paid')
                     THEN 'cancelled'
                     WHEN attempts >= $2 THEN 'failed'
                     ELSE 'queued'
                END AS verdict
         FROM notifications AS candidate
         WHERE id = ANY($1::uuid[]))
     UPDATE notifications
     SET status = candidates.verdict,
         claim_token = CASE WHEN candidates.verdict = 'queued' THEN $3::uuid END,
         lease_expires_at = CASE WHEN candidates.verdict = 'queued' THEN $4::bigint END,
         attempts = CASE WHEN candidates.verdict = 'queued' THEN attempts + 1 ELSE attempts END,
         last_error = CASE candidates.verdict
             WHEN 'cancelled' THEN 'superseded by order.paid'
             WHEN 'failed' THEN 'gave up after ' || attempts || ' attempts; the last one never '
                                || 'reported back (the worker stopped while sending)'
             ELSE last_error
         END
     FROM candidates
     WHERE notifications.id = candidates.id
     RETURNING notifications.id::text AS id, notifications.status, notifications.attempts,
               notifications.recipient, notifications.subject, notifications.body,
               notifications.trace_id";

/// When the next queued job becomes claimable: the first entry of `notifications_due_at`.
const NEXT_DUE: &str = "SELECT due_at FROM notifications
     WHERE due_at IS NOT NULL
     ORDER BY due_at
     LIMIT 1";

/// Of the jobs `$2` held under claim token `$1`, those whose lease may be extended now: all
/// but a failure notice whose order's advisory lock an intake holds (tried, never waited
/// for; that lease is left as it is this round).
const RENEWABLE: &str = concat!(
    "SELECT id::text FROM notifications
     WHERE claim_token = $1::uuid AND status = 'queued' AND id = ANY($2::uuid[])
       AND (event_type <> 'order.payment_failed'
            OR pg_try_advisory_xact_lock(",
    order_lock_key!(),
    "))"
);

/// Extends to `$1` the leases of the jobs `$3` under claim token `$2`, except a failure
/// notice of an order that has a confirmation: that confirmation waits for the notice's
/// lease as it stood when the confirmation was queued (see `decide`), so it must not grow.
/// `GREATEST` so a renewal never shortens a lease.
const RENEW: &str = "UPDATE notifications
     SET lease_expires_at = GREATEST(lease_expires_at, $1)
     WHERE claim_token = $2::uuid AND status = 'queued' AND id = ANY($3::uuid[])
       AND NOT (event_type = 'order.payment_failed'
                AND EXISTS (SELECT 1 FROM notifications AS paid
                            WHERE paid.order_id = notifications.order_id
                              AND paid.event_type = 'order.paid'))
     RETURNING id::text, lease_expires_at";

/// An outcome of a claimed job: `SET` clause `$set`, guarded by its lease (`$1` id, `$2`
/// claim token): no row changes if another worker owns the job now. Its own parameters
/// start at `$3`.
macro_rules! settle_sql {
    ($set:literal) => {
        concat!(
            "UPDATE notifications SET ",
            $set,
            " WHERE id = $1::uuid AND claim_token = $2::uuid AND status = 'queued'"
        )
    };
}

/// Sent at `$3`.
const SENT: &str = settle_sql!(
    "status = 'sent', sent_at = $3, claim_token = NULL, lease_expires_at = NULL, last_error = NULL"
);
/// Another attempt at `$3`; this one failed with `$4`.
const RETRY: &str = settle_sql!(
    "next_attempt_at = $3, last_error = $4, claim_token = NULL, lease_expires_at = NULL"
);
/// Given up with `$3`.
const FAILED: &str =
    settle_sql!("status = 'failed', last_error = $3, claim_token = NULL, lease_expires_at = NULL");
/// Handed back unsent, the attempt refunded.
const RELEASE: &str =
    settle_sql!("claim_token = NULL, lease_expires_at = NULL, attempts = attempts - 1");

impl PgStore {
    /// Claims up to `limit` due jobs for `lease` (see `Store::claim_due`), in one
    /// transaction: two statements per round, another round only after settled candidates.
    pub async fn claim_due(
        &self,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Vec<ClaimedJob>, sqlx::Error> {
        let token = Uuid::new_v4();
        let mut tx = self.pool.begin().await?;
        let jobs = claim_in(&mut tx, token, limit, duration_ms(lease), max_attempts).await?;
        tx.commit().await?;
        Ok(jobs)
    }

    /// Marks a claimed job sent. `false` if the lease was lost (another worker owns it now).
    pub async fn mark_sent(&self, job: &ClaimedJob) -> Result<bool, sqlx::Error> {
        let changed = settle(SENT, job).bind(now_ms()).execute(&self.pool).await?;
        Ok(changed.rows_affected() == 1)
    }

    /// Schedules another attempt of a claimed job at `retry_at`, recording why this one failed.
    pub async fn schedule_retry(
        &self,
        job: &ClaimedJob,
        retry_at: OffsetDateTime,
        error: &str,
    ) -> Result<bool, sqlx::Error> {
        let changed = settle(RETRY, job)
            .bind(to_ms(retry_at))
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(changed.rows_affected() == 1)
    }

    /// Gives up on a claimed job: it stays visible as `failed` with the last error.
    pub async fn mark_failed(&self, job: &ClaimedJob, error: &str) -> Result<bool, sqlx::Error> {
        let changed = settle(FAILED, job).bind(error).execute(&self.pool).await?;
        Ok(changed.rows_affected() == 1)
    }

    /// Hands a claimed job back unsent; it is due again at once, so every replica's worker
    /// is woken once it is committed (this one is stopping, or its lease ran low).
    pub async fn release(&self, job: &ClaimedJob) -> Result<bool, sqlx::Error> {
        let released = settle(RELEASE, job)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1;
        if released {
            self.wake_workers();
        }
        Ok(released)
    }

    /// Extends to now + `lease` the leases of the jobs in `held` (see
    /// `Store::renew_leases`), in one transaction: two statements per claim token.
    pub async fn renew_leases(
        &self,
        held: Vec<(Uuid, Vec<Uuid>)>,
        lease: Duration,
    ) -> Result<Vec<RenewedLease>, sqlx::Error> {
        let lease_ms = duration_ms(lease);
        let mut tx = self.pool.begin().await?;
        let mut renewed = Vec::new();
        for (token, ids) in &held {
            let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
            let renewable: Vec<String> = sqlx::query_scalar(RENEWABLE)
                .bind(token.to_string())
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
            if renewable.is_empty() {
                continue;
            }
            // After the locks: the expiry counts from now, and the confirmation check below
            // sees every intake that committed before them.
            let until = now_ms().saturating_add(lease_ms);
            let rows = sqlx::query(RENEW)
                .bind(until)
                .bind(token.to_string())
                .bind(&renewable)
                .fetch_all(&mut *tx)
                .await?;
            for row in rows {
                let id: String = row.try_get(0)?;
                let until: i64 = row.try_get(1)?;
                if let Ok(id) = Uuid::try_parse(&id) {
                    renewed.push(RenewedLease {
                        id,
                        claim_token: *token,
                        lease_expires_at: from_ms(until),
                    });
                }
            }
        }
        tx.commit().await?;
        Ok(renewed)
    }

    /// When the next queued job becomes claimable (its retry time or its lease expiry); a
    /// read of the first index entry.
    pub async fn next_due_at(&self) -> Result<Option<OffsetDateTime>, sqlx::Error> {
        let next: Option<i64> = sqlx::query_scalar(NEXT_DUE)
            .fetch_optional(&self.pool)
            .await?;
        Ok(next.map(from_ms))
    }
}

/// `sql` (one of the `settle_sql!` statements) with the job's id and claim token bound.
fn settle<'q>(
    sql: &'q str,
    job: &ClaimedJob,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(job.id.to_string())
        .bind(job.claim_token.to_string())
}

/// The claim, inside its transaction: rounds of [`CANDIDATES`] and [`CLAIM`] until `limit`
/// jobs are leased, fewer are due, or [`MAX_SETTLED_PER_CLAIM`] candidates were passed over.
async fn claim_in(
    tx: &mut PgConnection,
    token: Uuid,
    limit: usize,
    lease_ms: i64,
    max_attempts: u32,
) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let mut jobs = Vec::with_capacity(limit.min(1024));
    // Candidates not returned (settled, or unreadable): each leaves the due set, so every
    // round makes progress; the bound keeps one claim short.
    let mut passed_over = 0;
    while jobs.len() < limit && passed_over < MAX_SETTLED_PER_CLAIM {
        let want = limit - jobs.len();
        // Read per round: leases count from the moment they are taken.
        let now = now_ms();
        let candidates: Vec<String> = sqlx::query_scalar(CANDIDATES)
            .bind(now)
            .bind(i64::try_from(want).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        let found = candidates.len();
        if found == 0 {
            break;
        }
        let lease_expires_at = now.saturating_add(lease_ms);
        let rows: Vec<ClaimedRow> = sqlx::query_as(CLAIM)
            .bind(&candidates)
            .bind(i64::from(max_attempts))
            .bind(token.to_string())
            .bind(lease_expires_at)
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            match row.into_job(token, from_ms(lease_expires_at)) {
                Some(job) => jobs.push(job),
                None => passed_over += 1,
            }
        }
        if found < want {
            break; // nothing more is due (or the rest is locked by other claims)
        }
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::TestDb;

    /// A parameter of a statement to explain.
    enum Bind<'a> {
        Int(i64),
        Text(&'a str),
        Ids(&'a [String]),
    }

    /// `EXPLAIN` of `sql` with `binds`, as one text.
    async fn plan(db: &TestDb, sql: &str, binds: &[Bind<'_>]) -> String {
        let explain = format!("EXPLAIN {sql}");
        let mut query = sqlx::query_scalar::<_, String>(&explain);
        for b in binds {
            query = match b {
                Bind::Int(v) => query.bind(*v),
                Bind::Text(v) => query.bind(v.to_string()),
                Bind::Ids(v) => query.bind(v.to_vec()),
            };
        }
        let lines = query
            .fetch_all(db.store().postgres_pool().unwrap())
            .await
            .unwrap();
        let text = lines.join("\n");
        eprintln!("EXPLAIN {}:\n{text}\n", sql.lines().next().unwrap_or(sql));
        text
    }

    /// Fails if `plan` reads the whole notifications table or sorts.
    fn assert_no_scan_or_sort(plan: &str) {
        assert!(!plan.contains("Seq Scan on notifications"), "{plan}");
        assert!(!plan.contains("Sort"), "{plan}");
    }

    /// The plans, not timings: a claim and the next-due query read the due index in order
    /// and stop at the limit, the claim's update and a renewal find their rows by key, and
    /// the queue depth counts the partial index, whatever the backlog.
    #[tokio::test]
    async fn claims_next_due_renewals_and_the_depth_read_an_index_never_the_whole_table() {
        let Some(db) = TestDb::postgres("pg_claim_plans").await else {
            return;
        };
        // A backlog: mostly history (sent), a queue of a few thousand, half failure notices.
        db.execute(
            "INSERT INTO notifications (id, webhook_id, event_type, order_id, recipient,
                 subject, body, status, attempts, next_attempt_at, created_at)
             SELECT gen_random_uuid(), 'w' || i,
                    CASE WHEN i % 2 = 0 THEN 'order.paid' ELSE 'order.payment_failed' END,
                    gen_random_uuid(), 'a@example.com', 's', 'b',
                    CASE WHEN i % 10 = 0 THEN 'queued' ELSE 'sent' END, 0, i, i
             FROM generate_series(1, 50000) AS i",
            &[],
        )
        .await;
        db.execute("VACUUM ANALYZE notifications", &[]).await;
        let now = now_ms();
        let token = Uuid::new_v4().to_string();
        // A claim's worth of candidates, held under one token as after the claim.
        let ids: Vec<(String,)> = db
            .fetch_all(
                "SELECT CAST(id AS TEXT) FROM notifications WHERE status = 'queued' LIMIT 64",
                &[],
            )
            .await;
        let ids: Vec<String> = ids.into_iter().map(|(id,)| id).collect();
        use Bind::{Ids, Int, Text};

        let candidates = plan(&db, CANDIDATES, &[Int(now), Int(64)]).await;
        assert!(
            candidates.contains("Index Scan using notifications_due_at"),
            "{candidates}"
        );
        assert!(candidates.contains("LockRows"), "{candidates}");
        assert_no_scan_or_sort(&candidates);
        let claim = plan(&db, CLAIM, &[Ids(&ids), Int(8), Text(&token), Int(now)]).await;
        assert!(claim.contains("notifications_pkey"), "{claim}");
        assert_eq!(claim.matches("notifications_order").count(), 1, "{claim}");
        assert_no_scan_or_sort(&claim);
        let next = plan(&db, NEXT_DUE, &[]).await;
        assert!(next.contains("notifications_due_at"), "{next}");
        assert_no_scan_or_sort(&next);
        sqlx::query(
            "UPDATE notifications SET claim_token = $1::uuid, lease_expires_at = $2
             WHERE id = ANY($3::uuid[])",
        )
        .bind(&token)
        .bind(now + 60_000)
        .bind(&ids)
        .execute(db.store().postgres_pool().unwrap())
        .await
        .unwrap();
        let renewable = plan(&db, RENEWABLE, &[Text(&token), Ids(&ids)]).await;
        assert_no_scan_or_sort(&renewable);
        let renew = plan(&db, RENEW, &[Int(now), Text(&token), Ids(&ids)]).await;
        assert_no_scan_or_sort(&renew);
        let depth = plan(&db, super::super::metrics::QUEUE_DEPTH, &[]).await;
        assert!(depth.contains("notifications_due_at"), "{depth}");
        assert_no_scan_or_sort(&depth);
        db.close().await;
    }
}
