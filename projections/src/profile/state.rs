//! One profile's facts as folded from its events, and how two profiles'
//! facts combine when the identity graph merges them.
//!
//! **Invariant:** [`ProfileState::absorb`] is commutative and associative and
//! agrees with [`ProfileState::record`]: absorbing B into A gives the state
//! A would have had if B's events had been recorded on A. Every field is a
//! sum, a min or max, a union, a sorted list or a newest-wins value under a
//! total order, which is what makes this hold (revenue is summed in integer
//! micro-units so float rounding does not depend on merge order).

use std::collections::{BTreeMap, BTreeSet};

use onepd_domain::identity::ProfileId;
use onepd_domain::{Position, RecordedEvent, Timestamp};
use serde_json::Value;

use super::{Group, TimelineEntry, Trait, message};

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ProfileState {
    pub traits: BTreeMap<String, Trait>,
    pub first_seen: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    pub event_counts: BTreeMap<String, u64>,
    /// Revenue per currency in millionths of a unit.
    pub revenue_micros: BTreeMap<String, i128>,
    pub sources: BTreeSet<String>,
    pub groups: BTreeMap<String, Group>,
    pub consent: Option<Trait>,
    /// Each event's position and the profile it was attributed to, by
    /// position, oldest first. Only these two are kept: the rest of an entry
    /// is read back from the log when asked for, so memory does not grow by
    /// a whole entry per event.
    pub timeline: Vec<(Position, ProfileId)>,
}

impl ProfileState {
    /// A rough count of the bytes it takes in memory.
    pub fn approximate_bytes(&self) -> usize {
        let traits: usize = self.traits.iter().map(|(name, value)| name.len() + trait_bytes(value)).sum();
        let groups: usize =
            self.groups.values().flat_map(|group| &group.traits).map(|(n, v)| n.len() + trait_bytes(v)).sum();
        256 + traits
            + groups
            + self.consent.as_ref().map_or(0, trait_bytes)
            + self.timeline.len() * 24
            + self.event_counts.keys().map(|name| name.len() + 64).sum::<usize>()
            + self.revenue_micros.keys().map(|currency| currency.len() + 64).sum::<usize>()
            + self.sources.iter().map(|source| source.len() + 48).sum::<usize>()
    }

    /// Records one event attributed to `profile` (this one, as it is
    /// called when the event is folded).
    pub fn record(&mut self, event: &RecordedEvent, message: &Value, profile: ProfileId) {
        let timestamp = message::timestamp(message).unwrap_or(event.recorded_at);
        let source_id = event.metadata.get("source_id").and_then(Value::as_str);
        let stamp = |value: &Value| Trait {
            value: value.clone(),
            position: event.position,
            event_id: event.event_id,
            source_id: source_id.map(str::to_owned),
            timestamp,
        };
        let message_type = message.get("type").and_then(Value::as_str).unwrap_or("message");
        let text = |field: &str| message.get(field).and_then(Value::as_str);

        // `traits` of an identify outrank its own `context.traits`: they are
        // read last, so they replace the same names within the event.
        let mut traits: BTreeMap<&str, &Value> = BTreeMap::new();
        let identify_traits = if message_type == "identify" { message.get("traits") } else { None };
        for root in [message.pointer("/context/traits"), identify_traits] {
            for (name, value) in root.and_then(Value::as_object).into_iter().flatten() {
                traits.insert(name, value);
            }
        }
        for (name, value) in traits {
            keep_newest(&mut self.traits, name.to_owned(), stamp(value));
        }

        self.first_seen = Some(self.first_seen.map_or(timestamp, |seen| seen.min(timestamp)));
        self.last_seen = Some(self.last_seen.map_or(timestamp, |seen| seen.max(timestamp)));
        let count_name = match message_type {
            "track" => text("event").unwrap_or("track"),
            other => other,
        };
        *self.event_counts.entry(count_name.to_owned()).or_default() += 1;

        let properties = message.get("properties");
        if let Some(revenue) = properties.and_then(|p| p.get("revenue")).and_then(Value::as_f64)
            && revenue.is_finite()
        {
            let currency = properties.and_then(|p| p.get("currency")).and_then(Value::as_str).unwrap_or("USD");
            let total = self.revenue_micros.entry(currency.trim().to_uppercase()).or_default();
            // `as` saturates, so an absurd amount cannot overflow the sum.
            *total = total.saturating_add((revenue * 1e6).round() as i128);
        }

        if let Some(source_id) = source_id
            && !self.sources.contains(source_id)
        {
            self.sources.insert(source_id.to_owned());
        }

        if message_type == "group"
            && let Some(group_id) = message.get("groupId").and_then(scalar_text)
        {
            let group = self.groups.entry(group_id).or_default();
            for (name, value) in message.get("traits").and_then(Value::as_object).into_iter().flatten() {
                keep_newest(&mut group.traits, name.clone(), stamp(value));
            }
        }

        if let Some(consent) = onepd_domain::consent::profile_consent(message) {
            let consent = stamp(&consent);
            if self.consent.as_ref().is_none_or(|current| consent.is_newer_than(current)) {
                self.consent = Some(consent);
            }
        }

        let entry = (event.position, profile);
        // Events arrive in position order, except after a merge re-sorted
        // the list, which keeps it sorted too.
        match self.timeline.last() {
            Some(last) if last.0 > entry.0 => {
                let at = self.timeline.partition_point(|other| other.0 < entry.0);
                self.timeline.insert(at, entry);
            }
            _ => self.timeline.push(entry),
        }
    }

    /// Folds `other`, a profile merged into this one, in.
    pub fn absorb(&mut self, mut other: ProfileState) {
        // Every step is symmetric, so iterate over the smaller side.
        if other.timeline.len() > self.timeline.len() {
            std::mem::swap(self, &mut other);
        }
        for (name, value) in other.traits {
            keep_newest(&mut self.traits, name, value);
        }
        self.first_seen = min_max(self.first_seen, other.first_seen, Ord::min);
        self.last_seen = min_max(self.last_seen, other.last_seen, Ord::max);
        for (name, count) in other.event_counts {
            *self.event_counts.entry(name).or_default() += count;
        }
        for (currency, micros) in other.revenue_micros {
            let total = self.revenue_micros.entry(currency).or_default();
            *total = total.saturating_add(micros);
        }
        self.sources.extend(other.sources);
        for (group_id, group) in other.groups {
            let into = self.groups.entry(group_id).or_default();
            for (name, value) in group.traits {
                keep_newest(&mut into.traits, name, value);
            }
        }
        if let Some(consent) = other.consent
            && self.consent.as_ref().is_none_or(|current| consent.is_newer_than(current))
        {
            self.consent = Some(consent);
        }
        // Two sorted runs: the stable sort merges them in linear time.
        self.timeline.extend(other.timeline);
        self.timeline.sort_by_key(|entry| entry.0);
    }
}

/// The timeline entry of `event`, attributed to `profile`.
pub(super) fn timeline_entry(event: &RecordedEvent, message: &Value, profile: ProfileId) -> TimelineEntry {
    let message_type = message.get("type").and_then(Value::as_str).unwrap_or("message");
    let text = |field: &str| message.get(field).and_then(Value::as_str);
    TimelineEntry {
        position: event.position,
        event_id: event.event_id,
        message_type: message_type.to_owned(),
        name: match message_type {
            "track" => text("event"),
            "page" | "screen" => text("name"),
            _ => None,
        }
        .map(str::to_owned),
        timestamp: message::timestamp(message).unwrap_or(event.recorded_at),
        profile,
    }
}

fn keep_newest(traits: &mut BTreeMap<String, Trait>, name: String, value: Trait) {
    match traits.get_mut(&name) {
        Some(current) if !value.is_newer_than(current) => {}
        Some(current) => *current = value,
        None => {
            traits.insert(name, value);
        }
    }
}

fn min_max(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    pick: fn(Timestamp, Timestamp) -> Timestamp,
) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

/// A string as is, a number as written.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn trait_bytes(value: &Trait) -> usize {
    // A JSON value's text length is a fair stand-in for its size in memory.
    160 + match &value.value {
        Value::String(text) => text.len(),
        Value::Array(_) | Value::Object(_) => value.value.to_string().len() * 3,
        _ => 8,
    }
}
