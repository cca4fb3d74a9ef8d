//! The container files, and the health check they run.
//!
//! No Docker engine is needed: the `Dockerfile`, `.dockerignore` and
//! `docker-compose.yml` are read as text for the conventions onepd keeps
//! (a build context without build output or keys, cached dependencies, a
//! stripped binary run by an unprivileged user, health checks, one image
//! build, ports published on loopback only); `onepd healthcheck`, which the
//! image's checks run, is run against a real server and a real adapter.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::Server;

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
        .unwrap_or_else(|err| panic!("reading {name}: {err}"))
}

/// The lines of a file without comments and blank lines.
fn directives(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split(" #").next().unwrap().trim().to_owned())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

#[test]
fn the_build_context_holds_neither_build_output_nor_keys_nor_data() {
    let ignored = directives(&read(".dockerignore"));
    for pattern in ["target/", "data/", "**/*.key", ".env", ".git/", "**/node_modules/"] {
        assert!(ignored.iter().any(|line| line == pattern), ".dockerignore does not exclude {pattern}: {ignored:?}");
    }
}

#[test]
fn the_image_caches_dependencies_strips_the_binary_runs_unprivileged_and_checks_its_health() {
    let dockerfile = read("Dockerfile");
    let lines = directives(&dockerfile);
    assert!(dockerfile.contains("--mount=type=cache,target=/usr/local/cargo/registry"), "no registry cache mount");
    assert!(dockerfile.contains("--mount=type=cache,target=/src/target"), "no target cache mount");
    assert!(dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=symbols"), "the binary is not stripped");
    assert!(dockerfile.contains("FROM debian:bookworm-slim"), "the runtime image is not slim");
    let user = lines.iter().rev().find_map(|line| line.strip_prefix("USER ")).expect("a USER directive");
    assert!(!user.starts_with("root") && !user.starts_with('0'), "the image runs as {user}");
    assert!(
        lines.iter().any(|line| line.contains("CMD [\"onepd\", \"healthcheck\"")),
        "no HEALTHCHECK running onepd healthcheck"
    );
}

#[test]
fn compose_builds_the_image_once_checks_health_and_publishes_ports_on_loopback_only() {
    let compose = read("docker-compose.yml");
    let lines = directives(&compose);
    let builds = lines.iter().filter(|line| line.starts_with("build:")).count();
    assert_eq!(builds, 1, "the onepd image is built by exactly one service");
    let images = lines.iter().filter(|line| *line == "image: onepd:local").count();
    assert_eq!(images, 3, "both onepd nodes and the adapter run the one image");
    // Every published port (a `- "HOST:CONTAINER"` line under `ports:`).
    let mut in_ports = false;
    let mut published = Vec::new();
    for line in compose.lines() {
        let trimmed = line.trim();
        if trimmed == "ports:" {
            in_ports = true;
        } else if in_ports && trimmed.starts_with("- ") {
            published.push(trimmed.trim_start_matches("- ").trim_matches('"').to_owned());
        } else if !trimmed.starts_with('#') {
            in_ports = false;
        }
    }
    assert!(!published.is_empty(), "compose publishes onepd's ports");
    for port in &published {
        assert!(port.starts_with("127.0.0.1:"), "port {port} is published on every interface");
    }
    let checks = compose.matches("[\"CMD\", \"onepd\", \"healthcheck\"").count();
    assert_eq!(checks, 3, "both onepd nodes and the adapter each have a health check");
}

fn healthcheck(url: &str) -> (bool, String) {
    let output = Command::new(support::BINARY).args(["healthcheck", url, "--timeout", "3"]).output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn healthcheck_passes_on_a_serving_onepd_and_adapter_and_fails_when_they_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let healthz = format!("{}/healthz", server.http);
    let (ok, said) = healthcheck(&healthz);
    assert!(ok, "{said}");
    assert!(said.contains("answered 200"), "{said}");
    // A path the server answers 404 is unhealthy.
    let (ok, said) = healthcheck(&format!("{}/no-such-path", server.http));
    assert!(!ok && said.contains("answered 404"), "{said}");
    server.terminate();
    let (ok, said) = healthcheck(&healthz);
    assert!(!ok, "a stopped server is unhealthy: {said}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut adapter = Command::new(support::BINARY)
        .args(["adapter", "serve", "webhook", "--listen", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let grpc = format!("grpc://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut ok, mut said) = healthcheck(&grpc);
    while !ok && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        (ok, said) = healthcheck(&grpc);
    }
    assert!(ok && said.contains("SERVING"), "{said}");
    adapter.kill().unwrap();
    adapter.wait().unwrap();
    let (ok, said) = healthcheck(&grpc);
    assert!(!ok, "a stopped adapter is unhealthy: {said}");
}
