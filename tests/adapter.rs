//! `onepd adapter serve` end to end: the real binary, spoken to as the
//! activation engine (or an operator's probe) would.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::BINARY;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[test]
fn an_unknown_adapter_name_exits_with_status_2_naming_it_before_listening() {
    let mut child = Command::new(BINARY)
        .args(["adapter", "serve", "nope", "--listen", "127.0.0.1:0"])
        .env("ONEPD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start onepd adapter serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("onepd adapter serve nope is still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("nope"), "names the adapter: {stderr}");
    assert!(stderr.contains("meta_capi"), "lists the adapters there are: {stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"), "never listened");
}

#[tokio::test]
async fn a_built_in_adapter_reports_serving_lists_only_its_services_and_stops_on_sigterm() {
    let mut child = Command::new(BINARY)
        .args(["adapter", "serve", "webhook", "--listen", "127.0.0.1:0"])
        .env("ONEPD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start onepd adapter serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("onepd adapter webhook listening on ")
        .unwrap_or_else(|| panic!("expected the listening line, found {line:?}"))
        .to_owned();

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "onepd.destination.v1.DestinationAdapter"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "health of {service:?}");
    }
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "onepd.destination.v1.DestinationAdapter"]
    );
    drop((health, reflection, responses));

    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("send SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "onepd adapter serve did not stop within 30 s of SIGTERM");
        // Asleep without blocking the runtime, so the client side of the
        // connection can answer the server's GOAWAY and close.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}
