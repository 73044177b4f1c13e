-- `Idempotency-Key` on POST /orders (hardening): a client that retries after a timeout or a
-- 5xx gets the first answer again instead of a second order and a second email.
--
-- Keys are global: POST /orders has no authentication, so there is no client to scope them
-- to; a key is only as private as the client keeps it (use a random UUID per order).
--
-- The row is written in the same group-committed transaction as the order it created, and
-- looked up there before the order is written, so two requests with one key can never both
-- create an order. A row whose expires_at has passed counts as absent (a new request with
-- the key replaces it) and is deleted in small batches in the background.
--
-- No foreign key to orders: retention may delete an old order, and the stored answer stands
-- on its own.
CREATE TABLE idempotency_keys (
    key              TEXT PRIMARY KEY,        -- the header's value, 1 to 255 printable ASCII
    request_sha256   TEXT NOT NULL,           -- hex SHA-256 of the order the body asked for
    order_id         TEXT NOT NULL,           -- the order the first request created
    response_status  INTEGER NOT NULL,        -- the first answer's status (201)
    response_body    TEXT NOT NULL,           -- the first answer's JSON body, byte for byte
    created_at       INTEGER NOT NULL,        -- unix ms
    expires_at       INTEGER NOT NULL         -- unix ms; created_at + 24 h
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);
