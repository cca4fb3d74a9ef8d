//! `onepd events export|tail|show`: take history out of the log, follow it,
//! and look at one event — on the database of this machine, or through a
//! running server's `AuditService` (`--server`, with an admin token of
//! `audit` scope).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use onepd_adapters::EventLog;
use onepd_adapters::export::parquet::ParquetSink;
use onepd_adapters::export::show::{self, EventRef};
use onepd_adapters::export::{self, End, ExportFilter, ExportLine, ExportSpec, LineKind, Start};
use onepd_adapters::readstore::ReadStore;
use onepd_domain::{ProjectionStore, Timestamp};
use onepd_proto::audit::v1::audit_service_client::AuditServiceClient;
use onepd_proto::audit::v1::{self as proto, export_line, export_request, show_event_request};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::config::StoreArgs;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Write a range of the log as NDJSON or Parquet, with a manifest that
    /// `onepd verify --export` checks without the database.
    Export(ExportArgs),
    /// Follow the log as NDJSON, from now or from a position (an auditor's
    /// `tail -f`); reconnects after a server restart without gaps or repeats.
    Tail(TailArgs),
    /// One event: envelope, chain link, the profile it touched, the merges it
    /// caused, and every delivery that carried it.
    Show(ShowArgs),
}

/// Where the events come from: this machine's database, or a server.
#[derive(Debug, Args)]
pub struct Source {
    #[command(flatten)]
    store: StoreArgs,
    /// Read through the gRPC API of a running onepd (`http://host:50051`)
    /// instead of the database; needs `--token`.
    #[arg(long, env = "ONEPD_SERVER")]
    server: Option<String>,
    /// An admin token with `audit` scope, for `--server`; its workspace is
    /// the one read.
    #[arg(long, env = "ONEPD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Which events, besides the range.
#[derive(Debug, Args)]
pub struct Filters {
    /// Only this workspace (name or id); every workspace when omitted. With
    /// `--server`, always the token's workspace.
    #[arg(long)]
    workspace: Option<String>,
    /// Only this stream.
    #[arg(long)]
    stream: Option<String>,
    /// Only events of this type (repeatable): `MessageAccepted`,
    /// `MessageRejected`, `EventQuarantined`, …
    #[arg(long = "type", value_name = "EVENT_TYPE")]
    event_types: Vec<String>,
    /// Only events from this source (name or id).
    #[arg(long)]
    source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Ndjson,
    Parquet,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    filters: Filters,
    /// The first position (inclusive); the start of the log by default.
    #[arg(long, conflicts_with = "since")]
    from: Option<u64>,
    /// The last position (inclusive); the head by default.
    #[arg(long, conflicts_with = "until")]
    to: Option<u64>,
    /// From the first event recorded at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Up to the last event recorded at or before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// `ndjson` (one JSON object a line) or `parquet`.
    #[arg(long, value_enum, default_value = "ndjson")]
    format: Format,
    /// The file to write; stdout when omitted.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    filters: Filters,
    /// The first position to print; events appended from now on by default.
    #[arg(long)]
    from: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    source: Source,
    /// The event's position, or its id.
    event: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: EventsCommand) -> anyhow::Result<ExitCode> {
    super::init_tracing("warn");
    match command {
        EventsCommand::Export(args) => export_command(args).await,
        EventsCommand::Tail(args) => tail(args).await,
        EventsCommand::Show(args) => show_command(args).await,
    }
}

fn time(flag: &str, text: &str) -> anyhow::Result<Timestamp> {
    Timestamp::parse_rfc3339(text)
        .with_context(|| format!("--{flag} {text:?}: expected an RFC 3339 time such as 2026-03-03T00:00:00Z"))
}

/// Refuses `--workspace` with `--server`: the token's workspace is read.
fn no_workspace_with_server(source: &Source, filters: &Filters) -> anyhow::Result<()> {
    if source.server.is_some() && filters.workspace.is_some() {
        bail!("--workspace does not go with --server: the server exports the token's workspace, and only that");
    }
    Ok(())
}

/// The remote client, when `--server` is given.
async fn client(source: &Source) -> anyhow::Result<Option<(AuditServiceClient<Channel>, String)>> {
    let Some(server) = &source.server else { return Ok(None) };
    let Some(token) = &source.token else {
        bail!("--server needs an admin token with audit scope: --token or ONEPD_TOKEN");
    };
    let channel = Channel::from_shared(server.clone())
        .with_context(|| format!("--server {server:?}: expected a URL such as http://127.0.0.1:50051"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {server}"))?;
    Ok(Some((AuditServiceClient::new(channel), token.clone())))
}

fn with_token<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().context("--token: not a valid header value")?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// The filter for a local read.
async fn local_filter(log: &EventLog, filters: &Filters) -> anyhow::Result<ExportFilter> {
    let workspace = match &filters.workspace {
        None => None,
        Some(name) => {
            let directory = super::directory::load(log).await?;
            Some(super::directory::workspace(&directory, name)?.id)
        }
    };
    let source = match &filters.source {
        None => None,
        Some(name) => Some(export::source_id(log, workspace, name).await.map_err(anyhow::Error::msg)?),
    };
    Ok(ExportFilter {
        workspace: workspace.map(|workspace| workspace.0),
        stream: filters.stream.clone(),
        event_types: filters.event_types.clone(),
        source,
    })
}

fn remote_filter(filters: &Filters) -> proto::EventFilter {
    proto::EventFilter {
        event_types: filters.event_types.clone(),
        stream_id: filters.stream.clone().unwrap_or_default(),
    }
}

fn proto_time(time: Timestamp) -> prost_types::Timestamp {
    let (seconds, nanos) = time.to_seconds_nanos();
    prost_types::Timestamp { seconds, nanos }
}

fn line_of(message: proto::ExportLine) -> ExportLine {
    let kind = match export_line::Kind::try_from(message.kind) {
        Ok(export_line::Kind::Header) => LineKind::Header,
        Ok(export_line::Kind::End) => LineKind::End,
        _ => LineKind::Event,
    };
    ExportLine { kind, position: message.position, text: message.line, row: None }
}

/// Where the lines go.
pub(crate) enum Sink {
    Ndjson(Box<dyn Write + Send>),
    Parquet(Box<ParquetSink<Box<dyn Write + Send>>>),
}

impl Sink {
    pub(crate) fn take(&mut self, line: &ExportLine) -> anyhow::Result<()> {
        match self {
            Sink::Ndjson(out) => {
                out.write_all(line.text.as_bytes())?;
                out.write_all(b"\n")?;
            }
            Sink::Parquet(sink) => sink.line(line)?,
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Ndjson(mut out) => out.flush()?,
            Sink::Parquet(sink) => sink.finish()?,
        }
        Ok(())
    }
}

async fn export_command(args: ExportArgs) -> anyhow::Result<ExitCode> {
    no_workspace_with_server(&args.source, &args.filters)?;
    let since = args.since.as_deref().map(|text| time("since", text)).transpose()?;
    let until = args.until.as_deref().map(|text| time("until", text)).transpose()?;
    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(BufWriter::with_capacity(
            1 << 20,
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(BufWriter::with_capacity(1 << 20, std::io::stdout())),
    };
    let mut sink = sink(args.format, out)?;
    let bar =
        output::progress(0, args.output.is_none(), "{spinner} exporting [{bar:40}] {pos}/{len} ({per_sec}, {eta})");
    let mut events = 0u64;
    let mut first = None;
    let mut take = |line: ExportLine, sink: &mut Sink| -> anyhow::Result<()> {
        if line.kind == LineKind::Event {
            events += 1;
            let start = *first.get_or_insert(line.position);
            bar.set_position(line.position + 1 - start);
        }
        sink.take(&line)
    };
    if let Some((mut client, token)) = client(&args.source).await? {
        let start = match (args.from, since) {
            (Some(position), _) => Some(export_request::Start::FromPosition(position)),
            (None, Some(time)) => Some(export_request::Start::FromTime(proto_time(time))),
            (None, None) => None,
        };
        let end = match (args.to, until) {
            (Some(position), _) => Some(export_request::End::UntilPosition(position)),
            (None, Some(time)) => Some(export_request::End::UntilTime(proto_time(time))),
            (None, None) => None,
        };
        let request = proto::ExportRequest {
            start,
            end,
            filter: Some(remote_filter(&args.filters)),
            source: args.filters.source.clone().unwrap_or_default(),
        };
        let mut stream = client.export(with_token(request, &token)?).await.context("Export")?.into_inner();
        while let Some(message) = stream.message().await.context("Export")? {
            take(line_of(message), &mut sink)?;
        }
    } else {
        let log = super::open_log(&args.source.store, false).await?;
        let spec = ExportSpec {
            start: match (args.from, since) {
                (Some(position), _) => Start::Position(position),
                (None, Some(time)) => Start::Time(time),
                (None, None) => Start::Position(1),
            },
            end: match (args.to, until) {
                (Some(position), _) => End::Position(position),
                (None, Some(time)) => End::Time(time),
                (None, None) => End::Head,
            },
            filter: local_filter(&log, &args.filters).await?,
            with_rows: args.format == Format::Parquet,
        };
        let (from, to) = export::range(&log, &spec).await?;
        bar.set_length((to + 1).saturating_sub(from));
        let result = export_into(&log, spec, |line| take(line, &mut sink)).await;
        log.close().await;
        result?;
    }
    bar.finish_and_clear();
    sink.finish()?;
    if let Some(path) = &args.output {
        eprintln!("exported {events} events to {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the export `spec` of `log`, handing each line to `take` in order.
pub(crate) async fn export_into(
    log: &EventLog,
    spec: ExportSpec,
    mut take: impl FnMut(ExportLine) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let (lines, mut produced) = mpsc::channel(4);
    let producer = {
        let log = log.clone();
        tokio::spawn(async move { export::export(&log, &spec, lines, None).await })
    };
    while let Some(batch) = produced.recv().await {
        for line in batch {
            if let Err(err) = take(line) {
                producer.abort();
                return Err(err);
            }
        }
    }
    Ok(producer.await.context("the export task")??)
}

/// Writes an export's lines in `format` to `out`.
pub(crate) fn sink(format: Format, out: Box<dyn Write + Send>) -> anyhow::Result<Sink> {
    Ok(match format {
        Format::Ndjson => Sink::Ndjson(out),
        Format::Parquet => Sink::Parquet(Box::new(ParquetSink::new(out)?)),
    })
}

/// Prints one event line to stdout, at once.
fn print_line(text: &str) {
    output::line(text);
}

async fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    no_workspace_with_server(&args.source, &args.filters)?;
    if args.source.server.is_some() {
        return tail_remote(args).await;
    }
    let log = super::open_log(&args.source.store, false).await?;
    let spec = ExportSpec {
        start: args.from.map_or(Start::Now, Start::Position),
        end: End::Follow,
        filter: local_filter(&log, &args.filters).await?,
        with_rows: false,
    };
    let (lines, mut produced) = mpsc::channel::<Vec<ExportLine>>(4);
    let producer = {
        let log = log.clone();
        tokio::spawn(async move { export::export(&log, &spec, lines, None).await })
    };
    loop {
        tokio::select! {
            batch = produced.recv() => match batch {
                Some(batch) => {
                    for line in batch.iter().filter(|line| line.kind == LineKind::Event) {
                        print_line(&line.text);
                    }
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    producer.abort();
    log.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Follows a server's log; after a lost connection (a restart), connects
/// again and asks from the position after the last one printed.
async fn tail_remote(args: TailArgs) -> anyhow::Result<ExitCode> {
    let mut next: Option<u64> = args.from;
    let mut wait = Duration::from_millis(200);
    loop {
        let attempt = async {
            let (mut client, token) = client(&args.source).await?.expect("--server is given");
            let request = proto::ExportRequest {
                start: Some(match next {
                    Some(position) => export_request::Start::FromPosition(position),
                    None => export_request::Start::FromNow(true),
                }),
                end: Some(export_request::End::Follow(true)),
                filter: Some(remote_filter(&args.filters)),
                source: args.filters.source.clone().unwrap_or_default(),
            };
            let mut stream = client.export(with_token(request, &token)?).await?.into_inner();
            while let Some(message) = stream.message().await? {
                let line = line_of(message);
                match line.kind {
                    // The first call's header tells where "now" was.
                    LineKind::Header if next.is_none() => {
                        let header: export::ExportHeader = serde_json::from_str(&line.text)?;
                        next = Some(header.from_position);
                    }
                    LineKind::Event => {
                        print_line(&line.text);
                        next = Some(line.position + 1);
                    }
                    _ => {}
                }
            }
            anyhow::Ok(())
        };
        let failed = tokio::select! {
            result = attempt => result.err(),
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        if let Some(err) = failed {
            if let Some(status) = err.downcast_ref::<tonic::Status>()
                && matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                )
            {
                bail!("{}: {}", status.code(), status.message());
            }
            eprintln!(
                "the connection to the server was lost ({err:#}); reconnecting from position {}",
                next.map_or("now".into(), |next| next.to_string())
            );
        } else {
            wait = Duration::from_millis(200);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

async fn show_command(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let Some(which) = EventRef::parse(&args.event) else {
        bail!("{:?}: expected a position (digits) or an event id (UUID)", args.event);
    };
    let shown = if let Some((mut client, token)) = client(&args.source).await? {
        let event = match which {
            EventRef::Position(position) => show_event_request::Event::Position(position),
            EventRef::Id(id) => show_event_request::Event::EventId(id.to_string()),
        };
        let request = proto::ShowEventRequest { event: Some(event) };
        match client.show_event(with_token(request, &token)?).await {
            Ok(response) => Some(serde_json::from_str(&response.into_inner().json)?),
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => bail!("ShowEvent: {}: {}", status.code(), status.message()),
        }
    } else {
        let log = super::open_log(&args.source.store, false).await?;
        let store = ReadStore::open(&args.source.store.database_url()).await.context("opening the read store")?;
        let store: Arc<dyn ProjectionStore> = Arc::new(store);
        let shown = show::show(&log, Some(store), None, which).await;
        log.close().await;
        shown?
    };
    let Some(shown) = shown else {
        eprintln!("no event {} in the log", args.event);
        return Ok(ExitCode::from(1));
    };
    if args.json {
        output::json(&shown);
    } else {
        print_show(&shown);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_show(shown: &serde_json::Value) {
    let event = &shown["event"];
    let text = |value: &serde_json::Value| value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
    output::line(format!("position {}  {}  {}", event["position"], text(&event["event_type"]), text(&event["time"])));
    output::line(format!("  event id   {}", text(&event["event_id"])));
    output::line(format!("  workspace  {}", text(&event["workspace_id"])));
    output::line(format!("  stream     {} v{}", text(&event["stream_id"]), event["stream_version"]));
    let holds = if shown["chain"]["holds"].as_bool() == Some(true) { "holds" } else { "DOES NOT HOLD" };
    output::line(format!(
        "  chain      {} -> {} ({holds})",
        text(&shown["chain"]["previous_hash"]),
        text(&shown["chain"]["hash"])
    ));
    for mark in ["erased", "unreadable", "quarantined"] {
        if !event[mark].is_null() {
            output::line(format!("  {mark:<10} {}", text(&event[mark])));
        }
    }
    if event["rejected"].as_bool() == Some(true) {
        output::line("  rejected   yes");
    }
    if !event["data"].is_null() {
        output::line(format!("  data       {}", event["data"]));
    }
    output::line(format!("  metadata   {}", event["metadata"]));
    let projections = &shown["projections"];
    match projections.get("profile_id") {
        Some(profile) => {
            output::line(format!(
                "  profile    {} (attributed to {})",
                text(profile),
                text(&projections["attributed_to"])
            ));
            for merge in projections["merges"].as_array().into_iter().flatten() {
                output::line(format!(
                    "  merged     {} into {} through {} ({})",
                    text(&merge["absorbed"]),
                    text(&merge["survivor"]),
                    text(&merge["shared"]),
                    text(&merge["rule"])
                ));
            }
        }
        None => output::line(format!("  profile    {}", text(&projections["note"]))),
    }
    let deliveries = shown["deliveries"].as_array().cloned().unwrap_or_default();
    if deliveries.is_empty() {
        output::line("  deliveries none");
    }
    for delivery in deliveries {
        output::line(format!(
            "  delivery   {} ({}) attempt {} {}: {} [{}]",
            text(&delivery["destination"]),
            text(&delivery["run"]),
            delivery["attempt"],
            text(&delivery["at"]),
            text(&delivery["outcome"]),
            text(&delivery["response"])
        ));
    }
}
