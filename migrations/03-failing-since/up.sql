-- glance-sync state, version 3: since when each failing replica has been failing (the status
-- page and `status`). Set when a replica first fails, kept while it fails again or is retried
-- (pending), cleared when it is in sync or skipped.
ALTER TABLE replicas ADD COLUMN failing_since TEXT;

-- Replicas failing at the upgrade: their last failure is the earliest time known.
UPDATE replicas SET failing_since = updated_at WHERE state = 'failed';
