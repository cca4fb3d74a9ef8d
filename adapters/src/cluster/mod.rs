//! Several onepd nodes on one database: nodes, leases and fencing.
//!
//! Any node ingests: appends from every node serialize on the log head's
//! row lock, so positions stay gap-free and the hash chain whole. What must
//! run once — the profiles projection, the audience membership and its
//! clock, each destination's live run, each replay job — runs on the node
//! that holds its **lease**, a row of `cluster_leases`:
//!
//! - a [`Node`] says it is alive every third of the lease's time to live
//!   (`cluster_nodes`), renews the leases it holds, and takes free ones up
//!   to its fair share (the wanted leases divided by the live nodes),
//!   preferring those that hash highest with its id, so nodes spread the
//!   work without talking to each other; above its share it gives the
//!   extras up, so a node that joins gets work at once;
//! - a lease not renewed within its time to live (its node died, paused or
//!   lost the database) expires, and another node takes it over from the
//!   checkpoint persisted by the last holder;
//! - every change of holder adds one to the lease's **token**, and every
//!   write a holder makes under it ([`crate::EventLog::fenced`],
//!   [`crate::readstore::ReadStore::fenced`]) checks holder and token in the
//!   same transaction: a node that lost its lease cannot write, even if it
//!   has not noticed yet.
//!
//! Leases are measured on the database's clock, never a node's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use onepd_domain::StoreError;
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::EventLog;

pub(crate) mod sql;

/// The lease of the profiles projection.
pub const PROFILES_LEASE: &str = "projection:profiles";
/// The lease of the audience membership and its clock.
pub const AUDIENCES_LEASE: &str = "projection:audiences";

/// The lease of a destination's live run.
pub fn destination_lease(destination: uuid::Uuid) -> String {
    format!("destination:{destination}")
}

/// The lease of a replay job.
pub fn replay_lease(job: uuid::Uuid) -> String {
    format!("replay:{job}")
}

/// A lease as its holder writes under it: every write checks that `node`
/// still holds `lease` with `token`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Fence {
    /// The lease's name.
    pub lease: String,
    /// The holding node's id.
    pub node: String,
    /// The token it was taken with.
    pub token: i64,
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    /// Its name.
    pub name: String,
    /// The node that holds (or last held) it.
    pub holder: String,
    /// Its token.
    pub token: i64,
    /// When it expires unless renewed (microseconds, database clock).
    pub expires_at: i64,
    /// When its holder took it.
    pub acquired_at: i64,
    /// When its holder last renewed it.
    pub renewed_at: i64,
}

/// A node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRow {
    /// Its id.
    pub node_id: String,
    /// The host it runs on.
    pub host: String,
    /// The process namespace its pid is in (the kernel's boot id and the
    /// pid namespace): nodes of one scope can tell whether its process runs.
    pub scope: String,
    /// Its process id there.
    pub pid: i64,
    /// When it started (microseconds).
    pub started_at: i64,
    /// When it last said it was alive (microseconds, database clock).
    pub heartbeat_at: i64,
    /// Where its HTTP API listens.
    pub http_addr: String,
    /// Where its gRPC services listen.
    pub grpc_addr: String,
    /// Its onepd version.
    pub version: String,
    /// Its lease time to live (microseconds): it counts as gone when silent
    /// for longer.
    pub ttl: i64,
}

impl LeaseRow {
    /// Whether it is held (unexpired) at `now`.
    pub fn held(&self, now: i64) -> bool {
        self.expires_at > now
    }
}

impl NodeRow {
    /// Whether it said it was alive within its time to live of `now`.
    pub fn alive(&self, now: i64) -> bool {
        self.heartbeat_at > now - self.ttl
    }
}

/// The database the nodes and leases live in: the log's.
#[derive(Clone, Debug)]
pub enum ClusterDb {
    /// SQLite.
    Sqlite(sqlx::SqlitePool),
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
}

impl ClusterDb {
    /// Takes `name` for `holder` when it is free, expired or `holder`'s: its
    /// token, or `None` when another node holds it.
    pub async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        let ttl = ttl.as_micros() as i64;
        match self {
            ClusterDb::Sqlite(pool) => sql::sqlite::acquire(pool, name, holder, ttl).await,
            ClusterDb::Postgres(pool) => sql::postgres::acquire(pool, name, holder, ttl).await,
        }
    }

    /// Extends `fence`'s lease by `ttl`: false when it was lost.
    pub async fn renew(&self, fence: &Fence, ttl: Duration) -> Result<bool, StoreError> {
        let ttl = ttl.as_micros() as i64;
        match self {
            ClusterDb::Sqlite(pool) => sql::sqlite::renew(pool, fence, ttl).await,
            ClusterDb::Postgres(pool) => sql::postgres::renew(pool, fence, ttl).await,
        }
    }

    /// Gives `fence`'s lease up at once.
    pub async fn release(&self, fence: &Fence) -> Result<(), StoreError> {
        match self {
            ClusterDb::Sqlite(pool) => sql::sqlite::release(pool, fence).await,
            ClusterDb::Postgres(pool) => sql::postgres::release(pool, fence).await,
        }
    }

    /// Deletes `fence`'s lease: work that is over for good.
    async fn forget(&self, fence: &Fence) -> Result<(), StoreError> {
        match self {
            ClusterDb::Sqlite(pool) => sql::sqlite::forget(pool, fence).await,
            ClusterDb::Postgres(pool) => sql::postgres::forget(pool, fence).await,
        }
    }

    /// Whether `fence`'s node still holds its lease (outside any write: a
    /// write checks in its own transaction).
    pub async fn held(&self, fence: &Fence) -> Result<bool, StoreError> {
        match self {
            ClusterDb::Sqlite(pool) => {
                let mut conn = pool.acquire().await.map_err(crate::store::backend::db_error("checking a lease"))?;
                sql::sqlite::held(&mut conn, fence).await
            }
            ClusterDb::Postgres(pool) => {
                let mut conn = pool.acquire().await.map_err(crate::store::backend::db_error("checking a lease"))?;
                sql::postgres::held(&mut conn, fence).await
            }
        }
    }

    /// Every lease, and the database's clock.
    pub async fn leases(&self) -> Result<(i64, Vec<LeaseRow>), StoreError> {
        match self {
            ClusterDb::Sqlite(pool) => sql::sqlite::leases(pool).await,
            ClusterDb::Postgres(pool) => sql::postgres::leases(pool).await,
        }
    }

    /// Every node heard from lately, and the database's clock.
    pub async fn nodes(&self) -> Result<(i64, Vec<NodeRow>), StoreError> {
        match self {
            ClusterDb::Sqlite(pool) => sql::sqlite::nodes(pool).await,
            ClusterDb::Postgres(pool) => sql::postgres::nodes(pool).await,
        }
    }

    async fn heartbeat(&self, node: &NodeRow, forget: Duration) -> Result<(), StoreError> {
        let forget = forget.as_micros() as i64;
        match self {
            ClusterDb::Sqlite(pool) => sql::sqlite::heartbeat(pool, node, forget).await,
            ClusterDb::Postgres(pool) => sql::postgres::heartbeat(pool, node, forget).await,
        }
    }

    async fn expire_held_by(&self, node: &str) -> Result<(), StoreError> {
        match self {
            ClusterDb::Sqlite(pool) => sql::sqlite::expire_held_by(pool, node).await,
            ClusterDb::Postgres(pool) => sql::postgres::expire_held_by(pool, node).await,
        }
    }

    async fn leave(&self, node: &str) -> Result<(), StoreError> {
        match self {
            ClusterDb::Sqlite(pool) => sql::sqlite::leave(pool, node).await,
            ClusterDb::Postgres(pool) => sql::postgres::leave(pool, node).await,
        }
    }
}

/// How a node joins.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// A lease's time to live: a node silent this long loses its leases.
    pub ttl: Duration,
    /// Where its HTTP API listens.
    pub http_addr: String,
    /// Where its gRPC services listen.
    pub grpc_addr: String,
}

/// This process as a node: the leases it holds, kept by a task.
pub struct Node {
    id: String,
    db: ClusterDb,
    ttl: Duration,
    /// The leases wanted, by who wants them.
    wanted: Mutex<BTreeMap<String, BTreeSet<String>>>,
    held: watch::Sender<BTreeMap<String, Fence>>,
    /// Until when each held lease counts as held without another renewal
    /// going through: past it, the watchdog withdraws it at once, even if
    /// the keeper's round is stuck on a slow database.
    deadlines: Mutex<BTreeMap<String, Instant>>,
    wake: Notify,
    keeper: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl Node {
    /// Says this node is alive in `log`'s database and starts keeping its
    /// leases.
    pub async fn join(log: &EventLog, options: NodeOptions) -> Result<Arc<Node>, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let ttl = options.ttl.max(Duration::from_millis(300));
        let row = NodeRow {
            node_id: id.clone(),
            host: host_name(),
            scope: process_scope(),
            pid: i64::from(std::process::id()),
            started_at: crate::ingest::now().0,
            heartbeat_at: 0,
            http_addr: options.http_addr,
            grpc_addr: options.grpc_addr,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ttl: ttl.as_micros() as i64,
        };
        let db = log.cluster_db();
        db.heartbeat(&row, ttl * 30).await?;
        // A node of this process namespace (same boot, same pid namespace)
        // whose process is gone — this one's previous run, killed — can
        // write nothing more: its leases are taken over now rather than
        // after they expire.
        let (_, nodes) = db.nodes().await?;
        let same_scope =
            |other: &&NodeRow| other.node_id != row.node_id && !row.scope.is_empty() && other.scope == row.scope;
        for gone in nodes.iter().filter(same_scope) {
            if !process_alive(gone.pid) {
                tracing::info!(node = %gone.node_id, pid = gone.pid, "cluster: a stopped node of this host; its leases are free");
                db.expire_held_by(&gone.node_id).await?;
                db.leave(&gone.node_id).await?;
            }
        }
        let node = Arc::new(Node {
            id,
            db,
            ttl,
            wanted: Mutex::default(),
            held: watch::channel(BTreeMap::new()).0,
            deadlines: Mutex::default(),
            wake: Notify::new(),
            keeper: Mutex::default(),
        });
        let weak = Arc::downgrade(&node);
        let keeper = tokio::spawn(async move {
            tokio::join!(keep(weak.clone(), row), watchdog(weak));
        });
        *node.keeper.lock().expect("not poisoned") = Some(keeper);
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets the leases `owner` wants (replacing what it wanted before); the
    /// node takes its share of them, and gives up those no longer wanted.
    pub fn want(&self, owner: &str, leases: BTreeSet<String>) {
        let mut wanted = self.wanted.lock().expect("not poisoned");
        if wanted.get(owner) != Some(&leases) {
            wanted.insert(owner.to_owned(), leases);
            self.wake.notify_one();
        }
    }

    /// The fence of `lease` while this node holds it.
    pub fn fence(&self, lease: &str) -> Option<Fence> {
        self.held.borrow().get(lease).cloned()
    }

    /// The leases this node holds, as they change.
    pub fn watch(&self) -> watch::Receiver<BTreeMap<String, Fence>> {
        self.held.subscribe()
    }

    /// Gives every lease up and says this node has stopped, so the others
    /// take its work over at once rather than after the time to live.
    pub async fn leave(&self) {
        if let Some(keeper) = self.keeper.lock().expect("not poisoned").take() {
            keeper.abort();
        }
        let held = self.held.send_replace(BTreeMap::new());
        for fence in held.values() {
            let _ = self.db.release(fence).await;
        }
        let _ = self.db.leave(&self.id).await;
    }

    fn all_wanted(&self) -> BTreeSet<String> {
        self.wanted.lock().expect("not poisoned").values().flatten().cloned().collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.lock().expect("not poisoned").take() {
            keeper.abort();
        }
    }
}

/// Where a lease this node holds stands, locally.
struct Holding {
    fence: Fence,
    /// Until when it counts as held without a renewal that went through.
    valid_until: Instant,
    /// Since when this node holds it.
    since: Instant,
}

/// A lease let go, given up in the database once its work has had time to
/// stop.
struct LetGo {
    fence: Fence,
    at: Instant,
    /// The work is over for good (a finished replay job): the lease's row
    /// is deleted rather than given up.
    over: bool,
}

/// Publishes the held leases, with metrics.
fn publish(node: &Node, fences: BTreeMap<String, Fence>) {
    node.held.send_if_modified(|current| {
        let changed = *current != fences;
        if changed {
            for lease in current.keys().filter(|lease| !fences.contains_key(*lease)) {
                metrics::gauge!("onepd_cluster_lease_held", "lease" => lease.clone()).set(0.0);
            }
            for lease in fences.keys() {
                metrics::gauge!("onepd_cluster_lease_held", "lease" => lease.clone()).set(1.0);
            }
            metrics::gauge!("onepd_cluster_leases_held").set(fences.len() as f64);
        }
        *current = fences;
        changed
    });
}

/// Withdraws every held lease whose local deadline has passed, within a
/// tenth of a second, whatever the keeper is doing.
async fn watchdog(node: std::sync::Weak<Node>) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Some(node) = node.upgrade() else { return };
        let now = Instant::now();
        let expired: Vec<String> = (node.deadlines.lock().expect("not poisoned").iter())
            .filter(|(_, until)| **until <= now)
            .map(|(lease, _)| lease.clone())
            .collect();
        if expired.is_empty() {
            continue;
        }
        let mut fences = node.held.borrow().clone();
        for lease in &expired {
            if fences.remove(lease).is_some() {
                tracing::warn!(lease = %lease, "cluster: lease not renewed in time; its work stops here");
            }
        }
        publish(&node, fences);
    }
}

/// The keeper: a round every third of the time to live, or when what is
/// wanted changes.
async fn keep(node: std::sync::Weak<Node>, row: NodeRow) {
    let mut holding: BTreeMap<String, Holding> = BTreeMap::new();
    let mut let_go: Vec<LetGo> = Vec::new();
    loop {
        let Some(strong) = node.upgrade() else { return };
        let interval = strong.ttl / 3;
        if let Err(err) = round(&strong, &row, &mut holding, &mut let_go).await {
            tracing::warn!(cause = %err, "cluster: the leases could not be kept this round");
        }
        let now = Instant::now();
        holding.retain(|_, held| held.valid_until > now);
        *strong.deadlines.lock().expect("not poisoned") =
            holding.iter().map(|(name, held)| (name.clone(), held.valid_until)).collect();
        publish(&strong, holding.iter().map(|(name, held)| (name.clone(), held.fence.clone())).collect());
        let wake = async { strong.wake.notified().await };
        let _ = tokio::time::timeout(interval, wake).await;
    }
}

/// Whether a lease may be let go for another node to take: a destination's
/// live delivery (which resumes from its checkpoint) this node has held for
/// a while. The projections (costly to start) and replay jobs (which start
/// over) stay where they are until their node goes.
fn movable(lease: &str, held: &Holding, ttl: Duration) -> bool {
    lease.starts_with("destination:") && held.since.elapsed() >= ttl * 2
}

/// One round: say the node is alive, give up what was let go a while ago,
/// renew, let go, take.
async fn round(
    node: &Node,
    row: &NodeRow,
    holding: &mut BTreeMap<String, Holding>,
    let_go: &mut Vec<LetGo>,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let valid_until = started + node.ttl.mul_f64(0.8);
    node.db.heartbeat(row, node.ttl * 30).await?;
    // A lease let go: its work was told to stop when it was let go; a third
    // of the time to live later another node may take it without waiting
    // for it to expire.
    let grace = node.ttl / 3;
    let (due, later): (Vec<LetGo>, Vec<LetGo>) =
        std::mem::take(let_go).into_iter().partition(|l| l.at.elapsed() >= grace);
    *let_go = later;
    for LetGo { fence, over, .. } in due {
        if over { node.db.forget(&fence).await? } else { node.db.release(&fence).await? }
    }
    let wanted = node.all_wanted();
    let (now, nodes) = node.db.nodes().await?;
    let live: Vec<&NodeRow> = nodes.iter().filter(|other| other.alive(now)).collect();
    metrics::gauge!("onepd_cluster_nodes_alive").set(live.len() as f64);
    let share = wanted.len().div_ceil(live.len().max(1));

    // Renew what is still wanted; let the rest go.
    let names: Vec<String> = holding.keys().cloned().collect();
    for name in names {
        let fence = holding[&name].fence.clone();
        if !wanted.contains(&name) {
            holding.remove(&name);
            let over = name.starts_with("replay:");
            let_go.push(LetGo { fence, at: Instant::now(), over });
        } else if node.db.renew(&fence, node.ttl).await? {
            holding.get_mut(&name).expect("held").valid_until = valid_until;
        } else {
            tracing::warn!(lease = %name, "cluster: lease lost (expired or taken over)");
            holding.remove(&name);
        }
    }
    // Above the fair share (another node joined): let one movable lease
    // go a round, the one this node prefers least.
    if holding.len() > share && live.len() > 1 {
        let movable = (holding.iter())
            .filter(|(name, held)| movable(name, held, node.ttl))
            .min_by_key(|(name, _)| preference(&node.id, name))
            .map(|(name, _)| name.clone());
        if let Some(name) = movable
            && let Some(held) = holding.remove(&name)
        {
            tracing::info!(lease = %name, "cluster: lease let go for another node to take");
            let_go.push(LetGo { fence: held.fence, at: Instant::now(), over: false });
        }
    }
    // Below it: take free ones, those this node prefers most first.
    let ttl_micros = node.ttl.as_micros() as i64;
    {
        let (now, leases) = node.db.leases().await?;
        let taken: HashMap<&str, &LeaseRow> = leases.iter().map(|lease| (lease.name.as_str(), lease)).collect();
        let letting_go: BTreeSet<&str> = let_go.iter().map(|l| l.fence.lease.as_str()).collect();
        let mut free: Vec<&String> = (wanted.iter())
            .filter(|name| !holding.contains_key(*name) && !letting_go.contains(name.as_str()))
            .filter(|name| taken.get(name.as_str()).is_none_or(|lease| lease.expires_at <= now))
            .collect();
        free.sort_by_key(|name| std::cmp::Reverse(preference(&node.id, name)));
        for name in free {
            // Past its share, a node still takes a lease left free for a
            // whole time to live: the node whose share it is may not want it
            // (starting, or running another version).
            let orphaned = taken.get(name.as_str()).is_some_and(|lease| now - lease.expires_at > ttl_micros);
            if holding.len() >= share && !orphaned {
                continue;
            }
            if let Some(token) = node.db.acquire(name, &node.id, node.ttl).await? {
                tracing::info!(lease = %name, token, "cluster: lease taken");
                let fence = Fence { lease: name.clone(), node: node.id.clone(), token };
                holding.insert(name.clone(), Holding { fence, valid_until, since: Instant::now() });
            }
        }
    }
    Ok(())
}

/// This host's name.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The process namespace this process's pid is in: the kernel's boot id
/// and the pid namespace, so two containers (or two machines) never share
/// one; empty where they cannot be read (then no pid is ever judged).
fn process_scope() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|id| id.trim().to_owned());
    let namespace = std::fs::read_link("/proc/self/ns/pid").map(|link| link.display().to_string());
    match (boot, namespace) {
        (Ok(boot), Ok(namespace)) if !boot.is_empty() => format!("{boot}/{namespace}"),
        _ => String::new(),
    }
}

/// Whether process `pid` of this host still runs. Unsure (no `/proc`)
/// counts as running: its leases then simply expire.
fn process_alive(pid: i64) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return true;
    }
    // A killed process its parent has not reaped yet is a zombie: gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()), Some('Z' | 'X')),
        Err(_) => false,
    }
}

/// How much `node` prefers `lease` (rendezvous hashing): every node ranks
/// the leases differently, so free ones spread without coordination.
fn preference(node: &str, lease: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (node, lease).hash(&mut hasher);
    hasher.finish()
}

/// Something a [`Singleton`] starts under a lease and stops when it is lost.
pub trait Stop: Send + Sync + 'static {
    /// Stops it.
    fn stop(&self);
}

/// Work that runs only while this node holds its lease: started (with the
/// lease's fence) when the node takes the lease, stopped when it loses it.
pub struct Singleton<T> {
    current: Arc<RwLock<Option<Arc<T>>>>,
    task: JoinHandle<()>,
}

impl<T: Stop> Singleton<T> {
    /// Wants `lease` on `node` and runs `start` under it for as long as it
    /// is held.
    pub fn run(node: Arc<Node>, lease: &str, start: impl Fn(Fence) -> T + Send + 'static) -> Singleton<T> {
        let current: Arc<RwLock<Option<Arc<T>>>> = Arc::default();
        node.want(lease, BTreeSet::from([lease.to_owned()]));
        let mut held = node.watch();
        let (lease, running) = (lease.to_owned(), current.clone());
        let task = tokio::spawn(async move {
            let mut under: Option<Fence> = None;
            loop {
                let fence = held.borrow_and_update().get(&lease).cloned();
                if fence != under {
                    if let Some(stopped) = running.write().expect("not poisoned").take() {
                        stopped.stop();
                    }
                    if let Some(fence) = &fence {
                        tracing::info!(lease = %lease, token = fence.token, "cluster: starting the lease's work here");
                        *running.write().expect("not poisoned") = Some(Arc::new(start(fence.clone())));
                    }
                    under = fence;
                }
                if held.changed().await.is_err() {
                    return;
                }
            }
        });
        Singleton { current, task }
    }

    /// The work, while this node runs it.
    pub fn current(&self) -> Option<Arc<T>> {
        self.current.read().expect("not poisoned").clone()
    }

    /// Stops the work and stops following the lease.
    pub fn stop(&self) {
        self.task.abort();
        if let Some(stopped) = self.current.write().expect("not poisoned").take() {
            stopped.stop();
        }
    }
}

impl<T> Drop for Singleton<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `onepd cluster status` shows: the nodes, the leases, and the
/// database's clock they are measured against ([`NodeRow::alive`],
/// [`LeaseRow::held`]).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The database's clock (microseconds since the epoch).
    pub now: i64,
    /// Every node heard from lately.
    pub nodes: Vec<NodeRow>,
    /// Every lease.
    pub leases: Vec<LeaseRow>,
}

/// The cluster as the database has it.
pub async fn status(log: &EventLog) -> Result<Status, StoreError> {
    let db = log.cluster_db();
    let (now, nodes) = db.nodes().await?;
    let (_, leases) = db.leases().await?;
    Ok(Status { now, nodes, leases })
}

/// Where the work of `lease` stands: its persisted checkpoint, when it has
/// one — a projection's live generation's, or for a destination's live run
/// what `destination` says of its ledger.
pub async fn checkpoint_of(
    store: &dyn onepd_domain::ProjectionStore,
    lease: &str,
    destination: impl FnOnce(uuid::Uuid) -> Option<onepd_domain::Position>,
) -> Result<Option<onepd_domain::Position>, StoreError> {
    let projection = match lease {
        PROFILES_LEASE => Some(onepd_projections::runner::PROFILES),
        AUDIENCES_LEASE => Some(crate::membership::AUDIENCES),
        _ => None,
    };
    if let Some(projection) = projection {
        return Ok(store.live(projection).await?.map(|generation| generation.checkpoint));
    }
    Ok(lease.strip_prefix("destination:").and_then(|id| uuid::Uuid::parse_str(id).ok()).and_then(destination))
}
