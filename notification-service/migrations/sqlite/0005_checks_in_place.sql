-- CHECK constraints SQLite evaluates in place (issue 9).
--
-- SQLite compiles `x IN ('a', 'b', 'c', ...)` with more than two values into a temporary
-- in-memory table that it builds (opens a B-tree, zeroes a page, inserts every value) and
-- throws away each time the constraint is checked: on every insert, and on every update of
-- the column. `EXPLAIN` shows it as `OpenEphemeral`. For the dedup record, the email job and
-- each change of a job's status, that was four temporary tables per webhook, about a third
-- of each statement's cost. The same rule written as comparisons joined by OR is checked in
-- place. It allows exactly the same values, so every stored row satisfies it.
--
-- SQLite changes a CHECK only by rebuilding the table: a new table with the new definition,
-- every row copied, the old one dropped, the new one renamed, its indexes made again. No
-- other table references these two, and this migration runs in one transaction: a crash
-- leaves the old tables.

CREATE TABLE received_webhooks_new (
    webhook_id  TEXT PRIMARY KEY,
    event_type  TEXT NOT NULL,
    order_id    TEXT,
    event_at    INTEGER NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome = 'pending' OR outcome = 'queued'
                                     OR outcome = 'ignored' OR outcome = 'stale'),
    received_at INTEGER NOT NULL
);
INSERT INTO received_webhooks_new (webhook_id, event_type, order_id, event_at, outcome, received_at)
    SELECT webhook_id, event_type, order_id, event_at, outcome, received_at
    FROM received_webhooks;
DROP TABLE received_webhooks;
ALTER TABLE received_webhooks_new RENAME TO received_webhooks;
CREATE INDEX received_webhooks_received_at ON received_webhooks (received_at);

-- As built by migrations 0001-0004, the CHECK aside: `due_at` as migration 0002 defines it,
-- with the column names of 0004.
CREATE TABLE notifications_new (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT NOT NULL UNIQUE,
    event_type       TEXT NOT NULL,
    order_id         TEXT NOT NULL,
    recipient        TEXT NOT NULL,
    subject          TEXT NOT NULL,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status = 'queued' OR status = 'sent'
                                          OR status = 'failed' OR status = 'cancelled'),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    claim_token      TEXT,
    lease_expires_at INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    sent_at          INTEGER,
    due_at           INTEGER GENERATED ALWAYS AS (
        CASE WHEN status = 'queued'
             THEN MAX(next_attempt_at, COALESCE(lease_expires_at + 1, next_attempt_at))
        END
    ) VIRTUAL,
    trace_id         TEXT
);
INSERT INTO notifications_new (id, webhook_id, event_type, order_id, recipient, subject, body,
                               status, attempts, next_attempt_at, claim_token,
                               lease_expires_at, last_error, created_at, sent_at, trace_id)
    SELECT id, webhook_id, event_type, order_id, recipient, subject, body,
           status, attempts, next_attempt_at, claim_token,
           lease_expires_at, last_error, created_at, sent_at, trace_id
    FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_new RENAME TO notifications;
CREATE INDEX notifications_newest ON notifications (created_at, id);
CREATE INDEX notifications_order ON notifications (order_id, status);
CREATE INDEX notifications_due_at ON notifications (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX notifications_claim_token ON notifications (claim_token)
    WHERE claim_token IS NOT NULL;
