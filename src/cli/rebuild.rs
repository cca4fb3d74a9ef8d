//! `onepd rebuild profiles`: build the identity graph and the 360-degree
//! profiles again from position 0, beside the live read model (blue/green),
//! then switch readers over atomically. A running `onepd serve` keeps
//! answering from the old read model until the switch, then follows the new
//! one.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use onepd_adapters::EventLog;
use onepd_adapters::profiles::as_of::AsOfReader;
use onepd_adapters::readstore::ReadStore;
use onepd_domain::{EventStore, Position, ProjectionStore, WorkspaceId};
use onepd_projections::runner::{PROFILE_DOCS, PROFILES, PROFILES_REFOLD, Runner};
use serde_json::json;

use crate::config::StoreArgs;
use crate::output;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProjectionName {
    /// The identity graph and the 360-degree profiles (one fold, one read model).
    Profiles,
    /// The same projection as `profiles`: the graph is built with the profiles.
    Identity,
    /// Audience membership: every audience evaluated again over the log
    /// (the profiles read model must be up to date); entries and exits it
    /// decides that the log already holds are not appended again.
    Audiences,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The projection to rebuild.
    #[arg(value_enum)]
    projection: ProjectionName,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The profiles projection's runner over `log` and the read store beside it
/// (the commands that rebuild the profiles share it), with that store.
pub(super) async fn profiles_runner(
    store: &StoreArgs,
    log: &EventLog,
) -> anyhow::Result<(Runner, Arc<dyn ProjectionStore>)> {
    let read_store = ReadStore::open(&store.database_url()).await.context("opening the projections' read store")?;
    let read_store: Arc<dyn ProjectionStore> = Arc::new(read_store);
    let mut runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, read_store.clone());
    // Erased people's identifiers stay out of the rebuilt profiles, as live.
    if let Some(hasher) = log.suppression_hasher() {
        runner = runner.with_suppression(hasher);
    }
    Ok((runner, read_store))
}

/// Brings the live profiles read model of `workspace` up to `through`. A
/// running server's projection does it: this waits as long as the read
/// model moves (its checkpoint, or a re-derivation's pages). When nothing
/// has moved for `quiet`, no server is following the log, and this process
/// resumes the projection at its checkpoint and follows the log itself
/// (re-deriving the workspace when an operator fact asks for it), in the
/// cache's bounded memory. Nothing is folded from position 1 unless there
/// is no read model yet. Returns the read store.
pub(super) async fn catch_up_profiles(
    store: &StoreArgs,
    log: &EventLog,
    workspace: WorkspaceId,
    through: Position,
    quiet: Duration,
) -> anyhow::Result<Arc<dyn ProjectionStore>> {
    let (runner, read_store) = profiles_runner(store, log).await?;
    let reached = || async {
        AsOfReader::new(read_store.clone(), log.clone())
            .with_patience(Duration::ZERO)
            .wait_for(workspace, through)
            .await
            .is_ok()
    };
    let moving = || async {
        let live = read_store.live(PROFILES).await.ok().flatten().map(|generation| generation.checkpoint);
        let refolds = read_store.generations(PROFILES_REFOLD).await.unwrap_or_default();
        (live, refolds.iter().map(|generation| (generation.id, generation.checkpoint)).collect::<Vec<_>>())
    };
    let mut tries = 0;
    loop {
        let mut seen = moving().await;
        let mut still_since = Instant::now();
        while still_since.elapsed() < quiet {
            if reached().await {
                return Ok(read_store);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = moving().await;
            if now != seen {
                seen = now;
                still_since = Instant::now();
            }
        }
        tries += 1;
        let failed = match runner.start(&|_, _| {}).await {
            Ok(mut built) => match runner.catch_up(&mut built, 1_000).await {
                Ok(()) => return Ok(read_store),
                Err(err) => err,
            },
            Err(err) => err,
        };
        // A server that started meanwhile commits too and fences this one:
        // its projection will do (the next round waits for it).
        if tries == 3 {
            return Err(failed).context("bringing the profiles read model up to date");
        }
    }
}

pub async fn run(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    if let ProjectionName::Audiences = args.projection {
        return rebuild_audiences(args).await;
    }
    let log = super::open_log(&args.store, false).await?;
    let read_store =
        ReadStore::open(&args.store.database_url()).await.context("opening the projections' read store")?;
    let (runner, _) = profiles_runner(&args.store, &log).await?;
    let bar =
        output::progress(0, args.json, "{spinner} rebuilding [{bar:40}] {pos}/{len} positions ({per_sec}, {eta})");
    let progress = output::reporter(&bar);
    let started = Instant::now();
    let built = runner.rebuild(&progress).await.context("rebuilding the profiles")?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    log.close().await;
    let profiles = read_store.count(built.generation.id, PROFILE_DOCS).await.context("counting the profiles")?;
    read_store.close().await;
    let rate = built.checkpoint.0 as f64 / seconds.max(1e-9);
    if args.json {
        output::json(&json!({
            "projection": PROFILES,
            "generation": built.generation.id,
            "checkpoint": built.checkpoint.0,
            "profiles": profiles,
            "seconds": seconds,
            "positions_per_second": rate,
        }));
    } else {
        output::line(format!(
            "rebuilt {PROFILES} (generation {}) through position {}: {profiles} profiles in {seconds:.2}s ({rate:.0} positions/s); readers switched",
            built.generation.id, built.checkpoint.0
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn rebuild_audiences(args: RebuildArgs) -> anyhow::Result<ExitCode> {
    let log = super::open_log(&args.store, false).await?;
    let read_store: Arc<dyn ProjectionStore> =
        Arc::new(ReadStore::open(&args.store.database_url()).await.context("opening the projections' read store")?);
    let started = Instant::now();
    let rebuilt = onepd_adapters::membership::rebuild(&log, read_store, 500).await;
    log.close().await;
    let generation = rebuilt.context("rebuilding the audience membership")?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        output::json(&json!({
            "projection": onepd_adapters::membership::AUDIENCES,
            "generation": generation.id,
            "checkpoint": generation.checkpoint.0,
            "seconds": seconds,
        }));
    } else {
        output::line(format!(
            "rebuilt audiences: generation {} at position {} in {seconds:.1} s",
            generation.id, generation.checkpoint.0
        ));
    }
    Ok(ExitCode::SUCCESS)
}
