//! `onepd adapter serve <NAME>`: one built-in destination adapter served over
//! `onepd.destination.v1.DestinationAdapter` (with gRPC health and
//! reflection), until SIGINT or SIGTERM.
//!
//! This is how a built-in adapter runs in its own process, beside onepd or
//! on another host: a destination created with `--adapter grpc --url …`
//! points at it. Each call carries the destination's settings, so one process
//! serves every destination that uses this adapter; it holds no state of its
//! own and needs no database.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use onepd_adapters::destinations::{BUILT_IN, built_in};
use onepd_adapters::grpc::destination::{AdapterFactory, AdapterService};
use onepd_proto::destination::v1::destination_adapter_server::DestinationAdapterServer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::output;

#[derive(Debug, Subcommand)]
pub enum AdapterCommand {
    /// Serve a built-in adapter over the adapter protocol, for destinations
    /// created with `--adapter grpc`.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The built-in adapter to serve.
    #[arg(value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(BUILT_IN))]
    name: String,
    /// Where the adapter listens.
    #[arg(long, env = "ONEPD_ADAPTER_ADDR", default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
}

pub async fn run(command: AdapterCommand) -> anyhow::Result<ExitCode> {
    match command {
        AdapterCommand::Serve(args) => serve(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing("info");
    // clap has checked the name against BUILT_IN already; this keeps the
    // promise for any other caller of this function.
    if !BUILT_IN.contains(&args.name.as_str()) {
        anyhow::bail!("unknown adapter \"{}\": expected one of {}", args.name, BUILT_IN.join(", "));
    }
    let name = args.name.clone();
    let factory: AdapterFactory = {
        let name = name.clone();
        Arc::new(move |settings| built_in(&name, settings).map_err(|err| err.to_string()))
    };

    let listener =
        TcpListener::bind(args.listen).await.with_context(|| format!("binding adapter {name} to {}", args.listen))?;
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<DestinationAdapterServer<AdapterService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(onepd_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        // The descriptor set holds every onepd protocol; only these are served here.
        .with_service_name("onepd.destination.v1.DestinationAdapter")
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .build_v1()
        .context("building the gRPC reflection service")?;

    // Listening from here on, so a signal sent right after the line below is
    // never missed.
    let signal = super::serve::shutdown_signal();
    output::line(format!("onepd adapter {name} listening on {addr}"));
    tracing::info!(adapter = %name, %addr, "listening");

    let (stopping_tx, mut stopping) = watch::channel(false);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(AdapterService::new(factory).into_server())
            .serve_with_incoming_shutdown(onepd_adapters::grpc::incoming(listener), async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            }),
    );

    let signal = signal.await;
    tracing::info!(signal, "shutting down");
    let _ = stopping_tx.send(true);
    // In-flight deliveries finish (their platforms' answers decide what the
    // engine retries); a client that keeps its connection open does not hold
    // the process up for more than 30 s.
    match tokio::time::timeout(Duration::from_secs(30), server).await {
        Ok(served) => served.context("adapter server task")?.with_context(|| format!("serving adapter {name}"))?,
        Err(_) => tracing::warn!("calls still open after 30 s; closing anyway"),
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
