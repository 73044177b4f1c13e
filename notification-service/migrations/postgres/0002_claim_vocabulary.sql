-- One vocabulary for both services (issue 13): the token that proves which worker owns a
-- claimed job is its `claim_token`, and the end of its lease is `lease_expires_at`, as in
-- orders-service's `deliveries`.
--
-- PostgreSQL refers to columns by number, so the generated `due_at` and the partial index
-- follow the rename; the index is renamed in place (no rebuild).
ALTER TABLE notifications RENAME COLUMN lease_token TO claim_token;
ALTER TABLE notifications RENAME COLUMN lease_until TO lease_expires_at;
ALTER INDEX notifications_lease_token RENAME TO notifications_claim_token;
