-- Orders, the transactional outbox (events) and the delivery state of every event to every
-- subscribed endpoint. Portable to PostgreSQL where cheap: TEXT UUIDs, INTEGER unix
-- milliseconds, INTEGER 0/1 booleans, JSON arrays as TEXT.

CREATE TABLE orders (
    id              TEXT PRIMARY KEY,          -- UUIDv7, so id order is creation order
    product_name    TEXT NOT NULL,
    quantity        INTEGER NOT NULL CHECK (quantity > 0),
    unit_price      INTEGER NOT NULL CHECK (unit_price >= 0),  -- minor units
    total           INTEGER NOT NULL CHECK (total >= 0),       -- minor units
    currency        TEXT NOT NULL,
    customer_email  TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('paid', 'payment_failed')),
    failure_reason  TEXT,
    created_at      INTEGER NOT NULL
);

-- Subscriptions. `config_key` marks the one ensured from configuration at startup, so that
-- ensuring it is an idempotent upsert; endpoints created through the API have none.
CREATE TABLE endpoints (
    id                          TEXT PRIMARY KEY,
    url                         TEXT NOT NULL,
    description                 TEXT,
    secret                      TEXT NOT NULL,   -- whsec_...
    previous_secret             TEXT,            -- still signed with until it expires (rotation)
    previous_secret_expires_at  INTEGER,
    event_types                 TEXT NOT NULL,   -- JSON array of event type names
    enabled                     INTEGER NOT NULL DEFAULT 1,
    disabled_reason             TEXT,
    config_key                  TEXT UNIQUE,
    created_at                  INTEGER NOT NULL,
    updated_at                  INTEGER NOT NULL
);

-- The outbox. `payload` holds the exact bytes that are signed and sent; `seq` gives a total
-- order for cursor pagination of the event history.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    msg_id      TEXT NOT NULL UNIQUE,            -- webhook-id on every attempt to every endpoint
    event_type  TEXT NOT NULL,
    order_id    TEXT REFERENCES orders (id),
    payload     BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX events_type_seq ON events (event_type, seq);
CREATE INDEX events_order ON events (order_id);

-- One row per event x endpoint. A worker owns an in_flight row only while its lease has not
-- expired and only through the claim_token it was given; every state change is guarded by it.
CREATE TABLE deliveries (
    id                TEXT PRIMARY KEY,
    event_id          TEXT NOT NULL REFERENCES events (id),
    endpoint_id       TEXT NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'delivered', 'failed')),
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER NOT NULL,
    lease_expires_at  INTEGER,
    claim_token       TEXT,
    last_status       INTEGER,
    last_error        TEXT,
    delivered_at      INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_lease ON deliveries (status, lease_expires_at);
CREATE INDEX deliveries_endpoint ON deliveries (endpoint_id, status);

-- Every attempt, kept after success and after dead-lettering.
CREATE TABLE delivery_attempts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id   TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    duration_ms   INTEGER NOT NULL,
    status_code   INTEGER,                     -- HTTP status, when a response came back
    error_kind    TEXT,                        -- connect, timeout, ... when none did
    response_body TEXT,                        -- first 1 KiB, lossily decoded
    outcome       TEXT NOT NULL                -- delivered, retry, failed, endpoint_disabled
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, attempt);
