-- The PostgreSQL schema of orders-service: the same tables and meaning as the SQLite one
-- (migrations/sqlite), in PostgreSQL's own types. Timestamps stay BIGINT unix milliseconds,
-- as on SQLite, so the domain code above the store is shared.

CREATE TABLE orders (
    id              uuid PRIMARY KEY,          -- UUIDv7, so id order is creation order
    product_name    text NOT NULL,
    quantity        integer NOT NULL CHECK (quantity > 0),
    unit_price      bigint NOT NULL CHECK (unit_price >= 0),  -- minor units
    total           bigint NOT NULL CHECK (total >= 0),       -- minor units
    currency        text NOT NULL,
    customer_email  text NOT NULL,
    status          text NOT NULL CHECK (status IN ('paid', 'payment_failed')),
    failure_reason  text,
    created_at      bigint NOT NULL
);

-- Subscriptions. `config_key` marks the one ensured from configuration at startup, so that
-- ensuring it is an idempotent upsert (also when replicas start together).
CREATE TABLE endpoints (
    id                          uuid PRIMARY KEY,
    url                         text NOT NULL,
    description                 text,
    secret                      text NOT NULL,   -- whsec_...
    previous_secret             text,            -- still signed with until it expires (rotation)
    previous_secret_expires_at  bigint,
    event_types                 jsonb NOT NULL,  -- array of event type names
    enabled                     boolean NOT NULL DEFAULT true,
    disabled_reason             text,
    config_key                  text UNIQUE,
    -- SHA-256 (hex) of the WEBHOOK_SECRET last applied to the configured subscription.
    config_secret_sha256        text,
    created_at                  bigint NOT NULL,
    updated_at                  bigint NOT NULL
);

-- The outbox. `payload` holds the exact bytes that are signed and sent.
--
-- `seq` orders the event history (GET /events?after=). It is NULL when the event is written
-- and assigned only after its transaction committed, by the sequencer (store/postgres/
-- events.rs): one run at a time, serialised through commit by the row lock on
-- `event_sequencer`, numbers committed events above every number already visible. So the
-- numbered events a reader can see are always a prefix of the final order, and an event
-- that commits late gets a later number instead of a gap a reader already paged past.
CREATE TABLE events (
    id          uuid PRIMARY KEY,
    seq         bigint UNIQUE,
    msg_id      text NOT NULL UNIQUE,            -- webhook-id on every attempt to every endpoint
    event_type  text NOT NULL,
    order_id    uuid REFERENCES orders (id),
    payload     bytea NOT NULL,
    created_at  bigint NOT NULL
);
CREATE INDEX events_type_seq ON events (event_type, seq);
CREATE INDEX events_order ON events (order_id);
-- What the sequencer has to number, in the order it numbers them; empty in the steady state.
CREATE INDEX events_unsequenced ON events (created_at, id) WHERE seq IS NULL;

-- The last `seq` handed out. One row; a sequencer run locks it (FOR UPDATE) until it commits.
CREATE TABLE event_sequencer (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    last_seq  bigint NOT NULL
);
INSERT INTO event_sequencer (one, last_seq) VALUES (true, 0);

-- One row per event x endpoint. A worker owns an in_flight row only while its lease has not
-- expired and only through the claim_token it was given; every state change is guarded by it.
--
-- `due_at` is when a delivery can next be claimed: its retry time while pending (the paused
-- mark, 9223372036854775807, while its endpoint is disabled) and its lease expiry while in
-- flight. Delivered and failed rows have none, so the partial index below holds only open
-- work; a claim reads one endpoint's slice of it in order and stops at its limit.
CREATE TABLE deliveries (
    id                uuid PRIMARY KEY,
    event_id          uuid NOT NULL REFERENCES events (id),
    endpoint_id       uuid NOT NULL REFERENCES endpoints (id) ON DELETE CASCADE,
    status            text NOT NULL CHECK (status IN ('pending', 'in_flight', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    -- Attempts made before the last manual retry/recover; the retry schedule counts from here.
    retry_base        integer NOT NULL DEFAULT 0,
    next_attempt_at   bigint NOT NULL,
    lease_expires_at  bigint,
    claim_token       uuid,
    last_status       integer,
    last_error        text,
    delivered_at      bigint,
    created_at        bigint NOT NULL,
    updated_at        bigint NOT NULL,
    due_at            bigint GENERATED ALWAYS AS (
                          CASE status WHEN 'pending' THEN next_attempt_at
                                      WHEN 'in_flight' THEN lease_expires_at END) STORED,
    UNIQUE (event_id, endpoint_id)                -- also finds an event's deliveries
);
CREATE INDEX deliveries_endpoint_due ON deliveries (endpoint_id, due_at) WHERE due_at IS NOT NULL;
-- Live and expired leases per endpoint: what the per-endpoint cap counts.
CREATE INDEX deliveries_endpoint_leased ON deliveries (endpoint_id, lease_expires_at)
    WHERE status = 'in_flight';
-- Recovery finds an endpoint's failed deliveries; deleting an endpoint walks all of its rows.
CREATE INDEX deliveries_endpoint ON deliveries (endpoint_id, status);

-- Every attempt, kept after success and after dead-lettering.
CREATE TABLE delivery_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt       integer NOT NULL,
    started_at    bigint NOT NULL,
    duration_ms   bigint NOT NULL,
    status_code   integer,                     -- HTTP status, when a response came back
    error_kind    text,                        -- connect, timeout, ... when none did
    response_body text,                        -- first 1 KiB, lossily decoded
    outcome       text NOT NULL                -- delivered, retry, failed, endpoint_disabled
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, attempt);

-- `Idempotency-Key` on POST /orders. The order's transaction inserts the key's row first;
-- the primary key makes a second transaction with the same key wait for the first and then
-- see its row, so one key creates one order across replicas. A row whose expires_at has
-- passed counts as absent (a new request with the key replaces it). No foreign key to
-- orders: retention may delete an old order, and the stored answer stands on its own.
CREATE TABLE idempotency_keys (
    key              text PRIMARY KEY,        -- the header's value, 1 to 255 printable ASCII
    request_sha256   text NOT NULL,           -- hex SHA-256 of the order the body asked for
    order_id         uuid NOT NULL,           -- the order the first request created
    response_status  integer NOT NULL,        -- the first answer's status (201)
    response_body    text NOT NULL,           -- the first answer's JSON body, byte for byte
    created_at       bigint NOT NULL,         -- unix ms
    expires_at       bigint NOT NULL          -- unix ms; created_at + 24 h
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
