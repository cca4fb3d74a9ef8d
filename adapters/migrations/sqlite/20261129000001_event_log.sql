-- The append-only event log, its head and the subject keys that seal payloads.

CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL,
    workspace_id   BLOB    NOT NULL,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at    INTEGER NOT NULL, -- microseconds since the Unix epoch
    key_id         BLOB,             -- the subject key sealing `data`, if sealed
    data           BLOB    NOT NULL,
    metadata       BLOB    NOT NULL,
    hash           BLOB    NOT NULL
);

-- Optimistic concurrency: a stream version exists once.
CREATE UNIQUE INDEX events_stream_version ON events (stream_id, stream_version);

-- Ordered by position, so it grows at its end only; it lets the event id
-- index in memory be loaded and caught up without reading payloads.
CREATE INDEX events_event_id_by_position ON events (position, event_id);

CREATE TRIGGER events_reject_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: UPDATE refused');
END;

CREATE TRIGGER events_reject_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: DELETE refused');
END;

-- One row. Every append transaction writes it, which serializes appends
-- across processes; `key_epoch` changes whenever a subject key is shredded so
-- every process drops its cached keys.
CREATE TABLE log_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    position    INTEGER NOT NULL,
    hash        BLOB    NOT NULL,
    recorded_at INTEGER NOT NULL,
    key_epoch   INTEGER NOT NULL
);
INSERT INTO log_head (id, position, hash, recorded_at, key_epoch) VALUES (1, 0, zeroblob(32), 0, 0);

-- Mutable on purpose: deleting a row erases every payload sealed with it.
CREATE TABLE subject_keys (
    key_id       BLOB    PRIMARY KEY,
    subject_hash BLOB    NOT NULL UNIQUE, -- keyed hash of (workspace, subject)
    wrapped_key  BLOB    NOT NULL,        -- the key, sealed with the master key
    created_at   INTEGER NOT NULL
);

-- Which master key wraps this database's subject keys (a hash of it, never
-- the key), so a process started with another key is refused at once
-- instead of failing to open payloads later.
CREATE TABLE master_key_check (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint BLOB    NOT NULL
);
