//! A profile as a read store keeps it: one self-contained document per live
//! profile, enough to answer every read about it — now, or as of any past
//! position — with the help of the log for the events themselves.
//!
//! # Point in time
//!
//! Within one build of the graph, profiles only ever merge, so the profile
//! an identifier belonged to at position *p* is a part of the one it belongs
//! to now. The document keeps, for each identifier, when it joined and
//! which member profile it joined; for each event of the timeline, the
//! member it was attributed to; and every merge. The profile at *p* is the
//! member's component under the merges made up to *p*: its identifiers,
//! merges and events are those of that component, recorded up to *p*.
//! Folding those events again gives its traits and activity then.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use onepd_domain::identity::{Identifier, ProfileId};
use onepd_domain::{Position, RecordedEvent, Timestamp};
use serde::{Deserialize, Serialize};

use super::state::{ProfileState, timeline_entry};
use super::{Group, Profile, Profiles, TimelineEntry, Trait};
use crate::identity::{Attached, HeldBack, Link, Member, Merge};

/// One event of a profile's timeline, as its document keeps it: the
/// position, and the index in `members` of the profile it was attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineRef(pub u64, pub u32);

/// Everything about one live profile, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileDoc {
    /// The live profile's id.
    pub id: ProfileId,
    /// It and every profile it absorbed, oldest first.
    pub members: Vec<Member>,
    /// Its identifiers, sorted, with when and where each joined.
    pub identifiers: Vec<Attached>,
    /// The links between its identifiers (a tree), by position.
    pub links: Vec<Link>,
    /// Every merge that formed it, by position.
    pub merges: Vec<Merge>,
    /// The newest value of each trait, with provenance.
    pub traits: BTreeMap<String, Trait>,
    /// The time of its earliest event.
    pub first_seen: Option<Timestamp>,
    /// The time of its latest event.
    pub last_seen: Option<Timestamp>,
    /// How many of its events bear each name.
    pub event_counts: BTreeMap<String, u64>,
    /// Revenue totals by currency code.
    pub revenue: BTreeMap<String, f64>,
    /// The same totals, exact, in millionths of a unit: what the fold goes
    /// on from when it reads the document back.
    #[serde(default)]
    pub revenue_micros: BTreeMap<String, i128>,
    /// The ids of the sources its events came from.
    pub sources: BTreeSet<String>,
    /// The groups it joined, by `groupId`.
    pub groups: BTreeMap<String, Group>,
    /// The newest `context.consent` object, with provenance.
    pub consent: Option<Trait>,
    /// Its events, oldest first.
    pub timeline: Vec<TimelineRef>,
    /// Identifiers its events named that a limit kept out of it, by
    /// position, including those it has come to hold since (a read of the
    /// profile now leaves those out).
    #[serde(default)]
    pub held_back: Vec<HeldBack>,
}

/// How a read names a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// By one of its identifiers.
    Identifier(Identifier),
    /// By its id, or the id of a profile it absorbed.
    Profile(ProfileId),
}

/// A profile as it stood at a past position, before its events are folded
/// again.
#[derive(Debug, Clone, PartialEq)]
pub struct PastProfile {
    /// Its id then: the oldest member of its component.
    pub id: ProfileId,
    /// The identifiers it held then, sorted.
    pub identifiers: Vec<Identifier>,
    /// The merges that had formed it, by position.
    pub merges: Vec<Merge>,
    /// The positions of its events up to then, oldest first.
    pub positions: Vec<Position>,
    /// What limits had kept out of it then.
    pub held_back: Vec<HeldBack>,
}

impl Profiles {
    /// The document of a live profile, or `None` when `profile` is not live
    /// in `workspace`.
    pub fn doc(&self, workspace: onepd_domain::WorkspaceId, profile: ProfileId) -> Option<ProfileDoc> {
        let identities = self.graph.workspace(workspace)?;
        if identities.resolve(profile) != Some(profile) {
            return None;
        }
        let view = self.profile_by_id(workspace, profile)?;
        let members = identities.members(profile);
        let index: HashMap<ProfileId, u32> =
            members.iter().enumerate().map(|(index, member)| (member.id, index as u32)).collect();
        let state = self.state(workspace, profile);
        let timeline = state
            .map(|state| {
                state.timeline.iter().map(|(position, profile)| TimelineRef(position.0, index[profile])).collect()
            })
            .unwrap_or_default();
        let revenue_micros = state.map(|state| state.revenue_micros.clone()).unwrap_or_default();
        Some(ProfileDoc {
            id: profile,
            members,
            identifiers: identities.attached(profile),
            links: identities.links(profile),
            merges: view.merges,
            traits: view.traits,
            first_seen: view.first_seen,
            last_seen: view.last_seen,
            event_counts: view.event_counts,
            revenue: view.revenue,
            revenue_micros,
            sources: view.sources,
            groups: view.groups,
            consent: view.consent,
            timeline,
            // Whole, as the fold keeps it: a point-in-time read needs what
            // was held back before the profile came to hold it.
            held_back: identities.held_back(profile).to_vec(),
        })
    }
}

impl Profiles {
    /// Puts a live profile of `workspace` read back from its document into
    /// memory, exactly as the fold had it when the document was written;
    /// nothing happens when it is in memory already. A fold that keeps only
    /// some profiles in memory loads, before each event, every profile the
    /// event may name ([`Profiles::candidates`]).
    pub fn load(&mut self, workspace: onepd_domain::WorkspaceId, doc: ProfileDoc) {
        let identities = self.graph.workspace_mut(workspace);
        if identities.is_loaded(doc.id) {
            return;
        }
        let members: Vec<ProfileId> = doc.members.iter().map(|member| member.id).collect();
        let state = ProfileState {
            traits: doc.traits,
            first_seen: doc.first_seen,
            last_seen: doc.last_seen,
            event_counts: doc.event_counts,
            revenue_micros: doc.revenue_micros,
            sources: doc.sources,
            groups: doc.groups,
            consent: doc.consent,
            timeline: doc.timeline.iter().map(|entry| (Position(entry.0), members[entry.1 as usize])).collect(),
        };
        identities.load(doc.id, doc.members, doc.identifiers, doc.links, doc.merges, doc.held_back);
        self.workspaces.entry(workspace).or_default().insert(doc.id, state);
    }

    /// Drops a live profile from memory; its document stays the truth.
    /// `false` when it was not in memory.
    pub fn evict(&mut self, workspace: onepd_domain::WorkspaceId, profile: ProfileId) -> bool {
        if let Some(states) = self.workspaces.get_mut(&workspace) {
            states.remove(&profile);
        }
        self.graph.workspace_mut(workspace).evict(profile)
    }

    /// A rough count of the bytes a live profile takes in memory, to keep a
    /// fold within a budget.
    pub fn approximate_bytes(&self, workspace: onepd_domain::WorkspaceId, profile: ProfileId) -> usize {
        let identity = self.graph.workspace(workspace).map_or(0, |identities| identities.approximate_bytes(profile));
        identity + self.state(workspace, profile).map_or(0, ProfileState::approximate_bytes)
    }
}

impl ProfileDoc {
    /// The profile as read now.
    pub fn profile(&self) -> Profile {
        Profile {
            id: self.id,
            identifiers: self.identifiers.iter().map(|attached| attached.identifier.clone()).collect(),
            traits: self.traits.clone(),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            event_counts: self.event_counts.clone(),
            revenue: self.revenue.clone(),
            sources: self.sources.clone(),
            groups: self.groups.clone(),
            consent: self.consent.clone(),
            events: self.timeline.len(),
            merges: self.merges.clone(),
            held_back: self
                .held_back
                .iter()
                .filter(|held| !self.identifiers.iter().any(|attached| attached.identifier == held.identifier))
                .cloned()
                .collect(),
        }
    }

    /// The links joining `a` to `b`, in order from `a`, or `None` when one
    /// of them is not an identifier of this profile. Empty when `a` is `b`.
    pub fn explain(&self, a: &Identifier, b: &Identifier) -> Option<Vec<Link>> {
        let holds =
            |identifier: &Identifier| self.identifiers.iter().any(|attached| &attached.identifier == identifier);
        if !holds(a) || !holds(b) {
            return None;
        }
        crate::identity::path(a, b, |node| {
            let node = node.clone();
            self.links.iter().filter(move |link| link.from == node || link.to == node)
        })
    }

    /// Positions of the newest `limit` events below `before` (all when
    /// `None`), newest first, each with the member it was attributed to.
    pub fn timeline_page(&self, before: Option<Position>, limit: usize) -> Vec<(Position, ProfileId)> {
        let end =
            before.map_or(self.timeline.len(), |before| self.timeline.partition_point(|entry| entry.0 < before.0));
        self.timeline[..end].iter().rev().take(limit).map(|entry| (Position(entry.0), self.member(entry.1))).collect()
    }

    /// The profile `lookup` named as it stood just after the event at
    /// `position`, or `None` when it did not exist yet.
    pub fn as_of(&self, position: Position, lookup: &Lookup) -> Option<PastProfile> {
        let start = match lookup {
            Lookup::Identifier(identifier) => {
                let attached = self.identifiers.iter().find(|attached| &attached.identifier == identifier)?;
                (attached.position <= position).then_some(attached.member)?
            }
            Lookup::Profile(id) => {
                // An id may name a member, or the profile now (whose oldest
                // member then stands for it).
                let member = self.members.iter().find(|member| member.id == *id)?;
                (member.created_at <= position).then_some(member.id)?
            }
        };
        let absorbed_into: HashMap<ProfileId, (ProfileId, Position)> =
            self.merges.iter().map(|merge| (merge.absorbed, (merge.survivor, merge.position))).collect();
        let root = |mut member: ProfileId| {
            while let Some(&(survivor, at)) = absorbed_into.get(&member) {
                if at > position {
                    break;
                }
                member = survivor;
            }
            member
        };
        let id = root(start);
        let mut identifiers: Vec<Identifier> = self
            .identifiers
            .iter()
            .filter(|attached| attached.position <= position && root(attached.member) == id)
            .map(|attached| attached.identifier.clone())
            .collect();
        identifiers.sort();
        let merges = self
            .merges
            .iter()
            .filter(|merge| merge.position <= position && root(merge.survivor) == id)
            .cloned()
            .collect();
        let positions: Vec<Position> = self
            .timeline
            .iter()
            .filter(|entry| entry.0 <= position.0 && root(self.member(entry.1)) == id)
            .map(|entry| Position(entry.0))
            .collect();
        let held_back = self
            .held_back
            .iter()
            .filter(|held| positions.contains(&held.position) && identifiers.binary_search(&held.identifier).is_err())
            .cloned()
            .collect();
        Some(PastProfile { id, identifiers, merges, positions, held_back })
    }

    fn member(&self, index: u32) -> ProfileId {
        self.members[index as usize].id
    }
}

/// A profile as one of its events found it (just after the event): what
/// activation enriches the event with. Built from the profile's document
/// and the events of its component up to then, so it is exactly what a
/// fold of the log up to the event holds.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileAsOf {
    /// The profile's id then.
    pub id: ProfileId,
    /// Its identifiers then, sorted.
    pub identifiers: Vec<Identifier>,
    /// Its traits then, newest value each.
    pub traits: BTreeMap<String, Trait>,
    /// Its newest consent then.
    pub consent: Option<Trait>,
    /// What limits had kept out of it then.
    pub held_back: Vec<HeldBack>,
    /// The profiles the event merged into it (their ids just before).
    pub merged: Vec<ProfileId>,
}

impl ProfileAsOf {
    /// The view [`crate::activation::prepare`] reads.
    pub fn view(&self) -> super::ProfileView<'_> {
        super::ProfileView {
            id: self.id,
            identifiers: self.identifiers.clone(),
            traits: Some(&self.traits),
            consent: self.consent.as_ref(),
            held_back: &self.held_back,
        }
    }
}

/// A profile's facts folded through one of its events, kept by a reader
/// that goes through the log in order, so the next event of the profile
/// folds only what came after.
#[derive(Debug, Clone)]
pub struct Snapshot {
    id: ProfileId,
    through: Position,
    count: usize,
    state: ProfileState,
}

impl Snapshot {
    /// The profile it is of (its id then).
    pub fn id(&self) -> ProfileId {
        self.id
    }

    /// A rough count of the bytes it takes in memory, to keep the snapshots
    /// of a reader within a budget.
    pub fn approximate_bytes(&self) -> usize {
        64 + self.state.approximate_bytes()
    }
}

impl ProfileDoc {
    /// The member the event at `position` was attributed to, when it is
    /// one of this profile's events.
    pub fn attributed_at(&self, position: Position) -> Option<ProfileId> {
        let at = self.timeline.partition_point(|entry| entry.0 < position.0);
        self.timeline.get(at).filter(|entry| entry.0 == position.0).map(|entry| self.member(entry.1))
    }
}

impl PastProfile {
    /// The positions whose events must be read to bring `snapshot` (taken
    /// at an earlier event) up to this profile: those after it when it is
    /// of the same profile and nothing older joined since, else all.
    pub fn missing(&self, snapshot: Option<&Snapshot>) -> &[Position] {
        match snapshot {
            Some(snapshot) if self.extends(snapshot) => &self.positions[snapshot.count..],
            _ => &self.positions,
        }
    }

    /// The profile as of its last event read off `doc`, the document it
    /// came from, without folding an event: when every trait and the
    /// consent the document holds now were set by one of this profile's
    /// events up to then, they are its traits and consent then as well —
    /// each is the newest of a set of writes that has only grown since, and
    /// the newest of the grown set lies in the older one. A live event is
    /// mostly read so (it is its profile's newest, or what came after it set
    /// no trait). Gives itself back when a later event or a profile merged
    /// in since set one: its events must then be folded again.
    pub fn read_off(self, doc: &ProfileDoc) -> Result<ProfileAsOf, PastProfile> {
        let ours = |value: &Trait| self.positions.binary_search(&value.position).is_ok();
        if !doc.traits.values().chain(&doc.consent).all(ours) {
            return Err(self);
        }
        Ok(self.holding(doc.traits.clone(), doc.consent.clone()))
    }

    /// This profile with `traits` and `consent`, its facts then.
    fn holding(self, traits: BTreeMap<String, Trait>, consent: Option<Trait>) -> ProfileAsOf {
        let last = self.positions.last().copied();
        let merged = (self.merges.iter()).filter(|m| Some(m.position) == last).map(|m| m.absorbed).collect();
        ProfileAsOf { id: self.id, identifiers: self.identifiers, traits, consent, held_back: self.held_back, merged }
    }

    fn extends(&self, snapshot: &Snapshot) -> bool {
        // Within one build a profile only grows: same id and as many events
        // up to the snapshot means the same events.
        snapshot.id == self.id && self.positions.partition_point(|p| *p <= snapshot.through) == snapshot.count
    }

    /// The profile as of its last event, from `snapshot` (when it applies)
    /// and `events`, the events at [`PastProfile::missing`] in log order;
    /// with the snapshot to go on from.
    pub fn advance<'a>(
        self,
        snapshot: Option<Snapshot>,
        events: impl IntoIterator<Item = &'a RecordedEvent>,
    ) -> (ProfileAsOf, Snapshot) {
        let mut state = match snapshot {
            Some(snapshot) if self.extends(&snapshot) => snapshot.state,
            _ => ProfileState::default(),
        };
        for event in events {
            if let Some(message) = event.data.value().and_then(|data| data.get("message")) {
                state.record(event, message, self.id);
            }
        }
        // Only the facts are read back from a snapshot, not its timeline.
        state.timeline.clear();
        let snapshot = Snapshot {
            id: self.id,
            through: self.positions.last().copied().unwrap_or(Position::START),
            count: self.positions.len(),
            state: state.clone(),
        };
        (self.holding(state.traits, state.consent), snapshot)
    }
}

impl PastProfile {
    /// The profile, with its traits and activity folded again from
    /// `events`: the events at [`PastProfile::positions`], in log order.
    /// Events whose payload was erased are skipped.
    pub fn fold(self, events: &[RecordedEvent]) -> Profile {
        let mut state = ProfileState::default();
        for event in events {
            if let Some(message) = event.data.value().and_then(|data| data.get("message")) {
                state.record(event, message, self.id);
            }
        }
        Profile {
            id: self.id,
            identifiers: self.identifiers,
            traits: state.traits,
            first_seen: state.first_seen,
            last_seen: state.last_seen,
            event_counts: state.event_counts,
            revenue: state
                .revenue_micros
                .iter()
                .map(|(currency, &micros)| (currency.clone(), micros as f64 / 1e6))
                .collect(),
            sources: state.sources,
            groups: state.groups,
            consent: state.consent,
            events: state.timeline.len(),
            merges: self.merges,
            held_back: self.held_back,
        }
    }
}

/// The timeline entry of an event read back from the log, attributed to
/// `profile`; `None` when its payload was erased or holds no message.
pub fn timeline_entry_of(event: &RecordedEvent, profile: ProfileId) -> Option<TimelineEntry> {
    let message = event.data.value()?.get("message")?;
    Some(timeline_entry(event, message, profile))
}
