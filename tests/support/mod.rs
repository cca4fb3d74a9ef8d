//! Starting the real `onepd` binary and talking to it as a client would.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use onepd_proto::audit::v1::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;
use uuid::Uuid;

pub const BINARY: &str = env!("CARGO_BIN_EXE_onepd");

/// The PostgreSQL server the PostgreSQL end-to-end tests run against.
pub fn postgres_admin_url() -> String {
    std::env::var("ONEPD_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh PostgreSQL database, dropped at the end of the test.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        let admin = postgres_admin_url();
        let name = format!("onepd_e2e_{}", Uuid::new_v4().simple());
        let url = onepd_adapters::store::postgres::create_database(&admin, &name)
            .await
            .unwrap_or_else(|err| panic!("PostgreSQL at {admin} is required for the end-to-end tests: {err}"));
        PgDatabase { url, name }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _ = runtime.block_on(onepd_adapters::store::postgres::drop_database(&postgres_admin_url(), &name));
        })
        .join();
    }
}

/// A running `onepd serve`, killed if the test ends without stopping it.
pub struct Server {
    child: Option<Child>,
    pub grpc: String,
    pub http: String,
    /// The admin token, when this start created the default workspace.
    pub admin_token: Option<String>,
    /// The default `http` source's write key, when this start created it.
    pub write_key: Option<String>,
    pub workspace: Option<String>,
    /// Its node id in the cluster sharing its database.
    pub node: String,
    pub banner: Vec<String>,
}

impl Server {
    /// Starts `onepd serve` in `dir` with `extra` arguments on free ports and
    /// waits until it says it is ready.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        Server::spawn(dir, extra, None, &[])
    }

    /// Like [`Server::start`], with the server's log (at `info`) written
    /// to `log`, for a test that reads what the server logged.
    pub fn start_logging(dir: &Path, extra: &[&str], log: &Path) -> Server {
        Server::spawn(dir, extra, Some(log), &[])
    }

    /// Like [`Server::start`], with every HTTPS request the server makes
    /// sent to a proxy that refuses it, so destinations of real platforms
    /// (Meta, GA4) never reach them; their deliveries fail as retryable.
    pub fn start_offline(dir: &Path, extra: &[&str]) -> Server {
        Server::spawn(dir, extra, None, &[("HTTPS_PROXY", "http://127.0.0.1:9")])
    }

    fn spawn(dir: &Path, extra: &[&str], log: Option<&Path>, env: &[(&str, &str)]) -> Server {
        let (level, stderr) = match log {
            Some(path) => ("info", Stdio::from(std::fs::File::create(path).expect("create the server's log file"))),
            None => ("warn", Stdio::inherit()),
        };
        let mut child = Command::new(BINARY)
            .current_dir(dir)
            .arg("serve")
            .args(if extra.contains(&"--grpc-addr") { &[][..] } else { &["--grpc-addr", "127.0.0.1:0"][..] })
            .args(if extra.contains(&"--http-addr") { &[][..] } else { &["--http-addr", "127.0.0.1:0"][..] })
            .args(extra)
            .env_remove("ONEPD_DATABASE_URL")
            .env_remove("ONEPD_MASTER_KEY")
            .env("ONEPD_LOG", level)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start onepd serve");
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = lines_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("onepd serve did not become ready; printed {banner:?}"));
            let done = line.starts_with("ready");
            banner.push(line);
            if done {
                break;
            }
        }
        let field = |name: &str| {
            banner.iter().find_map(|line| line.trim().strip_prefix(name).map(|rest| rest.trim().to_owned()))
        };
        let grpc = format!("http://{}", field("grpc").expect("banner names the gRPC address"));
        let http = format!("http://{}", field("http").expect("banner names the HTTP address"));
        let admin_token = field("admin token");
        let write_key = field("write key");
        let workspace = banner.iter().find_map(|line| {
            line.strip_prefix("created workspace \"default\" (")
                .and_then(|rest| rest.strip_suffix(')'))
                .map(str::to_owned)
        });
        let node = field("node").expect("banner names the node");
        Server { child: Some(child), grpc, http, admin_token, write_key, workspace, node, banner }
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    pub async fn audit(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::connect(self.grpc.clone()).await.expect("connect to the audit service")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc.clone()).unwrap().connect().await.expect("connect")
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("send SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "onepd serve did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `onepd cluster status --json` against the database at `url`.
pub fn cluster_status(dir: &Path, url: &str) -> serde_json::Value {
    onepd_json(dir, &["cluster", "status", "--database-url", url])
}

/// A local port free now, for a server that must keep its address across
/// a restart (`--grpc-addr 127.0.0.1:PORT`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A request carrying an admin token.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Where the default SQLite database of a server started in `dir` lives.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("data").join("onepd.db").display())
}

pub fn master_key_file(dir: &Path) -> PathBuf {
    dir.join("data").join("master.key")
}

/// Every event a `ReadEvents` call with `request` streams back.
pub async fn read_all(
    audit: &mut AuditServiceClient<Channel>,
    request: onepd_proto::audit::v1::ReadEventsRequest,
    token: &str,
) -> Vec<onepd_proto::audit::v1::Event> {
    use tokio_stream::StreamExt;
    audit
        .read_events(with_token(request, token))
        .await
        .expect("ReadEvents accepted")
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("ReadEvents streamed to the end")
}

/// Runs `onepd <args>` in `dir` (so it finds the server's `./data`) and
/// returns its output.
///
/// A command still running after [`COMMAND_PATIENCE`] is killed and the
/// test fails naming it: a hung command must not hang the test.
pub fn onepd(dir: &Path, args: &[&str]) -> std::process::Output {
    onepd_within(dir, args, COMMAND_PATIENCE)
}

/// [`onepd`] with a patience of its own (a long import).
pub fn onepd_within(dir: &Path, args: &[&str], patience: Duration) -> std::process::Output {
    let child = Command::new(BINARY)
        .current_dir(dir)
        .args(args)
        .env_remove("ONEPD_DATABASE_URL")
        .env_remove("ONEPD_MASTER_KEY")
        .env("ONEPD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run onepd");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(patience) {
        Ok(output) => output.expect("run onepd"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("onepd {args:?} was still running after {patience:?}: killed");
        }
    }
}

/// How long a test waits for one `onepd` command.
pub const COMMAND_PATIENCE: Duration = Duration::from_secs(90);

/// Runs `onepd <args> --json` and parses its stdout, failing the test with
/// stderr when it exits non-zero.
pub fn onepd_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    onepd_json_within(dir, args, COMMAND_PATIENCE)
}

/// [`onepd_json`] with a patience of its own (a long import).
pub fn onepd_json_within(dir: &Path, args: &[&str], patience: Duration) -> serde_json::Value {
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let output = onepd_within(dir, &with_json, patience);
    assert!(output.status.success(), "onepd {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!("onepd {args:?} printed no JSON ({err}): {}", String::from_utf8_lossy(&output.stdout))
    })
}

/// A request carrying a write key.
pub fn with_write_key<T>(message: T, key: &str) -> tonic::Request<T> {
    with_token(message, key)
}
