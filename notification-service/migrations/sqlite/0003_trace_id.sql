-- The trace id of the `traceparent` a webhook arrived with (32 lowercase hex digits), so the
-- email worker's log lines of its job carry the same `trace_id` as the sender's attempts and
-- the intake's request. NULL when the webhook came without a valid one (and for jobs queued
-- before this migration).
ALTER TABLE notifications ADD COLUMN trace_id TEXT;
