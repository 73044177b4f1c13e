-- The PostgreSQL schema: the SQLite one (migrations/sqlite) at its latest version, in this
-- database's own dialect. Timestamps are BIGINT unix milliseconds and counts BIGINT, as
-- SQLite's 64-bit INTEGER, so the domain code is one for both; ids are native uuid.

-- One row per webhook-id ever accepted (verified). The primary key is the deduplication,
-- also across replicas: of two concurrent inserts of one webhook-id, the second waits for
-- the first's commit and then inserts nothing (ON CONFLICT DO NOTHING). Rows older than the
-- retention (longer than the sender's retry window) are deleted by the cleanup job.
CREATE TABLE received_webhooks (
    webhook_id  TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    order_id    UUID,
    -- The event's own timestamp (when it happened), not when it arrived.
    event_at    BIGINT NOT NULL,
    -- queued: produced a notification; ignored: type not handled; stale: superseded by
    -- what we already know about the order (see store::decide). pending: only inside the
    -- intake's transaction, never seen committed.
    outcome     TEXT NOT NULL CHECK (outcome IN ('pending', 'queued', 'ignored', 'stale')),
    received_at BIGINT NOT NULL
);
-- Cleanup (received_at < cutoff) and the newest-first listing.
CREATE INDEX received_webhooks_received_at ON received_webhooks (received_at, webhook_id);

-- What we have told the customer about each order, so out-of-order events never produce a
-- contradictory email. Read and written only under the order's advisory lock (see the
-- store's module docs).
CREATE TABLE order_states (
    order_id        UUID PRIMARY KEY,
    -- Event time of the order.paid that was notified; a paid order is final.
    paid_at         BIGINT,
    -- Event time of the newest payment failure that was notified.
    last_failure_at BIGINT,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX order_states_updated_at ON order_states (updated_at);

-- The email job queue and the notification history in one table.
CREATE TABLE notifications (
    id              UUID PRIMARY KEY,
    -- UNIQUE keeps "one email per delivery" even after the dedup record has been cleaned up.
    webhook_id      TEXT NOT NULL UNIQUE,
    event_type      TEXT NOT NULL,
    order_id        UUID NOT NULL,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed', 'cancelled')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    -- A claim: the worker that set lease_token owns the job until lease_until; after that
    -- any worker of any replica may claim it again (the previous one is presumed dead).
    lease_token     UUID,
    lease_until     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    sent_at         BIGINT,
    -- The trace id of the `traceparent` the webhook arrived with (32 lowercase hex digits);
    -- NULL without a valid one.
    trace_id        TEXT,
    -- When the job may next be claimed. While it is queued: its retry time, or, while a
    -- lease holds it, the first millisecond after the lease (a lease is live while
    -- `lease_until >= now`, the rule the intake applies too), whichever is later; so
    -- "claimable" is exactly `due_at <= now`. NULL once sent, failed or cancelled, so the
    -- partial index below holds only the queue. (GREATEST ignores a NULL lease_until.)
    due_at          BIGINT GENERATED ALWAYS AS (
        CASE WHEN status = 'queued' THEN GREATEST(next_attempt_at, lease_until + 1) END
    ) STORED
);
-- Claims in O(batch), never O(backlog): a claim reads this index in due order, skips rows
-- another replica has locked, and stops at its batch size; the queue depth counts it.
CREATE INDEX notifications_due_at ON notifications (due_at) WHERE due_at IS NOT NULL;
-- Lease renewal updates a worker's jobs by claim token; only held jobs have one.
CREATE INDEX notifications_lease_token ON notifications (lease_token)
    WHERE lease_token IS NOT NULL;
-- The read API's newest-first pages, and retention (oldest finished first).
CREATE INDEX notifications_newest ON notifications (created_at, id);
-- An order's notices and confirmation: the ordering rule's checks and cancellations.
CREATE INDEX notifications_order ON notifications (order_id, event_type);
