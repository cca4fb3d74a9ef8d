//! Operator decisions about identity resolution: block or unblock an
//! identifier, split a profile, change the rules. Each becomes a fact in the
//! workspace's stream; the identity and profile projections rebuild under
//! it, so it applies to all history.

use std::collections::BTreeSet;

use onepd_domain::events::identity::{
    IdentifierBlocked, IdentifierUnblocked, IdentityFacts, IdentityRulesChanged, ProfileSplit,
};
use onepd_domain::identity::{Identifier, IdentifierKind, IdentityRules, ProfileId};
use onepd_domain::{EventId, NewEvent, WorkspaceId};
use uuid::Uuid;

use super::{ConfigError, WorkspaceConfig, event};

impl WorkspaceConfig {
    /// The operators' identity facts so far.
    pub fn identity_facts(&self) -> &IdentityFacts {
        &self.facts
    }

    /// Blocks `identifier` from linking anything, past events included.
    pub fn block_identifier(
        &self,
        workspace: WorkspaceId,
        identifier: Identifier,
        reason: Option<String>,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        check_identifier(&identifier)?;
        if self.facts.blocked.contains(&identifier) {
            return Err(ConfigError::Identifier(format!("identifier {identifier}: blocked already")));
        }
        let blocked = IdentifierBlocked { identifier: identifier.clone(), reason };
        Ok(self.fact(workspace, IdentifierBlocked::TYPE, serde_json::to_value(blocked), actor, Some(identifier)))
    }

    /// Lifts a block.
    pub fn unblock_identifier(
        &self,
        workspace: WorkspaceId,
        identifier: Identifier,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        if !self.facts.blocked.contains(&identifier) {
            return Err(ConfigError::Identifier(format!("identifier {identifier}: not blocked")));
        }
        let unblocked = IdentifierUnblocked { identifier: identifier.clone() };
        Ok(self.fact(workspace, IdentifierUnblocked::TYPE, serde_json::to_value(unblocked), actor, Some(identifier)))
    }

    /// Splits `profile` by undoing the links of `events` (its merge events).
    pub fn split_profile(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
        events: Vec<EventId>,
        reason: Option<String>,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        let events: Vec<EventId> = events
            .into_iter()
            .filter(|id| !self.facts.unlinked.contains(id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if events.is_empty() {
            return Err(ConfigError::InvalidSplit(format!(
                "profile {profile}: expected at least one merge event not undone already, found none"
            )));
        }
        let split = ProfileSplit { profile_id: profile, unlinked_events: events, reason };
        Ok(self.fact(workspace, ProfileSplit::TYPE, serde_json::to_value(split), actor, None))
    }

    /// Replaces the workspace's identity rules.
    pub fn change_identity_rules(
        &self,
        workspace: WorkspaceId,
        rules: IdentityRules,
        actor: &str,
    ) -> Result<NewEvent, ConfigError> {
        self.existing(workspace)?;
        check_rules(&rules)?;
        let changed = IdentityRulesChanged { rules };
        Ok(self.fact(workspace, IdentityRulesChanged::TYPE, serde_json::to_value(changed), actor, None))
    }

    fn fact(
        &self,
        workspace: WorkspaceId,
        event_type: &str,
        data: Result<serde_json::Value, serde_json::Error>,
        actor: &str,
        about: Option<Identifier>,
    ) -> NewEvent {
        let id = format!("{event_type}/{}", self.version + 1);
        let mut event = event(
            EventId(Uuid::new_v5(&workspace.0, id.as_bytes())),
            workspace,
            event_type,
            1,
            data.expect("serializable"),
            actor,
        );
        // An identifier is personal data: sealed under its own subject, so
        // erasing the person erases the block too.
        event.subject = about.map(|identifier| identifier.value);
        event
    }
}

/// Checks an identifier typed by an operator.
pub fn check_identifier(identifier: &Identifier) -> Result<(), ConfigError> {
    if identifier.kind.name().trim().is_empty() || identifier.kind.name().contains(':') {
        return Err(ConfigError::Identifier(format!(
            "identifier kind: expected user_id, anonymous_id, email, phone or a custom kind name, found {:?}",
            identifier.kind.name()
        )));
    }
    if identifier.value.trim().is_empty() {
        return Err(ConfigError::Identifier(format!("identifier {}: expected a value, found none", identifier.kind)));
    }
    Ok(())
}

/// Checks rules before they become a fact.
pub fn check_rules(rules: &IdentityRules) -> Result<(), ConfigError> {
    for custom in &rules.custom {
        if !matches!(IdentifierKind::from_name(&custom.name), IdentifierKind::Custom(_))
            || custom.name.trim().is_empty()
            || custom.name.contains(':')
        {
            return Err(ConfigError::InvalidRules(format!(
                "custom kind: expected a name other than user_id, anonymous_id, email and phone, without ':', found {:?}",
                custom.name
            )));
        }
        if let Some(problem) = onepd_domain::limits::kind_problem(&custom.name) {
            return Err(ConfigError::InvalidRules(format!("custom kind {:?}: {problem}", custom.name)));
        }
    }
    if let Some((kind, _)) = rules.limits.iter().find(|(_, limit)| **limit == 0) {
        return Err(ConfigError::InvalidRules(format!("limits.{kind}: expected at least 1, found 0")));
    }
    if rules.default_limit == 0 {
        return Err(ConfigError::InvalidRules("default_limit: expected at least 1, found 0".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use onepd_domain::events::workspace::Industry;

    use super::*;
    use crate::workspace::NewWorkspace;

    fn created() -> (WorkspaceConfig, WorkspaceId) {
        let workspace = WorkspaceId(Uuid::from_u128(5));
        let mut config = WorkspaceConfig::default();
        let new = NewWorkspace { name: "acme".into(), industry: Industry::General, default_region: None };
        let event = config.create(workspace, &new, "test").unwrap();
        config.record(&event);
        (config, workspace)
    }

    #[test]
    fn blocking_an_identifier_twice_is_refused_and_unblocking_needs_a_block() {
        let (mut config, workspace) = created();
        let email = Identifier::new(IdentifierKind::Email, "family@example.com");
        let blocked = config.block_identifier(workspace, email.clone(), None, "test").unwrap();
        assert_eq!(blocked.subject.as_deref(), Some("family@example.com"));
        config.record(&blocked);
        assert_eq!(
            config.block_identifier(workspace, email.clone(), None, "test").unwrap_err().to_string(),
            "identifier email:family@example.com: blocked already"
        );
        let unblocked = config.unblock_identifier(workspace, email.clone(), "test").unwrap();
        config.record(&unblocked);
        assert!(config.unblock_identifier(workspace, email, "test").is_err());
    }

    #[test]
    fn rules_with_a_zero_limit_or_a_built_in_custom_name_are_refused() {
        let (config, workspace) = created();
        let zero = IdentityRules::default().with_limit(IdentifierKind::Email, 0);
        assert_eq!(
            config.change_identity_rules(workspace, zero, "test").unwrap_err().to_string(),
            "identity rules: limits.email: expected at least 1, found 0"
        );
        let mut clash = IdentityRules::default();
        clash.custom.push(onepd_domain::identity::CustomKind {
            name: "email".into(),
            from: onepd_domain::identity::CustomSource::ExternalId,
        });
        assert!(config.change_identity_rules(workspace, clash, "test").is_err());
    }

    #[test]
    fn a_split_that_undoes_nothing_new_is_refused() {
        let (mut config, workspace) = created();
        let profile = ProfileId(Uuid::from_u128(9));
        assert!(config.split_profile(workspace, profile, vec![], None, "test").is_err());
        let split = config.split_profile(workspace, profile, vec![EventId(Uuid::from_u128(1))], None, "test").unwrap();
        config.record(&split);
        assert!(config.split_profile(workspace, profile, vec![EventId(Uuid::from_u128(1))], None, "test").is_err());
    }
}
