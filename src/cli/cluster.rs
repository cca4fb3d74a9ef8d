//! `onepd cluster status`: the nodes sharing this database, the leases they
//! hold, and how far behind the log each lease's work is.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use onepd_adapters::activation::admin;
use onepd_adapters::cluster;
use onepd_adapters::readstore::ReadStore;
use onepd_domain::EventStore;
use serde_json::json;

use crate::config::StoreArgs;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The nodes, their leases, each lease's lag and the last heartbeats.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::Status(args) => status(args).await,
    }
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let log = super::open_log(&args.store, false).await?;
    let status = cluster::status(&log).await.context("reading the nodes and leases")?;
    let head = log.head().await?;
    let read_store = ReadStore::open(&args.store.database_url()).await.context("opening the read store")?;
    // Where each lease's work stands: its persisted checkpoint (a
    // destination's from its own ledger stream).
    let mut leases = Vec::new();
    for lease in &status.leases {
        let ledger = match lease.name.strip_prefix("destination:").and_then(|id| id.parse().ok()) {
            Some(id) => Some(admin::ledger(&log, id).await.context("reading a delivery ledger")?),
            None => None,
        };
        let from_ledger = |_| ledger.and_then(|ledger| ledger.checkpoint);
        let checkpoint = cluster::checkpoint_of(&read_store, &lease.name, from_ledger).await?;
        leases.push((lease, lease.held(status.now), checkpoint));
    }
    read_store.close().await;
    log.close().await;
    let seconds_ago = |at: i64| (status.now - at) as f64 / 1e6;
    if args.json {
        let nodes: Vec<serde_json::Value> = (status.nodes.iter())
            .map(|node| {
                json!({
                    "node_id": node.node_id,
                    "alive": node.alive(status.now),
                    "host": node.host,
                    "pid": node.pid,
                    "http": node.http_addr,
                    "grpc": node.grpc_addr,
                    "version": node.version,
                    "heartbeat_seconds_ago": seconds_ago(node.heartbeat_at),
                    "leases": leases.iter().filter(|(l, held, _)| *held && l.holder == node.node_id)
                        .map(|(l, _, _)| l.name.clone()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let leases: Vec<serde_json::Value> = (leases.iter())
            .map(|(lease, held, checkpoint)| {
                json!({
                    "lease": lease.name,
                    "holder": held.then_some(&lease.holder),
                    "token": lease.token,
                    "expires_in_seconds": -seconds_ago(lease.expires_at),
                    "held_for_seconds": held.then(|| seconds_ago(lease.acquired_at)),
                    "checkpoint": checkpoint.map(|p| p.0),
                    "lag": checkpoint.map(|p| head.0.saturating_sub(p.0)),
                })
            })
            .collect();
        output::json(&json!({ "head": head.0, "nodes": nodes, "leases": leases }));
        return Ok(ExitCode::SUCCESS);
    }
    output::line(format!("log head {}", head.0));
    output::line(format!("{} node(s):", status.nodes.len()));
    for node in &status.nodes {
        let held = leases.iter().filter(|(l, held, _)| *held && l.holder == node.node_id).count();
        output::line(format!(
            "  {} {:<5} http {} grpc {} pid {} on {}, heartbeat {:.1} s ago, {} lease(s)",
            node.node_id,
            if node.alive(status.now) { "alive" } else { "gone" },
            node.http_addr,
            node.grpc_addr,
            node.pid,
            node.host,
            seconds_ago(node.heartbeat_at),
            held
        ));
    }
    output::line(format!("{} lease(s):", leases.len()));
    for (lease, held, checkpoint) in &leases {
        let holder = if *held { lease.holder.as_str() } else { "(free)" };
        let lag = checkpoint.map_or("-".to_owned(), |p| head.0.saturating_sub(p.0).to_string());
        output::line(format!("  {:<50} {:<36} token {:<4} lag {}", lease.name, holder, lease.token, lag));
    }
    Ok(ExitCode::SUCCESS)
}
