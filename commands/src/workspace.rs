//! A workspace's configuration as an aggregate: creating it, its sources,
//! write keys, admin tokens and tracking plan.
//!
//! [`WorkspaceConfig`] is the state folded from the workspace's own stream
//! (`workspace-<id>`); each decision checks it and returns the events to
//! append, which the caller appends with [`WorkspaceConfig::expected`] so two
//! concurrent changes cannot both be decided on the same state.
//!
//! Keys and tokens are returned once to the caller and only their SHA-256 is
//! put in an event. Randomness and ids come in as arguments.

use std::collections::{BTreeMap, HashMap};

use onepd_domain::events::audience::{
    AudienceConnected, AudienceDefined, AudienceDisconnected, AudienceRemoved, ComputedTraitDefined,
    ComputedTraitRemoved,
};
use onepd_domain::events::destination::{DestinationCreated, DestinationPaused, DestinationResumed};
use onepd_domain::events::workspace::{
    AdminTokenIssued, AdminTokenRevoked, Industry, PlanMode, SourceCreated, SourceKind, TokenScope, TrackingPlanSet,
    WorkspaceCreated, WriteKeyIssued, WriteKeyRevoked, workspace_stream,
};
use onepd_domain::{AppendRequest, EventId, ExpectedVersion, NewEvent, RecordedEvent, WorkspaceId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::ingest::TrackingPlan;

mod destination;
mod identity;
mod webhook;

pub use destination::{DestinationState, EXTERNAL_ADAPTER};

pub use identity::{check_identifier, check_rules};

/// The prefix of every admin token, so a leaked one is recognizable in logs
/// and by secret scanners.
pub const ADMIN_TOKEN_PREFIX: &str = "onepd_admin_";

/// The prefix of every write key.
pub const WRITE_KEY_PREFIX: &str = "onepd_wk_";

/// The lowercase hex SHA-256 under which a token or key is stored and looked up.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a new workspace is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWorkspace {
    /// Its name, unique per installation.
    pub name: String,
    /// Its industry.
    pub industry: Industry,
    /// ISO 3166-1 alpha-2 region for phone numbers without a country code.
    pub default_region: Option<String>,
}

/// A configuration change that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The workspace exists already.
    #[error("workspace {0} exists already")]
    WorkspaceExists(WorkspaceId),
    /// The workspace has not been created.
    #[error("workspace {0}: not found")]
    NoSuchWorkspace(WorkspaceId),
    /// A name is empty or too long.
    #[error("{field}: expected 1 to 100 characters, found {found:?}")]
    InvalidName {
        /// Which name.
        field: &'static str,
        /// What was given.
        found: String,
    },
    /// The default region is not a two-letter code.
    #[error("default region: expected an ISO 3166-1 alpha-2 code such as \"US\", found {0:?}")]
    InvalidRegion(String),
    /// A source of that name exists in the workspace.
    #[error("source {0:?} exists already in this workspace")]
    SourceNameTaken(String),
    /// No such source in the workspace.
    #[error("source {0}: not found in this workspace")]
    NoSuchSource(Uuid),
    /// No such key or token in the workspace.
    #[error("key {0}: not found in this workspace")]
    NoSuchKey(Uuid),
    /// The key or token is revoked already.
    #[error("key {0}: revoked already")]
    AlreadyRevoked(Uuid),
    /// An admin token needs at least one scope.
    #[error("scopes: expected at least one of read, audit, admin, found none")]
    NoScopes,
    /// The tracking plan does not compile.
    #[error("tracking plan: {0}")]
    InvalidPlan(String),
    /// An identifier is malformed, or its block state is already the one asked for.
    #[error("{0}")]
    Identifier(String),
    /// Identity rules that cannot be applied.
    #[error("identity rules: {0}")]
    InvalidRules(String),
    /// A split that would undo nothing.
    #[error("profile split: {0}")]
    InvalidSplit(String),
    /// A webhook configuration that cannot be used.
    #[error("webhook: {0}")]
    InvalidWebhook(String),
    /// No such destination in the workspace.
    #[error("destination {0}: not found in this workspace")]
    NoSuchDestination(Uuid),
    /// A destination configuration or change that cannot be made.
    #[error("destination: {0}")]
    InvalidDestination(String),
    /// A computed trait definition or removal that cannot be made.
    #[error("computed trait {name:?}: {reason}")]
    InvalidComputedTrait {
        /// The computed trait.
        name: String,
        /// Why, naming the field.
        reason: String,
    },
    /// An audience definition or removal that cannot be made.
    #[error("audience {name:?}: {reason}")]
    InvalidAudience {
        /// The audience.
        name: String,
        /// Why, naming the part of the condition.
        reason: String,
    },
}

/// A key or token to hand to its owner once, and the event recording its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuedToken {
    /// The key or token itself: shown once, never stored.
    pub token: String,
    /// The event to append.
    pub event: NewEvent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    WriteKey { revoked: bool, source_id: Uuid },
    AdminToken { revoked: bool, scopes: Vec<TokenScope> },
}

/// A write key or admin token, as listed (never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeySummary {
    /// Its public id.
    pub key_id: Uuid,
    /// `write_key` or `admin_token`.
    pub kind: &'static str,
    /// The source a write key writes to.
    pub source_id: Option<Uuid>,
    /// An admin token's scopes.
    pub scopes: Vec<TokenScope>,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A workspace's configuration, folded from its stream.
#[derive(Debug, Clone, Default)]
pub struct WorkspaceConfig {
    workspace: Option<WorkspaceId>,
    version: u64,
    created: Option<WorkspaceCreated>,
    sources: HashMap<Uuid, SourceCreated>,
    credentials: HashMap<Uuid, Credential>,
    facts: onepd_domain::events::identity::IdentityFacts,
    destinations: HashMap<Uuid, DestinationState>,
    audiences: BTreeMap<String, AudienceDefined>,
    computed: BTreeMap<String, ComputedTraitDefined>,
    connections: BTreeMap<(String, Uuid), AudienceConnected>,
}

impl WorkspaceConfig {
    /// Folds the workspace stream's events (as read, in stream order).
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a RecordedEvent>) -> WorkspaceConfig {
        let mut config = WorkspaceConfig::default();
        for event in events {
            config.version = event.stream_version;
            config.workspace = Some(event.workspace_id);
            if let Some(data) = event.data.value() {
                config.fold(&event.event_type, data);
            }
        }
        config
    }

    /// Folds an event just decided (and appended), so a following decision
    /// sees it.
    pub fn record(&mut self, event: &NewEvent) {
        self.version += 1;
        self.workspace = Some(event.workspace_id);
        self.fold(&event.event_type, &event.data);
    }

    fn fold(&mut self, event_type: &str, data: &Value) {
        match event_type {
            WorkspaceCreated::TYPE => {
                let data = WorkspaceCreated::upcast_v1(data.clone()).unwrap_or_default();
                self.created = serde_json::from_value(data).ok();
            }
            SourceCreated::TYPE => {
                if let Ok(source) = serde_json::from_value::<SourceCreated>(data.clone()) {
                    self.sources.insert(source.source_id, source);
                }
            }
            WriteKeyIssued::TYPE => {
                if let Ok(issued) = serde_json::from_value::<WriteKeyIssued>(data.clone()) {
                    self.credentials
                        .insert(issued.key_id, Credential::WriteKey { revoked: false, source_id: issued.source_id });
                }
            }
            WriteKeyRevoked::TYPE => {
                if let Ok(revoked) = serde_json::from_value::<WriteKeyRevoked>(data.clone())
                    && let Some(Credential::WriteKey { revoked: flag, .. }) = self.credentials.get_mut(&revoked.key_id)
                {
                    *flag = true;
                }
            }
            AdminTokenIssued::TYPE => {
                if let Ok(issued) = serde_json::from_value::<AdminTokenIssued>(data.clone()) {
                    self.credentials
                        .insert(issued.token_id, Credential::AdminToken { revoked: false, scopes: issued.scopes });
                }
            }
            AdminTokenRevoked::TYPE => {
                if let Ok(revoked) = serde_json::from_value::<AdminTokenRevoked>(data.clone())
                    && let Some(Credential::AdminToken { revoked: flag, .. }) =
                        self.credentials.get_mut(&revoked.token_id)
                {
                    *flag = true;
                }
            }
            AudienceDefined::TYPE => {
                if let Ok(defined) = serde_json::from_value::<AudienceDefined>(data.clone()) {
                    self.audiences.insert(defined.name.clone(), defined);
                }
            }
            ComputedTraitDefined::TYPE => {
                if let Ok(defined) = serde_json::from_value::<ComputedTraitDefined>(data.clone()) {
                    self.computed.insert(defined.name.clone(), defined);
                }
            }
            ComputedTraitRemoved::TYPE => {
                if let Ok(removed) = serde_json::from_value::<ComputedTraitRemoved>(data.clone()) {
                    self.computed.remove(&removed.name);
                }
            }
            AudienceRemoved::TYPE => {
                if let Ok(removed) = serde_json::from_value::<AudienceRemoved>(data.clone()) {
                    self.audiences.remove(&removed.name);
                }
            }
            AudienceConnected::TYPE => {
                if let Ok(connected) = serde_json::from_value::<AudienceConnected>(data.clone()) {
                    self.connections.insert((connected.audience.clone(), connected.destination_id), connected);
                }
            }
            AudienceDisconnected::TYPE => {
                if let Ok(disconnected) = serde_json::from_value::<AudienceDisconnected>(data.clone()) {
                    self.connections.remove(&(disconnected.audience, disconnected.destination_id));
                }
            }
            DestinationCreated::TYPE => {
                if let Ok(created) = serde_json::from_value::<DestinationCreated>(data.clone()) {
                    self.destinations
                        .insert(created.destination_id, DestinationState { name: created.name, paused: false });
                }
            }
            DestinationPaused::TYPE | DestinationResumed::TYPE => {
                if let Some(destination) = data
                    .get("destination_id")
                    .and_then(|id| serde_json::from_value::<Uuid>(id.clone()).ok())
                    .and_then(|id| self.destinations.get_mut(&id))
                {
                    destination.paused = event_type == DestinationPaused::TYPE;
                }
            }
            other => self.facts.apply_data(other, data),
        }
    }

    /// The version the stream must be at for a decision taken on this state.
    pub fn expected(&self) -> ExpectedVersion {
        if self.version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(self.version) }
    }

    /// The append request for `events` decided on this state.
    pub fn request(&self, workspace: WorkspaceId, events: Vec<NewEvent>) -> AppendRequest {
        AppendRequest { stream_id: workspace_stream(workspace), expected: self.expected(), events }
    }

    /// The workspace as created, if it was.
    pub fn created(&self) -> Option<&WorkspaceCreated> {
        self.created.as_ref()
    }

    /// The workspace's sources.
    pub fn sources(&self) -> impl Iterator<Item = &SourceCreated> {
        self.sources.values()
    }

    /// Every write key and admin token ever issued, by id.
    pub fn keys(&self) -> Vec<KeySummary> {
        let mut keys: Vec<KeySummary> = self
            .credentials
            .iter()
            .map(|(id, credential)| match credential {
                Credential::WriteKey { revoked, source_id } => KeySummary {
                    key_id: *id,
                    kind: "write_key",
                    source_id: Some(*source_id),
                    scopes: Vec::new(),
                    revoked: *revoked,
                },
                Credential::AdminToken { revoked, scopes } => KeySummary {
                    key_id: *id,
                    kind: "admin_token",
                    source_id: None,
                    scopes: scopes.clone(),
                    revoked: *revoked,
                },
            })
            .collect();
        keys.sort_by_key(|key| key.key_id);
        keys
    }

    /// Decides the event that creates the workspace.
    pub fn create(&self, workspace: WorkspaceId, spec: &NewWorkspace, actor: &str) -> Result<NewEvent, ConfigError> {
        if self.created.is_some() {
            return Err(ConfigError::WorkspaceExists(workspace));
        }
        check_name("name", &spec.name)?;
        let default_region = match &spec.default_region {
            Some(region) => {
                let upper = region.trim().to_ascii_uppercase();
                if upper.len() != 2 || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(ConfigError::InvalidRegion(region.clone()));
                }
                Some(upper)
            }
            None => None,
        };
        let created = WorkspaceCreated { name: spec.name.trim().to_owned(), industry: spec.industry, default_region };
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, b"WorkspaceCreated")),
            workspace,
            WorkspaceCreated::TYPE,
            WorkspaceCreated::SCHEMA_VERSION,
            serde_json::to_value(created).expect("serializable"),
            actor,
        ))
    }

    /// Decides the event that adds a source.
    pub fn create_source(
        &self,
        workspace: WorkspaceId,
        source_id: Uuid,
        name: &str,
        kind: SourceKind,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        check_name("source name", name)?;
        let name = name.trim();
        if self.sources.values().any(|source| source.name == name) {
            return Err(ConfigError::SourceNameTaken(name.to_owned()));
        }
        let created = SourceCreated { source_id, name: name.to_owned(), kind };
        Ok(event(
            EventId(Uuid::new_v5(&source_id, b"SourceCreated")),
            workspace,
            SourceCreated::TYPE,
            1,
            serde_json::to_value(created).expect("serializable"),
            actor,
        ))
    }

    /// Decides the event that issues a write key for `source_id`; `secret` is
    /// the key's randomness.
    pub fn issue_write_key(
        &self,
        workspace: WorkspaceId,
        key_id: Uuid,
        source_id: Uuid,
        secret: [u8; 16],
        actor: &str,
    ) -> Result<IssuedToken, ConfigError> {
        self.existing(workspace)?;
        if !self.sources.contains_key(&source_id) {
            return Err(ConfigError::NoSuchSource(source_id));
        }
        let token = format!("{WRITE_KEY_PREFIX}{}", hex::encode(secret));
        let issued = WriteKeyIssued { key_id, source_id, key_sha256: token_sha256(&token) };
        let event = event(
            EventId(Uuid::new_v5(&key_id, b"WriteKeyIssued")),
            workspace,
            WriteKeyIssued::TYPE,
            1,
            serde_json::to_value(issued).expect("serializable"),
            actor,
        );
        Ok(IssuedToken { token, event })
    }

    /// Decides the event that issues an admin token with `scopes`.
    pub fn issue_admin_token(
        &self,
        workspace: WorkspaceId,
        token_id: Uuid,
        secret: [u8; 32],
        scopes: Vec<TokenScope>,
        actor: &str,
    ) -> Result<IssuedToken, ConfigError> {
        self.existing(workspace)?;
        if scopes.is_empty() {
            return Err(ConfigError::NoScopes);
        }
        let token = format!("{ADMIN_TOKEN_PREFIX}{}", hex::encode(secret));
        let issued = AdminTokenIssued { token_id, token_sha256: token_sha256(&token), scopes };
        let event = event(
            EventId(Uuid::new_v5(&token_id, b"AdminTokenIssued")),
            workspace,
            AdminTokenIssued::TYPE,
            1,
            serde_json::to_value(issued).expect("serializable"),
            actor,
        );
        Ok(IssuedToken { token, event })
    }

    /// Decides the event that revokes a write key or admin token by its id.
    pub fn revoke(&self, workspace: WorkspaceId, key_id: Uuid, actor: &str) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        let (event_type, data, suffix): (&str, Value, &[u8]) = match self.credentials.get(&key_id) {
            None => return Err(ConfigError::NoSuchKey(key_id)),
            Some(Credential::WriteKey { revoked: true, .. } | Credential::AdminToken { revoked: true, .. }) => {
                return Err(ConfigError::AlreadyRevoked(key_id));
            }
            Some(Credential::WriteKey { .. }) => (
                WriteKeyRevoked::TYPE,
                serde_json::to_value(WriteKeyRevoked { key_id }).expect("serializable"),
                b"WriteKeyRevoked",
            ),
            Some(Credential::AdminToken { .. }) => (
                AdminTokenRevoked::TYPE,
                serde_json::to_value(AdminTokenRevoked { token_id: key_id }).expect("serializable"),
                b"AdminTokenRevoked",
            ),
        };
        Ok(event(EventId(Uuid::new_v5(&key_id, suffix)), workspace, event_type, 1, data, actor))
    }

    /// Decides the event that sets the tracking plan, after checking that it
    /// compiles.
    pub fn set_tracking_plan(
        &self,
        workspace: WorkspaceId,
        mode: PlanMode,
        plan: Value,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        TrackingPlan::compile(mode, &plan).map_err(|err| ConfigError::InvalidPlan(err.to_string()))?;
        let set = TrackingPlanSet { mode, plan };
        let id = format!("TrackingPlanSet/{}", self.version + 1);
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            TrackingPlanSet::TYPE,
            1,
            serde_json::to_value(set).expect("serializable"),
            actor,
        ))
    }

    /// The workspace's audiences by name, as last defined.
    pub fn audiences(&self) -> &BTreeMap<String, AudienceDefined> {
        &self.audiences
    }

    /// Decides the event that defines audience `name` (or replaces its
    /// definition), after checking the name, the condition, and that every
    /// audience it names exists and none leads back to it.
    pub fn define_audience(
        &self,
        workspace: WorkspaceId,
        defined: AudienceDefined,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        let invalid = |reason: String| ConfigError::InvalidAudience { name: defined.name.clone(), reason };
        let name = defined.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(invalid("the name must be 1 to 100 characters, none of them control characters".into()));
        }
        if name != defined.name {
            return Err(invalid("the name must not start or end with spaces".into()));
        }
        defined.condition.validate().map_err(invalid)?;
        if let Some(named) = defined.condition.computed_traits().into_iter().find(|n| !self.computed.contains_key(*n)) {
            return Err(invalid(format!("its condition names computed trait {named:?}, which is not defined")));
        }
        for named in defined.condition.audiences() {
            if named == defined.name {
                return Err(invalid("its condition names the audience itself".into()));
            }
            if !self.audiences.contains_key(named) {
                return Err(invalid(format!("its condition names audience {named:?}, which is not defined")));
            }
            if let Some(path) = self.path_to(named, &defined.name) {
                return Err(invalid(format!(
                    "its condition names audience {named:?}, which leads back to it ({})",
                    path.join(" → ")
                )));
            }
        }
        let id = format!("AudienceDefined/{}", self.version + 1);
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            AudienceDefined::TYPE,
            1,
            serde_json::to_value(&defined).expect("serializable"),
            actor,
        ))
    }

    /// Decides the event that removes audience `name`, unless another
    /// audience names it.
    pub fn remove_audience(&self, workspace: WorkspaceId, name: &str, actor: &str) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        let invalid = |reason: String| ConfigError::InvalidAudience { name: name.to_owned(), reason };
        if !self.audiences.contains_key(name) {
            return Err(invalid("not defined in this workspace".into()));
        }
        if let Some(user) = self.audiences.values().find(|other| other.condition.audiences().contains(&name)) {
            return Err(invalid(format!("audience {:?} names it; change or remove that one first", user.name)));
        }
        if let Some(((_, destination), _)) = self.connections.iter().find(|((audience, _), _)| audience == name) {
            return Err(invalid(format!("it is connected to destination {destination}; disconnect it first")));
        }
        let id = format!("AudienceRemoved/{}", self.version + 1);
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            AudienceRemoved::TYPE,
            1,
            serde_json::to_value(AudienceRemoved { name: name.to_owned() }).expect("serializable"),
            actor,
        ))
    }

    /// The audiences connected to destinations, by audience and destination.
    pub fn connections(&self) -> &BTreeMap<(String, Uuid), AudienceConnected> {
        &self.connections
    }

    /// Decides the event that connects audience `connected.audience` to a
    /// destination of the workspace (or changes its external id).
    pub fn connect_audience(
        &self,
        workspace: WorkspaceId,
        connected: AudienceConnected,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        let invalid = |reason: String| ConfigError::InvalidAudience { name: connected.audience.clone(), reason };
        if !self.audiences.contains_key(&connected.audience) {
            return Err(invalid("not defined in this workspace".into()));
        }
        if !self.destinations.contains_key(&connected.destination_id) {
            return Err(ConfigError::NoSuchDestination(connected.destination_id));
        }
        if let Some(id) = &connected.external_id
            && (id.trim().is_empty() || id.len() > 200 || id.chars().any(char::is_control))
        {
            return Err(invalid("the external id must be 1 to 200 characters, none of them control characters".into()));
        }
        let id = format!("AudienceConnected/{}", self.version + 1);
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            AudienceConnected::TYPE,
            1,
            serde_json::to_value(&connected).expect("serializable"),
            actor,
        ))
    }

    /// Decides the event that disconnects an audience from a destination.
    pub fn disconnect_audience(
        &self,
        workspace: WorkspaceId,
        audience: &str,
        destination_id: Uuid,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        if !self.connections.contains_key(&(audience.to_owned(), destination_id)) {
            return Err(ConfigError::InvalidAudience {
                name: audience.to_owned(),
                reason: format!("not connected to destination {destination_id}"),
            });
        }
        let id = format!("AudienceDisconnected/{}", self.version + 1);
        let disconnected = AudienceDisconnected { audience: audience.to_owned(), destination_id };
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            AudienceDisconnected::TYPE,
            1,
            serde_json::to_value(&disconnected).expect("serializable"),
            actor,
        ))
    }

    /// The workspace's computed traits by name, as last defined.
    pub fn computed_traits(&self) -> &BTreeMap<String, ComputedTraitDefined> {
        &self.computed
    }

    /// Decides the event that defines computed trait `defined.name` (or
    /// replaces its definition), after checking its name and definition.
    pub fn define_computed_trait(
        &self,
        workspace: WorkspaceId,
        defined: ComputedTraitDefined,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        let invalid = |reason: String| ConfigError::InvalidComputedTrait { name: defined.name.clone(), reason };
        let name = defined.name.as_str();
        let bare = !name.is_empty() && name.len() <= 100;
        if !bare || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid("the name must be 1 to 100 letters, digits or underscores".into()));
        }
        defined.definition.validate().map_err(invalid)?;
        let id = format!("ComputedTraitDefined/{}", self.version + 1);
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            ComputedTraitDefined::TYPE,
            1,
            serde_json::to_value(&defined).expect("serializable"),
            actor,
        ))
    }

    /// Decides the event that removes computed trait `name`, unless an
    /// audience reads it.
    pub fn remove_computed_trait(
        &self,
        workspace: WorkspaceId,
        name: &str,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        let invalid = |reason: String| ConfigError::InvalidComputedTrait { name: name.to_owned(), reason };
        if !self.computed.contains_key(name) {
            return Err(invalid("not defined in this workspace".into()));
        }
        if let Some(user) = self.audiences.values().find(|a| a.condition.computed_traits().contains(&name)) {
            return Err(invalid(format!("audience {:?} reads it; change or remove that one first", user.name)));
        }
        let id = format!("ComputedTraitRemoved/{}", self.version + 1);
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            ComputedTraitRemoved::TYPE,
            1,
            serde_json::to_value(ComputedTraitRemoved { name: name.to_owned() }).expect("serializable"),
            actor,
        ))
    }

    /// The audiences from `from` to `to` through what their conditions
    /// name, if `to` can be reached.
    fn path_to(&self, from: &str, to: &str) -> Option<Vec<String>> {
        let mut stack = vec![vec![from.to_owned()]];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(path) = stack.pop() {
            let last = path.last().expect("never empty");
            if last == to {
                return Some(path);
            }
            if !seen.insert(last.clone()) {
                continue;
            }
            for next in self.audiences.get(last).map(|a| a.condition.audiences()).unwrap_or_default() {
                let mut longer = path.clone();
                longer.push(next.to_owned());
                stack.push(longer);
            }
        }
        None
    }

    fn existing(&self, workspace: WorkspaceId) -> Result<(), ConfigError> {
        match (&self.created, self.workspace) {
            (Some(_), Some(id)) if id == workspace => Ok(()),
            _ => Err(ConfigError::NoSuchWorkspace(workspace)),
        }
    }
}

fn check_name(field: &'static str, name: &str) -> Result<(), ConfigError> {
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 100 {
        return Err(ConfigError::InvalidName { field, found: name.to_owned() });
    }
    Ok(())
}

fn event(
    event_id: EventId,
    workspace: WorkspaceId,
    event_type: &str,
    schema_version: u32,
    data: Value,
    actor: &str,
) -> NewEvent {
    NewEvent {
        event_id,
        workspace_id: workspace,
        event_type: event_type.into(),
        schema_version,
        data,
        metadata: json!({ "actor": actor }),
        subject: None,
    }
}

/// What bootstrapping a workspace handed out: shown once.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// The events to append, in one request.
    pub request: AppendRequest,
    /// The admin token (all scopes).
    pub admin_token: String,
    /// The first source's id.
    pub source_id: Uuid,
    /// The first source's write key.
    pub write_key: String,
}

/// Randomness and ids for [`bootstrap_workspace`].
#[derive(Debug, Clone, Copy)]
pub struct BootstrapIds {
    /// The admin token's id.
    pub token_id: Uuid,
    /// The admin token's secret.
    pub token_secret: [u8; 32],
    /// The source's id.
    pub source_id: Uuid,
    /// The write key's id.
    pub key_id: Uuid,
    /// The write key's secret.
    pub key_secret: [u8; 16],
}

/// Decides a new workspace with an admin token and one source of `kind`
/// named after it, with a write key: everything needed to start sending.
pub fn bootstrap_workspace(
    workspace: WorkspaceId,
    spec: &NewWorkspace,
    kind: SourceKind,
    ids: BootstrapIds,
    actor: &str,
) -> Result<Bootstrap, ConfigError> {
    let mut config = WorkspaceConfig::default();
    let expected = config.expected();
    let mut events = Vec::new();
    let mut decide = |config: &mut WorkspaceConfig, event: NewEvent| {
        config.record(&event);
        events.push(event);
    };
    let created = config.create(workspace, spec, actor)?;
    decide(&mut config, created);
    let admin = config.issue_admin_token(workspace, ids.token_id, ids.token_secret, vec![TokenScope::Admin], actor)?;
    decide(&mut config, admin.event);
    let source = config.create_source(workspace, ids.source_id, kind.as_str(), kind, actor)?;
    decide(&mut config, source);
    let key = config.issue_write_key(workspace, ids.key_id, ids.source_id, ids.key_secret, actor)?;
    decide(&mut config, key.event);
    Ok(Bootstrap {
        request: AppendRequest { stream_id: workspace_stream(workspace), expected, events },
        admin_token: admin.token,
        source_id: ids.source_id,
        write_key: key.token,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> BootstrapIds {
        BootstrapIds {
            token_id: Uuid::from_u128(2),
            token_secret: [7; 32],
            source_id: Uuid::from_u128(3),
            key_id: Uuid::from_u128(4),
            key_secret: [8; 16],
        }
    }

    fn spec() -> NewWorkspace {
        NewWorkspace { name: "default".into(), industry: Industry::General, default_region: Some("us".into()) }
    }

    fn configured(workspace: WorkspaceId) -> WorkspaceConfig {
        let boot = bootstrap_workspace(workspace, &spec(), SourceKind::Http, ids(), "test").unwrap();
        let mut config = WorkspaceConfig::default();
        for event in &boot.request.events {
            config.record(event);
        }
        config
    }

    #[test]
    fn a_bootstrapped_workspace_stores_only_the_hashes_of_its_key_and_token() {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let boot = bootstrap_workspace(workspace, &spec(), SourceKind::Http, ids(), "onepd serve").unwrap();
        assert!(boot.admin_token.starts_with(ADMIN_TOKEN_PREFIX));
        assert!(boot.write_key.starts_with(WRITE_KEY_PREFIX));
        assert_eq!(boot.request.expected, ExpectedVersion::NoStream);
        let types: Vec<_> = boot.request.events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["WorkspaceCreated", "AdminTokenIssued", "SourceCreated", "WriteKeyIssued"]);
        assert_eq!(boot.request.events[0].data["default_region"], "US");
        let stored = serde_json::to_string(&boot.request.events.iter().map(|e| &e.data).collect::<Vec<_>>()).unwrap();
        assert!(!stored.contains(&boot.admin_token) && !stored.contains(&boot.write_key));
        assert!(stored.contains(&token_sha256(&boot.write_key)));
    }

    fn audience(name: &str, condition: &str) -> AudienceDefined {
        let condition = onepd_domain::audience::parse(condition).unwrap();
        AudienceDefined { name: name.into(), condition, description: None }
    }

    #[test]
    fn audiences_are_defined_replaced_and_removed_unless_another_names_them() {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let mut config = configured(workspace);
        let buyers = config.define_audience(workspace, audience("buyers", r#"performed "Order Completed""#), "t");
        config.record(&buyers.unwrap());
        let vip = audience("vip", r#"in audience "buyers" and trait plan = "pro""#);
        config.record(&config.define_audience(workspace, vip, "t").unwrap());
        let again = audience("buyers", r#"performed "Order Completed" at least 2 times"#);
        config.record(&config.define_audience(workspace, again, "t").unwrap());
        assert_eq!(config.audiences().len(), 2);
        assert_eq!(
            config.audiences()["buyers"].condition.to_string(),
            r#"performed "Order Completed" at least 2 times"#
        );

        let err = config.remove_audience(workspace, "buyers", "t").unwrap_err();
        assert_eq!(err.to_string(), r#"audience "buyers": audience "vip" names it; change or remove that one first"#);
        config.record(&config.remove_audience(workspace, "vip", "t").unwrap());
        config.record(&config.remove_audience(workspace, "buyers", "t").unwrap());
        assert!(config.audiences().is_empty());
        let err = config.remove_audience(workspace, "buyers", "t").unwrap_err();
        assert_eq!(err.to_string(), r#"audience "buyers": not defined in this workspace"#);
    }

    #[test]
    fn a_computed_trait_read_by_an_audience_must_exist_and_cannot_be_removed() {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let mut config = configured(workspace);
        let ltv = |name: &str| ComputedTraitDefined {
            name: name.into(),
            definition: serde_json::from_value(serde_json::json!(
                {"event": "Order Completed", "kind": "sum", "property": "revenue"}
            ))
            .unwrap(),
        };
        let big = audience("big spenders", "computed ltv > 500");
        let err = config.define_audience(workspace, big.clone(), "t").unwrap_err().to_string();
        assert_eq!(err, r#"audience "big spenders": its condition names computed trait "ltv", which is not defined"#);
        config.record(&config.define_computed_trait(workspace, ltv("ltv"), "t").unwrap());
        config.record(&config.define_audience(workspace, big, "t").unwrap());
        let err = config.remove_computed_trait(workspace, "ltv", "t").unwrap_err().to_string();
        assert_eq!(err, r#"computed trait "ltv": audience "big spenders" reads it; change or remove that one first"#);
        let err = config.define_computed_trait(workspace, ltv("life time"), "t").unwrap_err().to_string();
        assert!(err.contains("letters, digits or underscores"), "{err}");
        assert_eq!(config.computed_traits().len(), 1);
    }

    #[test]
    fn an_audience_naming_itself_an_unknown_one_or_a_cycle_is_refused() {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let mut config = configured(workspace);
        for (name, condition) in [("a", r#"in group "g""#), ("b", r#"in audience "a""#), ("c", r#"in audience "b""#)] {
            config.record(&config.define_audience(workspace, audience(name, condition), "t").unwrap());
        }
        let cases = [
            (
                audience("a", r#"in audience "c""#),
                r#"audience "a": its condition names audience "c", which leads back to it (c → b → a)"#,
            ),
            (audience("d", r#"in audience "d""#), r#"audience "d": its condition names the audience itself"#),
            (
                audience("d", r#"in audience "e""#),
                r#"audience "d": its condition names audience "e", which is not defined"#,
            ),
            (audience(" d", r#"in group "g""#), r#"audience " d": the name must not start or end with spaces"#),
            (audience("", r#"in group "g""#), r#"audience "": the name must be 1 to 100 characters"#),
        ];
        for (defined, expected) in cases {
            let err = config.define_audience(workspace, defined, "t").unwrap_err().to_string();
            assert!(err.starts_with(expected), "{err}");
        }
    }

    #[test]
    fn creating_the_same_workspace_twice_decides_the_same_event_id() {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let a = WorkspaceConfig::default().create(workspace, &spec(), "x").unwrap();
        let b = WorkspaceConfig::default().create(workspace, &spec(), "y").unwrap();
        assert_eq!(a.event_id, b.event_id);
    }

    #[test]
    fn a_second_source_with_the_same_name_is_refused() {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let config = configured(workspace);
        let err = config.create_source(workspace, Uuid::from_u128(9), "http", SourceKind::Server, "x").unwrap_err();
        assert_eq!(err.to_string(), "source \"http\" exists already in this workspace");
    }

    #[test]
    fn a_write_key_for_an_unknown_source_is_refused() {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let err = configured(workspace)
            .issue_write_key(workspace, Uuid::from_u128(5), Uuid::from_u128(99), [1; 16], "x")
            .unwrap_err();
        assert_eq!(err, ConfigError::NoSuchSource(Uuid::from_u128(99)));
    }

    #[test]
    fn a_key_is_revoked_once_and_only_in_its_own_workspace() {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let mut config = configured(workspace);
        let revoked = config.revoke(workspace, Uuid::from_u128(4), "x").unwrap();
        assert_eq!(revoked.event_type, WriteKeyRevoked::TYPE);
        config.record(&revoked);
        assert_eq!(
            config.revoke(workspace, Uuid::from_u128(4), "x"),
            Err(ConfigError::AlreadyRevoked(Uuid::from_u128(4)))
        );
        let other = WorkspaceId(Uuid::from_u128(77));
        assert_eq!(config.revoke(other, Uuid::from_u128(2), "x"), Err(ConfigError::NoSuchWorkspace(other)));
    }

    #[test]
    fn a_region_that_is_not_two_letters_is_refused() {
        let spec = NewWorkspace { default_region: Some("USA".into()), ..spec() };
        let err = WorkspaceConfig::default().create(WorkspaceId(Uuid::from_u128(1)), &spec, "x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "default region: expected an ISO 3166-1 alpha-2 code such as \"US\", found \"USA\""
        );
    }
}
