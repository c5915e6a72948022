-- Tenants and their users (API keys belong to both), and the browser-extension recordings.

CREATE TABLE tenants (
    tenant_id  TEXT PRIMARY KEY,           -- a UUID
    name       TEXT UNIQUE,                -- optional human name, what `apikey create` takes
    created_at TEXT NOT NULL
);

CREATE TABLE users (
    user_id    TEXT PRIMARY KEY,           -- a UUID
    tenant_id  TEXT NOT NULL REFERENCES tenants (tenant_id),
    name       TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);

-- `api_keys` (0001) already carries tenant_id and user_id; find keys of a tenant quickly
CREATE INDEX api_keys_tenant ON api_keys (tenant_id, user_id);

CREATE TABLE recordings (
    recording_id      TEXT PRIMARY KEY,     -- UUIDv7 made under the write lock: id order is
                                            -- insert order, so an id is a stable list cursor
    tenant_id         TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    project_id        TEXT,
    name              TEXT,
    status            TEXT NOT NULL,        -- uploading | processing | ready | failed
    started_at        TEXT NOT NULL,
    ended_at          TEXT,
    duration_ms       INTEGER NOT NULL DEFAULT 0,
    event_count       INTEGER NOT NULL DEFAULT 0,
    has_video         INTEGER NOT NULL DEFAULT 0,
    has_audio         INTEGER NOT NULL DEFAULT 0,
    navigations       TEXT NOT NULL DEFAULT '[]',
    journey_id        TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    events_key        TEXT NOT NULL,        -- object key of the compressed event array
    events_bytes      INTEGER NOT NULL DEFAULT 0,  -- the array's JSON size before compression
    events_stored     INTEGER NOT NULL DEFAULT 0,  -- ... and after
    video_key         TEXT,                 -- where the presigned PUT puts the original
    video_duration_ms INTEGER,
    failure_reason    TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0  -- processing runs started (resumed ones too)
);
-- list: one tenant, newest first, optionally one status or one project
CREATE INDEX recordings_tenant ON recordings (tenant_id, recording_id);
CREATE INDEX recordings_tenant_status ON recordings (tenant_id, status, recording_id);
CREATE INDEX recordings_tenant_project ON recordings (tenant_id, project_id, recording_id);
-- the processing job resumes every `processing` recording at start
CREATE INDEX recordings_status ON recordings (status);
