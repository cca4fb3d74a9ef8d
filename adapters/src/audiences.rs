//! Audiences, the service every edge shares: a workspace's audiences and
//! computed traits defined, listed and removed (events in its stream), a
//! condition or a saved audience evaluated for one person or previewed over
//! every profile, and a person's computed traits, now or as of a past time.
//!
//! **Does not:** keep membership, or send audiences anywhere.

use std::collections::BTreeMap;

use onepd_domain::audience::{ComputedTrait, Condition, Verdict, WithAudiences, evaluate, parse};
use onepd_domain::events::audience::{AudienceConnected, AudienceDefined, ComputedTraitDefined};
use onepd_domain::identity::ProfileId;
use onepd_domain::{Position, Timestamp, WorkspaceId};
use onepd_projections::profile::Lookup;
use uuid::Uuid;

use crate::EventLog;
use crate::activation::admin::{AdminError, append, workspace_config};
use crate::membership::{Member, Membership};
use crate::profiles::{AsOf, ProfileReader};

/// A workspace's audiences and computed traits by name, and a condition.
type Definitions = (BTreeMap<String, Condition>, BTreeMap<String, ComputedTrait>, Condition);

/// What to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A condition given as it is.
    Condition(Condition),
    /// One of the workspace's audiences, by name.
    Saved(String),
}

/// How many profiles meet a condition, and a few of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    /// The condition, in the readable form.
    pub condition: String,
    /// How many profiles meet it.
    pub size: u64,
    /// How many profiles were evaluated.
    pub profiles: u64,
    /// The first of them, in the read store's order.
    pub sample: Vec<ProfileId>,
}

/// One person's computed traits and audiences.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersonSummary {
    /// Each computed trait's value, `None` where there is nothing to
    /// compute from.
    pub computed_traits: BTreeMap<String, Option<serde_json::Value>>,
    /// The audiences they are in, by name.
    pub audiences: Vec<String>,
}

/// A condition's text, as JSON when it starts with `{` and readable
/// otherwise, checked; the error names where it is wrong.
pub fn parse_condition(text: &str) -> Result<Condition, String> {
    if text.trim_start().starts_with('{') {
        let condition: Condition =
            serde_json::from_str(text).map_err(|err| format!("condition: not a valid JSON condition: {err}"))?;
        condition.validate().map_err(|reason| format!("condition: {reason}"))?;
        return Ok(condition);
    }
    parse(text).map_err(|err| format!("condition: {err}"))
}

/// The audiences service over one log and its profiles read model.
#[derive(Clone)]
pub struct Audiences {
    log: EventLog,
    reader: ProfileReader,
}

impl std::fmt::Debug for Audiences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audiences").finish_non_exhaustive()
    }
}

impl Audiences {
    /// The service over `log` and `reader`'s read model.
    pub fn new(log: EventLog, reader: ProfileReader) -> Audiences {
        Audiences { log, reader }
    }

    /// The workspace's audiences by name, as last defined.
    pub async fn list(&self, workspace: WorkspaceId) -> Result<BTreeMap<String, AudienceDefined>, AdminError> {
        Ok(workspace_config(&self.log, workspace).await?.audiences().clone())
    }

    /// Defines audience `defined.name`, or replaces its definition: the
    /// position of the event, and whether it replaced one.
    pub async fn define(
        &self,
        workspace: WorkspaceId,
        defined: AudienceDefined,
        actor: &str,
    ) -> Result<(Position, bool), AdminError> {
        let config = workspace_config(&self.log, workspace).await?;
        let replaced = config.audiences().contains_key(&defined.name);
        let event = config.define_audience(workspace, defined, actor)?;
        Ok((append(&self.log, config.request(workspace, vec![event])).await?, replaced))
    }

    /// Removes audience `name`: the position of the event.
    pub async fn remove(&self, workspace: WorkspaceId, name: &str, actor: &str) -> Result<Position, AdminError> {
        let config = workspace_config(&self.log, workspace).await?;
        let event = config.remove_audience(workspace, name, actor)?;
        append(&self.log, config.request(workspace, vec![event])).await
    }

    /// Connects audience `audience` to `destination` (or changes the
    /// platform's `external_id` of the connection): the position of the
    /// event.
    pub async fn connect(
        &self,
        workspace: WorkspaceId,
        audience: &str,
        destination: Uuid,
        external_id: Option<String>,
        actor: &str,
    ) -> Result<Position, AdminError> {
        let config = workspace_config(&self.log, workspace).await?;
        let connected = AudienceConnected { audience: audience.to_owned(), destination_id: destination, external_id };
        let event = config.connect_audience(workspace, connected, actor)?;
        append(&self.log, config.request(workspace, vec![event])).await
    }

    /// Disconnects audience `audience` from `destination`: nothing more is
    /// sent; what was sent stays on the platform. The position of the event.
    pub async fn disconnect(
        &self,
        workspace: WorkspaceId,
        audience: &str,
        destination: Uuid,
        actor: &str,
    ) -> Result<Position, AdminError> {
        let config = workspace_config(&self.log, workspace).await?;
        let event = config.disconnect_audience(workspace, audience, destination, actor)?;
        append(&self.log, config.request(workspace, vec![event])).await
    }

    /// The membership this service reads.
    pub fn membership(&self) -> Membership {
        Membership::new(self.log.clone(), self.reader.store())
    }

    /// How many people each of the workspace's audiences holds now, by
    /// name (0 for one the membership has not reached yet).
    pub async fn sizes(&self, workspace: WorkspaceId) -> Result<BTreeMap<String, u64>, AdminError> {
        let membership = self.membership();
        let mut sizes = BTreeMap::new();
        for name in self.list(workspace).await?.into_keys() {
            let size = membership.members(workspace, &name).await?.len() as u64;
            sizes.insert(name, size);
        }
        Ok(sizes)
    }

    /// The members of audience `name` now, or just before `as_of`.
    pub async fn members(
        &self,
        workspace: WorkspaceId,
        name: &str,
        as_of: Option<Timestamp>,
    ) -> Result<Vec<Member>, AdminError> {
        let membership = self.membership();
        Ok(match as_of {
            None => membership.members(workspace, name).await?,
            Some(time) => {
                let through = self.reader.position(AsOf::Time(time)).await?;
                membership.members_as_of(workspace, name, through).await?
            }
        })
    }

    /// The workspace's audience connections.
    pub async fn connections(&self, workspace: WorkspaceId) -> Result<Vec<AudienceConnected>, AdminError> {
        Ok(workspace_config(&self.log, workspace).await?.connections().values().cloned().collect())
    }

    /// The workspace's computed traits by name, as last defined.
    pub async fn computed_traits(
        &self,
        workspace: WorkspaceId,
    ) -> Result<BTreeMap<String, ComputedTraitDefined>, AdminError> {
        Ok(workspace_config(&self.log, workspace).await?.computed_traits().clone())
    }

    /// Defines computed trait `defined.name`, or replaces its definition:
    /// the position of the event, and whether it replaced one.
    pub async fn define_computed_trait(
        &self,
        workspace: WorkspaceId,
        defined: ComputedTraitDefined,
        actor: &str,
    ) -> Result<(Position, bool), AdminError> {
        let config = workspace_config(&self.log, workspace).await?;
        let replaced = config.computed_traits().contains_key(&defined.name);
        let event = config.define_computed_trait(workspace, defined, actor)?;
        Ok((append(&self.log, config.request(workspace, vec![event])).await?, replaced))
    }

    /// Removes computed trait `name`: the position of the event.
    pub async fn remove_computed_trait(
        &self,
        workspace: WorkspaceId,
        name: &str,
        actor: &str,
    ) -> Result<Position, AdminError> {
        let config = workspace_config(&self.log, workspace).await?;
        let event = config.remove_computed_trait(workspace, name, actor)?;
        append(&self.log, config.request(workspace, vec![event])).await
    }

    /// Every computed trait of the person `lookup` names at `at` (now when
    /// `None`), by name (`None` where there is nothing to compute from);
    /// `None` when no profile held it then.
    pub async fn computed_values(
        &self,
        workspace: WorkspaceId,
        lookup: &Lookup,
        at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<BTreeMap<String, Option<serde_json::Value>>>, AdminError> {
        let computed = self.definitions(workspace).await?.1;
        let Some(person) = self.reader.person(workspace, lookup, at.map(AsOf::Time)).await? else { return Ok(None) };
        let now = at.unwrap_or(now);
        Ok(Some(computed.iter().map(|(name, definition)| (name.clone(), definition.compute(&person, now))).collect()))
    }

    /// The person `lookup` names at `at` (now when `None`): their computed
    /// traits (`None` where there is nothing to compute from) and the
    /// audiences they are in; `None` when no profile held it then. Reads
    /// nothing of the person when the workspace defines neither.
    pub async fn summary(
        &self,
        workspace: WorkspaceId,
        lookup: &Lookup,
        at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<PersonSummary>, AdminError> {
        let (definitions, computed) = self.definitions(workspace).await?;
        if definitions.is_empty() && computed.is_empty() {
            return Ok(Some(PersonSummary::default()));
        }
        let Some(person) = self.reader.person(workspace, lookup, at.map(AsOf::Time)).await? else { return Ok(None) };
        let now = at.unwrap_or(now);
        let person = WithAudiences { person: &person, definitions: &definitions, computed: &computed, now };
        let computed_traits =
            computed.iter().map(|(name, definition)| (name.clone(), definition.compute(person.person, now))).collect();
        let audiences = (definitions.iter())
            .filter(|(_, condition)| evaluate(condition, &person, now).holds)
            .map(|(name, _)| name.clone())
            .collect();
        Ok(Some(PersonSummary { computed_traits, audiences }))
    }

    /// Whether the person `lookup` names meets `target` at `at` (now when
    /// `None`, the clock's `now`), and why; `None` when no profile held it
    /// then.
    pub async fn evaluate(
        &self,
        workspace: WorkspaceId,
        target: &Target,
        lookup: &Lookup,
        at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<Verdict>, AdminError> {
        let (definitions, computed, condition) = self.resolve(workspace, target).await?;
        let Some(person) = self.reader.person(workspace, lookup, at.map(AsOf::Time)).await? else { return Ok(None) };
        let now = at.unwrap_or(now);
        let person = WithAudiences { person: &person, definitions: &definitions, computed: &computed, now };
        Ok(Some(evaluate(&condition, &person, now)))
    }

    /// How many of the workspace's profiles meet `target` at `at` (now when
    /// `None`), with up to `sample` of them; creates nothing.
    pub async fn preview(
        &self,
        workspace: WorkspaceId,
        target: &Target,
        at: Option<Timestamp>,
        now: Timestamp,
        sample: usize,
    ) -> Result<Preview, AdminError> {
        let (definitions, computed, condition) = self.resolve(workspace, target).await?;
        let now = at.unwrap_or(now);
        let (mut size, mut ids) = (0, Vec::new());
        let profiles = self
            .reader
            .each_person(workspace, at.map(AsOf::Time), |id, person| {
                let person = WithAudiences { person, definitions: &definitions, computed: &computed, now };
                if evaluate(&condition, &person, now).holds {
                    size += 1;
                    if ids.len() < sample {
                        ids.push(id);
                    }
                }
            })
            .await?;
        Ok(Preview { condition: condition.to_string(), size, profiles, sample: ids })
    }

    /// Every audience's condition and every computed trait by name.
    async fn definitions(
        &self,
        workspace: WorkspaceId,
    ) -> Result<(BTreeMap<String, Condition>, BTreeMap<String, ComputedTrait>), AdminError> {
        let config = workspace_config(&self.log, workspace).await?;
        let audiences = (config.audiences().iter()).map(|(name, a)| (name.clone(), a.condition.clone())).collect();
        let computed =
            (config.computed_traits().iter()).map(|(name, c)| (name.clone(), c.definition.clone())).collect();
        Ok((audiences, computed))
    }

    /// The workspace's definitions, and the condition `target` is.
    async fn resolve(&self, workspace: WorkspaceId, target: &Target) -> Result<Definitions, AdminError> {
        let (definitions, computed) = self.definitions(workspace).await?;
        let condition = match target {
            Target::Condition(condition) => condition.clone(),
            Target::Saved(name) => definitions
                .get(name)
                .cloned()
                .ok_or_else(|| AdminError::NotFound(format!("audience {name:?}: not defined in this workspace")))?,
        };
        Ok((definitions, computed, condition))
    }
}
