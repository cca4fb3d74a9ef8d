//! Erasure: forgetting a person without rewriting the log.
//!
//! [`forget`] is what `onepd forget`, the gRPC `AdminService.Forget` and the
//! Segment-style `POST /v1/regulations` share:
//!
//! 1. **Find the person.** Once the profiles read model has reached the
//!    log's head (the projection of a running server keeps it; the CLI
//!    catches it up itself when no server does), each [`Lookup`] (an
//!    identifier, normalized as at ingest, or a profile id) names a profile
//!    document; its identifiers and members, and the identifiers given, are
//!    the person. Nothing is folded in memory. The read model leaves an
//!    erased person out only from `SubjectErased` on (the last step), so an
//!    erasure interrupted before it finds the same person again.
//! 2. **Suppress.** `SubjectErasureRequested` goes to the workspace's
//!    stream with each identifier as a suppression hash (keyed with the
//!    master key); from then on ingest rejects any message about them,
//!    keeping nothing of it. Erasure then waits a moment longer than the
//!    log's poll interval, so ingest in every process (the server, when the
//!    CLI erases) applies the suppression before any key is destroyed.
//! 3. **Shred.** Every identifier value is a subject whose key is
//!    destroyed: the person's messages (sealed under their user or
//!    anonymous id), rejections and identifier blocks (sealed under the
//!    value) can no longer be read by anyone.
//! 4. **Tell the destinations.** Each destination of the workspace is asked
//!    to delete the person ([`Destination::delete`]) with their identifiers
//!    as its events carried them (hashed for ad platforms); each answer is a
//!    `DeletionRequested` in the destination's ledger.
//! 5. **Rebuild.** `SubjectErased` is appended last: the profiles projection
//!    and every activation run meet it as a fact and derive everything again
//!    from the log, where the person's payloads are now unreadable.
//!
//! Running it again is harmless: a person already erased has no profile
//! left, so only the identifiers given are suppressed and shredded again.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use onepd_domain::destination::{DeletionAnswer, DeletionRequest, Destination, IdentifierSource};
use onepd_domain::events::destination::{DeletionRequested, destination_stream};
use onepd_domain::events::erasure::{SubjectErased, SubjectErasureRequested, rejection_subject};
use onepd_domain::events::message::MessageRejected;
use onepd_domain::events::workspace::workspace_stream;
use onepd_domain::hashing;
use onepd_domain::identity::{Identifier, IdentifierKind, ProfileId};
use onepd_domain::{
    AppendError, AppendRequest, EventFilter, EventId, EventStore, ExpectedVersion, NewEvent, Position, StoreError,
    WorkspaceId,
};
use onepd_projections::directory::DestinationEntry;
pub use onepd_projections::profile::Lookup;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::EventLog;
use crate::activation::Connect;
use crate::profiles::ProfileReader;
use crate::profiles::as_of::AsOfReader;

/// How long erasure waits for the profiles read model to reach the log's
/// head before it says the read model is behind.
const READ_MODEL_PATIENCE: Duration = Duration::from_secs(30);

/// How long erasure waits between suppressing and shredding: longer than
/// the log's poll interval (1 s), so ingest in every process applies the
/// suppression first.
const SUPPRESSION_SETTLE: Duration = Duration::from_secs(2);

/// How long a destination has to answer `Describe` and a deletion request.
const DESTINATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an erasure could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    /// The request names nothing usable.
    #[error("{0}")]
    Invalid(String),
    /// A profile id that names no profile.
    #[error("{0}")]
    NotFound(String),
    /// The log failed (or has no master key).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one destination made of the deletion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionReport {
    /// The destination's name.
    pub destination: String,
    /// `requested`, `unsupported` or `failed`.
    pub outcome: String,
    /// A short summary of the answer.
    pub response: String,
}

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureReport {
    /// The request id (`SubjectErasureRequested.request_id`).
    pub request_id: Uuid,
    /// The profiles erased.
    pub profiles: Vec<ProfileId>,
    /// How many identifiers were suppressed and shredded.
    pub subjects: u32,
    /// How many subject keys existed and were destroyed.
    pub keys_shredded: u32,
    /// Each destination's answer to the deletion request.
    pub deletions: Vec<DeletionReport>,
    /// Where `SubjectErased` is in the log: a profiles generation whose
    /// checkpoint reached it was built without the person.
    pub erased_at: Position,
}

/// Erases the people `lookups` name in `workspace` (see the module doc),
/// finding them in the profiles read model `profiles` reads.
/// `destinations` are the workspace's destinations, asked to delete them
/// through `connect`; `via` says where the request came from (`cli`,
/// `grpc`, `http`).
pub async fn forget(
    log: &EventLog,
    profiles: &ProfileReader,
    workspace: WorkspaceId,
    lookups: &[Lookup],
    destinations: &[DestinationEntry],
    connect: &Connect,
    via: &str,
) -> Result<ErasureReport, ErasureError> {
    if lookups.is_empty() {
        return Err(ErasureError::Invalid("expected an identifier or a profile id to erase, found none".into()));
    }
    if !log.has_master_key() {
        return Err(ErasureError::Invalid(
            "erasure destroys subject keys, which needs the master key (ONEPD_MASTER_KEY or <data dir>/master.key)"
                .into(),
        ));
    }

    // 1. The person, as the read model says once it has reached the head.
    let head = log.head().await?;
    AsOfReader::new(profiles.store(), log.clone()).with_patience(READ_MODEL_PATIENCE).wait_for(workspace, head).await?;
    let mut found: BTreeSet<ProfileId> = BTreeSet::new();
    let mut members: BTreeSet<ProfileId> = BTreeSet::new();
    let mut identifiers: BTreeSet<Identifier> = BTreeSet::new();
    for lookup in lookups {
        let doc = profiles.doc(workspace, lookup).await?;
        match lookup {
            Lookup::Profile(id) if doc.is_none() => {
                return Err(ErasureError::NotFound(format!("profile {}: not found", id.0)));
            }
            Lookup::Profile(_) => {}
            Lookup::Identifier(identifier) => {
                identifiers.insert(identifier.clone());
            }
        }
        if let Some(doc) = doc {
            found.insert(doc.id);
            identifiers.extend(doc.identifiers.iter().map(|attached| attached.identifier.clone()));
            members.extend(doc.members.iter().map(|member| member.id));
            members.insert(doc.id);
        }
    }
    let request_id = Uuid::now_v7();
    let profile_ids: Vec<ProfileId> = found.into_iter().collect();

    // 2. Suppress, before anything is destroyed: from here on nothing new
    //    about the person is accepted.
    let mut suppressed = Vec::with_capacity(identifiers.len());
    for identifier in &identifiers {
        suppressed.push(log.suppression_hash(workspace, identifier)?);
    }
    let requested = SubjectErasureRequested {
        request_id,
        lookups: lookups
            .iter()
            .map(|lookup| match lookup {
                Lookup::Identifier(identifier) => identifier.kind.name().to_owned(),
                Lookup::Profile(_) => "profile".to_owned(),
            })
            .collect(),
        profiles: profile_ids.clone(),
        suppressed,
        requested_via: via.to_owned(),
    };
    append(log, workspace, workspace_stream(workspace), SubjectErasureRequested::TYPE, json!(requested)).await?;
    // Every process's ingest follows the log (at worst by polling it): once
    // they all see the suppression, no new message about the person can be
    // sealed with a key created after the shredding below.
    tokio::time::sleep(SUPPRESSION_SETTLE).await;

    // 3. Shred every subject the person's payloads may be sealed under:
    //    their identifiers, and each rejection that names any of them.
    let mut keys_shredded = 0;
    for identifier in &identifiers {
        if log.shred(workspace, &identifier.value).await? {
            keys_shredded += 1;
        }
    }
    let rejections = rejections_naming(log, workspace, &requested.suppressed).await?;
    for event_id in &rejections {
        if log.shred(workspace, &rejection_subject(*event_id)).await? {
            keys_shredded += 1;
        }
    }

    // 4. Ask each destination to delete them.
    let mut deletions = Vec::new();
    for entry in destinations.iter().filter(|entry| entry.workspace == workspace) {
        let (outcome, response) = request_deletion(entry, connect, request_id, &members, &identifiers).await;
        let recorded = DeletionRequested {
            destination_id: entry.created.destination_id,
            request_id,
            outcome: outcome.clone(),
            response: response.clone(),
        };
        append(
            log,
            workspace,
            destination_stream(entry.created.destination_id),
            DeletionRequested::TYPE,
            json!(recorded),
        )
        .await?;
        deletions.push(DeletionReport { destination: entry.created.name.clone(), outcome, response });
    }

    // 5. The fact every projection rebuilds on.
    let subjects = (identifiers.len() + rejections.len()) as u32;
    let erased = SubjectErased {
        request_id,
        profiles: profile_ids.clone(),
        subjects,
        keys_shredded,
        suppressed: requested.suppressed.clone(),
    };
    let erased_at = append(log, workspace, workspace_stream(workspace), SubjectErased::TYPE, json!(erased)).await?;
    metrics::counter!("onepd_erasures_total", "via" => via.to_owned()).increment(1);
    tracing::info!(
        workspace = %workspace.0,
        request = %request_id,
        profiles = profile_ids.len(),
        subjects,
        keys_shredded,
        via,
        "subject erased"
    );
    Ok(ErasureReport { request_id, profiles: profile_ids, subjects, keys_shredded, deletions, erased_at })
}

/// The rejections of `workspace` whose metadata names one of `suppressed`
/// (keyed identifier hashes, as ingest records them on a rejection it seals).
async fn rejections_naming(
    log: &EventLog,
    workspace: WorkspaceId,
    suppressed: &[String],
) -> Result<Vec<EventId>, ErasureError> {
    let wanted: BTreeSet<&str> = suppressed.iter().map(String::as_str).collect();
    let filter = EventFilter {
        workspace: Some(workspace),
        event_types: vec![MessageRejected::TYPE.to_owned()],
        stream: None,
        ..EventFilter::default()
    };
    let head = log.head().await?;
    let mut found = Vec::new();
    let mut from = Position(1);
    loop {
        let page = log.read(from, Some(head), &filter, 1_000).await?;
        for event in &page.events {
            let names = event.metadata.get("identifiers").and_then(Value::as_array);
            if names.is_some_and(|names| names.iter().filter_map(Value::as_str).any(|hash| wanted.contains(hash))) {
                found.push(event.event_id);
            }
        }
        if page.next > head || page.next <= from {
            break;
        }
        from = page.next;
    }
    Ok(found)
}

/// Asks one destination to delete the person: `(outcome, response)`.
async fn request_deletion(
    entry: &DestinationEntry,
    connect: &Connect,
    request_id: Uuid,
    members: &BTreeSet<ProfileId>,
    identifiers: &BTreeSet<Identifier>,
) -> (String, String) {
    let adapter: Arc<dyn Destination> = match connect(entry) {
        Ok(adapter) => adapter,
        Err(reason) => return ("failed".into(), reason),
    };
    let description = match tokio::time::timeout(DESTINATION_TIMEOUT, adapter.describe()).await {
        Ok(Ok(description)) => description,
        Ok(Err(err)) => return ("failed".into(), err.to_string()),
        Err(_) => return ("failed".into(), "describe timed out".into()),
    };
    let mut request = DeletionRequest {
        request_id,
        profile_ids: members.iter().map(|id| id.0.to_string()).collect(),
        identifiers: Default::default(),
    };
    for spec in &description.identifiers {
        let kind = match spec.source {
            IdentifierSource::Email => IdentifierKind::Email,
            IdentifierSource::Phone => IdentifierKind::Phone,
            IdentifierSource::UserId => IdentifierKind::UserId,
            IdentifierSource::AnonymousId => IdentifierKind::AnonymousId,
            _ => continue,
        };
        let mut values: Vec<String> = Vec::new();
        for identifier in identifiers.iter().filter(|identifier| identifier.kind == kind) {
            if let Some(value) = hashing::prepare(spec, &identifier.value)
                && !values.contains(&value)
            {
                values.push(value);
            }
        }
        if !values.is_empty() {
            request.identifiers.insert(spec.name.clone(), values);
        }
    }
    match tokio::time::timeout(DESTINATION_TIMEOUT, adapter.delete(&request)).await {
        Ok(Ok(DeletionAnswer::Requested)) => ("requested".into(), "accepted".into()),
        Ok(Ok(DeletionAnswer::Unsupported)) => {
            ("unsupported".into(), format!("adapter {} has no deletion API", entry.created.adapter))
        }
        Ok(Err(err)) => ("failed".into(), err.to_string()),
        Err(_) => ("failed".into(), format!("timed out after {} s", DESTINATION_TIMEOUT.as_secs())),
    }
}

/// Appends one event (no subject: it holds no personal data); returns its
/// position.
async fn append(
    log: &EventLog,
    workspace: WorkspaceId,
    stream: onepd_domain::StreamId,
    event_type: &str,
    data: serde_json::Value,
) -> Result<Position, ErasureError> {
    let event = NewEvent {
        event_id: EventId(Uuid::now_v7()),
        workspace_id: workspace,
        event_type: event_type.into(),
        schema_version: 1,
        data,
        metadata: json!({ "actor": "erasure" }),
        subject: None,
    };
    let request = AppendRequest { stream_id: stream, expected: ExpectedVersion::Any, events: vec![event] };
    match log.append(request).await {
        Ok(outcome) => Ok(*outcome.positions.last().expect("one event appended")),
        Err(AppendError::Store(err)) => Err(ErasureError::Store(err)),
        Err(err) => Err(ErasureError::Store(StoreError::Database(err.to_string()))),
    }
}
