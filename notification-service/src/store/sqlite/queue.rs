//! The email job queue: claiming due jobs under leases, renewing the leases a live worker
//! holds, and recording what became of each job. Every write goes through the group commit,
//! so the outcomes of many jobs (and the next claim) share one transaction and one fsync.
//!
//! A claim costs O(batch), never O(backlog): due jobs are read from the partial index on
//! `due_at` (migration 0002) in due order, stopping at the limit, and only those candidates
//! are settled (cancelled, given up) or leased, all in one statement ([`CLAIM`]).
//!
//! The writes run on the writer's thread (see `webhook_common::group_commit`): one
//! statement per claim (and one more per round that settled candidates), one per outcome.

use std::time::Duration;

use rusqlite::{params, Connection};
use time::OffsetDateTime;
use uuid::Uuid;

use webhook_common::group_commit::WriteError;

use super::SqliteStore;
use crate::domain::{duration_ms, now_ms, MAX_SETTLED_PER_CLAIM};
use crate::store::rows::ClaimedRow;
use crate::store::{from_ms, to_ms, ClaimedJob, RenewedLease};

/// One round of a claim, in one statement: the first `?2` due jobs, oldest due first, read
/// from `notifications_due_at` in index order (no sort, and no row past the limit is looked
/// at; `due_at <= now` is exactly "queued, its retry time has come and no live lease holds
/// it", see migration 0002), each given its verdict and updated by it:
/// - `cancelled`: a failure notice of an order that has a confirmation (any confirmation,
///   whatever its status: once it exists no failure notice may follow, rule 1 of `decide`);
/// - `failed`: a job that already used `?3` (max) attempts: its worker died during every
///   one of them, so no outcome was ever recorded;
/// - `queued`: leased under claim token `?4` until `?5` (its `lease_expires_at`), with one more attempt counted.
///
/// `?1` is now. Returns every candidate with its new status; the leased ones are the jobs.
/// The `status = 'queued'` of a candidate is guaranteed by `due_at` (NULL otherwise), also
/// against other processes on the same file: the writer's transaction holds the write lock.
const CLAIM: &str = "WITH candidates AS (
         SELECT id,
                CASE WHEN event_type = 'order.payment_failed'
                          AND EXISTS (SELECT 1 FROM notifications AS paid
                                      WHERE paid.order_id = candidate.order_id
                                        AND paid.event_type = 'order.paid')
                     THEN 'cancelled'
                     WHEN attempts >= ?3 THEN 'failed'
                     ELSE 'queued'
                END AS verdict
         FROM notifications AS candidate
         WHERE due_at <= ?1
         ORDER BY due_at
         LIMIT ?2)
     UPDATE notifications
     SET status = candidates.verdict,
         claim_token = CASE WHEN candidates.verdict = 'queued' THEN ?4 END,
         lease_expires_at = CASE WHEN candidates.verdict = 'queued' THEN ?5 END,
         attempts = CASE WHEN candidates.verdict = 'queued' THEN attempts + 1 ELSE attempts END,
         last_error = CASE candidates.verdict
             WHEN 'cancelled' THEN 'superseded by order.paid'
             WHEN 'failed' THEN 'gave up after ' || attempts || ' attempts; the last one never '
                                || 'reported back (the worker stopped while sending)'
             ELSE last_error
         END
     FROM candidates
     WHERE notifications.id = candidates.id
     RETURNING notifications.id, notifications.status, notifications.attempts,
               notifications.recipient, notifications.subject, notifications.body,
               notifications.trace_id";

/// When the next queued job becomes claimable: the first entry of `notifications_due_at`.
const NEXT_DUE: &str = "SELECT due_at FROM notifications
     WHERE due_at IS NOT NULL
     ORDER BY due_at
     LIMIT 1";

/// Extends the leases of one claim (found through `notifications_claim_token`), except a
/// failure notice of an order that has a confirmation: that confirmation waits for the
/// notice's lease as it stood when the confirmation was queued (see `decide`), so it must
/// not grow. `COALESCE` because `MAX` with a NULL is NULL in SQLite; `MAX` so a renewal
/// never shortens a lease.
const RENEW: &str = "UPDATE notifications
     SET lease_expires_at = MAX(COALESCE(lease_expires_at, ?1), ?1)
     WHERE claim_token = ?2 AND status = 'queued'
       AND id IN (SELECT value FROM json_each(?3))
       AND NOT (event_type = 'order.payment_failed'
                AND EXISTS (SELECT 1 FROM notifications AS paid
                            WHERE paid.order_id = notifications.order_id
                              AND paid.event_type = 'order.paid'))
     RETURNING id, lease_expires_at";

impl SqliteStore {
    /// Claims up to `limit` due jobs for `lease`, counting an attempt on each. A job is due
    /// when queued, its retry time has come and no live lease holds it; a lease left by a
    /// crashed worker expires and the job is claimed again.
    ///
    /// The due candidates (at most `limit`, read in due order from an index) are settled in
    /// the same statement that leases the others ([`CLAIM`]), so jobs that must not be sent
    /// never are: a failure notice of an order that has a confirmation is cancelled (the
    /// ordering rule, see [`decide`](super::decide)); a job that already used `max_attempts`
    /// is marked failed; the rest are leased and returned, in no particular order. When some
    /// candidates were settled, the next ones are claimed, so a claim returns fewer than
    /// `limit` jobs only when fewer are due (or after settling [`MAX_SETTLED_PER_CLAIM`]; the
    /// worker then simply claims again).
    pub async fn claim_due(
        &self,
        limit: usize,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Vec<ClaimedJob>, WriteError> {
        let token = Uuid::new_v4();
        let lease_ms = duration_ms(lease);
        self.writer
            .write(move |conn| claim_in(conn, token, limit, lease_ms, max_attempts))
            .await
    }

    /// Marks a claimed job sent. `false` if the lease was lost (another worker owns it now).
    pub async fn mark_sent(&self, job: &ClaimedJob) -> Result<bool, WriteError> {
        self.settle(
            job,
            "status = 'sent', sent_at = ?3, claim_token = NULL, lease_expires_at = NULL, \
             last_error = NULL",
            None,
            None,
        )
        .await
    }

    /// Schedules another attempt of a claimed job at `retry_at`, recording why this one failed.
    pub async fn schedule_retry(
        &self,
        job: &ClaimedJob,
        retry_at: OffsetDateTime,
        error: &str,
    ) -> Result<bool, WriteError> {
        self.settle(
            job,
            "next_attempt_at = ?3, last_error = ?4, claim_token = NULL, lease_expires_at = NULL",
            Some(to_ms(retry_at)),
            Some(error.to_owned()),
        )
        .await
    }

    /// Gives up on a claimed job: it stays visible as `failed` with the last error.
    pub async fn mark_failed(&self, job: &ClaimedJob, error: &str) -> Result<bool, WriteError> {
        self.settle(
            job,
            "status = 'failed', last_error = ?4, claim_token = NULL, lease_expires_at = NULL",
            None,
            Some(error.to_owned()),
        )
        .await
    }

    /// Hands a claimed job back unsent (shutdown, or a lease too short to send in),
    /// refunding the attempt it was charged; it is due again at once.
    pub async fn release(&self, job: &ClaimedJob) -> Result<bool, WriteError> {
        self.settle(
            job,
            "claim_token = NULL, lease_expires_at = NULL, attempts = attempts - 1",
            None,
            None,
        )
        .await
    }

    /// Applies `set` to a claimed job, guarded by its lease: `false` (nothing changed) if the
    /// lease was lost and another worker owns the job now. In `set`, `?3` is `at` (the time
    /// the write runs when `None`) and `?4` is `text`. One statement.
    async fn settle(
        &self,
        job: &ClaimedJob,
        set: &'static str,
        at: Option<i64>,
        text: Option<String>,
    ) -> Result<bool, WriteError> {
        let (id, token) = (job.id.to_string(), job.claim_token.to_string());
        self.writer
            .write(move |conn| {
                let mut update = conn.prepare_cached(&format!(
                    "UPDATE notifications SET {set} \
                     WHERE id = ?1 AND claim_token = ?2 AND status = 'queued'"
                ))?;
                let at = at.unwrap_or_else(now_ms);
                let values: [&dyn rusqlite::ToSql; 4] = [&id, &token, &at, &text];
                // Only the parameters `set` uses: SQLite refuses binds past the last one.
                for (i, value) in values.iter().enumerate().take(update.parameter_count()) {
                    update.raw_bind_parameter(i + 1, value)?;
                }
                Ok(update.raw_execute()? == 1)
            })
            .await
    }

    /// Extends to now + `lease` the leases of the jobs in `held` (job ids by the claim token
    /// they were leased under: the jobs a live worker still has in hand), in one write: one
    /// statement per claim, found through `notifications_claim_token`. Returns the leases it
    /// extended; a job missing from the answer was not extended (its outcome is recorded,
    /// another worker took it over, or it is a failure notice whose order has a
    /// confirmation, see [`RENEW`]) and its holder must go by the expiry it knew.
    pub async fn renew_leases(
        &self,
        held: Vec<(Uuid, Vec<Uuid>)>,
        lease: Duration,
    ) -> Result<Vec<RenewedLease>, WriteError> {
        let lease_ms = duration_ms(lease);
        self.writer
            .write(move |conn| {
                let until = now_ms().saturating_add(lease_ms);
                let mut renew = conn.prepare_cached(RENEW)?;
                let mut renewed = Vec::new();
                for (token, ids) in &held {
                    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
                    let ids = serde_json::to_string(&ids)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                    let rows = renew.query_map(params![until, token.to_string(), ids], |row| {
                        Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                    })?;
                    for row in rows {
                        let (id, until) = row?;
                        if let Ok(id) = Uuid::try_parse(&id) {
                            renewed.push(RenewedLease {
                                id,
                                claim_token: *token,
                                lease_expires_at: from_ms(until),
                            });
                        }
                    }
                }
                Ok(renewed)
            })
            .await
    }

    /// When the next queued job becomes claimable (its retry time or its lease expiry); a
    /// read of the first index entry.
    pub async fn next_due_at(&self) -> Result<Option<OffsetDateTime>, sqlx::Error> {
        let next: Option<i64> = sqlx::query_scalar(NEXT_DUE)
            .fetch_optional(&self.background)
            .await?;
        Ok(next.map(from_ms))
    }
}

/// The claim, inside the writer's transaction (see [`SqliteStore::claim_due`]): one statement,
/// and one more per round that settled candidates.
fn claim_in(
    conn: &Connection,
    token: Uuid,
    limit: usize,
    lease_ms: i64,
    max_attempts: u32,
) -> rusqlite::Result<Vec<ClaimedJob>> {
    // The time the write runs: leases count from the moment they are taken.
    let now = now_ms();
    let lease_expires_at = now.saturating_add(lease_ms);
    let token_text = token.to_string();
    let mut claim = conn.prepare_cached(CLAIM)?;
    let mut jobs = Vec::with_capacity(limit.min(1024));
    // Candidates not returned (settled, or unreadable): each leaves the due set, so every
    // round makes progress; the bound keeps one claim short.
    let mut passed_over = 0;
    while jobs.len() < limit && passed_over < MAX_SETTLED_PER_CLAIM {
        let want = limit - jobs.len();
        let rows = claim
            .query_map(
                params![
                    now,
                    i64::try_from(want).unwrap_or(i64::MAX),
                    i64::from(max_attempts),
                    token_text,
                    lease_expires_at
                ],
                ClaimedRow::from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let found = rows.len();
        for row in rows {
            match row.into_job(token, from_ms(lease_expires_at)) {
                Some(job) => jobs.push(job),
                None => passed_over += 1,
            }
        }
        if found < want {
            break; // nothing more is due
        }
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `EXPLAIN QUERY PLAN` of `sql`, one `detail` line per step.
    async fn plan(store: &SqliteStore, sql: &str, binds: &[i64]) -> Vec<String> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&explain);
        for b in binds {
            query = query.bind(*b);
        }
        query
            .fetch_all(store.pool())
            .await
            .unwrap()
            .into_iter()
            .map(|(_, _, _, detail)| detail)
            .collect()
    }

    /// Fails unless every step of `plan` reads notifications through `index` in its order:
    /// no full scan of the table, no sort in a temporary b-tree.
    fn assert_index_ordered(what: &str, plan: &[String], index: &str) {
        eprintln!("EXPLAIN QUERY PLAN ({what}):\n  {}", plan.join("\n  "));
        assert!(
            plan.iter().all(|step| !step.contains("TEMP B-TREE")),
            "{what} sorts: {plan:?}"
        );
        assert!(
            plan.iter()
                .filter(|step| step.contains("notifications"))
                .all(|step| step.starts_with("SEARCH") && step.contains(index)),
            "{what} does not search {index}: {plan:?}"
        );
    }

    /// A backlog, so the plans are those of a real queue (sent rows and queued ones).
    async fn insert_backlog(store: &SqliteStore) {
        for i in 0..200_i64 {
            sqlx::query(
                "INSERT INTO notifications (id, webhook_id, event_type, order_id, recipient,
                     subject, body, status, attempts, next_attempt_at, created_at)
                 VALUES ($1, $1, 'order.paid', $1, 'a@example.com', 's', 'b', $2, 0, $3, $3)",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(if i % 3 == 0 { "sent" } else { "queued" })
            .bind(i)
            .execute(store.pool())
            .await
            .unwrap();
        }
    }

    /// Fails unless a claim and the next-due query read the due index in order and stop at
    /// the limit, and a renewal finds its jobs by claim token.
    async fn assert_claims_and_renewals_read_an_index(store: &SqliteStore) {
        sqlx::query("ANALYZE").execute(store.pool()).await.unwrap();
        // The claim: the candidates from the due index in order (materialized: at most the
        // limit), then each one's row by primary key and its order's confirmation by index.
        let claim = plan(store, CLAIM, &[now_ms(), 64, 8, 0, 0]).await;
        eprintln!("EXPLAIN QUERY PLAN (claim):\n  {}", claim.join("\n  "));
        assert!(
            claim
                .iter()
                .any(|s| s == "SEARCH candidate USING INDEX notifications_due_at (due_at<?)"),
            "{claim:?}"
        );
        assert!(
            claim.iter().all(|s| !s.contains("TEMP B-TREE")
                && (!s.starts_with("SCAN") || s == "SCAN candidates")),
            "{claim:?}"
        );
        let next = plan(store, NEXT_DUE, &[]).await;
        assert_index_ordered("next due", &next, "INDEX notifications_due_at (due_at>?)");
        let renew = plan(store, RENEW, &[now_ms(), 0, 0]).await;
        eprintln!("EXPLAIN QUERY PLAN (renewal):\n  {}", renew.join("\n  "));
        assert!(
            renew[0].contains("INDEX notifications_claim_token (claim_token=?)"),
            "{renew:?}"
        );
        // The one scan allowed is of the JSON list of held job ids (at most one claim's
        // worth), never of the notifications.
        assert!(
            renew.iter().all(
                |s| (!s.starts_with("SCAN") || s.starts_with("SCAN json_each"))
                    && !s.contains("TEMP B-TREE")
            ),
            "{renew:?}"
        );
    }

    /// The plans, not timings: a claim and the next-due query read the due index in order
    /// and stop at the limit, and a renewal finds its jobs by token, whatever the backlog.
    #[tokio::test]
    async fn claims_next_due_and_renewals_read_an_index_in_order_never_the_whole_queue() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let store = SqliteStore::connect(&url, &url).await.unwrap();
        super::super::MIGRATOR.run(store.pool()).await.unwrap();
        insert_backlog(&store).await;
        assert_claims_and_renewals_read_an_index(&store).await;
        store.close().await;
    }
    /// The same plans on a database migrated from the schema before the claim rename:
    /// `RENAME COLUMN` rewrote the generated `due_at` and the index definitions, so the
    /// queue's reads still use them (with leases written under the old names).
    #[tokio::test]
    async fn after_the_claim_rename_claims_and_renewals_still_read_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/n.db", dir.path().display());
        let store = SqliteStore::connect(&url, &url).await.unwrap();
        crate::store::tests::before_the_rename(&super::super::MIGRATOR)
            .run(store.pool())
            .await
            .unwrap();
        insert_backlog(&store).await;
        sqlx::query(
            "UPDATE notifications SET lease_token = id, lease_until = next_attempt_at + 5
             WHERE status = 'queued' AND next_attempt_at % 2 = 0",
        )
        .execute(store.pool())
        .await
        .unwrap();
        super::super::MIGRATOR.run(store.pool()).await.unwrap();
        assert_claims_and_renewals_read_an_index(&store).await;
        let (held, due): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(claim_token), SUM(due_at = lease_expires_at + 1) FROM notifications",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert!(
            held > 0 && held == due,
            "{held} leases, {due} due after them"
        );
        store.close().await;
    }
}
