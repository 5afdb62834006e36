-- glance-sync state, version 1. Released migrations are never edited: add a new directory instead.

-- One row per run of a job.
CREATE TABLE runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    job           TEXT    NOT NULL,
    started_at    TEXT    NOT NULL,
    finished_at   TEXT,
    -- running | success | partial | failure | interrupted
    result        TEXT    NOT NULL DEFAULT 'running',
    images_copied INTEGER NOT NULL DEFAULT 0,
    bytes_copied  INTEGER NOT NULL DEFAULT 0,
    images_failed INTEGER NOT NULL DEFAULT 0,
    error         TEXT
);
CREATE INDEX runs_by_job ON runs (job, id);

-- Every image glance-sync created on a target, recorded BEFORE the create call (the id is chosen
-- by us). This is the ownership ledger: an image not listed here is never modified or deleted.
CREATE TABLE owned_images (
    target_cloud TEXT NOT NULL,
    target_id    TEXT NOT NULL,
    source_cloud TEXT NOT NULL,
    source_id    TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    deleted_at   TEXT,
    PRIMARY KEY (target_cloud, target_id)
);

-- The replication status of each selected source image on each target.
CREATE TABLE replicas (
    source_cloud  TEXT    NOT NULL,
    source_id     TEXT    NOT NULL,
    target_cloud  TEXT    NOT NULL,
    job           TEXT    NOT NULL,
    name          TEXT,
    -- name@algo:digest of the source image
    identity      TEXT    NOT NULL,
    -- the image holding this identity on the target (ours, or foreign when foreign_image = 1)
    target_id     TEXT,
    foreign_image INTEGER NOT NULL DEFAULT 0,
    -- pending | in_sync | failed | skipped
    state         TEXT    NOT NULL,
    bytes         INTEGER NOT NULL DEFAULT 0,
    -- copy attempts since the last success
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    first_seen_at TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    synced_at     TEXT,
    PRIMARY KEY (source_cloud, source_id, target_cloud)
);
CREATE INDEX replicas_failing ON replicas (state) WHERE state = 'failed';
