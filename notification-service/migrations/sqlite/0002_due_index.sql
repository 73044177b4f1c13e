-- Claims in O(batch), never O(backlog): the worker finds due jobs by reading one index in due
-- order and stopping at its batch size, and finds its own jobs (lease renewal) by claim token.

-- When a job may next be claimed. While it is queued: its retry time, or, while a lease holds
-- it, the first millisecond after the lease (a lease is live while `lease_until >= now`, the
-- rule the intake applies too), whichever is later; so "claimable" is exactly
-- `due_at <= now`. NULL once sent, failed or cancelled, so the partial index below holds only
-- the queue. VIRTUAL: SQLite can add it to an existing table and computes it on write for the
-- index. (PostgreSQL: a STORED column with GREATEST instead of the two-argument MAX.)
ALTER TABLE notifications ADD COLUMN due_at INTEGER GENERATED ALWAYS AS (
    CASE WHEN status = 'queued'
         THEN MAX(next_attempt_at, COALESCE(lease_until + 1, next_attempt_at))
    END
) VIRTUAL;
CREATE INDEX notifications_due_at ON notifications (due_at) WHERE due_at IS NOT NULL;

-- Lease renewal updates a worker's jobs by claim token; only held jobs have one.
CREATE INDEX notifications_lease_token ON notifications (lease_token)
    WHERE lease_token IS NOT NULL;

-- Superseded by notifications_due_at; one index less to maintain on every write.
DROP INDEX notifications_due;
