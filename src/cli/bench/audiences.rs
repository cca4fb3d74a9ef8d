//! `onepd bench audiences`: audience membership on the synthetic workload of
//! `bench rebuild`, beside the plain profiles projection in the same run.
//!
//! 1. The workload is written and the profiles built (untimed).
//! 2. 20 audiences and 10 computed traits are defined; the membership's
//!    backfill (every profile evaluated for every audience) is timed.
//! 3. Live: `--live` new orders of identified people are appended; the
//!    profiles projection's catch-up over them is timed, then the
//!    membership's: the membership's cost per event beside the projection's.
//! 4. A window edge: a clock tick a year on, when every window of every
//!    person has passed; the people it evaluates again and the time it takes.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use onepd_adapters::membership::{self, Membership};
use onepd_domain::audience::{ComputedTrait, parse};
use onepd_domain::events::audience::{AudienceDefined, ComputedTraitDefined};
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::events::workspace::{source_stream, workspace_stream};
use onepd_domain::{AppendRequest, EventId, EventStore, ExpectedVersion, NewEvent, ProjectionStore, Timestamp};
use onepd_projections::runner::{PROFILE_DOCS, Runner};
use serde_json::json;
use uuid::Uuid;

use super::profiles::{Workload, WorkloadArgs, open};
use crate::output;

#[derive(Debug, Args)]
pub struct AudiencesArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// New events appended live, after the backfill.
    #[arg(long, default_value_t = 20_000)]
    live: u64,
}

/// The benchmark's 20 audiences.
const AUDIENCES: [(&str, &str); 20] = [
    ("buyers_30", r#"performed "Order Completed" within 30 days"#),
    ("buyers_90", r#"performed "Order Completed" within 90 days"#),
    ("buyers_365", r#"performed "Order Completed" within 365 days"#),
    ("repeat_30", r#"performed "Order Completed" at least 2 times within 30 days"#),
    ("repeat_90", r#"performed "Order Completed" at least 2 times within 90 days"#),
    ("repeat_365", r#"performed "Order Completed" at least 2 times within 365 days"#),
    ("loyal_365", r#"performed "Order Completed" at least 3 times within 365 days"#),
    ("big_order", r#"performed "Order Completed" with revenue > 40"#),
    ("browsers_30", r#"performed "Product Viewed" at least 3 times within 30 days"#),
    (
        "viewed_not_bought",
        r#"performed "Product Viewed" and not performed "Order Completed" within 7 days of "Product Viewed""#,
    ),
    ("pages_7", r#"performed "page" within 7 days"#),
    ("pages_30", r#"performed "page" at least 5 times within 30 days"#),
    ("pro", r#"trait plan = "pro""#),
    ("pro_active", r#"trait plan = "pro" and performed "page" within 30 days"#),
    ("has_email", "trait email exists"),
    ("spenders", "computed lifetime_revenue > 100"),
    ("high_spenders", "computed lifetime_revenue > 500"),
    ("frequent", "computed orders >= 3"),
    ("pro_buyers", r#"in audience "buyers_90" and in audience "pro""#),
    ("lapsed", r#"performed "Order Completed" and not performed "Order Completed" within 90 days"#),
];

/// The benchmark's 10 computed traits.
fn computed_traits() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("lifetime_revenue", json!({"event": "Order Completed", "kind": "sum", "property": "revenue"})),
        ("orders", json!({"event": "Order Completed", "kind": "count"})),
        ("orders_30d", json!({"event": "Order Completed", "kind": "count", "within": {"days": 30}})),
        ("views_30d", json!({"event": "Product Viewed", "kind": "count", "within": {"days": 30}})),
        ("pages_7d", json!({"event": "page", "kind": "count", "within": {"days": 7}})),
        ("average_order", json!({"event": "Order Completed", "kind": "average", "property": "revenue"})),
        ("largest_order", json!({"event": "Order Completed", "kind": "max", "property": "revenue"})),
        ("first_currency", json!({"event": "Order Completed", "kind": "first", "property": "currency"})),
        ("usual_currency", json!({"event": "Order Completed", "kind": "most_frequent", "property": "currency"})),
        ("products_viewed", json!({"event": "Product Viewed", "kind": "unique", "property": "product_id"})),
    ]
}

pub async fn run(args: AudiencesArgs) -> anyhow::Result<ExitCode> {
    let workload = Workload::create(&args.workload).await?;
    let result = measure(&workload, &args).await;
    workload.remove().await;
    let figures = result?;
    if args.workload.json {
        output::json(&figures);
    } else {
        output::line(format!(
            "audiences on {} ({} events, {} profiles, 20 audiences, 10 computed traits):",
            figures["backend"], figures["events"], figures["profiles"]
        ));
        output::line(format!(
            "  backfill: {:.1} s ({:.0} profiles/s), {} entries",
            figures["backfill_seconds"].as_f64().unwrap_or_default(),
            figures["backfill_profiles_per_second"].as_f64().unwrap_or_default(),
            figures["backfill_entries"]
        ));
        output::line(format!(
            "  live, {} events: projection {:.0} events/s ({:.3} ms each), membership {:.0} events/s ({:.3} ms each): \
             membership adds {:.0} % to the projection's cost per event",
            figures["live_events"],
            figures["projection_events_per_second"].as_f64().unwrap_or_default(),
            figures["projection_ms_per_event"].as_f64().unwrap_or_default(),
            figures["membership_events_per_second"].as_f64().unwrap_or_default(),
            figures["membership_ms_per_event"].as_f64().unwrap_or_default(),
            figures["membership_added_percent"].as_f64().unwrap_or_default(),
        ));
        output::line(format!(
            "  window edge: {} people evaluated again in {:.2} s ({:.0} people/s; 1M people at this rate: {:.0} s)",
            figures["edge_people"],
            figures["edge_seconds"].as_f64().unwrap_or_default(),
            figures["edge_people_per_second"].as_f64().unwrap_or_default(),
            figures["edge_seconds_per_million"].as_f64().unwrap_or_default(),
        ));
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(workload: &Workload, args: &AudiencesArgs) -> anyhow::Result<serde_json::Value> {
    let (log, store) = open(workload).await?;
    let read: Arc<dyn ProjectionStore> = store.clone();
    let runner = Runner::new(Arc::new(log.clone()) as Arc<dyn EventStore>, read.clone());
    let quiet = |_: u64, _: u64| {};
    let mut built = runner.start(&quiet).await.context("building the profiles")?;
    runner.catch_up(&mut built, 1_000).await.context("building the profiles")?;
    let events = log.head().await?.0;
    let live_generation = read.live(onepd_projections::runner::PROFILES).await?.context("a live profiles model")?;
    let profiles = store.count(live_generation.id, PROFILE_DOCS).await?;
    let workspace = workload.workspace;

    // The definitions, then the backfill.
    let mut definitions = Vec::new();
    for (name, definition) in computed_traits() {
        let definition: ComputedTrait = serde_json::from_value(definition)?;
        let defined = ComputedTraitDefined { name: name.to_owned(), definition };
        definitions.push((ComputedTraitDefined::TYPE, serde_json::to_value(defined)?));
    }
    for (name, condition) in AUDIENCES {
        let condition = parse(condition).map_err(|err| anyhow::anyhow!("{name}: {err}"))?;
        let defined = AudienceDefined { name: name.to_owned(), condition, description: None };
        definitions.push((AudienceDefined::TYPE, serde_json::to_value(defined)?));
    }
    let events_of: Vec<NewEvent> = (definitions.into_iter().enumerate())
        .map(|(n, (event_type, data))| NewEvent {
            event_id: EventId(Uuid::new_v4()),
            workspace_id: workspace,
            event_type: event_type.to_owned(),
            schema_version: 1,
            data,
            metadata: json!({"actor": format!("bench {n}")}),
            subject: None,
        })
        .collect();
    log.append(AppendRequest {
        stream_id: workspace_stream(workspace),
        expected: ExpectedVersion::Any,
        events: events_of,
    })
    .await
    .context("defining the audiences")?;
    runner.catch_up(&mut built, 1_000).await?;
    let membership_reader = Membership::new(log.clone(), read.clone());
    let started = Instant::now();
    membership::catch_up(&log, read.clone(), 500).await.context("the membership's backfill")?;
    let backfill_seconds = started.elapsed().as_secs_f64();
    let backfill_entries = membership_reader.history(workspace, None).await?.len();

    // Live: orders of identified people.
    let source = Uuid::now_v7();
    let now = onepd_adapters::ingest::now();
    let mut appended = 0;
    while appended < args.live {
        let count = (args.live - appended).min(1_000);
        let batch: Vec<NewEvent> = (appended..appended + count)
            .map(|n| {
                let user = format!("user-{}", (n * 7919) % (profiles.max(1) / 3).max(1));
                let message = json!({
                    "type": "track", "userId": user, "event": "Order Completed",
                    "messageId": format!("live-{n}"), "timestamp": now.to_rfc3339(),
                    "properties": {"revenue": 25.0 + (n % 50) as f64, "currency": "EUR"},
                });
                let accepted = MessageAccepted {
                    message,
                    enrichment: json!({}),
                    originals: serde_json::Map::new(),
                    violations: Vec::new(),
                };
                NewEvent {
                    event_id: EventId::for_message(workspace, &format!("live-{n}")),
                    workspace_id: workspace,
                    event_type: MessageAccepted::TYPE.into(),
                    schema_version: 1,
                    data: serde_json::to_value(accepted).expect("serializable"),
                    metadata: json!({"source_id": source.to_string()}),
                    subject: Some(user),
                }
            })
            .collect();
        log.append(AppendRequest { stream_id: source_stream(source), expected: ExpectedVersion::Any, events: batch })
            .await
            .context("appending the live events")?;
        appended += count;
    }
    let started = Instant::now();
    runner.catch_up(&mut built, 1_000).await.context("the projection's catch-up")?;
    let projection_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    membership::catch_up(&log, read.clone(), 500).await.context("the membership's catch-up")?;
    let membership_seconds = started.elapsed().as_secs_f64();

    // A window edge: a year on, every window has passed.
    let later = Timestamp(now.0 + 400 * 86_400_000_000);
    let edge_people = membership_reader.due_count(workspace, later).await?;
    membership::tick_clock(&log, workspace, later).await?;
    let started = Instant::now();
    membership::catch_up(&log, read.clone(), 500).await.context("the window edge")?;
    let edge_seconds = started.elapsed().as_secs_f64();
    log.close().await;

    let live = args.live as f64;
    let per = |seconds: f64| seconds * 1_000.0 / live.max(1.0);
    Ok(json!({
        "backend": args.workload.backend_name(),
        "events": events,
        "profiles": profiles,
        "backfill_seconds": backfill_seconds,
        "backfill_profiles_per_second": profiles as f64 / backfill_seconds,
        "backfill_entries": backfill_entries,
        "live_events": args.live,
        "projection_events_per_second": live / projection_seconds,
        "projection_ms_per_event": per(projection_seconds),
        "membership_events_per_second": live / membership_seconds,
        "membership_ms_per_event": per(membership_seconds),
        "membership_added_percent": membership_seconds / projection_seconds * 100.0,
        "edge_people": edge_people,
        "edge_seconds": edge_seconds,
        "edge_people_per_second": edge_people as f64 / edge_seconds,
        "edge_seconds_per_million": edge_seconds / (edge_people.max(1) as f64) * 1_000_000.0,
    }))
}
