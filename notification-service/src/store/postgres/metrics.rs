//! The query behind the `email_queue_depth` gauge: the entries of the partial index
//! `notifications_due_at`, which holds only queued jobs (see the SQLite twin).

use super::PgStore;

/// Queued email jobs, counted in `notifications_due_at`.
pub(super) const QUEUE_DEPTH: &str = "SELECT COUNT(*) FROM notifications WHERE due_at IS NOT NULL";

impl PgStore {
    /// How many email jobs are queued.
    pub async fn email_queue_depth(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(QUEUE_DEPTH).fetch_one(&self.pool).await
    }
}
