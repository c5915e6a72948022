-- Sessions, their processed events, the files they produced, and API key hashes.
-- Datetimes are ISO-8601 UTC text of fixed width, so text order is time order.

CREATE TABLE sessions (
    session_id        TEXT PRIMARY KEY,
    customer_id       TEXT NOT NULL,
    profile_id        TEXT NOT NULL,
    platform_call_id  TEXT NOT NULL,
    agent_platform_id TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    state             TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    ended_at          TEXT,
    acked_seq         INTEGER NOT NULL DEFAULT 0,
    recorded_ms       INTEGER NOT NULL DEFAULT 0,
    extra             TEXT NOT NULL DEFAULT '{}'
);
-- list_sessions(states) filters by state and orders by age
CREATE INDEX sessions_state_created ON sessions (state, created_at);
CREATE INDEX sessions_created ON sessions (created_at);

CREATE TABLE session_events (
    event_id   INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the app acks by id
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    event_type TEXT NOT NULL,
    created_at TEXT NOT NULL,
    acked_at   TEXT
);
CREATE INDEX session_events_session ON session_events (session_id, event_id);

CREATE TABLE files (
    file_id           INTEGER PRIMARY KEY,
    session_id        TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    key               TEXT NOT NULL UNIQUE,
    kind              TEXT NOT NULL,
    size              INTEGER NOT NULL,
    created_at        TEXT NOT NULL,
    duration_ms       INTEGER NOT NULL DEFAULT 0,
    seq               INTEGER NOT NULL DEFAULT 0,
    discontinuity     INTEGER NOT NULL DEFAULT 0,
    program_date_time TEXT,
    uploaded_at       TEXT
);
-- list_files(session_id, kind) orders by kind then seq
CREATE INDEX files_session_kind_seq ON files (session_id, kind, seq);

CREATE TABLE api_keys (
    key_hash   TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    created_at TEXT NOT NULL
);
