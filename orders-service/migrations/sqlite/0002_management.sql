-- Subscription management (issue 4): secret rotation driven by configuration, redelivery with
-- a fresh retry budget, and recovery of an endpoint's failed deliveries by time window.

-- SHA-256 (hex) of the WEBHOOK_SECRET last applied to the configured subscription. It tells
-- "the environment still holds the same secret" (keep whatever the API rotated to) from "the
-- environment's secret changed" (rotate to it, keeping the old one for the grace period).
ALTER TABLE endpoints ADD COLUMN config_secret_sha256 TEXT;

-- Attempts made before the last manual retry/recover; the retry schedule counts from here, so
-- a redelivery gets the full schedule again while attempt numbers keep increasing.
ALTER TABLE deliveries ADD COLUMN retry_base INTEGER NOT NULL DEFAULT 0;

-- Recovery looks up an endpoint's failed deliveries; history lists an event's deliveries.
CREATE INDEX deliveries_event ON deliveries (event_id);
