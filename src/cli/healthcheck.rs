//! `onepd healthcheck`: ask a running onepd (or a built-in adapter served
//! with `onepd adapter serve`) whether it is healthy, and exit 0 or 1.
//!
//! This is what a container's health check runs: the image has no `curl`,
//! and the check must not need one.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::output;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// What to ask: `http://HOST:PORT/PATH` (healthy when it answers 2xx,
    /// e.g. onepd's `/healthz`) or `grpc://HOST:PORT` (healthy when the
    /// standard gRPC health service answers SERVING, e.g. an adapter).
    #[arg(value_name = "URL", default_value = "http://127.0.0.1:8080/healthz")]
    url: String,
    /// How long to wait for the answer, in seconds.
    #[arg(long, default_value_t = 3)]
    timeout: u64,
}

pub async fn run(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    let answer = tokio::time::timeout(timeout, check(&args.url)).await;
    match answer {
        Ok(Ok(what)) => {
            output::line(format!("healthy: {what}"));
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(err)) => {
            output::line(format!("unhealthy: {err:#}"));
            Ok(ExitCode::from(1))
        }
        Err(_) => {
            output::line(format!("unhealthy: no answer from {} within {} s", args.url, timeout.as_secs()));
            Ok(ExitCode::from(1))
        }
    }
}

async fn check(url: &str) -> anyhow::Result<String> {
    if let Some(rest) = url.strip_prefix("http://") {
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        http_status(authority, path).await
    } else if let Some(authority) = url.strip_prefix("grpc://") {
        grpc_serving(authority).await
    } else {
        anyhow::bail!("{url}: expected http://HOST:PORT/PATH or grpc://HOST:PORT")
    }
}

/// One HTTP/1.0 GET; healthy on a 2xx status line.
async fn http_status(authority: &str, path: &str) -> anyhow::Result<String> {
    let mut stream =
        tokio::net::TcpStream::connect(authority).await.with_context(|| format!("connecting to {authority}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    // The status line is all we need; read a little beyond it.
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&buf[..read]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default().to_owned();
    let status = line.split_whitespace().nth(1).and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(code) if (200..300).contains(&code) => Ok(format!("http://{authority}{path} answered {code}")),
        Some(code) => anyhow::bail!("http://{authority}{path} answered {code}"),
        None => anyhow::bail!("http://{authority}{path} did not answer HTTP: {line:?}"),
    }
}

/// The standard `grpc.health.v1.Health/Check` for the whole server.
async fn grpc_serving(authority: &str) -> anyhow::Result<String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .with_context(|| format!("grpc.health.v1.Health/Check at {authority}"))?
        .into_inner();
    match ServingStatus::try_from(answer.status) {
        Ok(ServingStatus::Serving) => Ok(format!("grpc://{authority} is SERVING")),
        Ok(status) => anyhow::bail!("grpc://{authority} is {}", status.as_str_name()),
        Err(_) => anyhow::bail!("grpc://{authority} answered an unknown status {}", answer.status),
    }
}
