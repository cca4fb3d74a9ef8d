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
use onepd_domain::{Position, RecordedEvent, Timestamp};
use serde_json::{Map, Value};

use crate::profile::{Profile, timeline_entry_of};

/// A profile's traits, groups and events, as conditions read them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersonFacts {
    traits: BTreeMap<String, Value>,
    groups: BTreeSet<String>,
    /// By name, oldest first.
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
            let Some(entry) = timeline_entry_of(event, profile.id) else { continue };
            let name = match (entry.message_type.as_str(), entry.name) {
                ("track", Some(name)) => name,
                (message_type, _) => message_type.to_owned(),
            };
            let properties = (event.data.value())
                .and_then(|data| data.pointer("/message/properties"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            facts.events.entry(name).or_default().push((entry.position, entry.timestamp, properties));
        }
        for list in facts.events.values_mut() {
            list.sort_by_key(|(position, timestamp, _)| (*timestamp, *position));
        }
        facts
    }
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
