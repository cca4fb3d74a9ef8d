//! 360-degree profiles: a pure, deterministic fold over `MessageAccepted`
//! events that keeps, per profile of the identity graph, its traits with
//! provenance, activity, revenue, sources, groups, consent, timeline and
//! merge history.
//!
//! # How one event is folded
//!
//! 1. It is applied to the wrapped [`IdentityGraph`] first.
//! 2. If the graph merged profiles at this event, each absorbed profile's
//!    state is folded into the survivor's (`state.rs`), so the survivor ends
//!    up exactly as if every event had been attributed to it.
//! 3. The event is *attributed* to the profile the graph resolved it to (the
//!    one now holding the identifiers it linked). An event that linked
//!    nothing — a `group` call, which the graph does not link, or one whose
//!    every identifier was left out by a limit — goes to the profile already
//!    holding its highest-priority identifier (`message.rs`); if there is
//!    none (every identifier blocked, or none at all), it is attributed to
//!    nobody and counted nowhere.
//!
//! # What is read, where the issue is silent
//!
//! * **Time.** An event's time is its `timestamp` (RFC 3339, skew-corrected
//!   at ingest), else its `receivedAt`, else when it was recorded.
//! * **Traits:** `traits` of `identify` calls and `context.traits` of every
//!   call; the last write by event time wins, position breaks ties, so a
//!   late-arriving older event does not overwrite a newer value. Within one
//!   identify, `traits` win over `context.traits`. A trait set to `null`
//!   keeps `null` as its value.
//! * **Event counts** are keyed by the track's `event` (or `"track"` when it
//!   has none) and by the call type for every other call: `"page"`,
//!   `"screen"`, `"identify"`, `"group"`, `"alias"`. Page and screen names
//!   are kept in the timeline instead, so that free-form page names do not
//!   mix with track event names. Every attributed event is counted once.
//! * **Revenue:** `properties.revenue` when it is a JSON number, per
//!   `properties.currency` upper-cased (default `"USD"`), from any call.
//!   `properties.total` is not added: it includes tax and shipping and would
//!   count an order twice. Sums are exact to a millionth.
//! * **Groups:** the `groupId` of `group` calls, each with its `traits`,
//!   newest per trait name like profile traits.
//! * **Consent:** the whole `context.consent` object of the newest event
//!   that has one (an object), e.g. Segment's
//!   `{"categoryPreferences": {"marketing": true, "analytics": false}}`,
//!   kept as sent; it is not merged key by key.
//!
//! **Does not:** unmerge (a split is a rebuild), store or serve anything, or
//! keep erased payloads: an erased event is attributed to nobody.

mod doc;
mod message;
mod state;
pub(crate) use state::scalar_text;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use onepd_domain::events::message::MessageAccepted;
use onepd_domain::identity::{Identifier, IdentityRules, ProfileId};
use onepd_domain::{EventId, Position, RecordedEvent, Timestamp, WorkspaceId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Fold;
use crate::identity::{HeldBack, IdentityGraph, Merge};
/// Every identifier a message may name under `rules` (a superset of what
/// the graph links), highest priority first.
pub fn message_identifiers(
    message: &serde_json::Value,
    rules: &onepd_domain::identity::IdentityRules,
) -> Vec<onepd_domain::identity::Identifier> {
    message::identifiers(message, rules)
}

pub use doc::{Lookup, PastProfile, ProfileAsOf, ProfileDoc, Snapshot, TimelineRef, timeline_entry_of};
pub use message::FOLDED_PARTS;
use state::ProfileState;

/// A value with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trait {
    /// The value as sent.
    pub value: Value,
    /// The position of the event that set it.
    pub position: Position,
    /// That event's id.
    pub event_id: EventId,
    /// The source that sent it, from the event's metadata.
    pub source_id: Option<String>,
    /// The event's time, which decides which write is the newest.
    pub timestamp: Timestamp,
}

impl Trait {
    /// Whether this write wins over `other`: a later event time, or the same
    /// time at a later position.
    pub fn is_newer_than(&self, other: &Trait) -> bool {
        (self.timestamp, self.position) > (other.timestamp, other.position)
    }
}

/// An account the profile was grouped into by a `group` call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// The group's traits, the newest write per name.
    pub traits: BTreeMap<String, Trait>,
}

/// One event of a profile's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// The event's position in the log.
    pub position: Position,
    /// The event's id.
    pub event_id: EventId,
    /// The message's `type`: `track`, `page`, `identify`, …
    pub message_type: String,
    /// A track's `event`, or a page's or screen's `name`.
    pub name: Option<String>,
    /// The event's time.
    pub timestamp: Timestamp,
    /// The profile it was attributed to when it was folded: this one, or
    /// one it absorbed since.
    pub profile: ProfileId,
}

/// A profile as read: everything known about one person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The live profile's id (the survivor of every merge).
    pub id: ProfileId,
    /// Its identifiers, sorted by kind, then value.
    pub identifiers: Vec<Identifier>,
    /// The newest value of each trait, with provenance.
    pub traits: BTreeMap<String, Trait>,
    /// The time of its earliest event, if any was attributed.
    pub first_seen: Option<Timestamp>,
    /// The time of its latest event.
    pub last_seen: Option<Timestamp>,
    /// How many of its events bear each name (see the module doc).
    pub event_counts: BTreeMap<String, u64>,
    /// Revenue totals by currency code.
    pub revenue: BTreeMap<String, f64>,
    /// The ids of the sources its events came from.
    pub sources: BTreeSet<String>,
    /// The groups it joined, by `groupId`.
    pub groups: BTreeMap<String, Group>,
    /// The newest `context.consent` object, with provenance.
    pub consent: Option<Trait>,
    /// How many events the timeline holds.
    pub events: usize,
    /// Every merge that formed it, by position.
    pub merges: Vec<Merge>,
    /// Identifiers its events named that a limit kept out of it, and why,
    /// by position (none it holds now).
    #[serde(default)]
    pub held_back: Vec<HeldBack>,
}

/// A live profile's identifiers and traits, borrowed from the fold as it
/// stands (for activation, "as of" the event just folded).
#[derive(Debug, Clone)]
pub struct ProfileView<'a> {
    /// The live profile's id.
    pub id: ProfileId,
    /// Its identifiers.
    pub identifiers: Vec<Identifier>,
    /// Its traits, newest value each, if any event was attributed to it.
    pub traits: Option<&'a BTreeMap<String, Trait>>,
    /// Its newest consent (`{"categoryPreferences": {...}}`), if any was
    /// stated.
    pub consent: Option<&'a Trait>,
    /// Identifiers its events named that a limit kept out of it.
    pub held_back: &'a [HeldBack],
}

/// The 360-degree profiles of every workspace, over its identity graph.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    graph: IdentityGraph,
    /// Per workspace, the state of each live profile with events attributed
    /// to it; absorbed profiles are removed when merged.
    workspaces: HashMap<WorkspaceId, HashMap<ProfileId, ProfileState>>,
    /// What changed since [`Profiles::take_changes`] was last called.
    changes: Changes,
}

/// The profiles an event or a run of events changed, for a writer that
/// keeps a copy of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Live profiles whose state changed.
    pub touched: HashSet<(WorkspaceId, ProfileId)>,
    /// Profiles merged into another: they no longer exist on their own.
    pub absorbed: HashSet<(WorkspaceId, ProfileId)>,
}

impl Fold for Profiles {
    const EVENT_TYPES: &'static [&'static str] = &[MessageAccepted::TYPE];
    const PARTS: &'static [(&'static str, onepd_domain::fields::Fields)] = FOLDED_PARTS;

    fn apply(&mut self, event: &RecordedEvent) {
        self.attribute(event);
    }
}

impl Profiles {
    /// Empty profiles over a graph applying `rules` in every workspace
    /// without rules of its own.
    pub fn new(rules: IdentityRules) -> Profiles {
        Profiles { graph: IdentityGraph::new(rules), ..Profiles::default() }
    }

    /// These profiles with their graph replaced by `graph`, which must not
    /// have folded any event yet (it carries the workspaces' facts).
    pub fn over(graph: IdentityGraph) -> Profiles {
        Profiles { graph, ..Profiles::default() }
    }

    /// What changed since the last call, emptied.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// How many live profiles changed since [`Profiles::take_changes`] was
    /// last called.
    pub fn changed(&self) -> usize {
        self.changes.touched.len()
    }

    /// These profiles with `rules` for `workspace`; see
    /// [`IdentityGraph::with_rules`].
    pub fn with_rules(mut self, workspace: WorkspaceId, rules: IdentityRules) -> Profiles {
        self.graph = self.graph.with_rules(workspace, rules);
        self
    }

    /// How many live profiles have events attributed, over every workspace.
    pub fn len(&self) -> usize {
        self.workspaces.values().map(HashMap::len).sum()
    }

    /// Whether no profile has an event attributed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live profiles of `workspace` with events attributed.
    pub fn live_profiles(&self, workspace: WorkspaceId) -> impl Iterator<Item = ProfileId> + '_ {
        self.workspaces.get(&workspace).into_iter().flat_map(|states| states.keys().copied())
    }

    /// The identity graph the profiles are built on.
    pub fn graph(&self) -> &IdentityGraph {
        &self.graph
    }

    /// Replaces everything known of `workspace` (graph and profiles) with
    /// what `from` knows of it, and forgets this fold's pending changes of
    /// that workspace: a writer replaces the workspace's documents whole.
    pub fn replace_workspace(&mut self, workspace: WorkspaceId, from: &mut Profiles) {
        self.graph.replace_workspace(workspace, &mut from.graph);
        match from.workspaces.remove(&workspace) {
            Some(states) => self.workspaces.insert(workspace, states),
            None => self.workspaces.remove(&workspace),
        };
        self.changes.touched.retain(|(ws, _)| *ws != workspace);
        self.changes.absorbed.retain(|(ws, _)| *ws != workspace);
    }

    /// Folds `events` in order; the same as applying them one by one.
    pub fn apply_all(&mut self, events: &[RecordedEvent]) {
        for event in events {
            self.attribute(event);
        }
    }

    /// Folds one event in and returns the profile it was attributed to, if
    /// any (see the module doc).
    pub fn attribute(&mut self, event: &RecordedEvent) -> Option<ProfileId> {
        if event.event_type != MessageAccepted::TYPE {
            return None;
        }
        let resolved = self.graph.resolve_event(event);
        let message = event.data.value()?.get("message")?;
        let identities = self.graph.workspace(event.workspace_id)?;
        // An event that linked nothing (a `group` call, or one whose every
        // identifier was left out) still belongs to whoever holds its
        // highest-priority identifier already.
        let profile = match resolved {
            Some(profile) => profile,
            None => message::identifiers(message, identities.rules())
                .iter()
                .find_map(|identifier| identities.profile_of(identifier))?,
        };
        let states = self.workspaces.entry(event.workspace_id).or_default();
        // Merges are kept by position, so this event's are the last ones of
        // the profile that survived them: the one the event resolved to.
        let mut merged: Vec<&Merge> =
            identities.merges(profile).iter().rev().take_while(|merge| merge.position == event.position).collect();
        merged.reverse();
        for merge in merged {
            if let Some(absorbed) = states.remove(&merge.absorbed) {
                states.entry(merge.survivor).or_default().absorb(absorbed);
            }
            self.changes.touched.remove(&(event.workspace_id, merge.absorbed));
            self.changes.absorbed.insert((event.workspace_id, merge.absorbed));
        }
        states.entry(profile).or_default().record(event, message, profile);
        self.changes.touched.insert((event.workspace_id, profile));
        Some(profile)
    }

    /// Every identifier `event` may name (a superset of what it links or is
    /// attributed through): a fold that keeps only some profiles in memory
    /// loads the profiles holding these before folding the event.
    pub fn candidates(&self, event: &RecordedEvent) -> Vec<Identifier> {
        if event.event_type != MessageAccepted::TYPE {
            return Vec::new();
        }
        let Some(message) = event.data.value().and_then(|data| data.get("message")) else { return Vec::new() };
        message::identifiers(message, self.graph.rules_of(event.workspace_id))
    }

    /// Whether the profile holding `identifier` in `workspace` is in memory.
    pub fn holds(&self, workspace: WorkspaceId, identifier: &Identifier) -> bool {
        self.graph.workspace(workspace).is_some_and(|identities| identities.holds(identifier))
    }

    /// Whether the live profile `profile` of `workspace` is in memory.
    pub fn is_loaded(&self, workspace: WorkspaceId, profile: ProfileId) -> bool {
        self.graph.workspace(workspace).is_some_and(|identities| identities.is_loaded(profile))
    }

    /// The live profiles in memory, over every workspace.
    pub fn loaded(&self) -> usize {
        self.workspaces.values().map(HashMap::len).sum()
    }

    /// The profile holding `identifier` in `workspace`.
    pub fn profile(&self, workspace: WorkspaceId, identifier: &Identifier) -> Option<Profile> {
        let profile = self.graph.workspace(workspace)?.profile_of(identifier)?;
        self.profile_by_id(workspace, profile)
    }

    /// The live profile `profile` is part of: itself, or the survivor of the
    /// merges that absorbed it.
    pub fn profile_by_id(&self, workspace: WorkspaceId, profile: ProfileId) -> Option<Profile> {
        let identities = self.graph.workspace(workspace)?;
        let id = identities.resolve(profile)?;
        let empty = ProfileState::default();
        let state = self.state(workspace, id).unwrap_or(&empty);
        Some(Profile {
            id,
            identifiers: identities.identifiers(id),
            traits: state.traits.clone(),
            first_seen: state.first_seen,
            last_seen: state.last_seen,
            event_counts: state.event_counts.clone(),
            revenue: state
                .revenue_micros
                .iter()
                .map(|(currency, &micros)| (currency.clone(), micros as f64 / 1e6))
                .collect(),
            sources: state.sources.clone(),
            groups: state.groups.clone(),
            consent: state.consent.clone(),
            events: state.timeline.len(),
            merges: identities.merges(id).to_vec(),
            held_back: held_back(identities, id),
        })
    }

    /// Up to `limit` events of `profile` (resolved as in
    /// [`Self::profile_by_id`]), newest first, starting below position
    /// `before` when given: pass the last entry's position to get the next
    /// page. Each is its position and the profile it was attributed to; read
    /// the event itself from the log ([`timeline_entry_of`]).
    pub fn timeline(
        &self,
        workspace: WorkspaceId,
        profile: ProfileId,
        before: Option<Position>,
        limit: usize,
    ) -> Vec<(Position, ProfileId)> {
        let Some(id) = self.graph.workspace(workspace).and_then(|identities| identities.resolve(profile)) else {
            return Vec::new();
        };
        let Some(state) = self.state(workspace, id) else { return Vec::new() };
        let end =
            before.map_or(state.timeline.len(), |before| state.timeline.partition_point(|entry| entry.0 < before));
        state.timeline[..end].iter().rev().take(limit).cloned().collect()
    }

    /// The live profile `profile` is part of, with only its identifiers and
    /// traits: what activation sends, without copying the rest.
    pub fn view(&self, workspace: WorkspaceId, profile: ProfileId) -> Option<ProfileView<'_>> {
        let identities = self.graph.workspace(workspace)?;
        let id = identities.resolve(profile)?;
        Some(ProfileView {
            id,
            identifiers: identities.identifiers(id),
            traits: self.state(workspace, id).map(|state| &state.traits),
            consent: self.state(workspace, id).and_then(|state| state.consent.as_ref()),
            held_back: identities.held_back(id),
        })
    }

    fn state(&self, workspace: WorkspaceId, profile: ProfileId) -> Option<&ProfileState> {
        self.workspaces.get(&workspace)?.get(&profile)
    }
}

/// What limits kept out of `profile`, less what it holds now. Each holder
/// is the one recorded when the identifier was held back: a document must
/// not change when another profile does (a live read model rewrites only
/// the profiles an event touched, and must equal a rebuild).
fn held_back(identities: &crate::identity::WorkspaceIdentities, profile: ProfileId) -> Vec<HeldBack> {
    identities
        .held_back(profile)
        .iter()
        .filter(|held| identities.profile_of(&held.identifier) != Some(profile))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
