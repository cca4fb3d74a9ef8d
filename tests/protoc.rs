//! onepd's protos are for every language, not only Rust (which builds them
//! with protox): each compiles with a real `protoc` (PyPI `grpcio-tools`,
//! installed by `tests/sdk/install.sh`), and the generated Python client
//! calls `IngestService` and `ProfileService` on a running server.

mod support;

use std::path::Path;

use support::Server;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/sdk/install.sh`, failing with its output when it fails.
fn install() {
    let script = repo().join("tests/sdk/install.sh");
    let output = std::process::Command::new("bash").arg(&script).current_dir(repo()).output().unwrap();
    assert!(
        output.status.success(),
        "{} failed: the protoc test cannot run without grpcio-tools:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_proto_compiles_with_protoc_and_the_generated_python_client_calls_the_server() {
    install();
    let python = repo().join("target/sdk-venv/bin/python");
    let out = tempfile::tempdir().unwrap();
    let protos: Vec<String> = walk(&repo().join("proto/proto")).into_iter().map(|p| p.display().to_string()).collect();
    assert!(protos.len() >= 6, "{protos:?}");
    let generated = std::process::Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-Iproto/proto"])
        .arg(format!("--python_out={}", out.path().display()))
        .arg(format!("--grpc_python_out={}", out.path().display()))
        .args(&protos)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "protoc refused onepd's protos:\n{}",
        String::from_utf8_lossy(&generated.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let address = server.grpc.trim_start_matches("http://").to_owned();
    let called = std::process::Command::new(&python)
        .arg(repo().join("tests/sdk/python/grpc_client.py"))
        .arg(out.path())
        .arg(&address)
        .arg(server.write_key.as_deref().unwrap())
        .arg(server.admin_token.as_deref().unwrap())
        .output()
        .unwrap();
    assert!(called.status.success(), "the generated client failed:\n{}", String::from_utf8_lossy(&called.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&called.stdout).unwrap();
    assert_eq!(answer["outcome"], "accepted", "{answer}");
    assert!(answer["identifiers"].as_array().unwrap().iter().any(|id| id == "user_id:py-user"), "{answer}");
    drop(server);
}

/// Every `.proto` file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            found.push(path.strip_prefix(repo()).unwrap().to_path_buf());
        }
    }
    found.sort();
    found
}
