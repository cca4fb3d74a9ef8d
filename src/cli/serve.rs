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
use onepd_adapters::grpc::auth::TokenRegistry;
use onepd_commands::workspace::create_workspace;
use onepd_domain::events::workspace::WorkspaceCreated;
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
    /// Where the HTTP API (`/healthz`, `/metrics`) listens.
    #[arg(long, env = "ONEPD_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing("info");
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let url = args.store.database_url();
    let log = super::open_log(&args.store, true).await?;
    let bootstrap = bootstrap(&log).await?;
    let tokens = TokenRegistry::follow(&log).await.context("loading admin tokens")?;

    let grpc_listener =
        TcpListener::bind(args.grpc_addr).await.with_context(|| format!("binding gRPC to {}", args.grpc_addr))?;
    let http_listener =
        TcpListener::bind(args.http_addr).await.with_context(|| format!("binding HTTP to {}", args.http_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    output::line(format!("onepd {} serving", env!("CARGO_PKG_VERSION")));
    output::line(format!("  database     {}", super::redact(&url)));
    output::line(format!("  grpc         {grpc_addr}"));
    output::line(format!("  http         {http_addr}"));
    if let Some((workspace, token)) = bootstrap {
        output::line(format!("created workspace \"default\" ({workspace})"));
        output::line(format!("  admin token  {token}"));
        output::line("  (shown once: only its hash is stored)");
    }
    output::line("ready; stop with Ctrl-C or SIGTERM");
    tracing::info!(grpc = %grpc_addr, http = %http_addr, "listening");

    let (stopping_tx, stopping) = watch::channel(false);
    let grpc = tokio::spawn(onepd_adapters::grpc::serve(
        grpc_listener,
        log.clone(),
        tokens,
        stopping.clone(),
        wait_for(stopping.clone()),
    ));
    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(HttpState { log: log.clone(), metrics: Arc::new(metrics) });
    let http =
        tokio::spawn(axum::serve(http_listener, app).with_graceful_shutdown(wait_for(stopping.clone())).into_future());

    let signal = shutdown_signal().await;
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
    log.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// On a store with no workspace, creates `default` with an admin token and
/// returns them; the token is shown once and only its hash is stored.
async fn bootstrap(log: &EventLog) -> anyhow::Result<Option<(WorkspaceId, String)>> {
    let filter = EventFilter { event_types: vec![WorkspaceCreated::TYPE.into()], ..EventFilter::default() };
    let existing = log.read(Position(1), None, &filter, 1).await.context("looking for workspaces")?;
    if !existing.events.is_empty() {
        return Ok(None);
    }
    let workspace = WorkspaceId(Uuid::now_v7());
    let (request, token) = create_workspace(workspace, "default", Uuid::now_v7(), rand::random(), "onepd serve");
    match log.append(request).await {
        Ok(_) => Ok(Some((workspace, token))),
        // Another process created it first.
        Err(AppendError::WrongExpectedVersion { .. }) => Ok(None),
        Err(err) => Err(err).context("creating the default workspace"),
    }
}

#[derive(Clone)]
struct HttpState {
    log: EventLog,
    metrics: Arc<metrics_exporter_prometheus::PrometheusHandle>,
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.log.head().await {
        Ok(head) => (StatusCode::OK, axum::Json(serde_json::json!({ "status": "ok", "head": head.0 }))),
        Err(err) => {
            tracing::error!(cause = %err, "health check cannot read the log head");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({ "status": "unavailable" })))
        }
    }
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    if let Ok(head) = state.log.head().await {
        metrics::gauge!("onepd_log_head_position").set(head.0 as f64);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn wait_for(mut stopping: watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}

/// Waits for SIGINT or SIGTERM and names it.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}
