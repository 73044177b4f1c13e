-- Fewer and cheaper index operations per delivery (issue 9).
--
-- `deliveries_event (event_id)` (migration 0002) duplicates the leading column of the
-- UNIQUE (event_id, endpoint_id) index every delivery already has, which serves the same
-- lookups (an event's deliveries, the foreign key from events). Each delivery written paid
-- for one more B-tree insert, and one more page in the WAL, for nothing.
DROP INDEX IF EXISTS deliveries_event;

-- Counting an endpoint's live leases (every claim, and every order that claims its own
-- delivery) read each in-flight row from the table to check `lease_expires_at`: with the
-- per-endpoint cap of 32 reached, 32 row lookups per order. With the lease expiry in the
-- index the count reads index entries only (a covering index), and only the live ones.
DROP INDEX deliveries_endpoint;
CREATE INDEX deliveries_endpoint ON deliveries (endpoint_id, status, lease_expires_at);
