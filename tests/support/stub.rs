//! A local HTTP server standing in for a destination (Meta, a webhook
//! receiver): it records what it accepted and answers as told.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::any;
use serde_json::Value;

/// How a stub answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 to everything.
    Accept,
    /// 500 to everything.
    Fail,
    /// 400 to any batch holding an event whose properties say `"bad": true`.
    RefuseBad,
    /// Never answers.
    Hang,
    /// Accepts after a fifth of a second.
    Slow,
    /// 400 to everything, echoing personal data as some platforms do.
    EchoPersonalData,
}

/// One request as a stub received it: URI, headers, exact body.
pub type RawRequest = (String, Vec<(String, String)>, Vec<u8>);

/// A local HTTP server standing in for a destination: it records every
/// request body it accepted and answers as its mode says.
#[derive(Clone)]
pub struct Stub {
    pub addr: SocketAddr,
    pub state: Arc<StubState>,
}

pub struct StubState {
    pub mode: Mutex<Mode>,
    pub accepted: Mutex<Vec<(String, Value)>>,
    /// Every accepted request as received: URI, headers, exact body.
    pub raw: Mutex<Vec<RawRequest>>,
    pub requests: Mutex<u64>,
}

impl Stub {
    pub async fn start(mode: Mode) -> Stub {
        let state = Arc::new(StubState {
            mode: Mutex::new(mode),
            accepted: Mutex::default(),
            raw: Mutex::default(),
            requests: Mutex::new(0),
        });
        async fn handle(
            State(state): State<Arc<StubState>>,
            method: axum::http::Method,
            uri: axum::http::Uri,
            headers: axum::http::HeaderMap,
            bytes: axum::body::Bytes,
        ) -> (StatusCode, String) {
            *state.requests.lock().unwrap() += 1;
            // Requests other than POST are recorded as `METHOD uri`.
            let uri = if method == axum::http::Method::POST { uri.to_string() } else { format!("{method} {uri}") };
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or_default().to_owned()))
                .collect();
            if !matches!(*state.mode.lock().unwrap(), Mode::Fail | Mode::Hang | Mode::EchoPersonalData) {
                state.raw.lock().unwrap().push((uri.clone(), headers, bytes.to_vec()));
            }
            let mode = *state.mode.lock().unwrap();
            match mode {
                Mode::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    (StatusCode::OK, String::new())
                }
                Mode::Fail => (StatusCode::INTERNAL_SERVER_ERROR, "upstream down".into()),
                Mode::EchoPersonalData => (
                    StatusCode::BAD_REQUEST,
                    "{\"error\":\"invalid user data: email ann.lee@example.com phone +1 (415) 555-0100\"}".into(),
                ),
                Mode::Slow => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    state.accepted.lock().unwrap().push((uri.clone(), body));
                    (StatusCode::OK, String::new())
                }
                Mode::RefuseBad if body.to_string().contains("\"bad\":true") => {
                    (StatusCode::BAD_REQUEST, "{\"error\":\"bad event\"}".into())
                }
                _ => {
                    state.accepted.lock().unwrap().push((uri.clone(), body));
                    (StatusCode::OK, "{\"events_received\":1,\"code\":0}".into())
                }
            }
        }
        let app = Router::new().fallback(any(handle)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Stub { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn bodies(&self) -> Vec<(String, Value)> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// Every request the stub took, as received: URI, headers, exact body.
    pub fn raw(&self) -> Vec<RawRequest> {
        self.state.raw.lock().unwrap().clone()
    }

    /// Every event id the stub accepted from the generic webhook, with how
    /// many times.
    pub fn webhook_ids(&self) -> BTreeMap<String, usize> {
        let mut ids = BTreeMap::new();
        for (_, body) in self.bodies() {
            for event in body["batch"].as_array().into_iter().flatten() {
                *ids.entry(event["eventId"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
            }
        }
        ids
    }

    /// Waits until `done` holds for the stub, failing after `within`.
    pub async fn wait_for(&self, within: Duration, what: &str, done: impl Fn(&Stub) -> bool) {
        let deadline = Instant::now() + within;
        while !done(self) {
            assert!(Instant::now() < deadline, "{what}: not within {within:?}; stub accepted {:?}", self.webhook_ids());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
