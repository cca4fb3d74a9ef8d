//! `onepd bench cluster`: several `onepd serve` nodes on one PostgreSQL.
//!
//! 1. **One node**: the HTTP ingest rate of one node on a fresh database,
//!    driven as `bench ingest --via http` drives it.
//! 2. **`--nodes` nodes**: the aggregate HTTP ingest rate across them on
//!    another fresh database, the client tasks spread over the nodes; a
//!    webhook destination (a stub in this process) delivers meanwhile, on
//!    whichever node holds its lease.
//! 3. **PostgreSQL's own rate**: binary `COPY` into a table like the log's
//!    (`bench append`'s raw limit), in the same run.
//! 4. **Failover**, `--kills` times: the node holding the destination's
//!    lease is killed (SIGKILL) while a message a tenth of a second goes to
//!    another node; the time from the kill to the first of those messages
//!    arriving at the stub from the node that took over. The killed node is
//!    started again before the next round.
//!
//! Then every acknowledged message must be in the log exactly once and
//! delivered at least once: duplicates are counted without a takeover
//! (during step 2) and per takeover.
//!
//! On a 2-core machine the nodes, the client and PostgreSQL share the cores,
//! so the aggregate is reported as a ratio to the `COPY` rate rather than
//! expected to grow with the nodes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::extract::State;
use clap::Args;
use onepd_domain::{EventId, WorkspaceId};
use serde_json::{Value, json};
use uuid::Uuid;

use super::ingest::{self, IngestArgs, Messages, Server, Via, drive_many, grouped, plan, round};
use super::{Backend, ScratchStore, append};
use crate::output;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// How many nodes share the database.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// How many messages to send, to one node and then to all of them.
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Messages per HTTP request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Concurrent client tasks, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How many times the destination's node is killed.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// The nodes' lease time to live (seconds), as `onepd serve` takes it.
    #[arg(long, default_value_t = 10.0)]
    lease_ttl_seconds: f64,
    /// The PostgreSQL server to create the benchmark's databases on.
    #[arg(long, env = "ONEPD_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Where the benchmark's files go (removed afterwards): the nodes'
    /// shared master key.
    #[arg(long, default_value = "./data")]
    dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// What the destination's stub received: each event id, how many times,
/// and when first.
#[derive(Default)]
struct Received {
    events: HashMap<String, (usize, Instant)>,
}

type Stub = Arc<Mutex<Received>>;

/// A webhook receiver in this process, on a free port.
async fn stub() -> anyhow::Result<(Stub, String)> {
    async fn receive(State(stub): State<Stub>, body: axum::body::Bytes) -> &'static str {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut received = stub.lock().expect("not poisoned");
        for event in body["batch"].as_array().into_iter().flatten() {
            if let Some(id) = event["eventId"].as_str() {
                received.events.entry(id.to_owned()).or_insert((0, Instant::now())).0 += 1;
            }
        }
        "{}"
    }
    let stub: Stub = Arc::default();
    let app = axum::Router::new().fallback(axum::routing::post(receive)).with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the stub")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((stub, url))
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.nodes >= 2, "--nodes: expected at least 2, found {}", args.nodes);
    let ingest_args = IngestArgs {
        via: Via::Http,
        backend: Backend::Postgres,
        events: args.events,
        batch: args.batch,
        concurrency: args.concurrency,
        postgres_url: args.postgres_url.clone(),
        dir: args.dir.clone(),
        json: args.json,
        skip_append: true,
    };
    let ttl = args.lease_ttl_seconds.to_string();
    let extra = ["--lease-ttl-seconds", ttl.as_str()];

    // 1. One node.
    let store = ScratchStore::create(Backend::Postgres, &args.postgres_url, &args.dir, "onepd_bench_cluster").await?;
    let one = async {
        let node = Server::start_with(&store, &extra, None).await?;
        let measured = drive_many(&ingest_args, &[&node], plan(&ingest_args, &Messages::new(args.events))?).await;
        node.stop().await?;
        measured
    }
    .await;
    store.remove().await;
    let one = one?;

    // 2–4. The cluster, then failover.
    let store = ScratchStore::create(Backend::Postgres, &args.postgres_url, &args.dir, "onepd_bench_cluster").await?;
    let result = cluster(&args, &ingest_args, &store, &extra).await;
    store.remove().await;
    let cluster = result?;

    // 3. PostgreSQL's COPY into a table like the log's, in the same run.
    let raw = append::reference(Backend::Postgres, args.events, args.batch, &args.postgres_url, &args.dir, args.json)
        .await
        .context("measuring PostgreSQL's COPY rate")?;
    let copy = raw["raw_copy_events_per_sec"].as_f64().unwrap_or_default();
    let one_rate = one.events_per_second(args.events);
    let all_rate = cluster.measured.events_per_second(args.events);
    let mut failovers = cluster.failovers.clone();
    failovers.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        let rank = ((p / 100.0) * failovers.len() as f64).ceil() as usize;
        failovers.get(rank.clamp(1, failovers.len().max(1)) - 1).copied().unwrap_or_default()
    };
    let figures = json!({
        "nodes": args.nodes,
        "events": args.events,
        "one_node_events_per_second": one_rate.round(),
        "cluster_events_per_second": all_rate.round(),
        "cluster_p99_ms": round(cluster.measured.percentile_ms(99.0), 1),
        "copy_events_per_second": copy.round(),
        "cluster_ratio_to_copy": round(all_rate / copy.max(1.0), 3),
        "one_node_ratio_to_copy": round(one_rate / copy.max(1.0), 3),
        "lease_ttl_seconds": args.lease_ttl_seconds,
        "kills": failovers.len(),
        "failover_seconds": failovers.iter().map(|s| round(*s, 2)).collect::<Vec<_>>(),
        "failover_p50_seconds": round(percentile(50.0), 2),
        "failover_p99_seconds": round(percentile(99.0), 2),
        "acknowledged": cluster.acknowledged,
        "acknowledged_lost": cluster.lost,
        "duplicates_without_takeover": cluster.duplicates_before,
        "duplicates_in_takeovers": cluster.duplicates_after,
        "destination_batch_size": WEBHOOK_BATCH,
    });
    if args.json {
        output::json(&figures);
    } else {
        output::line(format!(
            "cluster of {} nodes on PostgreSQL, HTTP ingest of {} messages:",
            args.nodes,
            grouped(args.events as f64)
        ));
        output::line(format!(
            "  one node {} events/s; {} nodes {} events/s; PostgreSQL COPY {} events/s: \
             cluster/COPY = {:.2} (one node/COPY = {:.2})",
            grouped(one_rate),
            args.nodes,
            grouped(all_rate),
            grouped(copy),
            all_rate / copy.max(1.0),
            one_rate / copy.max(1.0)
        ));
        output::line(format!(
            "  failover (kill → delivering again elsewhere) over {} kills, lease ttl {} s: p50 {:.2} s, p99 {:.2} s",
            failovers.len(),
            args.lease_ttl_seconds,
            percentile(50.0),
            percentile(99.0)
        ));
        output::line(format!(
            "  {} acknowledged, {} lost; duplicates: {} without a takeover, {} in {} takeovers (batch size {})",
            cluster.acknowledged,
            cluster.lost,
            cluster.duplicates_before,
            cluster.duplicates_after,
            failovers.len(),
            WEBHOOK_BATCH
        ));
    }
    if cluster.lost > 0 {
        bail!("{} acknowledged messages were lost", cluster.lost);
    }
    Ok(ExitCode::SUCCESS)
}

/// The destination's batch size: at most this many duplicates per takeover.
const WEBHOOK_BATCH: usize = 100;

struct ClusterRun {
    measured: ingest::Measured,
    failovers: Vec<f64>,
    acknowledged: usize,
    lost: usize,
    duplicates_before: usize,
    duplicates_after: usize,
}

/// `onepd ARGS` against the store, its output parsed as JSON.
async fn cli(store: &ScratchStore, args: &[&str]) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("finding the onepd binary")?;
    let output = tokio::process::Command::new(exe)
        .args(args)
        .arg("--json")
        .arg("--database-url")
        .arg(&store.url)
        .arg("--data-dir")
        .arg(store.path())
        .env_remove("ONEPD_DATABASE_URL")
        .env_remove("ONEPD_MASTER_KEY")
        .output()
        .await?;
    anyhow::ensure!(output.status.success(), "onepd {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The node holding `lease`, as `onepd cluster status` says.
async fn holder(store: &ScratchStore, lease: &str) -> anyhow::Result<Option<String>> {
    let status = cli(store, &["cluster", "status"]).await?;
    let leases = status["leases"].as_array().cloned().unwrap_or_default();
    Ok(leases.iter().find(|l| l["lease"] == lease).and_then(|l| l["holder"].as_str().map(str::to_owned)))
}

async fn cluster(
    args: &ClusterArgs,
    ingest_args: &IngestArgs,
    store: &ScratchStore,
    extra: &[&str],
) -> anyhow::Result<ClusterRun> {
    let first = Server::start_with(store, extra, None).await?;
    let write_key = first.write_key.clone();
    let workspace = WorkspaceId(first.workspace.clone().context("the first node creates the workspace")?.parse()?);
    let mut nodes = vec![first];
    for _ in 1..args.nodes {
        nodes.push(Server::start_with(store, extra, Some(&write_key)).await?);
    }
    let (received, url) = stub().await?;
    let setting = format!("url={url}");
    let batch = format!("batch_size={WEBHOOK_BATCH}");
    let created = cli(
        store,
        &["destination", "create", "hook", "--adapter", "webhook", "--setting", &setting, "--setting-json", &batch],
    )
    .await?;
    let lease = format!("destination:{}", created["destination_id"].as_str().unwrap_or_default());

    // 2. The aggregate rate, delivering meanwhile.
    let messages = Messages::new(args.events);
    let measured = drive_many(ingest_args, &nodes.iter().collect::<Vec<_>>(), plan(ingest_args, &messages)?).await?;
    let mut acknowledged: Vec<String> = (0..args.events).map(|n| messages.message_id(n).to_string()).collect();
    let expected = |ids: &[String]| -> Vec<String> {
        ids.iter().map(|id| EventId::for_message(workspace, id).to_string()).collect()
    };
    let delivered_all = |ids: &[String]| {
        let received = received.lock().expect("not poisoned");
        ids.iter().all(|id| received.events.contains_key(id))
    };
    let wanted = expected(&acknowledged);
    wait(Duration::from_secs(600), "every message delivered", || delivered_all(&wanted)).await?;
    let duplicates = || received.lock().expect("not poisoned").events.values().filter(|(n, _)| *n > 1).count();
    let duplicates_before = duplicates();

    // 4. Failover.
    let client = reqwest::Client::new();
    let mut failovers = Vec::new();
    let mut beat = 0usize;
    for _ in 0..args.kills {
        let owner = holder(store, &lease).await?.context("the destination's lease is held")?;
        let victim = nodes.iter().position(|node| node.node == owner).context("the holder is one of the nodes")?;
        let survivor = nodes[(victim + 1) % nodes.len()].http.clone();
        let killed = nodes.remove(victim);
        killed.kill().await;
        let at = Instant::now();
        // A message every tenth of a second to a survivor, until one sent
        // after the kill arrives.
        let mut sent_after: Vec<String> = Vec::new();
        let arrived = loop {
            let id = format!("beat-{}-{beat}", Uuid::new_v4());
            beat += 1;
            let response = client
                .post(format!("{survivor}/v1/track"))
                .basic_auth(&write_key, None::<&str>)
                .json(&json!({"messageId": id, "userId": "beat", "event": "Beat"}))
                .send()
                .await?;
            anyhow::ensure!(response.status() == 200, "a survivor refused a message: {}", response.status());
            acknowledged.push(id.clone());
            sent_after.extend(expected(std::slice::from_ref(&id)));
            let first = {
                let received = received.lock().expect("not poisoned");
                sent_after.iter().filter_map(|id| received.events.get(id).map(|(_, at)| *at)).min()
            };
            if let Some(first) = first {
                break first;
            }
            anyhow::ensure!(at.elapsed() < Duration::from_secs(300), "no delivery within 300 s of the kill");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        failovers.push(arrived.duration_since(at).as_secs_f64());
        nodes.push(Server::start_with(store, extra, Some(&write_key)).await?);
    }
    let wanted = expected(&acknowledged);
    wait(Duration::from_secs(300), "every message delivered after the kills", || delivered_all(&wanted)).await?;
    let duplicates_after = duplicates() - duplicates_before;
    for node in nodes {
        node.stop().await?;
    }
    // Every acknowledged message in the log exactly once.
    let pool = sqlx::PgPool::connect(&store.url).await?;
    let stored: Vec<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events WHERE event_type = 'MessageAccepted'").fetch_all(&pool).await?;
    pool.close().await;
    let mut counts: BTreeMap<Uuid, usize> = BTreeMap::new();
    for id in stored {
        *counts.entry(id).or_default() += 1;
    }
    let lost =
        (acknowledged.iter()).filter(|id| counts.get(&EventId::for_message(workspace, id).0) != Some(&1)).count();
    Ok(ClusterRun { measured, failovers, acknowledged: acknowledged.len(), lost, duplicates_before, duplicates_after })
}

async fn wait(within: Duration, what: &str, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !done() {
        anyhow::ensure!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
