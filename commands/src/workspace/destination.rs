//! Configuring destinations: creating one, pausing and resuming it, setting
//! its part of the sensitive-data policy (and the workspace's).

use onepd_domain::events::destination::{
    DestinationCreated, DestinationPaused, DestinationPolicySet, DestinationResumed,
};
use onepd_domain::events::workspace::WorkspacePolicySet;
use onepd_domain::policy::DestinationPolicy;
use onepd_domain::{EventId, NewEvent, WorkspaceId};
use uuid::Uuid;

use super::{ConfigError, WorkspaceConfig, check_name, event};

/// A destination as its workspace's configuration knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationState {
    /// Its name.
    pub name: String,
    /// Whether it is paused.
    pub paused: bool,
}

/// The adapter name of a destination served by another process over gRPC.
pub const EXTERNAL_ADAPTER: &str = "grpc";

impl WorkspaceConfig {
    /// Decides the event that adds a destination. Its name must be free in
    /// the workspace, an external (`grpc`) adapter needs a URL and a built-in
    /// one must not have one, and the retry policy must be usable. The
    /// adapter's own settings are checked by whoever can build it (the CLI
    /// and the server), before this is decided. The event is sealed under the
    /// destination's own subject, so tokens and secrets are never stored in
    /// clear.
    pub fn create_destination(
        &self,
        workspace: WorkspaceId,
        created: DestinationCreated,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        check_name("destination name", &created.name)?;
        if self.destinations.values().any(|destination| destination.name == created.name) {
            return Err(ConfigError::InvalidDestination(format!(
                "destination {:?} exists already in this workspace",
                created.name
            )));
        }
        if self.destinations.contains_key(&created.destination_id) {
            return Err(ConfigError::InvalidDestination(format!(
                "destination {} exists already",
                created.destination_id
            )));
        }
        match (created.adapter.as_str(), &created.url) {
            (EXTERNAL_ADAPTER, None) => {
                return Err(ConfigError::InvalidDestination(
                    "url: an external (grpc) adapter needs its address".into(),
                ));
            }
            (EXTERNAL_ADAPTER, Some(_)) => {}
            (_, Some(_)) => {
                return Err(ConfigError::InvalidDestination(format!(
                    "url: only an external (grpc) adapter has one, not the built-in {}",
                    created.adapter
                )));
            }
            (_, None) => {}
        }
        if !created.settings.is_object() {
            return Err(ConfigError::InvalidDestination("settings: expected a JSON object".into()));
        }
        let retry = created.retry;
        if retry.initial_backoff_ms == 0 || retry.max_backoff_ms < retry.initial_backoff_ms || retry.timeout_ms == 0 {
            return Err(ConfigError::InvalidDestination(
                "retry: expected initial backoff > 0, max backoff ≥ initial backoff and a timeout > 0".into(),
            ));
        }
        if created.start.0 == 0 {
            return Err(ConfigError::InvalidDestination("start: positions start at 1".into()));
        }
        created.policy.validate().map_err(|reason| ConfigError::InvalidDestination(format!("policy.{reason}")))?;
        let mut event = event(
            EventId(Uuid::new_v5(
                &workspace.0,
                format!("{}/{}", DestinationCreated::TYPE, created.destination_id).as_bytes(),
            )),
            workspace,
            DestinationCreated::TYPE,
            1,
            serde_json::to_value(&created).expect("serializable"),
            actor,
        );
        event.subject = Some(DestinationCreated::subject(created.destination_id));
        Ok(event)
    }

    /// Decides the event that pauses a destination that is running.
    pub fn pause_destination(
        &self,
        workspace: WorkspaceId,
        destination_id: Uuid,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.switch_destination(workspace, destination_id, true, actor)
    }

    /// Decides the event that resumes a paused destination.
    pub fn resume_destination(
        &self,
        workspace: WorkspaceId,
        destination_id: Uuid,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.switch_destination(workspace, destination_id, false, actor)
    }

    fn switch_destination(
        &self,
        workspace: WorkspaceId,
        destination_id: Uuid,
        pause: bool,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        let destination =
            self.destinations.get(&destination_id).ok_or(ConfigError::NoSuchDestination(destination_id))?;
        if destination.paused == pause {
            let state = if pause { "paused" } else { "running" };
            return Err(ConfigError::InvalidDestination(format!(
                "destination {:?} is {state} already",
                destination.name
            )));
        }
        let (event_type, data) = if pause {
            (DestinationPaused::TYPE, serde_json::to_value(DestinationPaused { destination_id }))
        } else {
            (DestinationResumed::TYPE, serde_json::to_value(DestinationResumed { destination_id }))
        };
        let id = format!("{event_type}/{}", self.version + 1);
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            event_type,
            1,
            data.expect("serializable"),
            actor,
        ))
    }

    /// Decides the event that replaces a destination's part of the
    /// sensitive-data policy.
    pub fn set_destination_policy(
        &self,
        workspace: WorkspaceId,
        destination_id: Uuid,
        policy: DestinationPolicy,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        if !self.destinations.contains_key(&destination_id) {
            return Err(ConfigError::NoSuchDestination(destination_id));
        }
        policy.validate().map_err(|reason| ConfigError::InvalidDestination(format!("policy.{reason}")))?;
        let id = format!("{}/{}", DestinationPolicySet::TYPE, self.version + 1);
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            DestinationPolicySet::TYPE,
            1,
            serde_json::to_value(DestinationPolicySet { destination_id, policy }).expect("serializable"),
            actor,
        ))
    }

    /// Decides the event that sets the workspace's industry and whether its
    /// ad platforms may receive IP addresses and user agents (healthcare).
    pub fn set_workspace_policy(
        &self,
        workspace: WorkspaceId,
        policy: WorkspacePolicySet,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        let id = format!("{}/{}", WorkspacePolicySet::TYPE, self.version + 1);
        Ok(event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            WorkspacePolicySet::TYPE,
            1,
            serde_json::to_value(policy).expect("serializable"),
            actor,
        ))
    }

    /// The workspace's destinations, by id.
    pub fn destinations(&self) -> &std::collections::HashMap<Uuid, DestinationState> {
        &self.destinations
    }
}

#[cfg(test)]
mod tests {
    use onepd_domain::Position;
    use onepd_domain::events::destination::{DestinationFilters, RetryPolicy};
    use onepd_domain::events::workspace::Industry;
    use serde_json::json;

    use super::*;
    use crate::workspace::NewWorkspace;

    fn workspace() -> (WorkspaceConfig, WorkspaceId) {
        let workspace = WorkspaceId(Uuid::from_u128(1));
        let mut config = WorkspaceConfig::default();
        let spec = NewWorkspace { name: "w".into(), industry: Industry::General, default_region: None };
        let created = config.create(workspace, &spec, "test").unwrap();
        config.record(&created);
        (config, workspace)
    }

    fn meta(name: &str) -> DestinationCreated {
        DestinationCreated {
            destination_id: Uuid::new_v4(),
            name: name.into(),
            adapter: "meta_capi".into(),
            url: None,
            settings: json!({"pixel_id": "1", "access_token": "EAAB"}),
            filters: DestinationFilters::default(),
            traits: vec![],
            start: Position(1),
            retry: RetryPolicy::default(),
            policy: Default::default(),
        }
    }

    #[test]
    fn a_destination_is_sealed_under_its_own_subject_and_its_name_is_unique() {
        let (mut config, workspace) = workspace();
        let created = meta("meta");
        let id = created.destination_id;
        let event = config.create_destination(workspace, created, "test").unwrap();
        assert_eq!(event.subject, Some(format!("destination:{id}")));
        assert_eq!(event.data["settings"]["access_token"], "EAAB");
        config.record(&event);
        let err = config.create_destination(workspace, meta("meta"), "test").unwrap_err();
        assert_eq!(err.to_string(), "destination: destination \"meta\" exists already in this workspace");
    }

    #[test]
    fn an_external_adapter_needs_a_url_and_a_built_in_one_refuses_it() {
        let (config, workspace) = workspace();
        let mut external = meta("ext");
        external.adapter = "grpc".into();
        let err = config.create_destination(workspace, external.clone(), "test").unwrap_err();
        assert!(err.to_string().contains("url: an external (grpc) adapter needs its address"), "{err}");
        external.url = Some("http://127.0.0.1:50061".into());
        config.create_destination(workspace, external, "test").unwrap();
        let mut built_in = meta("b");
        built_in.url = Some("http://x".into());
        assert!(config.create_destination(workspace, built_in, "test").is_err());
    }

    #[test]
    fn pausing_and_resuming_alternate_and_name_an_existing_destination() {
        let (mut config, workspace) = workspace();
        let created = meta("meta");
        let id = created.destination_id;
        let event = config.create_destination(workspace, created, "test").unwrap();
        config.record(&event);
        assert!(config.resume_destination(workspace, id, "test").is_err());
        let paused = config.pause_destination(workspace, id, "test").unwrap();
        assert_eq!(paused.event_type, "DestinationPaused");
        config.record(&paused);
        assert!(config.destinations()[&id].paused);
        assert!(config.pause_destination(workspace, id, "test").is_err());
        let resumed = config.resume_destination(workspace, id, "test").unwrap();
        config.record(&resumed);
        assert!(!config.destinations()[&id].paused);
        let unknown = Uuid::new_v4();
        assert_eq!(config.pause_destination(workspace, unknown, "test"), Err(ConfigError::NoSuchDestination(unknown)));
    }
}
