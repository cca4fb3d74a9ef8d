-- The read models of projections, in the schema onepd_read of the event
-- log's database. Derived data: dropping the schema and rebuilding every
-- projection loses nothing.

-- BIGSERIAL: a sequence never hands out an id twice, so a writer holding a
-- dropped generation's id can never write into a newer generation.
CREATE TABLE projection_generations (
    id         BIGSERIAL PRIMARY KEY,
    projection TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    checkpoint BIGINT  NOT NULL, -- every event up to this position is applied
    live       BOOLEAN NOT NULL DEFAULT false,
    created_at BIGINT  NOT NULL  -- microseconds since the Unix epoch
);

CREATE INDEX projection_generations_by_projection ON projection_generations (projection, id);

-- Readers are served from at most one generation per projection.
CREATE UNIQUE INDEX projection_generations_one_live ON projection_generations (projection) WHERE live;

-- COLLATE "C": keys compare as bytes, which is faster than a locale's rules
-- and the same order on every server.
CREATE TABLE projection_docs (
    generation BIGINT NOT NULL,
    workspace  UUID   NOT NULL,
    collection TEXT   COLLATE "C" NOT NULL,
    key        TEXT   COLLATE "C" NOT NULL,
    doc        BYTEA  NOT NULL,
    PRIMARY KEY (generation, workspace, collection, key)
);

-- Generations already gone for readers and writers whose documents are
-- still to be deleted. Deleting a large generation's documents is a second
-- transaction, so promoting never waits for it; a crash in between leaves
-- the id here and the next sweep finishes the job.
CREATE TABLE projection_dropped (
    generation BIGINT PRIMARY KEY
);
