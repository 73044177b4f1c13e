-- One vocabulary for both services (issue 13): the token that proves which worker owns a
-- claimed job is its `claim_token`, and the end of its lease is `lease_expires_at`, as in
-- orders-service's `deliveries`.
--
-- RENAME COLUMN also rewrites what refers to the columns: the generated `due_at` (migration
-- 0002) and the partial index below. The comments inside the stored CREATE TABLE keep the
-- old names (SQLite renames identifiers, not prose); these are the names that hold.
ALTER TABLE notifications RENAME COLUMN lease_token TO claim_token;
ALTER TABLE notifications RENAME COLUMN lease_until TO lease_expires_at;

-- SQLite cannot rename an index: the lease renewal's index, under its new name, built anew.
DROP INDEX notifications_lease_token;
CREATE INDEX notifications_claim_token ON notifications (claim_token)
    WHERE claim_token IS NOT NULL;
