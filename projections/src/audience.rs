//! One profile as an audience condition reads it
//! ([`onepd_domain::audience::Person`]): its traits, groups and events by
//! name, from the profile and its events read back from the log.
//!
//! Events are named as the profile counts them (`event_counts`): a track by
//! its `event` (`"track"` when it has none), every other call by its type
//! (`"page"`, `"identify"`, …). An event's time is the profile's (its
//! `timestamp`, else `receivedAt`, else when it was recorded).
//!
//! **Does not:** know computed traits or other audiences: those come from
//! the workspace's definitions (`onepd_domain::audience::WithAudiences`).

use std::collections::{BTreeMap, BTreeSet};

use onepd_domain::audience::{EventFact, Person};
use onepd_domain::identity::ProfileId;
use onepd_domain::{Position, RecordedEvent, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::profile::{Profile, timeline_entry_of};

/// A profile's traits, groups and events, as conditions read them.
///
/// It can also be kept up to date one event at a time
/// ([`PersonFacts::record`], [`PersonFacts::absorb`]), holding only the
/// events a workspace's definitions read ([`PersonFacts::keep_only`]):
/// what the membership runner stores per person, so that evaluating a
/// person does not read their history again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonFacts {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    traits: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    groups: BTreeSet<String>,
    /// By name, oldest first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    events: BTreeMap<String, Vec<Performed>>,
}

/// One event: its position, time and properties.
type Performed = (Position, Timestamp, Map<String, Value>);

impl PersonFacts {
    /// `profile` with `events`, the events of its timeline (read whole, in
    /// any order; an erased or unreadable one is left out, as the profile
    /// leaves it out).
    pub fn of<'a>(profile: &Profile, events: impl IntoIterator<Item = &'a RecordedEvent>) -> PersonFacts {
        let mut facts = PersonFacts {
            traits: profile.traits.iter().map(|(name, value)| (name.clone(), value.value.clone())).collect(),
            groups: profile.groups.keys().cloned().collect(),
            events: BTreeMap::new(),
        };
        for event in events {
            if let Some((name, performed)) = performed(event, profile.id) {
                facts.events.entry(name).or_default().push(performed);
            }
        }
        for list in facts.events.values_mut() {
            list.sort_by_key(|(position, timestamp, _)| (*timestamp, *position));
        }
        facts
    }

    /// Drops the events whose name is not in `names`.
    pub fn keep_only(&mut self, names: &BTreeSet<String>) {
        self.events.retain(|name, _| names.contains(name));
    }

    /// Adds `event`, one of `profile`'s, when its name is in `names`, and
    /// the group a `group` call joins; then takes `traits` as the profile's
    /// traits (as of the event).
    pub fn record<'a>(
        &mut self,
        event: &RecordedEvent,
        profile: ProfileId,
        names: &BTreeSet<String>,
        traits: impl IntoIterator<Item = (&'a String, &'a Value)>,
    ) {
        if let Some((name, performed)) = performed(event, profile)
            && names.contains(&name)
        {
            let list = self.events.entry(name).or_default();
            if !list.iter().any(|(position, _, _)| *position == performed.0) {
                let at = list.partition_point(|(p, t, _)| (*t, *p) < (performed.1, performed.0));
                list.insert(at, performed);
            }
        }
        if let Some(message) = event.data.value().and_then(|data| data.get("message"))
            && message.get("type").and_then(Value::as_str) == Some("group")
            && let Some(group) = message.get("groupId").and_then(crate::profile::scalar_text)
        {
            self.groups.insert(group);
        }
        self.traits = traits.into_iter().map(|(name, value)| (name.clone(), value.clone())).collect();
    }

    /// Takes in the events and groups of a profile merged into this one
    /// (its traits come with the next [`PersonFacts::record`]).
    pub fn absorb(&mut self, other: PersonFacts) {
        self.groups.extend(other.groups);
        for (name, events) in other.events {
            let list = self.events.entry(name).or_default();
            for performed in events {
                if !list.iter().any(|(position, _, _)| *position == performed.0) {
                    list.push(performed);
                }
            }
            list.sort_by_key(|(position, timestamp, _)| (*timestamp, *position));
        }
    }
}

/// `event`'s name and what a condition reads of it, when it is one of
/// `profile`'s messages.
fn performed(event: &RecordedEvent, profile: ProfileId) -> Option<(String, Performed)> {
    let entry = timeline_entry_of(event, profile)?;
    let name = match (entry.message_type.as_str(), entry.name) {
        ("track", Some(name)) => name,
        (message_type, _) => message_type.to_owned(),
    };
    let properties = (event.data.value())
        .and_then(|data| data.pointer("/message/properties"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    Some((name, (entry.position, entry.timestamp, properties)))
}

impl Person for PersonFacts {
    fn trait_value(&self, name: &str) -> Option<&Value> {
        self.traits.get(name)
    }

    fn computed_trait(&self, _name: &str) -> Option<Value> {
        None
    }

    fn events(&self, name: &str) -> Vec<EventFact<'_>> {
        (self.events.get(name).into_iter().flatten())
            .map(|(position, timestamp, properties)| EventFact {
                position: *position,
                timestamp: *timestamp,
                properties: Some(properties),
            })
            .collect()
    }

    fn in_group(&self, group: &str) -> bool {
        self.groups.contains(group)
    }

    fn in_audience(&self, _audience: &str) -> bool {
        false
    }
}
