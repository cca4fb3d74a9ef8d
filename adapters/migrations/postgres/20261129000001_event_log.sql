-- The append-only event log, its head and the subject keys that seal payloads.

CREATE TABLE events (
    position       BIGINT  PRIMARY KEY,
    event_id       UUID    NOT NULL,
    workspace_id   UUID    NOT NULL,
    stream_id      TEXT    NOT NULL,
    stream_version BIGINT  NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at    BIGINT  NOT NULL, -- microseconds since the Unix epoch
    key_id         UUID,             -- the subject key sealing `data`, if sealed
    data           BYTEA   NOT NULL,
    metadata       BYTEA   NOT NULL,
    hash           BYTEA   NOT NULL
);

-- Optimistic concurrency: a stream version exists once.
CREATE UNIQUE INDEX events_stream_version ON events (stream_id, stream_version);

-- Ordered by position, so it grows at its end only; it lets the event id
-- index in memory be loaded and caught up without reading payloads.
CREATE INDEX events_event_id_by_position ON events (position) INCLUDE (event_id);

CREATE FUNCTION onepd_reject_event_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP;
END
$$;

CREATE TRIGGER events_reject_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION onepd_reject_event_change();

CREATE TRIGGER events_reject_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION onepd_reject_event_change();

-- One row. Every append transaction locks it (SELECT … FOR UPDATE), which
-- serializes appends across processes; `key_epoch` changes whenever a subject
-- key is shredded so every process drops its cached keys.
CREATE TABLE log_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    position    BIGINT  NOT NULL,
    hash        BYTEA   NOT NULL,
    recorded_at BIGINT  NOT NULL,
    key_epoch   BIGINT  NOT NULL
);
INSERT INTO log_head (id, position, hash, recorded_at, key_epoch)
VALUES (1, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea, 0, 0);

-- Mutable on purpose: deleting a row erases every payload sealed with it.
CREATE TABLE subject_keys (
    key_id       UUID   PRIMARY KEY,
    subject_hash BYTEA  NOT NULL UNIQUE, -- keyed hash of (workspace, subject)
    wrapped_key  BYTEA  NOT NULL,        -- the key, sealed with the master key
    created_at   BIGINT NOT NULL
);

-- Which master key wraps this database's subject keys (a hash of it, never
-- the key), so a process started with another key is refused at once
-- instead of failing to open payloads later.
CREATE TABLE master_key_check (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    fingerprint BYTEA   NOT NULL
);
