//! Every workspace, its sources, write keys and tracking plan: a fold over the
//! workspace configuration events, read by ingest (which workspace and source
//! a write key writes to) and by the CLI's listings.

use std::collections::{BTreeMap, HashMap, HashSet};

use onepd_domain::events::audience::{AudienceConnected, AudienceDisconnected};
use onepd_domain::events::destination::{
    DestinationCreated, DestinationPaused, DestinationPolicySet, DestinationResumed,
};
use onepd_domain::events::erasure::SubjectErasureRequested;
use onepd_domain::events::workspace::{
    Industry, PlanMode, SourceCreated, SourceKind, TrackingPlanSet, WebhookConfigured, WorkspaceCreated,
    WorkspacePolicySet, WriteKeyIssued, WriteKeyRevoked,
};
use onepd_domain::{RecordedEvent, Timestamp, WorkspaceId};
use serde_json::Value;
use uuid::Uuid;

use crate::Fold;

/// A workspace as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceEntry {
    /// Its id.
    pub id: WorkspaceId,
    /// Its name.
    pub name: String,
    /// Its industry.
    pub industry: Industry,
    /// Whether ad platforms may receive IP addresses and user agents in a
    /// healthcare workspace.
    pub allow_ip_user_agent: bool,
    /// The registered site origin restricted ad platforms get as the page URL.
    pub site_origin: Option<String>,
    /// Region for phone numbers without a country code.
    pub default_region: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// Its tracking plan, if one is set: mode and document.
    pub plan: Option<(PlanMode, Value)>,
    /// Bumped whenever anything ingest depends on changes, so compiled
    /// settings can be cached by it.
    pub settings_version: u64,
}

/// A source as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    /// The workspace it belongs to.
    pub workspace: WorkspaceId,
    /// Its id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: SourceKind,
    /// How many of its write keys are valid.
    pub valid_keys: usize,
}

/// What a valid write key writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteGrant {
    /// The workspace.
    pub workspace: WorkspaceId,
    /// The source.
    pub source_id: Uuid,
    /// The key's public name.
    pub key_id: Uuid,
}

/// Workspaces, sources and valid write keys.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    workspaces: HashMap<WorkspaceId, WorkspaceEntry>,
    sources: HashMap<Uuid, SourceEntry>,
    keys_by_hash: HashMap<String, WriteGrant>,
    hash_by_key: HashMap<Uuid, String>,
    webhooks: HashMap<Uuid, WebhookConfigured>,
    destinations: HashMap<Uuid, DestinationEntry>,
    /// Suppression hashes of erased people's identifiers, by workspace.
    suppressed: HashMap<WorkspaceId, HashSet<String>>,
}

/// A destination as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationEntry {
    /// The workspace it belongs to.
    pub workspace: WorkspaceId,
    /// Its configuration.
    pub created: DestinationCreated,
    /// Whether it is paused.
    pub paused: bool,
    /// The position of the last change to its configuration (creation,
    /// policy or connected audiences), so a running subscriber can tell it
    /// changed.
    pub changed_at: u64,
    /// The audiences connected to it, each with the platform's id of its
    /// list or custom audience, if given.
    pub audiences: BTreeMap<String, Option<String>>,
    /// The position each connected audience was connected at: its entries
    /// and exits after it are sent live; the members it had then are sent
    /// by the connection's own job.
    pub audiences_connected_at: BTreeMap<String, u64>,
}

impl Fold for Directory {
    const EVENT_TYPES: &'static [&'static str] = &[
        WorkspaceCreated::TYPE,
        SourceCreated::TYPE,
        WriteKeyIssued::TYPE,
        WriteKeyRevoked::TYPE,
        TrackingPlanSet::TYPE,
        WebhookConfigured::TYPE,
        DestinationCreated::TYPE,
        DestinationPaused::TYPE,
        DestinationResumed::TYPE,
        WorkspacePolicySet::TYPE,
        SubjectErasureRequested::TYPE,
        DestinationPolicySet::TYPE,
        AudienceConnected::TYPE,
        AudienceDisconnected::TYPE,
    ];

    fn apply(&mut self, event: &RecordedEvent) {
        let Some(data) = event.data.value() else { return };
        let workspace = event.workspace_id;
        match event.event_type.as_str() {
            WorkspaceCreated::TYPE => {
                if let Ok(created) = serde_json::from_value::<WorkspaceCreated>(data.clone()) {
                    self.workspaces.entry(workspace).or_insert(WorkspaceEntry {
                        id: workspace,
                        name: created.name,
                        industry: created.industry,
                        allow_ip_user_agent: false,
                        site_origin: None,
                        default_region: created.default_region,
                        created_at: event.recorded_at,
                        plan: None,
                        settings_version: event.position.0,
                    });
                }
            }
            SourceCreated::TYPE => {
                if let Ok(source) = serde_json::from_value::<SourceCreated>(data.clone()) {
                    self.sources.entry(source.source_id).or_insert(SourceEntry {
                        workspace,
                        id: source.source_id,
                        name: source.name,
                        kind: source.kind,
                        valid_keys: 0,
                    });
                }
            }
            WriteKeyIssued::TYPE => {
                if let Ok(issued) = serde_json::from_value::<WriteKeyIssued>(data.clone())
                    // A key only ever writes to a source of its own workspace.
                    && let Some(source) = self.sources.get_mut(&issued.source_id)
                    && source.workspace == workspace
                {
                    source.valid_keys += 1;
                    self.hash_by_key.insert(issued.key_id, issued.key_sha256.clone());
                    self.keys_by_hash.insert(
                        issued.key_sha256,
                        WriteGrant { workspace, source_id: issued.source_id, key_id: issued.key_id },
                    );
                }
            }
            WriteKeyRevoked::TYPE => {
                if let Ok(revoked) = serde_json::from_value::<WriteKeyRevoked>(data.clone())
                    && let Some(hash) = self.hash_by_key.get(&revoked.key_id).cloned()
                    && self.keys_by_hash.get(&hash).is_some_and(|grant| grant.workspace == workspace)
                {
                    self.hash_by_key.remove(&revoked.key_id);
                    if let Some(grant) = self.keys_by_hash.remove(&hash)
                        && let Some(source) = self.sources.get_mut(&grant.source_id)
                    {
                        source.valid_keys -= 1;
                    }
                }
            }
            TrackingPlanSet::TYPE => {
                if let Ok(set) = serde_json::from_value::<TrackingPlanSet>(data.clone())
                    && let Some(entry) = self.workspaces.get_mut(&workspace)
                {
                    entry.plan = Some((set.mode, set.plan));
                    entry.settings_version = event.position.0;
                }
            }
            WebhookConfigured::TYPE => {
                if let Ok(configured) = serde_json::from_value::<WebhookConfigured>(data.clone())
                    && self.sources.get(&configured.source_id).is_some_and(|source| source.workspace == workspace)
                {
                    self.webhooks.insert(configured.source_id, configured);
                }
            }
            DestinationCreated::TYPE => {
                if let Ok(created) = serde_json::from_value::<DestinationCreated>(data.clone()) {
                    self.destinations.entry(created.destination_id).or_insert(DestinationEntry {
                        workspace,
                        created,
                        paused: false,
                        changed_at: event.position.0,
                        audiences: BTreeMap::new(),
                        audiences_connected_at: BTreeMap::new(),
                    });
                }
            }
            DestinationPaused::TYPE | DestinationResumed::TYPE => {
                if let Some(id) = data.get("destination_id").and_then(|id| serde_json::from_value::<Uuid>(id.clone()).ok())
                    && let Some(entry) = self.destinations.get_mut(&id)
                    // A workspace only ever switches its own destinations.
                    && entry.workspace == workspace
                {
                    entry.paused = event.event_type == DestinationPaused::TYPE;
                }
            }
            AudienceConnected::TYPE => {
                if let Ok(connected) = serde_json::from_value::<AudienceConnected>(data.clone())
                    && let Some(entry) = self.destinations.get_mut(&connected.destination_id)
                    && entry.workspace == workspace
                {
                    entry.audiences_connected_at.insert(connected.audience.clone(), event.position.0);
                    entry.audiences.insert(connected.audience, connected.external_id);
                    entry.changed_at = event.position.0;
                }
            }
            AudienceDisconnected::TYPE => {
                if let Ok(disconnected) = serde_json::from_value::<AudienceDisconnected>(data.clone())
                    && let Some(entry) = self.destinations.get_mut(&disconnected.destination_id)
                    && entry.workspace == workspace
                {
                    entry.audiences.remove(&disconnected.audience);
                    entry.audiences_connected_at.remove(&disconnected.audience);
                    entry.changed_at = event.position.0;
                }
            }
            DestinationPolicySet::TYPE => {
                if let Ok(set) = serde_json::from_value::<DestinationPolicySet>(data.clone())
                    && let Some(entry) = self.destinations.get_mut(&set.destination_id)
                    && entry.workspace == workspace
                {
                    entry.created.policy = set.policy;
                    entry.changed_at = event.position.0;
                }
            }
            WorkspacePolicySet::TYPE => {
                if let Ok(set) = serde_json::from_value::<WorkspacePolicySet>(data.clone())
                    && let Some(entry) = self.workspaces.get_mut(&workspace)
                {
                    entry.industry = set.industry;
                    entry.allow_ip_user_agent = set.allow_ip_user_agent;
                    entry.site_origin = set.site_origin;
                    entry.settings_version = event.position.0;
                }
            }
            SubjectErasureRequested::TYPE => {
                if let Ok(requested) = serde_json::from_value::<SubjectErasureRequested>(data.clone()) {
                    self.suppressed.entry(workspace).or_default().extend(requested.suppressed);
                }
            }
            _ => {}
        }
    }
}

impl Directory {
    /// Whether `workspace` has erased anyone (so ingest must check messages
    /// against its suppression list).
    pub fn has_suppressions(&self, workspace: WorkspaceId) -> bool {
        self.suppressed.get(&workspace).is_some_and(|hashes| !hashes.is_empty())
    }

    /// Whether the suppression hash `hash` is on `workspace`'s list.
    pub fn is_suppressed(&self, workspace: WorkspaceId, hash: &str) -> bool {
        self.suppressed.get(&workspace).is_some_and(|hashes| hashes.contains(hash))
    }

    /// A destination by id.
    pub fn destination(&self, id: Uuid) -> Option<&DestinationEntry> {
        self.destinations.get(&id)
    }

    /// Every destination of every workspace.
    pub fn all_destinations(&self) -> impl Iterator<Item = &DestinationEntry> {
        self.destinations.values()
    }

    /// A destination of `workspace` by id or by name.
    pub fn find_destination(&self, workspace: WorkspaceId, id_or_name: &str) -> Option<&DestinationEntry> {
        let id = id_or_name.parse::<Uuid>().ok();
        self.destinations.values().find(|entry| {
            entry.workspace == workspace
                && (Some(entry.created.destination_id) == id || entry.created.name == id_or_name)
        })
    }

    /// The destinations of `workspace`, by name.
    pub fn destinations(&self, workspace: WorkspaceId) -> Vec<&DestinationEntry> {
        let mut all: Vec<_> = self.destinations.values().filter(|entry| entry.workspace == workspace).collect();
        all.sort_by(|a, b| a.created.name.cmp(&b.created.name));
        all
    }

    /// The webhook configuration of `source_id`, if one was set.
    pub fn webhook(&self, source_id: Uuid) -> Option<&WebhookConfigured> {
        self.webhooks.get(&source_id)
    }

    /// What the write key whose SHA-256 is `key_sha256` writes to, if valid.
    pub fn write_grant(&self, key_sha256: &str) -> Option<WriteGrant> {
        self.keys_by_hash.get(key_sha256).copied()
    }

    /// A workspace by id.
    pub fn workspace(&self, id: WorkspaceId) -> Option<&WorkspaceEntry> {
        self.workspaces.get(&id)
    }

    /// A workspace by id or by name.
    pub fn find_workspace(&self, id_or_name: &str) -> Option<&WorkspaceEntry> {
        if let Ok(id) = id_or_name.parse::<Uuid>() {
            return self.workspaces.get(&WorkspaceId(id));
        }
        self.workspaces.values().find(|entry| entry.name == id_or_name)
    }

    /// Every workspace, oldest first.
    pub fn workspaces(&self) -> Vec<&WorkspaceEntry> {
        let mut all: Vec<_> = self.workspaces.values().collect();
        all.sort_by_key(|entry| (entry.created_at, entry.id.0));
        all
    }

    /// A source by id.
    pub fn source(&self, id: Uuid) -> Option<&SourceEntry> {
        self.sources.get(&id)
    }

    /// A source of `workspace` by id or by name.
    pub fn find_source(&self, workspace: WorkspaceId, id_or_name: &str) -> Option<&SourceEntry> {
        let id = id_or_name.parse::<Uuid>().ok();
        self.sources
            .values()
            .find(|source| source.workspace == workspace && (Some(source.id) == id || source.name == id_or_name))
    }

    /// The sources of `workspace`, by name.
    pub fn sources(&self, workspace: WorkspaceId) -> Vec<&SourceEntry> {
        let mut all: Vec<_> = self.sources.values().filter(|source| source.workspace == workspace).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onepd_domain::{EventId, Payload, Position, StreamId};
    use serde_json::json;

    fn recorded(workspace: u128, position: u64, event_type: &str, data: Value) -> RecordedEvent {
        RecordedEvent {
            position: Position(position),
            event_id: EventId(Uuid::now_v7()),
            workspace_id: WorkspaceId(Uuid::from_u128(workspace)),
            stream_id: StreamId::new(format!("workspace-{workspace}")).unwrap(),
            stream_version: position,
            event_type: event_type.into(),
            schema_version: 1,
            data: Payload::Data(data),
            metadata: json!({}),
            sealed: false,
            recorded_at: Timestamp(position as i64),
            hash: [0; 32],
        }
    }

    fn directory() -> Directory {
        let source = Uuid::from_u128(10);
        let key = Uuid::from_u128(20);
        let mut directory = Directory::default();
        for event in [
            recorded(
                1,
                1,
                "WorkspaceCreated",
                json!({ "name": "a", "industry": "healthcare", "default_region": "US" }),
            ),
            recorded(1, 2, "SourceCreated", json!({ "source_id": source, "name": "web", "kind": "javascript" })),
            recorded(1, 3, "WriteKeyIssued", json!({ "key_id": key, "source_id": source, "key_sha256": "h" })),
        ] {
            directory.apply(&event);
        }
        directory
    }

    #[test]
    fn a_write_key_grants_its_source_until_revoked() {
        let mut directory = directory();
        let grant = directory.write_grant("h").unwrap();
        assert_eq!(grant.source_id, Uuid::from_u128(10));
        assert_eq!(directory.find_workspace("a").unwrap().industry, Industry::Healthcare);
        directory.apply(&recorded(1, 4, "WriteKeyRevoked", json!({ "key_id": Uuid::from_u128(20) })));
        assert!(directory.write_grant("h").is_none());
        assert_eq!(directory.sources(grant.workspace)[0].valid_keys, 0);
    }

    #[test]
    fn a_key_issued_in_one_workspace_for_another_workspaces_source_grants_nothing() {
        let mut directory = directory();
        directory.apply(&recorded(
            2,
            4,
            "WorkspaceCreated",
            json!({ "name": "b", "industry": "general", "default_region": null }),
        ));
        directory.apply(&recorded(
            2,
            5,
            "WriteKeyIssued",
            json!({ "key_id": Uuid::from_u128(21), "source_id": Uuid::from_u128(10), "key_sha256": "stolen" }),
        ));
        assert!(directory.write_grant("stolen").is_none());
    }

    #[test]
    fn a_workspace_cannot_revoke_another_workspaces_key() {
        let mut directory = directory();
        directory.apply(&recorded(2, 4, "WriteKeyRevoked", json!({ "key_id": Uuid::from_u128(20) })));
        assert!(directory.write_grant("h").is_some());
    }
}
