//! `onepd bench ingest`: the ingest rate of a real `onepd serve` through its
//! public API, beside the `bench append` rate of the same run.
//!
//! The benchmark creates a fresh store, starts this binary's `serve` on it as
//! a child process (free ports, read back from its banner) and drives it as a
//! client would: `--concurrency` tasks take batches of `--batch` Segment
//! `track` messages from one queue and send each through gRPC `Batch` or HTTP
//! `POST /v1/batch`, waiting for the answer before sending the next. Every
//! counted event therefore has a durable acknowledgement. Any answer other
//! than "all accepted" ends the run with that answer; "at capacity" (HTTP 429,
//! gRPC RESOURCE_EXHAUSTED) is waited out and resent, and counted.
//!
//! The messages are generated before the clock starts; HTTP bodies are
//! serialized then too, while gRPC requests are encoded by tonic as they are
//! sent, as a real client's would be. The server, the client and (for
//! PostgreSQL) the database share the machine.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use onepd_domain::Timestamp;
use onepd_proto::ingest::v1 as pb;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use super::{Backend, ScratchStore, append};
use crate::output;

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Which API to drive.
    #[arg(long, value_enum, default_value = "grpc")]
    pub(super) via: Via,
    /// Which database the server runs on.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub(super) backend: Backend,
    /// How many events to send.
    #[arg(long, default_value_t = 200_000)]
    pub(super) events: u64,
    /// Messages per request. Over HTTP a batch body may hold at most 500 KB.
    #[arg(long, default_value_t = 500)]
    pub(super) batch: usize,
    /// Concurrent client tasks, each with one request in flight.
    #[arg(long, default_value_t = 8)]
    pub(super) concurrency: usize,
    /// The PostgreSQL server to create the benchmark's databases on.
    #[arg(long, env = "ONEPD_BENCH_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub(super) postgres_url: String,
    /// Where the benchmark's files go (removed afterwards): the SQLite
    /// database and the server's master key.
    #[arg(long, default_value = "./data")]
    pub(super) dir: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub(super) json: bool,
    /// Do not measure `bench append` for reference.
    #[arg(long)]
    pub(super) skip_append: bool,
}

/// The API a benchmark drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Via {
    Grpc,
    Http,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Grpc => "grpc",
            Via::Http => "http",
        }
    }
}

/// The largest HTTP batch body the server takes (Segment's limit).
const MAX_HTTP_BODY: usize = 500 * 1024;

pub(super) async fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.events > 0, "--events: expected at least 1, found 0");
    anyhow::ensure!(args.batch > 0, "--batch: expected at least 1, found 0");
    anyhow::ensure!(args.concurrency > 0, "--concurrency: expected at least 1, found 0");

    let messages = Messages::new(args.events);
    let work = plan(&args, &messages)?;
    let store = ScratchStore::create(args.backend, &args.postgres_url, &args.dir, "onepd_bench_ingest").await?;
    let result = measure(&args, &store, work).await;
    store.remove().await;
    let ingest = result?;
    let append = match args.skip_append {
        true => None,
        false => Some(
            append::reference(args.backend, args.events, args.batch, &args.postgres_url, &args.dir, args.json)
                .await
                .context("measuring bench append for reference")?,
        ),
    };
    print(&args, &ingest, append.as_ref());
    Ok(ExitCode::SUCCESS)
}

/// What one drive of the server measured.
pub(super) struct Measured {
    elapsed: Duration,
    /// Each request's time from first send to acknowledgement, sorted.
    latencies: Vec<Duration>,
    retries: u64,
}

impl Measured {
    pub(super) fn events_per_second(&self, events: u64) -> f64 {
        events as f64 / self.elapsed.as_secs_f64()
    }

    /// The nearest-rank percentile of request latency, in milliseconds.
    pub(super) fn percentile_ms(&self, percent: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank = ((percent / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1].as_secs_f64() * 1000.0
    }
}

fn print(args: &IngestArgs, ingest: &Measured, append: Option<&Value>) {
    let rate = ingest.events_per_second(args.events);
    let append_rate = append.and_then(|report| report["store_events_per_sec"].as_f64());
    let ratio = append_rate.map(|append_rate| round(rate / append_rate, 3));
    if args.json {
        let field = |name: &str| append.map_or(Value::Null, |report| report[name].clone());
        output::json(&json!({
            "via": args.via.name(),
            "backend": args.backend.name(),
            "events": args.events,
            "batch": args.batch,
            "concurrency": args.concurrency,
            "seconds": round(ingest.elapsed.as_secs_f64(), 3),
            "events_per_second": rate.round(),
            "p50_ms": round(ingest.percentile_ms(50.0), 2),
            "p99_ms": round(ingest.percentile_ms(99.0), 2),
            "retries": ingest.retries,
            "append_events_per_second": append_rate,
            "ratio_to_append": ratio,
            "raw_events_per_second": field("raw_events_per_sec"),
            "append_ratio_to_raw": field("ratio"),
            "raw_copy_events_per_second": field("raw_copy_events_per_sec"),
        }));
        return;
    }
    output::line(format!(
        "ingest via {} on {}: {} events/s; p50 {:.1} ms, p99 {:.1} ms; {} events in {:.1} s \
         (batch {}, concurrency {}, {} retries)",
        args.via.name(),
        args.backend.name(),
        grouped(rate),
        ingest.percentile_ms(50.0),
        ingest.percentile_ms(99.0),
        args.events,
        ingest.elapsed.as_secs_f64(),
        args.batch,
        args.concurrency,
        ingest.retries
    ));
    if let (Some(report), Some(append_rate), Some(ratio)) = (append, append_rate, ratio) {
        output::line(format!(
            "append (same run): {} events/s; ingest/append = {ratio:.2} (raw insert {} events/s, append/raw = {:.2})",
            grouped(append_rate),
            grouped(report["raw_events_per_sec"].as_f64().unwrap_or_default()),
            report["ratio"].as_f64().unwrap_or_default()
        ));
    }
}

pub(super) fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// `1234567.8` as `1,234,568`.
pub(super) fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A running `onepd serve`, killed if dropped without [`Server::stop`].
pub(super) struct Server {
    child: Child,
    grpc: String,
    pub(super) http: String,
    pub(super) write_key: String,
    /// The default workspace, when this start created it.
    pub(super) workspace: Option<String>,
    /// Its node id in the cluster.
    pub(super) node: String,
}

impl Server {
    /// Starts this binary's `serve` on `store` on free ports and waits until it
    /// says it is ready.
    async fn start(store: &ScratchStore) -> anyhow::Result<Server> {
        Server::start_with(store, &[], None).await
    }

    /// Like [`Server::start`], with `extra` arguments; a node joining others
    /// takes the write key of the one that created the workspace.
    pub(super) async fn start_with(
        store: &ScratchStore,
        extra: &[&str],
        write_key: Option<&str>,
    ) -> anyhow::Result<Server> {
        let exe = std::env::current_exe().context("finding the onepd binary")?;
        let mut command = Command::new(&exe);
        command
            .arg("serve")
            .args(extra)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(store.path())
            .env_remove("ONEPD_DATABASE_URL")
            .env_remove("ONEPD_MASTER_KEY")
            .env("ONEPD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if store.is_postgres() {
            command.arg("--database-url").arg(&store.url);
        }
        let mut child = command.spawn().with_context(|| format!("starting {} serve", exe.display()))?;
        let stdout = child.stdout.take().context("reading onepd serve's output")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                let done = line.starts_with("ready");
                banner.push(line);
                if done {
                    return Ok(true);
                }
            }
            Ok::<_, std::io::Error>(false)
        })
        .await;
        match ready {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                let status = child.wait().await?;
                bail!("onepd serve exited ({status}) before it was ready; it printed {banner:?}");
            }
            Ok(Err(err)) => bail!("reading onepd serve's output: {err}"),
            Err(_) => bail!("onepd serve was not ready within 60 s; it printed {banner:?}"),
        }
        // Reading on keeps the server from blocking on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let field = |name: &str| {
            banner.iter().find_map(|line| line.trim().strip_prefix(name).map(|rest| rest.trim().to_owned()))
        };
        let missing = |name: &str| format!("onepd serve's banner: expected a {name} line, found {banner:?}");
        let workspace = banner.iter().find_map(|line| {
            line.strip_prefix("created workspace \"default\" (")
                .and_then(|rest| rest.strip_suffix(')'))
                .map(str::to_owned)
        });
        let write_key = match write_key {
            Some(key) => key.to_owned(),
            None => field("write key").with_context(|| missing("write key"))?,
        };
        Ok(Server {
            grpc: format!("http://{}", field("grpc").with_context(|| missing("grpc"))?),
            http: format!("http://{}", field("http").with_context(|| missing("http"))?),
            write_key,
            workspace,
            node: field("node").with_context(|| missing("node"))?,
            child,
        })
    }

    /// SIGKILL, and waits for the process to be gone.
    pub(super) async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub(super) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => bail!("onepd serve exited with {status} after SIGTERM"),
            Ok(Err(err)) => Err(err).context("waiting for onepd serve to stop"),
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("onepd serve did not stop within 30 s of SIGTERM")
            }
        }
    }
}

/// The benchmark's messages: `track` calls of 400–600 bytes of JSON, each a
/// pure function of its number so a batch can be built again to be resent.
pub(super) struct Messages {
    /// Random per run, so message ids never repeat across runs.
    seed: [u8; 10],
    /// The first message's time; each next one is a millisecond later.
    first_at: i64,
}

/// Real browsers' user agents, so the server's parser does real work.
const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
];

/// Distinct users the messages are about.
const USERS: u64 = 10_000;

impl Messages {
    pub(super) fn new(events: u64) -> Messages {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as i64;
        Messages { seed: rand::random(), first_at: now - (events as i64 + 60_000) * 1_000 }
    }

    /// Message `n`'s `messageId`: a UUIDv4 of 74 random bits per run, then
    /// the message number.
    pub(super) fn message_id(&self, n: u64) -> uuid::Uuid {
        let mut bytes = [0u8; 16];
        bytes[..10].copy_from_slice(&self.seed);
        bytes[10..].copy_from_slice(&n.to_be_bytes()[2..]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// Message `n` as the Segment JSON the HTTP API takes.
    fn json(&self, n: u64) -> Value {
        let message_id = self.message_id(n);
        // Users are spread over the pool rather than taken in turn.
        let user = n.wrapping_mul(7_919) % USERS;
        let products = match n % 3 {
            0 => json!([{ "productId": "SKU-1042", "name": "Trail running shoes", "price": 89.5, "quantity": 1 }]),
            1 => json!([
                { "productId": "SKU-2210", "name": "Merino socks", "price": 14.0, "quantity": 3 },
                { "productId": "SKU-0077", "name": "Water bottle", "price": 19.99, "quantity": 1 }
            ]),
            _ => json!([{ "productId": "SKU-3301", "name": "Rain jacket", "price": 129.0, "quantity": 1 }]),
        };
        json!({
            "type": "track",
            "messageId": message_id.to_string(),
            "userId": format!("user-{user:05}"),
            "event": "Order Completed",
            "properties": {
                "orderId": format!("ord-{n:010}"),
                "revenue": (n % 997) as f64 + 0.99,
                "currency": "USD",
                "products": products,
            },
            "context": {
                "userAgent": USER_AGENTS[(n % USER_AGENTS.len() as u64) as usize],
                "ip": format!("198.51.100.{}", n % 254 + 1),
                "library": { "name": "analytics-node", "version": "2.1.2" },
            },
            "timestamp": self.at(n).to_rfc3339(),
        })
    }

    fn at(&self, n: u64) -> Timestamp {
        Timestamp(self.first_at + n as i64 * 1_000)
    }

    /// Message `n` as the typed gRPC message, with the same content.
    fn grpc(&self, n: u64) -> pb::Message {
        let message = self.json(n);
        let text = |name: &str| message[name].as_str().unwrap_or_default().to_owned();
        let (seconds, nanos) = self.at(n).to_seconds_nanos();
        let common = pb::Common {
            message_id: text("messageId"),
            user_id: text("userId"),
            context: message["context"].as_object().map(to_struct),
            timestamp: Some(prost_types::Timestamp { seconds, nanos }),
            ..pb::Common::default()
        };
        pb::Message {
            kind: Some(pb::message::Kind::Track(pb::Track {
                common: Some(common),
                event: text("event"),
                properties: message["properties"].as_object().map(to_struct),
            })),
        }
    }

    fn grpc_batch(&self, first: u64, count: usize) -> pb::BatchRequest {
        pb::BatchRequest { messages: (first..first + count as u64).map(|n| self.grpc(n)).collect(), sent_at: None }
    }

    /// The body of `POST /v1/batch`.
    fn http_batch(&self, first: u64, count: usize) -> Bytes {
        let batch: Vec<Value> = (first..first + count as u64).map(|n| self.json(n)).collect();
        Bytes::from(serde_json::to_vec(&json!({ "batch": batch })).expect("JSON values serialize"))
    }
}

fn to_struct(map: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: map.iter().map(|(key, value)| (key.clone(), to_value(value))).collect() }
}

fn to_value(value: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(flag) => Kind::BoolValue(*flag),
        Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or_default()),
        Value::String(text) => Kind::StringValue(text.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue { values: items.iter().map(to_value).collect() }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// One request's worth of messages, ready to send.
pub(super) struct Batch {
    /// The batch's number, for errors.
    index: usize,
    count: usize,
    payload: Payload,
}

enum Payload {
    /// A `BatchRequest`, already protobuf-encoded.
    Grpc(Bytes),
    /// A `{"batch": [...]}` body, already serialized.
    Http(Bytes),
}

/// Every batch of the run, generated before the clock starts.
pub(super) fn plan(args: &IngestArgs, messages: &Messages) -> anyhow::Result<VecDeque<Batch>> {
    let bar = output::progress(args.events, args.json, "{spinner} generating [{bar:40}] {pos}/{len}");
    let mut batches = VecDeque::new();
    let mut first = 0;
    while first < args.events {
        let count = (args.batch as u64).min(args.events - first) as usize;
        let payload = match args.via {
            // Encoded before the clock starts, as HTTP bodies are serialized:
            // the load generator shares the machine with the server, and
            // building `google.protobuf.Struct`s would take its cores.
            Via::Grpc => Payload::Grpc(Bytes::from(prost::Message::encode_to_vec(&messages.grpc_batch(first, count)))),
            Via::Http => {
                let body = messages.http_batch(first, count);
                anyhow::ensure!(
                    body.len() <= MAX_HTTP_BODY,
                    "--batch: {count} messages make a {}-byte body, and the HTTP API takes at most 500 KB \
                     ({MAX_HTTP_BODY} bytes); use --batch {} or less",
                    body.len(),
                    MAX_HTTP_BODY * count / body.len()
                );
                Payload::Http(body)
            }
        };
        batches.push_back(Batch { index: batches.len(), count, payload });
        first += count as u64;
        bar.inc(count as u64);
    }
    bar.finish_and_clear();
    Ok(batches)
}

/// Starts the server on `store`, drives it with `work` and stops it.
async fn measure(args: &IngestArgs, store: &ScratchStore, work: VecDeque<Batch>) -> anyhow::Result<Measured> {
    let server = Server::start(store).await?;
    let result = drive(args, &server, work).await;
    if let Err(err) = server.stop().await {
        eprintln!("warning: {err:#}");
    }
    result
}

/// The client side: `--concurrency` tasks sharing one queue of batches.
async fn drive(args: &IngestArgs, server: &Server, work: VecDeque<Batch>) -> anyhow::Result<Measured> {
    drive_many(args, &[server], work).await
}

/// [`drive`] across `servers`: the tasks take them in turn.
pub(super) async fn drive_many(
    args: &IngestArgs,
    servers: &[&Server],
    work: VecDeque<Batch>,
) -> anyhow::Result<Measured> {
    let queue = Arc::new(Mutex::new(work));
    let bar = output::progress(args.events, args.json, "{spinner} ingest [{bar:40}] {pos}/{len} {per_sec}");
    // One connection for all tasks: over gRPC, HTTP/2 multiplexes their
    // calls, and a channel per task measured no faster (39.1k vs 38.8k
    // events/s on SQLite); over HTTP/1.1 the client pools one connection per
    // task by itself.
    let mut senders = Vec::new();
    for server in servers {
        senders.push(Sender::connect(args, server).await?);
    }

    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..args.concurrency {
        let queue = queue.clone();
        let sender = senders[task % senders.len()].clone();
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut retries = 0;
            loop {
                let next = queue.lock().expect("queue lock").pop_front();
                let Some(batch) = next else { break };
                let count = batch.count as u64;
                let sent = Instant::now();
                retries += sender.send(batch).await?;
                latencies.push(sent.elapsed());
                bar.inc(count);
            }
            anyhow::Ok((latencies, retries))
        }));
    }
    let mut latencies = Vec::new();
    let mut retries = 0;
    let mut failure = None;
    for task in tasks {
        match task.await.context("a client task panicked")? {
            Ok((mine, my_retries)) => {
                latencies.extend(mine);
                retries += my_retries;
            }
            // The first failure is the one to report; the others stop with it.
            Err(err) => {
                queue.lock().expect("queue lock").clear();
                failure.get_or_insert(err);
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    if let Some(err) = failure {
        return Err(err);
    }
    latencies.sort_unstable();
    Ok(Measured { elapsed, latencies, retries })
}

/// A client of the server's API; cheap to clone.
#[derive(Clone)]
enum Sender {
    Grpc { channel: Channel, authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii> },
    Http { client: reqwest::Client, url: String, write_key: String },
}

impl Sender {
    async fn connect(args: &IngestArgs, server: &Server) -> anyhow::Result<Sender> {
        Ok(match args.via {
            Via::Grpc => {
                let channel = Channel::from_shared(server.grpc.clone())?
                    .connect()
                    .await
                    .with_context(|| format!("connecting to onepd serve's gRPC at {}", server.grpc))?;
                let authorization =
                    format!("Bearer {}", server.write_key).parse().context("the write key as gRPC metadata")?;
                Sender::Grpc { channel, authorization }
            }
            Via::Http => Sender::Http {
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(args.concurrency)
                    .build()
                    .context("building the HTTP client")?,
                url: format!("{}/v1/batch", server.http),
                write_key: server.write_key.clone(),
            },
        })
    }

    /// Sends `batch` until it is acknowledged, and returns how many times the
    /// server asked to retry; any other answer than "all accepted" is an error.
    async fn send(&self, batch: Batch) -> anyhow::Result<u64> {
        let mut retries = 0;
        match (self, batch.payload) {
            (Sender::Grpc { channel, authorization }, Payload::Grpc(request)) => loop {
                let mut call = tonic::Request::new(request.clone());
                call.metadata_mut().insert("authorization", authorization.clone());
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready().await.context("the gRPC channel")?;
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(BATCH_PATH);
                match grpc.unary(call, path, PreEncoded).await {
                    Ok(response) => {
                        check_grpc(batch.index, batch.count, &response.into_inner())?;
                        return Ok(retries);
                    }
                    // Only onepd's "at capacity" carries Retry-After; tonic's own
                    // RESOURCE_EXHAUSTED (a message over a size limit) would fail again.
                    Err(status)
                        if status.code() == tonic::Code::ResourceExhausted
                            && status.metadata().get("retry-after").is_some() =>
                    {
                        retries += 1;
                        let seconds = status.metadata().get("retry-after").and_then(|value| value.to_str().ok());
                        tokio::time::sleep(retry_after(seconds)).await;
                    }
                    Err(status) => bail!(
                        "batch {} ({} messages): gRPC {:?}: {}",
                        batch.index,
                        batch.count,
                        status.code(),
                        status.message()
                    ),
                }
            },
            (Sender::Http { client, url, write_key }, Payload::Http(body)) => loop {
                let response = client
                    .post(url)
                    .basic_auth(write_key, None::<&str>)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .with_context(|| format!("batch {}: sending to {url}", batch.index))?;
                let status = response.status();
                let wait = retry_after(
                    response.headers().get(reqwest::header::RETRY_AFTER).and_then(|value| value.to_str().ok()),
                );
                let text =
                    response.text().await.with_context(|| format!("batch {}: reading the answer", batch.index))?;
                if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    retries += 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
                check_http(batch.index, batch.count, status, &text)?;
                return Ok(retries);
            },
            _ => unreachable!("batches are planned for the sender's API"),
        }
    }
}

/// The `Batch` method of `onepd.ingest.v1.IngestService`.
const BATCH_PATH: &str = "/onepd.ingest.v1.IngestService/Batch";

/// A gRPC codec that sends requests already protobuf-encoded and decodes
/// `BatchResponse`s: the wire bytes are exactly those of a generated client.
#[derive(Debug, Clone, Copy, Default)]
struct PreEncoded;

impl tonic::codec::Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = pb::BatchResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> PreEncoded {
        PreEncoded
    }

    fn decoder(&mut self) -> PreEncoded {
        PreEncoded
    }
}

impl tonic::codec::Encoder for PreEncoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for PreEncoded {
    type Item = pb::BatchResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<pb::BatchResponse>, tonic::Status> {
        prost::Message::decode(src).map(Some).map_err(|err| tonic::Status::internal(format!("BatchResponse: {err}")))
    }
}

/// A Retry-After in whole seconds; one second when absent or unreadable.
fn retry_after(seconds: Option<&str>) -> Duration {
    Duration::from_secs(seconds.and_then(|text| text.trim().parse().ok()).unwrap_or(1))
}

fn check_grpc(index: usize, count: usize, response: &pb::BatchResponse) -> anyhow::Result<()> {
    if response.accepted as usize == count && response.results.len() == count {
        return Ok(());
    }
    let first_rejection = response.results.iter().find_map(|result| match &result.outcome {
        Some(pb::message_result::Outcome::Rejected(rejected)) => Some(format!(
            "; first rejection: messages[{}] ({}): {}",
            result.index,
            result.message_id,
            rejected
                .reasons
                .iter()
                .map(|reason| format!("{} [{}]: {}", reason.field, reason.rule, reason.message))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        _ => None,
    });
    bail!(
        "batch {index}: expected {count} messages accepted, found {} accepted, {} duplicates, {} rejected \
         ({} results){}",
        response.accepted,
        response.duplicates,
        response.rejected,
        response.results.len(),
        first_rejection.unwrap_or_default()
    )
}

fn check_http(index: usize, count: usize, status: reqwest::StatusCode, body: &str) -> anyhow::Result<()> {
    let answer: Option<Value> = serde_json::from_str(body).ok();
    let accepted = answer
        .as_ref()
        .is_some_and(|answer| answer["success"] == Value::Bool(true) && answer.get("rejected").is_none());
    if status == reqwest::StatusCode::OK && accepted {
        return Ok(());
    }
    const SHOWN: usize = 2_000;
    let shown = match body.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &body[..end]),
        None => body.to_owned(),
    };
    bail!("batch {index} ({count} messages): expected HTTP 200 {{\"success\":true}}, found HTTP {status}: {shown}")
}
