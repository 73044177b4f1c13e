-- CHECK constraints SQLite evaluates in place (issue 9).
--
-- SQLite compiles `status IN ('pending', 'in_flight', 'delivered', 'failed')` (more than two
-- values) into a temporary in-memory table that it builds (opens a B-tree, zeroes a page,
-- inserts every value) and throws away each time the constraint is checked: on every
-- insert, and on every update of `status`, so for each delivery written, claimed and
-- finished. `EXPLAIN` shows it as `OpenEphemeral`. The same rule written as comparisons joined
-- by OR is checked in place. It allows exactly the same values, so every stored row
-- satisfies it.
--
-- SQLite changes a CHECK only by rebuilding the table: a new table with the new definition,
-- every row copied, the old one dropped, the new one renamed, its indexes made again. This
-- runs in one transaction (a crash leaves the old tables) with foreign keys enforced, and
-- dropping a table a foreign key with ON DELETE CASCADE points at would delete the rows that
-- point at it: `delivery_attempts` would lose every attempt. So `delivery_attempts` is
-- rebuilt too, pointing at the new `deliveries` before the old one is dropped; renaming the
-- new `deliveries` then renames the reference with it. Both copies keep every column as it
-- was, ids and `delivery_attempts`' AUTOINCREMENT counter included. The copy costs time once,
-- at the first start after an upgrade: about 10 s for 500,000 deliveries with an attempt each
-- on the benchmark machine; the old tables' pages stay in the file, free for reuse.

-- As built by migrations 0001-0006, the CHECK aside: `retry_base` from 0002, `due_at` as
-- 0004 defines it.
CREATE TABLE deliveries_new (
    id                TEXT PRIMARY KEY,
    event_id          TEXT NOT NULL REFERENCES events (id),
    endpoint_id       TEXT NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    status            TEXT NOT NULL CHECK (status = 'pending' OR status = 'in_flight'
                                           OR status = 'delivered' OR status = 'failed'),
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER NOT NULL,
    lease_expires_at  INTEGER,
    claim_token       TEXT,
    last_status       INTEGER,
    last_error        TEXT,
    delivered_at      INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    retry_base        INTEGER NOT NULL DEFAULT 0,
    due_at            INTEGER
        GENERATED ALWAYS AS (CASE status WHEN 'pending' THEN next_attempt_at
                                         WHEN 'in_flight' THEN lease_expires_at END) VIRTUAL,
    UNIQUE (event_id, endpoint_id)
);
INSERT INTO deliveries_new (id, event_id, endpoint_id, status, attempts, next_attempt_at,
                            lease_expires_at, claim_token, last_status, last_error,
                            delivered_at, created_at, updated_at, retry_base)
    SELECT id, event_id, endpoint_id, status, attempts, next_attempt_at,
           lease_expires_at, claim_token, last_status, last_error,
           delivered_at, created_at, updated_at, retry_base
    FROM deliveries;

-- As migration 0001 defines it, pointing at the new table.
CREATE TABLE delivery_attempts_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id   TEXT NOT NULL REFERENCES deliveries_new (id) ON DELETE CASCADE,
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    status_code   INTEGER,                     -- HTTP status, when a response came back
    error_kind    TEXT,                        -- connect, timeout, ... when none did
    response_body TEXT,                        -- first 1 KiB, lossily decoded
    outcome       TEXT NOT NULL                -- delivered, retry, failed, endpoint_disabled
);
INSERT INTO delivery_attempts_new (id, delivery_id, attempt, started_at, duration_ms,
                                   status_code, error_kind, response_body, outcome)
    SELECT id, delivery_id, attempt, started_at, duration_ms,
           status_code, error_kind, response_body, outcome
    FROM delivery_attempts;
-- Ids of attempts deleted at the top of the range are not handed out again either.
DELETE FROM sqlite_sequence WHERE name = 'delivery_attempts_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'delivery_attempts_new', seq FROM sqlite_sequence WHERE name = 'delivery_attempts';

-- Nothing points at the old tables any more: dropping them deletes nothing else.
DROP TABLE delivery_attempts;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
ALTER TABLE delivery_attempts_new RENAME TO delivery_attempts;
CREATE INDEX deliveries_endpoint_due ON deliveries (endpoint_id, due_at) WHERE due_at IS NOT NULL;
CREATE INDEX deliveries_endpoint ON deliveries (endpoint_id, status, lease_expires_at);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, attempt);
