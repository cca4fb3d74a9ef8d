-- The read models of projections, in their own file beside the event log.
-- Derived data: deleting this file and rebuilding every projection loses
-- nothing.

-- AUTOINCREMENT: an id is never reused, even after the highest one is
-- dropped, so a writer holding a dropped generation's id can never write
-- into a newer generation.
CREATE TABLE projection_generations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    projection TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    checkpoint INTEGER NOT NULL, -- every event up to this position is applied
    live       INTEGER NOT NULL DEFAULT 0 CHECK (live IN (0, 1)),
    created_at INTEGER NOT NULL  -- microseconds since the Unix epoch
);

CREATE INDEX projection_generations_by_projection ON projection_generations (projection, id);

-- Readers are served from at most one generation per projection.
CREATE UNIQUE INDEX projection_generations_one_live ON projection_generations (projection) WHERE live = 1;

-- WITHOUT ROWID: the primary key is the table's only b-tree, so a document
-- is stored once and found with one descent.
CREATE TABLE projection_docs (
    generation INTEGER NOT NULL,
    workspace  BLOB    NOT NULL, -- the workspace's UUID, 16 bytes
    collection TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    doc        BLOB    NOT NULL,
    PRIMARY KEY (generation, workspace, collection, key)
) WITHOUT ROWID;

-- Generations already gone for readers and writers whose documents are
-- still to be deleted. Deleting a large generation's documents is a second
-- transaction, so promoting never waits for it; a crash in between leaves
-- the id here and the next sweep finishes the job.
CREATE TABLE projection_dropped (
    generation INTEGER PRIMARY KEY
);
