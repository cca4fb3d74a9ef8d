//! The README, followed as a reader follows it: every ```` ```sh ```` block,
//! in order, in one `bash -euo pipefail` (so variables and files carry over
//! from block to block), against a fresh `onepd serve` — on SQLite, and on
//! PostgreSQL as the Configuration section tells a reader to point the CLI
//! at it. A README step that no longer works fails this test with the
//! block, its stdout and its stderr.
//!
//! The script starts where a reader stands after "Set up": the server runs,
//! `$ONEPD_WRITE_KEY`, `$ONEPD_ADMIN_TOKEN` and `$ONEPD_WORKSPACE` hold what
//! its banner printed, `onepd` is on the `PATH`, and the working directory
//! is the server's, where the CLI finds `./data`. The credentials of the
//! reader's own ad accounts (`$META_TOKEN`, `$GA4_SECRET`, `$HOOK_SECRET`)
//! hold examples.
//!
//! The test changes the blocks' text in three ways only:
//! * `cargo run --release --` and `cargo run -q --release --` become `onepd`,
//!   as "Set up" says they are;
//! * `127.0.0.1:8080` and `127.0.0.1:50051` become the server's own
//!   addresses: it listens on free ports, so tests can run in parallel;
//! * `https://hooks.example.com`, the reader's own webhook receiver, becomes
//!   a local stub that accepts everything, so `replay --wait` finishes.
//!
//! Nothing else leaves the machine: the server's HTTPS requests (Meta, GA4)
//! go to a proxy that refuses them, and stay retrying in the background.
//!
//! A block is skipped only when the line right before it says why:
//! `<!-- not run by tests/readme.rs: REASON -->`. Blocks in other languages
//! (`text`, `json`, `js`, …) are output or other programs, not run.

#[path = "support/stub.rs"]
mod stub;
mod support;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stub::{Mode, Stub};
use support::{PgDatabase, Server, onepd};

/// How long the whole README may take; it takes about ten seconds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(100);

const SKIP_MARKER: &str = "<!-- not run by tests/readme.rs";

/// A fenced block of the README.
#[derive(Debug)]
struct Block {
    /// The line of its opening fence, counted from 1.
    line: usize,
    /// The heading it is under.
    heading: String,
    /// What follows the opening fence: `sh`, `text`, `js`, …
    language: String,
    text: String,
    /// Why it is not run, from the comment on the line before it.
    skip: Option<String>,
}

impl Block {
    fn runs(&self) -> bool {
        self.language == "sh" && self.skip.is_none()
    }

    fn describe(&self) -> String {
        format!("README.md line {} ({})", self.line, self.heading)
    }
}

/// Every fenced block of `readme`, failing on a skip marker without a
/// reason or without a shell block after it.
fn blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut previous = "";
    let mut open: Option<Block> = None;
    for (number, line) in readme.lines().enumerate().map(|(index, line)| (index + 1, line)) {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (Some(_), Some(rest)) if rest.trim().is_empty() => blocks.push(open.take().unwrap()),
            (Some(block), _) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, Some(language)) => {
                let skip = previous.trim().strip_prefix(SKIP_MARKER).map(|rest| {
                    let reason = rest.trim().strip_prefix(':').and_then(|rest| rest.strip_suffix("-->"));
                    let reason = reason.map(str::trim).filter(|reason| !reason.is_empty());
                    reason
                        .unwrap_or_else(|| {
                            panic!("README.md line {}: a skipped block must say why: {previous:?}", number - 1)
                        })
                        .to_owned()
                });
                let language = language.trim().to_owned();
                assert!(
                    skip.is_none() || language == "sh",
                    "README.md line {}: the skip marker is not right before a ```sh block",
                    number - 1
                );
                open = Some(Block { line: number, heading: heading.clone(), language, text: String::new(), skip });
            }
            (None, None) => {
                if line.starts_with('#') {
                    heading = line.trim_start_matches('#').trim().to_owned();
                }
                assert!(
                    !previous.trim().starts_with(SKIP_MARKER),
                    "README.md line {}: the skip marker is not right before a ```sh block",
                    number - 1
                );
            }
        }
        previous = line;
    }
    assert!(open.is_none(), "README.md ends inside a fenced block");
    blocks
}

/// Where the script's environment and text differ from a reader's.
struct Reader<'a> {
    server: &'a Server,
    receiver: &'a Stub,
    database_url: Option<&'a str>,
}

impl Reader<'_> {
    /// A block's text as the test runs it (see the module's doc).
    fn rewrite(&self, text: &str) -> String {
        let address = |url: &str| url.trim_start_matches("http://").to_owned();
        text.replace("cargo run -q --release -- ", "onepd ")
            .replace("cargo run --release -- ", "onepd ")
            .replace("127.0.0.1:8080", &address(&self.server.http))
            .replace("127.0.0.1:50051", &address(&self.server.grpc))
            .replace("https://hooks.example.com", &self.receiver.url())
    }

    /// The runnable blocks as one script, each announced on stdout and
    /// stderr so a failure can be traced to its block.
    fn script(&self, blocks: &[Block]) -> String {
        let mut script = String::new();
        for (index, block) in blocks.iter().enumerate().filter(|(_, block)| block.runs()) {
            let text = self.rewrite(&block.text);
            assert!(
                !text.contains("cargo "),
                "{}: runs cargo; mark it `{SKIP_MARKER}: REASON -->` or use `onepd`:\n{text}",
                block.describe()
            );
            let marker = marker(index);
            script.push_str(&format!("printf '\\n{marker}\\n'; printf '\\n{marker}\\n' >&2\n"));
            script.push_str(&text);
        }
        script
    }

    /// Runs `script` in one bash process in the server's directory and
    /// returns its status (`None` when it ran out of time), stdout and stderr.
    fn run(&self, dir: &Path, script: &str) -> (Option<ExitStatus>, String, String) {
        use std::os::unix::process::CommandExt;
        let outputs = tempfile::tempdir().unwrap();
        let (stdout, stderr) = (outputs.path().join("stdout"), outputs.path().join("stderr"));
        let bin = Path::new(support::BINARY).parent().unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let mut command = Command::new("bash");
        command
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(dir)
            .env("PATH", path)
            .env("ONEPD_WRITE_KEY", self.server.write_key.as_ref().expect("the banner shows the write key"))
            .env("ONEPD_ADMIN_TOKEN", self.server.admin_token.as_ref().expect("the banner shows the admin token"))
            .env("ONEPD_WORKSPACE", self.server.workspace.as_ref().expect("the banner shows the workspace"))
            .env("META_TOKEN", "EAAexample")
            .env("GA4_SECRET", "example-secret")
            .env("HOOK_SECRET", "example-hook-secret")
            .env_remove("ONEPD_DATABASE_URL")
            .env_remove("ONEPD_MASTER_KEY")
            .env_remove("ONEPD_DATA_DIR")
            .env_remove("ONEPD_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            // Its own process group, so whatever it leaves running is stopped with it.
            .process_group(0);
        if let Some(url) = self.database_url {
            command.env("ONEPD_DATABASE_URL", url);
        }
        let mut child = command.spawn().expect("start bash");
        let deadline = Instant::now() + SCRIPT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).stderr(Stdio::null()).status();
        let _ = child.wait();
        let read = |path: &Path| String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
        (status, read(&stdout), read(&stderr))
    }

    /// Which block failed, as run, with its stdout and stderr.
    fn failure(
        &self,
        blocks: &[Block],
        script: &str,
        status: Option<ExitStatus>,
        stdout: &str,
        stderr: &str,
    ) -> String {
        let (index, block_stdout) = last_block(stdout).unwrap_or((usize::MAX, stdout));
        let block_stderr = last_block(stderr).map_or(stderr, |(_, rest)| rest);
        let (what, text) = match blocks.get(index) {
            Some(block) => (block.describe(), self.rewrite(&block.text)),
            None => ("the script, before its first block".to_owned(), script.to_owned()),
        };
        let outcome = match status {
            Some(status) => format!("failed ({status})"),
            None => format!("did not finish within {SCRIPT_TIMEOUT:?}"),
        };
        format!(
            "{what} {outcome}:\n--- the block, as run\n{text}--- its stdout\n{block_stdout}\n--- its stderr\n{block_stderr}"
        )
    }
}

fn marker(index: usize) -> String {
    format!("@@ README block {index} @@")
}

/// What follows the last block marker in `output`, and that block's index.
fn last_block(output: &str) -> Option<(usize, &str)> {
    let start = output.rfind("@@ README block ")?;
    let rest = &output[start + "@@ README block ".len()..];
    let (index, rest) = rest.split_once(" @@")?;
    Some((index.parse().ok()?, rest.trim_start_matches('\n')))
}

/// Runs `onepd ARGS…` against the store the script used, failing with its
/// stderr unless it succeeds, and parses its stdout as JSON lines.
fn onepd_lines(dir: &Path, database_url: Option<&str>, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    if let Some(url) = database_url {
        all.extend(["--database-url", url]);
    }
    let output = onepd(dir, &all);
    assert!(output.status.success(), "onepd {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("onepd {args:?}: {err}: {line}")))
        .collect()
}

fn onepd_one(dir: &Path, database_url: Option<&str>, args: &[&str]) -> Value {
    let mut lines = onepd_lines(dir, database_url, args);
    assert_eq!(lines.len(), 1, "onepd {args:?}: {lines:?}");
    lines.remove(0)
}

async fn the_readme_runs_in_order_as_written(database_url: Option<&str>) {
    let blocks = readme_blocks();
    let dir = tempfile::tempdir().unwrap();
    let store: Vec<&str> = database_url.map(|url| vec!["--database-url", url]).unwrap_or_default();
    let server = Server::start_offline(dir.path(), &store);
    let receiver = Stub::start(Mode::Accept).await;
    let reader = Reader { server: &server, receiver: &receiver, database_url };
    let script = reader.script(&blocks);
    // The stub answers on this runtime while the script runs.
    let (status, stdout, stderr) = tokio::task::block_in_place(|| reader.run(dir.path(), &script));
    if status.is_none_or(|status| !status.success()) {
        panic!("{}", reader.failure(&blocks, &script, status, &stdout, &stderr));
    }
    assert_outcomes(dir.path(), database_url, &receiver, &stdout);
    drop(server);
}

/// The README's blocks, checked for shell written in a way this test would
/// not run.
fn readme_blocks() -> Vec<Block> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let blocks = blocks(&readme);
    for block in &blocks {
        assert!(
            !matches!(block.language.as_str(), "bash" | "shell" | "console" | "zsh"),
            "{}: write shell commands as ```sh, which this test runs",
            block.describe()
        );
    }
    assert!(blocks.iter().filter(|block| block.runs()).count() >= 20, "the README has lost its examples");
    blocks
}

/// What the README's steps did, so a step that silently does nothing (a
/// webhook answered 401, an import that matched no row) fails too.
fn assert_outcomes(dir: &Path, database_url: Option<&str>, receiver: &Stub, stdout: &str) {
    let store: Vec<&str> = database_url.map(|url| vec!["--database-url", url]).unwrap_or_default();
    let workspaces = onepd_lines(dir, database_url, &["workspace", "list"]);
    let names: Vec<&str> = workspaces.iter().filter_map(|w| w["name"].as_str()).collect();
    assert_eq!(names, ["default", "acme"], "{workspaces:?}");
    let keys = onepd_lines(dir, database_url, &["key", "list", "--workspace", "acme"]);
    assert_eq!(keys.iter().filter(|key| key["revoked"] == true).count(), 1, "one acme key revoked: {keys:?}");
    // The Shopify webhook, the generic one and the import each made a profile.
    let shopper = onepd_one(dir, database_url, &["profile", "get", "--email", "jon@example.com"]);
    assert!(shopper["identifiers"].to_string().contains("shopify:115310627314723954"), "{shopper}");
    let acme = onepd_one(dir, database_url, &["profile", "get", "--user-id", "acme:7"]);
    assert_eq!(acme["traits"]["email"]["value"], "kim@example.com", "{acme}");
    let imported = onepd_one(dir, database_url, &["profile", "get", "--user-id", "c2"]);
    assert_eq!(imported["traits"]["plan"]["value"], "free", "{imported}");
    // Erasure removed the profile `onepd forget --email ann@example.com` found, u1's.
    let forgotten = onepd(dir, &[&["profile", "get", "--user-id", "u1"][..], &store[..]].concat());
    assert!(!forgotten.status.success(), "u1 is still readable after `onepd forget`");
    // The import's c1 also said ann@example.com (the user_id limit kept that
    // link out of u1's profile): the forgotten email links to no one, c1
    // included, after the rebuild erasure causes.
    let resurfaced = onepd(dir, &[&["profile", "get", "--email", "ann@example.com"][..], &store[..]].concat());
    assert!(!resurfaced.status.success(), "{}", String::from_utf8_lossy(&resurfaced.stdout));
    // c1's only message named her, so no reader keeps it: c1 has no profile.
    let c1 = onepd(dir, &[&["profile", "get", "--user-id", "c1"][..], &store[..]].concat());
    assert!(!c1.status.success(), "{}", String::from_utf8_lossy(&c1.stdout));
    let policy = onepd_one(dir, database_url, &["policy", "show"]);
    assert_eq!(
        (policy["industry"].as_str(), policy["site_origin"].as_str()),
        (Some("healthcare"), Some("https://www.example-clinic.com"))
    );
    let destinations = onepd_lines(dir, database_url, &["destination", "list"]);
    let names: Vec<&str> = destinations.iter().filter_map(|d| d["name"].as_str()).collect();
    assert_eq!(names, ["crm", "ga4", "klaviyo", "meta", "warehouse"], "{destinations:?}");
    assert!(!receiver.bodies().is_empty(), "the warehouse received nothing");
    assert!(stdout.contains("nothing to replay to \"meta\""), "the replay by time:\n{stdout}");
    let verify = onepd(dir, &[&["verify"][..], &store[..]].concat());
    assert!(verify.status.success(), "onepd verify: {}", String::from_utf8_lossy(&verify.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_runs_in_order_as_written_on_sqlite() {
    the_readme_runs_in_order_as_written(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_runs_in_order_as_written_on_postgres() {
    let db = PgDatabase::create().await;
    the_readme_runs_in_order_as_written(Some(&db.url)).await;
}

/// The parser behind the test above: skips need a reason and a block.
#[test]
fn a_skipped_block_must_say_why_and_be_a_shell_block() {
    let readme =
        "# A\n\n<!-- not run by tests/readme.rs: starts a server -->\n```sh\nserve\n```\n\n```text\nout\n```\n";
    let parsed = blocks(readme);
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].skip.as_deref(), Some("starts a server"));
    assert_eq!((parsed[0].line, parsed[0].heading.as_str(), parsed[0].text.as_str()), (4, "A", "serve\n"));
    assert!(!parsed[1].runs());
    for broken in [
        "<!-- not run by tests/readme.rs -->\n```sh\nx\n```\n",
        "<!-- not run by tests/readme.rs: -->\n```sh\nx\n```\n",
        "<!-- not run by tests/readme.rs: why -->\n\n```sh\nx\n```\n",
        "<!-- not run by tests/readme.rs: why -->\n```text\nx\n```\n",
    ] {
        assert!(std::panic::catch_unwind(|| blocks(broken)).is_err(), "accepted {broken:?}");
    }
}
