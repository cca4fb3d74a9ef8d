//! The statements of nodes and leases, written once for both databases:
//! `{now}` becomes the database's clock in microseconds since the epoch, so
//! every node measures a lease against one clock, whatever its own says.

/// PostgreSQL's clock, in microseconds since the epoch.
pub(crate) const POSTGRES_NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT";
/// SQLite's clock, in microseconds since the epoch.
pub(crate) const SQLITE_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)";

/// Takes lease `$1` for holder `$2` for `$3` microseconds when it is free,
/// expired, or `$2`'s already; its token grows by one unless `$2` holds it
/// unexpired (so work started under a lease that expired, even this
/// node's, is fenced off). Returns the token, or no row when another node
/// holds it.
pub(crate) const ACQUIRE: &str = "INSERT INTO cluster_leases (name, holder, token, expires_at, acquired_at, renewed_at) \
     VALUES ($1, $2, 1, {now} + $3, {now}, {now}) \
     ON CONFLICT (name) DO UPDATE SET \
       token = CASE WHEN cluster_leases.holder = excluded.holder AND cluster_leases.expires_at > {now} \
         THEN cluster_leases.token ELSE cluster_leases.token + 1 END, \
       acquired_at = CASE WHEN cluster_leases.holder = excluded.holder AND cluster_leases.expires_at > {now} \
         THEN cluster_leases.acquired_at ELSE excluded.acquired_at END, \
       holder = excluded.holder, expires_at = excluded.expires_at, renewed_at = excluded.renewed_at \
     WHERE cluster_leases.holder = excluded.holder OR cluster_leases.expires_at <= {now} \
     RETURNING token";

/// Extends lease `$1` by `$4` microseconds while holder `$2` still holds it
/// with token `$3` and it has not expired.
pub(crate) const RENEW: &str = "UPDATE cluster_leases SET expires_at = {now} + $4, renewed_at = {now} \
     WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > {now}";

/// Gives lease `$1` up at once (holder `$2`, token `$3`): the next node takes
/// it without waiting for it to expire.
pub(crate) const RELEASE: &str =
    "UPDATE cluster_leases SET expires_at = {now} WHERE name = $1 AND holder = $2 AND token = $3";

/// Deletes lease `$1` (holder `$2`, token `$3`): a finished replay job's,
/// whose id is never used again, so the table does not grow with the jobs.
pub(crate) const FORGET: &str = "DELETE FROM cluster_leases WHERE name = $1 AND holder = $2 AND token = $3";

/// The token of lease `$1` when holder `$2` holds it with token `$3`, unexpired.
pub(crate) const HELD: &str =
    "SELECT token FROM cluster_leases WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > {now}";

/// Every lease, with the database's clock.
pub(crate) const LEASES: &str = "SELECT name, holder, token, expires_at, acquired_at, renewed_at, {now} AS now \
     FROM cluster_leases ORDER BY name";

/// Says node `$1` is alive (started `$2`, addresses `$3` and `$4`, version
/// `$5`, process `$7` on host `$6` in process scope `$9`, lease time to
/// live `$8`).
pub(crate) const HEARTBEAT: &str = "INSERT INTO cluster_nodes (node_id, started_at, heartbeat_at, http_addr, grpc_addr, version, host, pid, ttl, scope) \
     VALUES ($1, $2, {now}, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at";

/// Every node still listed, with the database's clock.
pub(crate) const NODES: &str = "SELECT node_id, host, scope, pid, started_at, heartbeat_at, http_addr, grpc_addr, version, \
     ttl, {now} AS now \
     FROM cluster_nodes ORDER BY started_at, node_id";

/// Forgets the nodes silent for longer than `$1` microseconds.
pub(crate) const FORGET_NODES: &str = "DELETE FROM cluster_nodes WHERE heartbeat_at < {now} - $1";

/// Node `$1` stopped.
pub(crate) const LEAVE: &str = "DELETE FROM cluster_nodes WHERE node_id = $1";

/// Node `$1` is known to have stopped (its process is gone): its leases
/// expire now.
pub(crate) const EXPIRE_HELD_BY: &str =
    "UPDATE cluster_leases SET expires_at = {now} WHERE holder = $1 AND expires_at > {now}";

/// `statement` with the database's clock in place of `{now}`.
pub(crate) fn with_now(statement: &str, now: &str) -> String {
    statement.replace("{now}", now)
}

/// The statements as functions of one database's pool and connection.
macro_rules! statements {
    ($pool:ty, $conn:ty, $now:expr, $lock:expr) => {
        use onepd_domain::StoreError;
        use sqlx::Row;

        use crate::cluster::sql::*;
        use crate::cluster::{Fence, LeaseRow, NodeRow};
        use crate::store::backend::db_error;

        fn sql(statement: &str) -> sqlx::AssertSqlSafe<String> {
            sqlx::AssertSqlSafe(with_now(statement, $now))
        }

        pub(crate) async fn acquire(
            pool: &$pool,
            name: &str,
            holder: &str,
            ttl_micros: i64,
        ) -> Result<Option<i64>, StoreError> {
            sqlx::query_scalar(sql(ACQUIRE))
                .bind(name)
                .bind(holder)
                .bind(ttl_micros)
                .fetch_optional(pool)
                .await
                .map_err(db_error("taking a lease"))
        }

        pub(crate) async fn renew(pool: &$pool, fence: &Fence, ttl_micros: i64) -> Result<bool, StoreError> {
            let done = sqlx::query(sql(RENEW))
                .bind(&fence.lease)
                .bind(&fence.node)
                .bind(fence.token)
                .bind(ttl_micros)
                .execute(pool)
                .await
                .map_err(db_error("renewing a lease"))?;
            Ok(done.rows_affected() == 1)
        }

        pub(crate) async fn release(pool: &$pool, fence: &Fence) -> Result<(), StoreError> {
            sqlx::query(sql(RELEASE))
                .bind(&fence.lease)
                .bind(&fence.node)
                .bind(fence.token)
                .execute(pool)
                .await
                .map_err(db_error("giving a lease up"))?;
            Ok(())
        }

        pub(crate) async fn forget(pool: &$pool, fence: &Fence) -> Result<(), StoreError> {
            sqlx::query(sql(FORGET))
                .bind(&fence.lease)
                .bind(&fence.node)
                .bind(fence.token)
                .execute(pool)
                .await
                .map_err(db_error("forgetting a lease"))?;
            Ok(())
        }

        pub(crate) async fn held(conn: &mut $conn, fence: &Fence) -> Result<bool, StoreError> {
            let statement = format!("{}{}", with_now(HELD, $now), $lock);
            let token: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(statement))
                .bind(&fence.lease)
                .bind(&fence.node)
                .bind(fence.token)
                .fetch_optional(conn)
                .await
                .map_err(db_error("checking a lease"))?;
            Ok(token.is_some())
        }

        pub(crate) async fn leases(pool: &$pool) -> Result<(i64, Vec<LeaseRow>), StoreError> {
            let rows = sqlx::query(sql(LEASES)).fetch_all(pool).await.map_err(db_error("reading the leases"))?;
            let mut now = 0;
            let leases = rows
                .iter()
                .map(|row| {
                    now = row.try_get("now")?;
                    Ok(LeaseRow {
                        name: row.try_get("name")?,
                        holder: row.try_get("holder")?,
                        token: row.try_get("token")?,
                        expires_at: row.try_get("expires_at")?,
                        acquired_at: row.try_get("acquired_at")?,
                        renewed_at: row.try_get("renewed_at")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(db_error("reading the leases"))?;
            Ok((now, leases))
        }

        pub(crate) async fn heartbeat(pool: &$pool, node: &NodeRow, forget_micros: i64) -> Result<(), StoreError> {
            sqlx::query(sql(HEARTBEAT))
                .bind(&node.node_id)
                .bind(node.started_at)
                .bind(&node.http_addr)
                .bind(&node.grpc_addr)
                .bind(&node.version)
                .bind(&node.host)
                .bind(node.pid)
                .bind(node.ttl)
                .bind(&node.scope)
                .execute(pool)
                .await
                .map_err(db_error("saying the node is alive"))?;
            sqlx::query(sql(FORGET_NODES))
                .bind(forget_micros)
                .execute(pool)
                .await
                .map_err(db_error("forgetting silent nodes"))?;
            Ok(())
        }

        pub(crate) async fn nodes(pool: &$pool) -> Result<(i64, Vec<NodeRow>), StoreError> {
            let rows = sqlx::query(sql(NODES)).fetch_all(pool).await.map_err(db_error("reading the nodes"))?;
            let mut now = 0;
            let nodes = rows
                .iter()
                .map(|row| {
                    now = row.try_get("now")?;
                    Ok(NodeRow {
                        node_id: row.try_get("node_id")?,
                        host: row.try_get("host")?,
                        scope: row.try_get("scope")?,
                        pid: row.try_get("pid")?,
                        started_at: row.try_get("started_at")?,
                        heartbeat_at: row.try_get("heartbeat_at")?,
                        http_addr: row.try_get("http_addr")?,
                        grpc_addr: row.try_get("grpc_addr")?,
                        version: row.try_get("version")?,
                        ttl: row.try_get("ttl")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(db_error("reading the nodes"))?;
            Ok((now, nodes))
        }

        pub(crate) async fn expire_held_by(pool: &$pool, node_id: &str) -> Result<(), StoreError> {
            sqlx::query(sql(EXPIRE_HELD_BY))
                .bind(node_id)
                .execute(pool)
                .await
                .map_err(db_error("expiring a stopped node's leases"))?;
            Ok(())
        }

        pub(crate) async fn leave(pool: &$pool, node_id: &str) -> Result<(), StoreError> {
            sqlx::query(sql(LEAVE)).bind(node_id).execute(pool).await.map_err(db_error("leaving the cluster"))?;
            Ok(())
        }
    };
}

/// On SQLite, where a write transaction locks the whole database.
pub(crate) mod sqlite {
    statements!(sqlx::SqlitePool, sqlx::SqliteConnection, SQLITE_NOW, "");
}

/// On PostgreSQL, where a holder's check keeps the lease row from changing
/// hands until its transaction ends.
pub(crate) mod postgres {
    statements!(sqlx::PgPool, sqlx::PgConnection, POSTGRES_NOW, " FOR SHARE");
}
