-- Nodes and leases (adapters/src/cluster.rs). Several `onepd serve`
-- processes may share one database: each says it is alive in
-- cluster_nodes, and each singleton (the profiles projection, the audience
-- membership, a destination's live run, a replay job) is run by the node
-- holding its lease. A lease's token grows by one at every change of
-- holder; every write the holder makes for it checks the token in the same
-- transaction, so a node that lost the lease cannot write. Times are
-- microseconds since the epoch, on the database's clock.
CREATE TABLE cluster_leases (
    name        TEXT   PRIMARY KEY,
    holder      TEXT   NOT NULL,
    token       BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    acquired_at BIGINT NOT NULL,
    renewed_at  BIGINT NOT NULL
);

CREATE TABLE cluster_nodes (
    node_id      TEXT   PRIMARY KEY,
    host         TEXT   NOT NULL,
    -- The process namespace its pid means something in (boot id and pid
    -- namespace): only a node of the same one may judge the pid gone.
    scope        TEXT   NOT NULL,
    pid          BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    http_addr    TEXT   NOT NULL,
    grpc_addr    TEXT   NOT NULL,
    version      TEXT   NOT NULL,
    -- Its lease time to live: it counts as gone when silent for longer.
    ttl          BIGINT NOT NULL
);
