-- The older tier of the event id index (store/dedup.rs). Each appending
-- process keeps the fingerprints of the newest ids in memory; older ones are
-- moved here in large sorted batches (each batch touches each page once),
-- and looked up for every id the memory does not hold. A fingerprint is only
-- a candidate: the appender confirms it against the stored id.
CREATE TABLE event_fingerprints (
    fingerprint INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, position)
) WITHOUT ROWID;

-- Every event at a position up to `up_to` has its fingerprint in
-- event_fingerprints. Only ever moves forward.
CREATE TABLE event_fingerprints_mark (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    up_to INTEGER NOT NULL
);
INSERT INTO event_fingerprints_mark (id, up_to) VALUES (1, 0);
