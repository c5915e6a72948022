-- The webhook outbox: every cloud recording notice is written here before it is sent, so a
-- restart resumes delivery instead of losing it. A delivered notice's row is deleted; one given
-- up (refused, out of attempts, too old, pushed out by the queue bound) stays with its reason
-- for a while, so it is not retried after a restart and an operator can see why it was lost.

CREATE TABLE webhook_notices (
    notice_id   TEXT PRIMARY KEY,
    sid         TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    event_type  INTEGER NOT NULL,
    url         TEXT NOT NULL,
    secret      TEXT NOT NULL,
    payload     TEXT NOT NULL,           -- the JSON ``payload`` object, exactly as signed
    created_at  TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL,           -- pending | given_up
    reason      TEXT NOT NULL DEFAULT '', -- the last failure; why it was given up
    finished_at TEXT,                    -- when it was given up
    UNIQUE (sid, sequence)               -- a sequence number is never handed out twice
);

CREATE INDEX webhook_notices_by_state ON webhook_notices (state, created_at);

-- The last sequence number given to each sid's notices, so numbering continues after a restart
-- even when every notice of the sid has been delivered (and deleted).
CREATE TABLE webhook_sequences (
    sid           TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE INDEX webhook_sequences_by_age ON webhook_sequences (updated_at);
