-- Cloud recording resources and sessions, so a restart neither forgets a resource acquired a
-- moment before nor a recording under way: a recording session goes on under the same sid after
-- a restart, a stopped one still answers query (status and fileList) for as long as it is kept.

-- What acquire handed out: valid 5 minutes, and for one session (sid, once started).
CREATE TABLE cloud_resources (
    resource_id TEXT PRIMARY KEY,
    node        TEXT NOT NULL,             -- the node it was placed on (the id says it too)
    appid       TEXT NOT NULL,
    cname       TEXT NOT NULL,
    uid         TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    request     TEXT NOT NULL DEFAULT '{}', -- the acquire body as sent (JSON), for start to match
    sid         TEXT                       -- the session it started
);

CREATE INDEX cloud_resources_by_age ON cloud_resources (node, acquired_at);

-- One recording. ``state`` is JSON: the start's clientRequest without its storageConfig (the
-- keys stay in the store registry, mode 0600), the options in force (subscriptions after
-- updates, the last updateLayout), the fileList entries, MP4s and the number of snapshots.
CREATE TABLE cloud_sessions (
    sid              TEXT PRIMARY KEY,
    resource_id      TEXT NOT NULL,
    node             TEXT NOT NULL,
    appid            TEXT NOT NULL,
    cname            TEXT NOT NULL,
    uid              TEXT NOT NULL,
    mode             TEXT NOT NULL,          -- individual | mix
    status           INTEGER NOT NULL,       -- the API's status: 5 recording ... 8 exited, 20
    store_id         TEXT NOT NULL,          -- where its files go (storage.registry)
    started_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    ended_at         TEXT,                   -- stop requested (or the recording exited)
    exit_reason      TEXT NOT NULL DEFAULT '',
    uploading_status TEXT NOT NULL DEFAULT '',
    state            TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX cloud_sessions_by_node ON cloud_sessions (node, ended_at);

-- Every segment handed to the uploader, per playlist, in order: after a restart a playlist
-- goes on with these, then an EXT-X-DISCONTINUITY and what is recorded next.
CREATE TABLE cloud_segments (
    sid               TEXT NOT NULL,
    playlist          TEXT NOT NULL,       -- its file name, e.g. <sid>_<cname>.m3u8
    seq               INTEGER NOT NULL,    -- its place in the playlist, from 0 over every run
    uri               TEXT NOT NULL,
    duration_s        REAL NOT NULL,
    program_date_time TEXT NOT NULL,
    discontinuity     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sid, playlist, seq)
) WITHOUT ROWID;
