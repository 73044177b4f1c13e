-- Claims served by an index in O(batch), whatever the backlog (issue 9).
--
-- `due_at` is when a delivery can next be claimed: its retry time while pending (PAUSED_AT,
-- beyond every real time, while its endpoint is disabled) and its lease expiry while in
-- flight (when its worker died, that is when another takes it over). Delivered and failed
-- rows have none, so the partial index below holds only open work. A claim reads one
-- endpoint's slice of it in order and stops at its limit; the next-due query reads its
-- first entry.
ALTER TABLE deliveries ADD COLUMN due_at INTEGER
    GENERATED ALWAYS AS (CASE status WHEN 'pending' THEN next_attempt_at
                                     WHEN 'in_flight' THEN lease_expires_at END) VIRTUAL;
CREATE INDEX deliveries_endpoint_due ON deliveries (endpoint_id, due_at) WHERE due_at IS NOT NULL;

-- Replaced by deliveries_endpoint_due: maintaining them cost every state change two more
-- index writes, and their OR-ed use forced a sort of every due row.
DROP INDEX deliveries_due;
DROP INDEX deliveries_lease;
