//! A PostgreSQL outage, through a TCP proxy of the test's own between onepd
//! and PostgreSQL: stopping the proxy closes every connection onepd holds and
//! refuses new ones, as a database restart or a cut network does. Callers
//! get a fast `503` with `Retry-After` (gRPC `UNAVAILABLE`), `/healthz`
//! answers `503` at once, onepd recovers by itself when the proxy is back,
//! and every message acknowledged before, during or after is stored exactly
//! once.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use onepd_proto::audit::v1::{EventFilter, ReadEventsRequest};
use onepd_proto::ingest::v1 as pb;
use onepd_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use serde_json::{Value, json};
use support::{PgDatabase, Server, read_all, with_write_key};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy to PostgreSQL that the test can stop and start again on the
/// same port, or freeze: bytes are then held, as a partitioned network holds
/// packets, and connections stay open.
struct Proxy {
    port: u16,
    target: String,
    accept: Option<JoinHandle<()>>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    frozen: tokio::sync::watch::Sender<bool>,
}

/// Copies `from` to `to`, holding what it read while `frozen` says so.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        while *frozen.borrow_and_update() {
            if frozen.changed().await.is_err() {
                return;
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, _) = tokio::sync::watch::channel(false);
        let mut proxy = Proxy {
            port,
            target: target.to_owned(),
            accept: None,
            connections: Arc::new(Mutex::new(Vec::new())),
            frozen,
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let (target, connections, frozen) = (self.target.clone(), self.connections.clone(), self.frozen.clone());
        self.accept = Some(tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (target, frozen) = (target.clone(), frozen.subscribe());
                let connection = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&target).await {
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(pump(in_read, out_write, frozen.clone()), pump(out_read, in_write, frozen));
                    }
                });
                connections.lock().unwrap().push(connection);
            }
        }));
    }

    /// Refuses new connections and closes every open one.
    async fn stop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    /// Holds (or lets through again) every byte between onepd and PostgreSQL.
    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    /// Listens again on the same port.
    async fn restart(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(listener);
    }
}

#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    /// Sends one `track` with `message_id`: the status, the `Retry-After`
    /// header, the JSON body and how long the answer took.
    async fn track(&self, message_id: &str) -> (u16, Option<String>, Value, Duration) {
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}/v1/track", self.base))
            .basic_auth(&self.key, Some(""))
            .json(&json!({ "messageId": message_id, "userId": "u-1", "event": "Order Completed" }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|value| value.to_str().unwrap().to_owned());
        let body = response.json().await.unwrap_or(Value::Null);
        (status, retry_after, body, started.elapsed())
    }

    async fn healthz(&self) -> (u16, Duration) {
        let started = Instant::now();
        let status = self.http.get(format!("{}/healthz", self.base)).send().await.unwrap().status().as_u16();
        (status, started.elapsed())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_outage_fails_callers_fast_and_loses_nothing_acknowledged() {
    let database = PgDatabase::create().await;
    let authority = database.url.split("://").nth(1).unwrap().split('@').nth(1).unwrap().split('/').next().unwrap();
    let authority = authority.to_owned();
    let mut proxy = Proxy::start(&authority).await;
    let via_proxy = database.url.replacen(&authority, &format!("127.0.0.1:{}", proxy.port), 1);
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--database-url", &via_proxy]);
    let client = Client {
        http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap(),
        base: server.http.clone(),
        key: server.write_key.clone().unwrap(),
    };
    let mut grpc = IngestServiceClient::new(server.channel().await);
    let grpc_track = |message_id: &str| pb::Track {
        common: Some(pb::Common { message_id: message_id.into(), user_id: "u-1".into(), ..Default::default() }),
        event: "Order Completed".into(),
        properties: None,
    };

    // What the server answered for each message id, last answer wins.
    let mut acknowledged: HashMap<String, u16> = HashMap::new();
    for n in 0..10 {
        let id = format!("before-{n}");
        let (status, ..) = client.track(&id).await;
        assert_eq!(status, 200);
        acknowledged.insert(id, status);
    }
    assert_eq!(client.healthz().await.0, 200);

    proxy.stop().await;
    // The first caller finds out within a few seconds, not after a 30 s pool wait.
    let (status, retry_after, body, took) = client.track("during-0").await;
    eprintln!("outage: the first caller was answered {status} after {took:?}");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert!(took < Duration::from_secs(5), "the first caller waited {took:?}");
    // The others while it lasts at once.
    let mut during = vec!["during-0".to_owned()];
    for n in 1..6 {
        let id = format!("during-{n}");
        let (status, retry_after, body, took) = client.track(&id).await;
        assert_eq!((status, retry_after.as_deref()), (503, Some("5")), "{body}");
        assert!(took < Duration::from_secs(5), "a caller during the outage waited {took:?}");
        during.push(id);
    }
    let (status, took) = client.healthz().await;
    assert_eq!(status, 503);
    assert!(took < Duration::from_millis(1500), "/healthz took {took:?}");
    let started = Instant::now();
    let refused = grpc
        .track(with_write_key(grpc_track("during-grpc"), client.key.as_str()))
        .await
        .expect_err("no acknowledgement without the database");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(refused.metadata().get("retry-after").map(|value| value.to_str().unwrap()), Some("5"));
    assert!(started.elapsed() < Duration::from_secs(5), "the gRPC caller waited {:?}", started.elapsed());
    during.push("during-grpc".into());

    // Back: onepd recovers by itself, and the refused messages are retried.
    proxy.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, ..) = client.track("after-0").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "onepd did not recover within 30 s of PostgreSQL coming back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    acknowledged.insert("after-0".into(), 200);
    for id in &during {
        if id == "during-grpc" {
            grpc.track(with_write_key(grpc_track(id), client.key.as_str())).await.unwrap();
        } else {
            let (status, _, body, _) = client.track(id).await;
            assert_eq!(status, 200, "{body}");
        }
        acknowledged.insert(id.clone(), 200);
    }
    assert_eq!(client.healthz().await.0, 200);

    // A stall: the network holds every byte for a while, then lets them
    // through. A caller waiting on a commit is told to retry within the
    // commit bound; the others at once; and once the bytes flow again every
    // call succeeds (no connection is left mid-transaction in the pool).
    // Load beside it, so commits are caught mid-flight.
    let stop_load = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let client = client.clone();
        let stop = stop_load.clone();
        async move {
            let mut answers = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("load-{n}");
                let (status, ..) = client.track(&id).await;
                answers.push((id, status));
                n += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            answers
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.freeze(true);
    let (status, retry_after, body, took) = client.track("stall-0").await;
    eprintln!("stall: the first caller was answered {status} after {took:?}");
    assert_eq!((status, retry_after.as_deref()), (503, Some("5")), "{body}");
    assert!(took < Duration::from_secs(10), "a caller during the stall waited {took:?}");
    // The next caller may be the probe (a few seconds); while it is out,
    // the others fail at once.
    let probe = tokio::spawn({
        let client = client.clone();
        async move { client.track("stall-1").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, body, took) = client.track("stall-2").await;
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(1), "a caller beside the probe waited {took:?}");
    let (status, _, body, took) = probe.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(10), "the probe waited {took:?}");
    let (status, took) = client.healthz().await;
    assert_eq!(status, 503);
    assert!(took < Duration::from_millis(1500), "/healthz took {took:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.freeze(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_load.store(true, std::sync::atomic::Ordering::SeqCst);
    let load = load.await.unwrap();
    for (id, status) in &load {
        assert!(matches!(status, 200 | 503), "{id} under load answered {status}");
    }
    eprintln!(
        "stall under load: {} calls, {} answered 200, {} answered 503",
        load.len(),
        load.iter().filter(|(_, status)| *status == 200).count(),
        load.iter().filter(|(_, status)| *status == 503).count()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, ..) = client.track("after-stall-0").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "onepd did not recover within 30 s of the stall ending");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    acknowledged.insert("after-stall-0".into(), 200);
    for n in 1..30 {
        let id = format!("after-stall-{n}");
        let (status, _, body, _) = client.track(&id).await;
        assert_eq!(status, 200, "{id} after the stall: {body}");
        acknowledged.insert(id, 200);
        assert_eq!(client.healthz().await.0, 200, "/healthz after the stall");
    }
    for (id, status) in load {
        if status == 503 {
            let (status, _, body, _) = client.track(&id).await;
            assert_eq!(status, 200, "{body}");
        }
        acknowledged.insert(id, 200);
    }
    for id in ["stall-0", "stall-1", "stall-2"] {
        let (status, _, body, _) = client.track(id).await;
        assert_eq!(status, 200, "{body}");
        acknowledged.insert(id.into(), 200);
    }

    // Every acknowledged message is stored exactly once.
    let mut audit = server.audit().await;
    let token = server.admin_token.clone().unwrap();
    let filter = EventFilter { event_types: vec!["MessageAccepted".into()], ..Default::default() };
    let request = ReadEventsRequest { filter: Some(filter), ..Default::default() };
    let stored = read_all(&mut audit, request, &token).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for event in &stored {
        let data: Value = serde_json::from_str(&event.data_json).unwrap();
        let id = data["message"]["messageId"].as_str().unwrap_or_default().to_owned();
        *counts.entry(id).or_default() += 1;
    }
    for id in acknowledged.keys() {
        assert_eq!(counts.get(id), Some(&1), "{id} stored {:?} times", counts.get(id));
    }
    assert_eq!(counts.len(), acknowledged.len(), "{counts:?}");
    drop(server);
}
