-- Apps of the channel API: an app certificate signs its channel tokens; an app made without
-- tokens (development) lets publishers name their uid.

CREATE TABLE apps (
    appid          TEXT PRIMARY KEY,
    certificate    TEXT NOT NULL,
    token_required INTEGER NOT NULL,
    created_at     TEXT NOT NULL
);
