-- Timestamps are INTEGER unix milliseconds and ids TEXT, so this schema ports to PostgreSQL.

-- One row per webhook-id ever accepted (verified). The primary key is the deduplication:
-- a retry of the same delivery cannot insert a second row. Rows older than the retention
-- (longer than the sender's retry window) are deleted by the cleanup job.
CREATE TABLE received_webhooks (
    webhook_id  TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    order_id    TEXT,
    -- The event's own timestamp (when it happened), not when it arrived.
    event_at    INTEGER NOT NULL,
    -- queued: produced a notification; ignored: type not handled; stale: superseded by
    -- what we already know about the order (see store::decide_outcome).
    outcome     TEXT NOT NULL CHECK (outcome IN ('pending', 'queued', 'ignored', 'stale')),
    received_at INTEGER NOT NULL
);
CREATE INDEX received_webhooks_received_at ON received_webhooks (received_at);

-- What we have told the customer about each order, so out-of-order events never produce a
-- contradictory email.
CREATE TABLE order_states (
    order_id        TEXT PRIMARY KEY,
    -- Event time of the order.paid that was notified; a paid order is final.
    paid_at         INTEGER,
    -- Event time of the newest payment failure that was notified.
    last_failure_at INTEGER,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX order_states_updated_at ON order_states (updated_at);

-- The email job queue and the notification history in one table.
CREATE TABLE notifications (
    id              TEXT PRIMARY KEY,
    -- UNIQUE keeps "one email per delivery" even after the dedup record has been cleaned up.
    webhook_id      TEXT NOT NULL UNIQUE,
    event_type      TEXT NOT NULL,
    order_id        TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    -- A claim: the worker that set lease_token owns the job until lease_until; after that
    -- any worker may claim it again (the previous one is presumed dead).
    lease_token     TEXT,
    lease_until     INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER
);
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
CREATE INDEX notifications_newest ON notifications (created_at, id);
CREATE INDEX notifications_order ON notifications (order_id, status);
