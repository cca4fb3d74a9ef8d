//! `onepd serve`: the gRPC and HTTP servers over the event log, until SIGINT
//! or SIGTERM. Shutdown stops accepting calls, lets in-flight ones finish,
//! commits every append already queued, then closes the database.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Args;
use onepd_adapters::EventLog;
use onepd_adapters::cluster::{AUDIENCES_LEASE, Node, NodeOptions, PROFILES_LEASE, Singleton};
use onepd_adapters::grpc::auth::TokenRegistry;
use onepd_adapters::ingest::{Ingest, IngestConfig, TrustedProxies};
use onepd_adapters::profiles::ProfileReader;
use onepd_adapters::profiles::runner::ProfilesProjection;
use onepd_adapters::readstore::ReadStore;
use onepd_commands::workspace::{Bootstrap, BootstrapIds, NewWorkspace, bootstrap_workspace};
use onepd_domain::ProjectionStore;
use onepd_domain::events::workspace::{Industry, SourceKind, WorkspaceCreated};
use onepd_domain::{AppendError, EventFilter, EventStore, Position, WorkspaceId};
use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::StoreArgs;
use crate::output;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Where the gRPC services listen.
    #[arg(long, env = "ONEPD_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    grpc_addr: SocketAddr,
    /// Where the HTTP API (the Segment-compatible `/v1/…`, `/healthz`,
    /// `/metrics`) listens.
    #[arg(long, env = "ONEPD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// Proxies (addresses or CIDR networks, comma-separated) whose
    /// X-Forwarded-For names the client; from anyone else it is ignored.
    #[arg(long, env = "ONEPD_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: TrustedProxies,
    /// The most messages received but not yet committed; beyond it callers
    /// get RESOURCE_EXHAUSTED / HTTP 429 with Retry-After.
    #[arg(long, env = "ONEPD_MAX_IN_FLIGHT", default_value_t = 200_000)]
    max_in_flight: usize,
    /// The memory (MB) the read side may keep profiles cached in: three
    /// quarters for the profiles projection, one quarter shared by every
    /// destination run's profile snapshots; the rest live in the read store
    /// and are read back when named.
    #[arg(long, env = "ONEPD_READ_CACHE_MB", default_value_t = 256)]
    read_cache_mb: usize,
    /// How often (seconds) the audience clock checks for window edges that
    /// have passed, recording a tick for each workspace with one due.
    #[arg(long, env = "ONEPD_AUDIENCE_TICK_SECONDS", default_value_t = 60)]
    audience_tick_seconds: u64,
    /// How long (seconds) a node's leases outlive its last renewal: when
    /// several nodes share one database, a node silent this long (dead,
    /// paused, cut off) has its projections, destinations and replay jobs
    /// taken over by the others.
    #[arg(long, env = "ONEPD_LEASE_TTL_SECONDS", default_value_t = 10.0)]
    lease_ttl_seconds: f64,
    /// A PostgreSQL read replica of the database: the profile read APIs
    /// (HTTP `/v1/spaces/…/profiles`, gRPC ProfileService) read from it,
    /// behind the primary by the replication lag. Everything else reads
    /// and writes the primary.
    #[arg(long, env = "ONEPD_READ_DATABASE_URL")]
    read_database_url: Option<String>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing("info");
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("onepd_append_latency_seconds".into()),
            &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
        )
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("onepd_ingest_batch_size".into()),
                &[1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0],
            )
        })
        .context("configuring metrics")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    // Bound before anything is created: a first start on a busy port must
    // not store a workspace whose keys it never gets to print.
    let grpc_listener =
        TcpListener::bind(args.grpc_addr).await.with_context(|| format!("binding gRPC to {}", args.grpc_addr))?;
    let http_listener =
        TcpListener::bind(args.http_addr).await.with_context(|| format!("binding HTTP to {}", args.http_addr))?;
    let url = args.store.database_url();
    let log = super::open_log(&args.store, true).await?;
    let bootstrap = bootstrap(&log).await?;
    let tokens = TokenRegistry::follow(&log).await.context("loading admin tokens")?;
    let read_store = ReadStore::open(&url).await.context("opening the projections' read store")?;
    let readable: Arc<dyn ProjectionStore> = Arc::new(read_store.clone());
    // This process as a node: the profiles projection, the audience
    // membership, each destination's live run and each replay job run on
    // the node holding its lease, and write under it.
    let node = Node::join(
        &log,
        NodeOptions {
            ttl: Duration::from_secs_f64(args.lease_ttl_seconds.clamp(0.5, 3_600.0)),
            http_addr: http_listener.local_addr()?.to_string(),
            grpc_addr: grpc_listener.local_addr()?.to_string(),
        },
    )
    .await
    .context("joining the cluster")?;
    let (projection_cache, snapshots) = onepd_adapters::profiles::as_of::split_read_cache(args.read_cache_mb << 20);
    let projection = Arc::new(Singleton::run(node.clone(), PROFILES_LEASE, {
        let (log, read_store) = (log.clone(), read_store.clone());
        move |fence| {
            let store = Arc::new(read_store.fenced(fence.clone(), &log));
            ProfilesProjection::spawn(log.fenced(fence), store, projection_cache)
        }
    }));
    let profiles = ProfileReader::new(readable.clone(), log.clone());
    let profile_reads = match &args.read_database_url {
        Some(replica) => {
            let replica = ReadStore::open_replica(replica).await.context("opening the read replica")?;
            ProfileReader::new(Arc::new(replica), log.clone())
        }
        None => profiles.clone(),
    };
    let tick = Duration::from_secs(args.audience_tick_seconds.max(1));
    let membership = Singleton::run(node.clone(), AUDIENCES_LEASE, {
        let (log, read_store) = (log.clone(), read_store.clone());
        move |fence| {
            let store = Arc::new(read_store.fenced(fence.clone(), &log));
            onepd_adapters::membership::MembershipRunner::spawn(log.fenced(fence), store, tick)
        }
    });
    let ingest = Ingest::start(
        log.clone(),
        IngestConfig { max_in_flight: args.max_in_flight, trusted_proxies: args.trusted_proxies.clone() },
    )
    .await
    .context("loading the workspace directory")?;

    let activation = Arc::new(
        onepd_adapters::activation::Activation::spawn(
            log.clone(),
            ingest.directory().clone(),
            onepd_adapters::activation::connect(),
            readable.clone(),
            onepd_adapters::activation::ActivationOptions { snapshots, node: Some(node.clone()), ..Default::default() },
        )
        .await
        .context("starting activation")?,
    );

    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    output::line(format!("onepd {} serving", env!("CARGO_PKG_VERSION")));
    output::line(format!("  database     {}", super::redact(&url)));
    output::line(format!("  grpc         {grpc_addr}"));
    output::line(format!("  http         {http_addr}"));
    output::line(format!("  node         {}", node.id()));
    if let Some(replica) = &args.read_database_url {
        output::line(format!("  profile reads {}", super::redact(replica)));
    }
    if let Some((workspace, boot)) = bootstrap {
        output::line(format!("created workspace \"default\" ({workspace})"));
        output::line(format!("  http source  {}", boot.source_id));
        output::line(format!("  write key    {}", boot.write_key));
        output::line(format!("  admin token  {}", boot.admin_token));
        output::line("  (shown once: only their hashes are stored)");
    }
    let signal = shutdown_signal();
    output::line("ready; stop with Ctrl-C or SIGTERM");
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "listening");

    let (stopping_tx, stopping) = watch::channel(false);
    let grpc = tokio::spawn(onepd_adapters::grpc::serve(
        grpc_listener,
        log.clone(),
        tokens.clone(),
        ingest.clone(),
        onepd_adapters::grpc::Readers { profiles: profiles.clone(), profile_reads: profile_reads.clone() },
        stopping.clone(),
        wait_for(stopping.clone()),
    ));
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState {
            log: log.clone(),
            metrics: Arc::new(metrics),
            projection: projection.clone(),
            activation: activation.clone(),
        })
        .merge(onepd_adapters::http::webhooks::webhooks_router(ingest.clone()))
        .merge(onepd_adapters::http::regulations::regulations_router(
            log.clone(),
            ingest.directory().clone(),
            tokens.clone(),
            profiles.clone(),
        ))
        .merge(onepd_adapters::http::router(ingest))
        .merge(onepd_adapters::http::profiles::profiles_router(profile_reads, tokens))
        .merge(onepd_adapters::http::js::js_router())
        // Every answer of onepd's own is JSON, unknown routes included.
        .fallback(onepd_adapters::http::not_found)
        .layer(axum::middleware::from_fn(onepd_adapters::http::json_errors));
    let http = tokio::spawn(
        axum::serve(
            onepd_adapters::http::listener(http_listener),
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(wait_for(stopping.clone()))
        .into_future(),
    );

    let signal = signal.await;
    tracing::info!(signal, "shutting down");
    let _ = stopping_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        let grpc = grpc.await;
        let http = http.await;
        (grpc, http)
    })
    .await;
    match drained {
        Ok((grpc, http)) => {
            grpc.context("gRPC server task")?.context("gRPC server")?;
            http.context("HTTP server task")?.context("HTTP server")?;
        }
        Err(_) => tracing::warn!("calls still open after 30 s; closing anyway"),
    }
    projection.stop();
    membership.stop();
    activation.stop();
    // The leases are given up at once, so other nodes take the work over
    // without waiting for them to expire.
    node.leave().await;
    log.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// On a store with no workspace, creates `default` with an admin token and an
/// `http` source with a write key, and returns them; they are shown once and
/// only their hashes are stored.
async fn bootstrap(log: &EventLog) -> anyhow::Result<Option<(WorkspaceId, Bootstrap)>> {
    let filter = EventFilter { event_types: vec![WorkspaceCreated::TYPE.into()], ..EventFilter::default() };
    let existing = log.read(Position(1), None, &filter, 1).await.context("looking for workspaces")?;
    if !existing.events.is_empty() {
        return Ok(None);
    }
    let workspace = WorkspaceId(Uuid::now_v7());
    let spec = NewWorkspace { name: "default".into(), industry: Industry::General, default_region: None };
    let ids = BootstrapIds {
        token_id: Uuid::now_v7(),
        token_secret: rand::random(),
        source_id: Uuid::now_v7(),
        key_id: Uuid::now_v7(),
        key_secret: rand::random(),
    };
    let boot = bootstrap_workspace(workspace, &spec, SourceKind::Http, ids, "onepd serve")?;
    match log.append(boot.request.clone()).await {
        Ok(_) => Ok(Some((workspace, boot))),
        // Another process created it first.
        Err(AppendError::WrongExpectedVersion { .. }) => Ok(None),
        Err(err) => Err(err).context("creating the default workspace"),
    }
}

#[derive(Clone)]
struct HttpState {
    log: EventLog,
    metrics: Arc<metrics_exporter_prometheus::PrometheusHandle>,
    projection: Arc<Singleton<ProfilesProjection>>,
    activation: Arc<onepd_adapters::activation::Activation>,
}

/// `200 {"status": "ok"}` when everything follows the log; `200 {"status":
/// "degraded", …}` naming the stalled projection or destinations (the
/// process still serves: ingest and reads work); `503` only when the log
/// cannot be read at all.
async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    let unavailable = |cause: String| {
        tracing::warn!(%cause, "health check: the database is unavailable");
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "status": "unavailable", "reason": "the database cannot be reached" })),
        )
            .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        response
    };
    // An outage the appender noticed answers at once; otherwise the head is
    // read with a short timeout, so a hanging database is 503 within a
    // second, never a hanging health check.
    if let Some(cause) = state.log.unavailable() {
        return unavailable(cause);
    }
    // The read runs as a task of its own that is left to finish: dropping
    // a query mid-flight could hand the pool a connection in a bad state.
    let log = state.log.clone();
    let read = tokio::spawn(async move { log.head().await });
    let head = match tokio::time::timeout(HEALTH_TIMEOUT, read).await {
        Ok(Ok(head)) => head,
        Ok(Err(err)) => return unavailable(format!("the health check's read failed: {err}")),
        Err(_) => return unavailable(format!("no answer within {} ms", HEALTH_TIMEOUT.as_millis())),
    };
    match head {
        Ok(head) => {
            let stalled: Vec<serde_json::Value> = state
                .activation
                .health()
                .into_iter()
                .filter(|health| health.state.name() == "stalled")
                .map(|health| {
                    serde_json::json!({
                        "workspace": health.workspace.0,
                        "destination": health.name,
                        "state": health.state.to_string(),
                        "lag": health.lag,
                    })
                })
                .collect();
            // The projection runs on the node holding its lease; another
            // node's is judged by that node's own health check.
            let here = state.projection.current();
            let projection = here.as_ref().and_then(|projection| projection.stalled());
            let degraded = projection.is_some() || !stalled.is_empty();
            let body = serde_json::json!({
                "status": if degraded { "degraded" } else { "ok" },
                "head": head.0,
                "projection": match &here {
                    Some(running) => serde_json::json!({
                        "checkpoint": running.checkpoint().0,
                        "state": projection.unwrap_or_else(|| "running".into()),
                    }),
                    None => serde_json::json!({ "state": "on another node" }),
                },
                "stalled_destinations": stalled,
            });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(err) => unavailable(err.to_string()),
    }
}

/// How long `/healthz` waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(1000);

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    if let Ok(head) = state.log.head().await {
        metrics::gauge!("onepd_log_head_position").set(head.0 as f64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn wait_for(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Listens for SIGINT and SIGTERM from the call on (so a signal sent right
/// after "ready" is never missed); the future resolves with the first, named.
pub(super) fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                },
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    "SIGINT"
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}
