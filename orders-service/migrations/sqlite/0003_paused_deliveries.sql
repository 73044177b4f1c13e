-- A disabled endpoint's pending deliveries are "paused": their next_attempt_at is set to the
-- largest INTEGER (9223372036854775807), which takes them out of the due range of the
-- deliveries_due index, so claims and the next-due query no longer walk past them. Enabling
-- the endpoint makes them due again. This pauses what endpoints disabled before this
-- migration left pending.
UPDATE deliveries SET next_attempt_at = 9223372036854775807
WHERE status = 'pending'
  AND endpoint_id IN (SELECT id FROM endpoints WHERE enabled = 0);
