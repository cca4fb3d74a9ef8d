//! The adapter protocol round trip: an [`AdapterService`] on a local port,
//! called through a [`RemoteDestination`], must behave exactly like the
//! destination it serves: same description, same batches, same outcomes,
//! same whole-batch errors.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use onepd_adapters::grpc::destination::{AdapterFactory, AdapterService, RemoteDestination};
use onepd_domain::destination::{
    Category, DeletionAnswer, DeletionRequest, DeliverError, Description, Destination, EventResult, Hashing,
    IdentifierSource, IdentifierSpec, Normalization, Outcome, PreparedEvent,
};
use onepd_domain::{EventId, Position};
use onepd_proto::destination::v1 as pb;
use onepd_proto::destination::v1::destination_adapter_server::{DestinationAdapter, DestinationAdapterServer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use uuid::Uuid;

/// Every batch the test adapters were given, in order.
type Batches = Arc<Mutex<Vec<Vec<PreparedEvent>>>>;

/// A test adapter. Its settings pick its behaviour:
/// * `"mode": "per_event"` — answers each event by its name (`deliver`,
///   `retry` with 1.5 s, anything else permanent);
/// * `"mode": "reject"` — refuses every batch as a whole;
/// * `"mode": "busy"` — asks to come back in 3 s;
/// * `"category"` — the category it describes itself with.
struct TestAdapter {
    mode: String,
    category: Category,
    batches: Batches,
}

#[async_trait]
impl Destination for TestAdapter {
    async fn describe(&self) -> Result<Description, DeliverError> {
        Ok(description(self.category))
    }

    async fn deliver(&self, events: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
        self.batches.lock().unwrap().push(events.to_vec());
        match self.mode.as_str() {
            "reject" => Err(DeliverError::BatchRejected { reason: "HTTP 400: malformed batch".into() }),
            "busy" => Err(DeliverError::Retryable {
                reason: "HTTP 429: rate limited".into(),
                retry_after: Some(Duration::from_secs(3)),
            }),
            _ => Ok(events
                .iter()
                .map(|event| EventResult { event_id: event.event_id, outcome: answer(event) })
                .collect()),
        }
    }

    /// Records a deletion as a batch of one event named after the request,
    /// holding the request as its message; `busy` asks to come back.
    async fn delete(&self, request: &DeletionRequest) -> Result<DeletionAnswer, DeliverError> {
        if self.mode == "busy" {
            return Err(DeliverError::Retryable { reason: "HTTP 429: rate limited".into(), retry_after: None });
        }
        let mut recorded = event(&format!("delete {}", request.request_id), 0);
        recorded.message = serde_json::to_value(request).unwrap();
        self.batches.lock().unwrap().push(vec![recorded]);
        Ok(DeletionAnswer::Requested)
    }
}

/// The outcome the per-event test adapter gives `event`.
fn answer(event: &PreparedEvent) -> Outcome {
    match event.name.as_deref() {
        Some("deliver") => Outcome::Delivered,
        Some("retry") => Outcome::retryable("HTTP 503", Some(Duration::from_millis(1500))),
        _ => Outcome::permanent("HTTP 400: invalid event_name"),
    }
}

/// A description using every identifier source, every normalization and
/// both hashings, so a field lost or renamed on the way shows.
fn description(category: Category) -> Description {
    let normalizations = Normalization::ALL;
    let identifiers = IdentifierSource::ALL
        .into_iter()
        .enumerate()
        .map(|(index, source)| {
            let hashing = if index % 2 == 0 { Hashing::Sha256 } else { Hashing::None };
            IdentifierSpec::new(
                &format!("field_{}", source.as_str()),
                source,
                normalizations[index % normalizations.len()],
                hashing,
            )
        })
        .collect();
    Description {
        name: format!("test_{category}"),
        category,
        identifiers,
        max_batch_size: 250,
        rate_limit_per_second: Some(12.5),
    }
}

/// A factory for [`TestAdapter`]s recording into `batches` and counting
/// how many adapters it built.
fn factory(batches: Batches, built: Arc<AtomicUsize>) -> AdapterFactory {
    Arc::new(move |settings: &Value| {
        let mode = settings["mode"].as_str().ok_or("mode: expected per_event, reject or busy, found nothing")?;
        if !["per_event", "reject", "busy"].contains(&mode) {
            return Err(format!("mode: expected per_event, reject or busy, found \"{mode}\""));
        }
        let category = match settings["category"].as_str() {
            Some(name) => name.parse()?,
            None => Category::Warehouse,
        };
        built.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(TestAdapter { mode: mode.to_owned(), category, batches: batches.clone() }) as Arc<dyn Destination>)
    })
}

/// A running adapter server and what its adapters saw.
struct Adapter {
    url: String,
    batches: Batches,
    built: Arc<AtomicUsize>,
}

impl Adapter {
    async fn start() -> Adapter {
        let batches = Batches::default();
        let built = Arc::new(AtomicUsize::new(0));
        let service = AdapterService::new(factory(batches.clone(), built.clone())).into_server();
        let url = serve(service).await;
        Adapter { url, batches, built }
    }

    fn destination(&self, settings: Value) -> RemoteDestination {
        RemoteDestination::new(&self.url, Uuid::now_v7(), &settings).unwrap()
    }
}

/// Serves `service` on a free local port and returns its URL.
async fn serve<S: DestinationAdapter>(service: DestinationAdapterServer<S>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

fn event(name: &str, position: u64) -> PreparedEvent {
    let hashed = "b4c9a289323b21a01c3e940f150eb9b8c542587f1abfd8f0e1cc1ffc5e475514".to_owned();
    PreparedEvent {
        event_id: EventId(Uuid::now_v7()),
        position: Position(position),
        message_type: "track".into(),
        name: Some(name.into()),
        timestamp: "2025-03-01T12:00:00.123Z".into(),
        message: json!({
            "type": "track",
            "event": name,
            "properties": { "value": 19.99, "currency": "EUR", "items": [{ "sku": "A-1", "qty": 2 }] },
            "context": { "ip": "203.0.113.7", "page": { "url": "https://shop.example/checkout" } },
        }),
        identifiers: BTreeMap::from([
            ("em".to_owned(), vec![hashed.clone(), "a".repeat(64)]),
            ("client_ip_address".to_owned(), vec!["203.0.113.7".to_owned()]),
        ]),
        traits: json!({ "plan": "pro", "seats": 3 }).as_object().unwrap().clone(),
        profile_id: Some(format!("prof_{position}")),
    }
}

#[tokio::test]
async fn describe_crosses_the_protocol_with_every_field_intact() {
    let adapter = Adapter::start().await;
    for category in Category::ALL {
        let remote = adapter.destination(json!({ "mode": "per_event", "category": category.as_str() }));
        assert_eq!(remote.describe().await.unwrap(), description(category));
    }
    assert_eq!(rate_limit_through_the_protocol(None).await, None, "an absent rate limit stays absent, not 0");
    assert_eq!(rate_limit_through_the_protocol(Some(0.5)).await, Some(0.5));
}

/// What a `rate_limit_per_second` of `rate` comes back as through a server
/// that answers with it.
async fn rate_limit_through_the_protocol(rate: Option<f64>) -> Option<f64> {
    struct Fixed(Option<f64>);
    #[async_trait]
    impl Destination for Fixed {
        async fn describe(&self) -> Result<Description, DeliverError> {
            let mut description = description(Category::Analytics);
            description.rate_limit_per_second = self.0;
            Ok(description)
        }
        async fn deliver(&self, _: &[PreparedEvent]) -> Result<Vec<EventResult>, DeliverError> {
            Ok(vec![])
        }
    }
    let factory: AdapterFactory = Arc::new(move |_: &Value| Ok(Arc::new(Fixed(rate)) as Arc<dyn Destination>));
    let url = serve(AdapterService::new(factory).into_server()).await;
    let remote = RemoteDestination::new(&url, Uuid::now_v7(), &json!({})).unwrap();
    remote.describe().await.unwrap().rate_limit_per_second
}

#[tokio::test]
async fn a_batch_arrives_intact_and_each_event_gets_its_own_outcome_back() {
    let adapter = Adapter::start().await;
    let remote = adapter.destination(json!({ "mode": "per_event" }));
    let mut anonymous = event("retry", 43);
    anonymous.profile_id = None;
    anonymous.name = None;
    anonymous.message_type = "page".into();
    anonymous.traits = serde_json::Map::new();
    anonymous.identifiers = BTreeMap::new();
    let batch = vec![event("deliver", 42), anonymous, event("retry", 44), event("refuse", 45)];

    let results = remote.deliver(&batch).await.unwrap();

    assert_eq!(*adapter.batches.lock().unwrap(), vec![batch.clone()], "the adapter saw the batch as sent");
    let expected: Vec<_> =
        batch.iter().map(|event| EventResult { event_id: event.event_id, outcome: answer(event) }).collect();
    assert_eq!(results, expected);
    assert_eq!(results[1].outcome, Outcome::Permanent { reason: "HTTP 400: invalid event_name".into() });
    assert_eq!(results[2].outcome, Outcome::Retryable { reason: "HTTP 503".into(), retry_after_ms: Some(1500) });
}

#[tokio::test]
async fn the_adapter_is_built_once_per_distinct_settings() {
    let adapter = Adapter::start().await;
    let first = adapter.destination(json!({ "mode": "per_event" }));
    let same = adapter.destination(json!({ "mode": "per_event" }));
    let other = adapter.destination(json!({ "mode": "per_event", "category": "analytics" }));
    for remote in [&first, &same, &first, &other] {
        remote.describe().await.unwrap();
        remote.deliver(&[event("deliver", 1)]).await.unwrap();
    }
    assert_eq!(adapter.built.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_batch_the_adapter_rejects_as_a_whole_comes_back_as_batch_rejected() {
    let adapter = Adapter::start().await;
    let remote = adapter.destination(json!({ "mode": "reject" }));
    let err = remote.deliver(&[event("deliver", 1), event("deliver", 2)]).await.unwrap_err();
    let DeliverError::BatchRejected { reason } = err else { panic!("expected BatchRejected, found {err:?}") };
    assert!(reason.contains("HTTP 400: malformed batch"), "{reason}");
}

#[tokio::test]
async fn a_retryable_batch_failure_keeps_its_retry_after() {
    let adapter = Adapter::start().await;
    let remote = adapter.destination(json!({ "mode": "busy" }));
    let err = remote.deliver(&[event("deliver", 1)]).await.unwrap_err();
    let DeliverError::Retryable { reason, retry_after } = err else { panic!("expected Retryable, found {err:?}") };
    assert_eq!(retry_after, Some(Duration::from_secs(3)));
    assert!(reason.contains("HTTP 429: rate limited"), "{reason}");
}

#[tokio::test]
async fn settings_the_factory_cannot_build_are_an_adapter_error_naming_the_setting() {
    let adapter = Adapter::start().await;
    let remote = adapter.destination(json!({ "mode": "sideways" }));
    let err = remote.describe().await.unwrap_err();
    let DeliverError::Adapter(reason) = err else { panic!("expected Adapter, found {err:?}") };
    assert!(reason.contains("mode: expected per_event, reject or busy, found \"sideways\""), "{reason}");
    let err = remote.deliver(&[event("deliver", 1)]).await.unwrap_err();
    assert!(matches!(err, DeliverError::Adapter(_)), "{err:?}");

    let not_an_object = adapter.destination(json!(["mode", "per_event"]));
    let err = not_an_object.describe().await.unwrap_err();
    let DeliverError::Adapter(reason) = err else { panic!("expected Adapter, found {err:?}") };
    assert!(reason.contains("settings_json: expected a JSON object, found an array"), "{reason}");
    assert_eq!(adapter.built.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_adapter_nobody_listens_on_is_a_retryable_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let remote = RemoteDestination::new(&format!("http://{addr}"), Uuid::now_v7(), &json!({})).unwrap();

    let err = remote.deliver(&[event("deliver", 1)]).await.unwrap_err();
    assert!(matches!(err, DeliverError::Retryable { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "names the adapter: {err}");
    let err = remote.describe().await.unwrap_err();
    assert!(matches!(err, DeliverError::Retryable { .. }), "{err:?}");
}

#[tokio::test]
async fn a_url_that_cannot_reach_an_adapter_is_refused_at_construction() {
    let err = RemoteDestination::new("meta-adapter:50061", Uuid::now_v7(), &json!({})).unwrap_err();
    assert!(err.to_string().contains("expected an http:// URL"), "{err}");
    let err = RemoteDestination::new("https://adapter.example", Uuid::now_v7(), &json!({})).unwrap_err();
    assert!(err.to_string().contains("no TLS"), "{err}");
}

#[tokio::test]
async fn a_deletion_request_crosses_the_protocol_intact() {
    let adapter = Adapter::start().await;
    let request = DeletionRequest {
        request_id: Uuid::now_v7(),
        profile_ids: vec!["prof_1".into(), "prof_2".into()],
        identifiers: BTreeMap::from([("em".to_owned(), vec!["a".repeat(64)])]),
    };
    let answer = adapter.destination(json!({"mode": "per_event"})).delete(&request).await.unwrap();
    assert_eq!(answer, DeletionAnswer::Requested);
    let seen = adapter.batches.lock().unwrap().last().unwrap()[0].message.clone();
    assert_eq!(serde_json::from_value::<DeletionRequest>(seen).unwrap(), request);
    let err = adapter.destination(json!({"mode": "busy"})).delete(&request).await.unwrap_err();
    assert!(matches!(err, DeliverError::Retryable { .. }), "{err:?}");
}

#[tokio::test]
async fn an_adapter_without_deletion_answers_unsupported() {
    let url = serve(DestinationAdapterServer::new(Misbehaving)).await;
    let remote = RemoteDestination::new(&url, Uuid::now_v7(), &json!({})).unwrap();
    let request = DeletionRequest { request_id: Uuid::now_v7(), profile_ids: vec![], identifiers: BTreeMap::new() };
    assert_eq!(remote.delete(&request).await.unwrap(), DeletionAnswer::Unsupported);
}

/// A third-party adapter that breaks the protocol in what it answers (and,
/// like many, has no deletion API).
struct Misbehaving;

#[tonic::async_trait]
impl DestinationAdapter for Misbehaving {
    async fn describe(
        &self,
        _: tonic::Request<pb::DescribeRequest>,
    ) -> Result<tonic::Response<pb::DescribeResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::DescribeResponse {
            name: "acme".into(),
            category: pb::Category::Analytics as i32,
            identifiers: vec![
                pb::IdentifierSpec {
                    name: "email".into(),
                    source: "email".into(),
                    normalization: "email".into(),
                    hashing: "none".into(),
                },
                pb::IdentifierSpec {
                    name: "mobile".into(),
                    source: "phone".into(),
                    normalization: "E164".into(),
                    hashing: "none".into(),
                },
            ],
            max_batch_size: 100,
            rate_limit_per_second: None,
        }))
    }

    async fn delete_subjects(
        &self,
        _: tonic::Request<pb::DeleteSubjectsRequest>,
    ) -> Result<tonic::Response<pb::DeleteSubjectsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no deletion API"))
    }

    async fn deliver(
        &self,
        request: tonic::Request<pb::DeliverRequest>,
    ) -> Result<tonic::Response<pb::DeliverResponse>, tonic::Status> {
        let results = request
            .into_inner()
            .events
            .into_iter()
            .map(|event| pb::EventResult { event_id: event.event_id, ..Default::default() })
            .collect();
        Ok(tonic::Response::new(pb::DeliverResponse { results }))
    }
}

#[tokio::test]
async fn an_answer_outside_the_protocol_is_an_adapter_error_naming_the_field() {
    let url = serve(DestinationAdapterServer::new(Misbehaving)).await;
    let remote = RemoteDestination::new(&url, Uuid::now_v7(), &json!({})).unwrap();

    let err = remote.describe().await.unwrap_err();
    let DeliverError::Adapter(reason) = err else { panic!("expected Adapter, found {err:?}") };
    assert!(reason.contains("identifiers[1].normalization: expected one of none, trim"), "{reason}");
    assert!(reason.ends_with("found \"E164\""), "{reason}");

    let err = remote.deliver(&[event("deliver", 1)]).await.unwrap_err();
    let DeliverError::Adapter(reason) = err else { panic!("expected Adapter, found {err:?}") };
    assert!(reason.contains("results[0].outcome: expected DELIVERED, RETRYABLE or PERMANENT"), "{reason}");
}

#[tokio::test]
async fn an_event_id_that_is_not_a_uuid_is_invalid_argument_naming_the_event() {
    use onepd_proto::destination::v1::destination_adapter_client::DestinationAdapterClient;
    let adapter = Adapter::start().await;
    let mut client = DestinationAdapterClient::connect(adapter.url.clone()).await.unwrap();
    let good =
        pb::PreparedEvent { event_id: Uuid::now_v7().to_string(), message_json: "{}".into(), ..Default::default() };
    let bad = pb::PreparedEvent { event_id: "order-17".into(), ..good.clone() };
    let request = pb::DeliverRequest {
        settings_json: json!({ "mode": "per_event" }).to_string(),
        destination_id: Uuid::now_v7().to_string(),
        events: vec![good, bad],
    };
    let status = client.deliver(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "events[1].event_id: expected a UUID, found \"order-17\"");
    assert!(adapter.batches.lock().unwrap().is_empty(), "nothing reached the adapter");
}
