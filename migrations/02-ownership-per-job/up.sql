-- glance-sync state, version 2: every copy belongs to one job, copies in flight are known, and
-- images that carry our marker but are missing from the ledger are counted.

-- The job that created the image: only that job may clean it up, patch, prune or replace it.
-- NULL for images recorded by version 1 whose job is unknown (see the backfill below): those
-- belong to every job copying from their source cloud, as they did in version 1.
ALTER TABLE owned_images ADD COLUMN job TEXT;
-- The run copying the image, until its copy ended (verified, failed or deleted). While that run
-- is still going, the image is in flight and no other run or plan may touch it.
ALTER TABLE owned_images ADD COLUMN in_flight_run INTEGER;

-- Version 1 kept the job of each copy only in `replicas`.
UPDATE owned_images SET job = (
    SELECT r.job FROM replicas r
    WHERE r.source_cloud = owned_images.source_cloud
      AND r.source_id = owned_images.source_id
      AND r.target_cloud = owned_images.target_cloud);

CREATE INDEX owned_images_by_source ON owned_images (target_cloud, source_cloud, source_id);

-- Per job and target, how many images owned by glance-sync's project carry our provenance
-- marker for the job's source cloud but are not in the ledger (a lost or restored state
-- database), as the job's last run saw them. `glance-sync adopt` records them.
CREATE TABLE unadopted (
    job          TEXT    NOT NULL,
    target_cloud TEXT    NOT NULL,
    images       INTEGER NOT NULL,
    seen_at      TEXT    NOT NULL,
    PRIMARY KEY (job, target_cloud)
);
