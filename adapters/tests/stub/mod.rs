//! What the destination tests share: a local HTTP stub that records every
//! request and answers as told, and prepared events as the engine hands
//! them over. Each test file includes it with `mod stub;`.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use onepd_adapters::destinations::built_in;
use onepd_domain::destination::{
    AUDIENCE_MESSAGE_TYPE, AudienceChange, Destination, EventResult, IdentifierSpec, Outcome, PreparedEvent,
};
use onepd_domain::hashing::prepare;
use onepd_domain::{EventId, Position};
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// The stub server.

/// One request the stub received.
#[derive(Debug, Clone)]
pub struct Captured {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Captured {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// What the stub answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: String,
    /// Never answer.
    pub hang: bool,
}

impl Reply {
    pub fn status(status: u16, body: impl Into<String>) -> Reply {
        Reply { status, headers: Vec::new(), body: body.into(), hang: false }
    }

    pub fn ok(body: Value) -> Reply {
        Reply::status(200, body.to_string())
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Reply {
        self.headers.push((name, value));
        self
    }

    pub fn hang() -> Reply {
        Reply { hang: true, ..Reply::status(200, "") }
    }
}

/// How the stub chooses its answer: from the request and how many requests
/// came before it (0 for the first).
pub type Answerer = Arc<dyn Fn(&Captured, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
struct StubState {
    answer: Answerer,
    requests: Arc<Mutex<Vec<Captured>>>,
}

/// A local HTTP server that records every request and answers as told.
pub struct Stub {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Captured>>>,
}

impl Stub {
    /// A stub that answers every request with `reply`.
    pub async fn start(reply: Reply) -> Stub {
        Stub::answering(move |_, _| reply.clone()).await
    }

    /// A stub that answers the n-th request with `replies[n]`, and every
    /// request after the last with the last.
    pub async fn sequence(replies: Vec<Reply>) -> Stub {
        assert!(!replies.is_empty(), "a sequence needs a reply");
        Stub::answering(move |_, n| replies[n.min(replies.len() - 1)].clone()).await
    }

    /// A stub that answers with `answer(request, n)`: by path, by method, by
    /// body, or by how many requests came before.
    pub async fn answering(answer: impl Fn(&Captured, usize) -> Reply + Send + Sync + 'static) -> Stub {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = StubState { answer: Arc::new(answer), requests: requests.clone() };
        let app = Router::new().fallback(capture).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a local port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Stub { url, requests }
    }

    pub fn requests(&self) -> Vec<Captured> {
        self.requests.lock().unwrap().clone()
    }

    pub fn only_request(&self) -> Captured {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "expected exactly one request, found {}", requests.len());
        requests.into_iter().next().unwrap()
    }
}

async fn capture(
    State(state): State<StubState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = reqwest::Url::parse(&format!("http://stub/?{}", uri.query().unwrap_or_default()))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let captured = Captured { method, path: uri.path().to_owned(), query, headers, body };
    let reply = {
        let mut requests = state.requests.lock().unwrap();
        let reply = (state.answer)(&captured, requests.len());
        requests.push(captured);
        reply
    };
    if reply.hang {
        std::future::pending::<()>().await;
    }
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body.clone()).into_response();
    for (name, value) in &reply.headers {
        response.headers_mut().insert(*name, value.parse().unwrap());
    }
    response
}

// ---------------------------------------------------------------------------
// Prepared events, as the engine hands them over.

pub fn event_id(n: u128) -> EventId {
    EventId(Uuid::from_u128(0x0e5e_0000_0000_4000_8000_0000_0000_0000 + n))
}

pub fn event(n: u128, message_type: &str, name: Option<&str>, timestamp: &str, message: Value) -> PreparedEvent {
    PreparedEvent {
        event_id: event_id(n),
        position: Position(100 + n as u64),
        message_type: message_type.to_owned(),
        name: name.map(str::to_owned),
        timestamp: timestamp.to_owned(),
        message,
        identifiers: BTreeMap::new(),
        traits: serde_json::Map::new(),
        profile_id: Some(format!("profile-{n}")),
    }
}

/// `raw` prepared as the table's field `field` says (normalized, hashed).
pub fn prepared(table: &[IdentifierSpec], field: &str, raw: &str) -> String {
    let spec = table.iter().find(|spec| spec.name == field).unwrap_or_else(|| panic!("no field {field}"));
    prepare(spec, raw).unwrap_or_else(|| panic!("{field}: {raw} does not prepare"))
}

pub fn with_identifiers(mut event: PreparedEvent, identifiers: &[(&str, &[&str])]) -> PreparedEvent {
    for (field, values) in identifiers {
        event.identifiers.insert((*field).to_owned(), values.iter().map(|v| (*v).to_owned()).collect());
    }
    event
}

pub fn order_completed(n: u128) -> PreparedEvent {
    event(
        n,
        "track",
        Some("Order Completed"),
        "2024-05-01T14:30:05.250+02:00",
        json!({
            "type": "track",
            "event": "Order Completed",
            "anonymousId": "anon-1",
            "properties": {
                "order_id": "order-77",
                "total": 59.5,
                "currency": "eur",
                "products": [
                    {"product_id": "sku-1", "name": "Mug", "price": 9.5, "quantity": 3},
                    {"product_id": "sku-2", "name": "Tea", "price": 31, "quantity": 1}
                ]
            },
            "context": {"page": {"url": "https://shop.example/checkout/done", "referrer": "https://shop.example/cart"}}
        }),
    )
}

pub fn page_view(n: u128) -> PreparedEvent {
    event(
        n,
        "page",
        Some("Home"),
        "2024-05-01T12:00:00Z",
        json!({
            "type": "page",
            "name": "Home",
            "anonymousId": "anon-1",
            "properties": {"url": "https://shop.example/", "title": "Shop", "referrer": "https://search.example/"}
        }),
    )
}

pub fn identify(n: u128) -> PreparedEvent {
    event(n, "identify", None, "2024-05-01T12:00:00Z", json!({"type": "identify", "userId": "u1"}))
}

pub fn outcome_of(results: &[EventResult], n: u128) -> &Outcome {
    &results.iter().find(|r| r.event_id == event_id(n)).unwrap_or_else(|| panic!("no result for event {n}")).outcome
}

pub async fn adapter(name: &str, settings: Value) -> Arc<dyn Destination> {
    built_in(name, &settings).unwrap_or_else(|err| panic!("{name}: {err}"))
}

/// An audience change as the engine hands it over (see
/// `onepd_domain::destination::AudienceChange`): `identifiers` prepared for
/// the adapter, the change's event id `n`.
pub fn audience_change(
    n: u128,
    entered: bool,
    audience: &str,
    external_id: Option<&str>,
    identifiers: &[(&str, &[&str])],
) -> PreparedEvent {
    let message = AudienceChange::message(entered, audience, external_id);
    let mut change = event(n, AUDIENCE_MESSAGE_TYPE, Some(audience), "2024-05-02T08:00:00Z", message);
    change = with_identifiers(change, identifiers);
    change
}
