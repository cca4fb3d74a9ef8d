//! The identity graph: a pure, deterministic fold over `MessageAccepted`
//! events that links identifiers seen together and keeps, per workspace, the
//! profiles (connected components of linked identifiers), every merge and
//! the links that explain it.
//!
//! # How one event is folded
//!
//! 1. Its identifiers are read (`extract.rs`): `userId`, `anonymousId`,
//!    `traits.email` / `context.traits.email`, `traits.phone` /
//!    `context.traits.phone`, the workspace's declared custom kinds, and an
//!    `alias`'s `previousId` (an `anonymous_id` unless that value is already a
//!    known `user_id`). Blocked values, values flagged invalid by ingest and
//!    kinds that may not link are left out; `group` calls are skipped. They
//!    are ordered by priority, highest first.
//! 2. **Limits.** Each identifier belongs to a *unit*: the profile that holds
//!    it, or itself when it is new. Joining all units of the event would give
//!    a profile holding, per kind, the sum of the units' identifiers of that
//!    kind. While some kind would exceed its limit, one identifier is left out
//!    of the event: among the identifiers whose unit holds an over-limit kind
//!    (the *conflicting* ones), the one of lowest priority; ties go against
//!    the younger unit (a new identifier is youngest), then the greater
//!    value. The rest are checked again. A left-out identifier is untouched by
//!    this event: it stays where it was, or, when new, is not stored.
//!    So two users sharing an email never merge under a `user_id` limit of 1:
//!    the email (lower priority than `user_id`) is left out, stays with the
//!    profile that had it, and the second user gets a profile of its own.
//! 3. **Linking.** The remaining identifiers' units become one profile. The
//!    survivor is the oldest profile among them (created at the lowest
//!    position); if none exists, the event creates one with id
//!    [`ProfileId::created_by`] the event. Every other profile is absorbed,
//!    oldest first, each recorded as a [`Merge`] naming the event, its source,
//!    the rule (`alias`, or `shared <kind>`) and the shared identifier: the
//!    higher-priority one of the survivor's first identifier in the event (its
//!    *anchor*) and the absorbed profile's first identifier in the event. One
//!    [`Link`] is recorded from the anchor to the first identifier of each
//!    other unit, so the links of a profile form a tree over its identifiers
//!    and [`WorkspaceIdentities::explain`] finds the one path between two of
//!    them.
//!
//! An event creates at most one profile, so ids never collide.
//!
//! # Operator facts
//!
//! A workspace's graph is built under its [`IdentityFacts`]: its rules (with
//! blocked identifiers added) and the events a `ProfileSplit` unlinked. An
//! unlinked event keeps only its highest-priority identifier after step 1,
//! so it joins no two profiles. Facts are fixed when the graph is built: a
//! change of facts is applied by building the graph again from the log.
//!
//! **Does not:** store or serve anything.

pub mod compare;
pub(crate) mod extract;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use onepd_domain::events::identity::IdentityFacts;
use onepd_domain::events::message::MessageAccepted;
use onepd_domain::identity::{Identifier, IdentifierKind, IdentityRules, ProfileId};
use onepd_domain::{EventId, Position, RecordedEvent, WorkspaceId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Fold;

/// Two profiles became one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merge {
    /// The profile that remains (the older one).
    pub survivor: ProfileId,
    /// The profile folded into it; its id now resolves to the survivor.
    pub absorbed: ProfileId,
    /// The event that joined them.
    pub position: Position,
    /// That event's id.
    pub event_id: EventId,
    /// The source that sent it, from the event's metadata.
    pub source_id: Option<String>,
    /// The identifier through which they were joined.
    pub shared: Identifier,
    /// Why: `alias`, or `shared <kind>` (`shared email`).
    pub rule: String,
}

/// The links joining `a` to `b`, in order from `a`, given the links touching
/// each identifier; `None` when no path joins them. Breadth-first from `a`,
/// remembering the link that reached each identifier; a profile's links form
/// a tree, so the path is unique.
pub(crate) fn path<'a, I>(a: &'a Identifier, b: &Identifier, touching: impl Fn(&Identifier) -> I) -> Option<Vec<Link>>
where
    I: Iterator<Item = &'a Link>,
{
    let mut reached_by: HashMap<&Identifier, Option<&Link>> = HashMap::from([(a, None)]);
    let mut queue = VecDeque::from([a]);
    while let Some(node) = queue.pop_front() {
        if node == b {
            break;
        }
        for link in touching(node) {
            let next = if &link.from == node { &link.to } else { &link.from };
            if !reached_by.contains_key(next) {
                reached_by.insert(next, Some(link));
                queue.push_back(next);
            }
        }
    }
    let mut path = Vec::new();
    let mut node = b;
    while let Some(link) = *reached_by.get(node)? {
        path.push(link.clone());
        node = if &link.from == node { &link.to } else { &link.from };
    }
    path.reverse();
    Some(path)
}

/// Two identifiers seen together in one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The event's anchor: the highest-priority identifier of the profile it
    /// extended or created.
    pub from: Identifier,
    /// The identifier it brought in (new, or of an absorbed profile).
    pub to: Identifier,
    /// The event's position.
    pub position: Position,
    /// The event's id.
    pub event_id: EventId,
    /// The source that sent it, from the event's metadata.
    pub source_id: Option<String>,
    /// Why they were linked: `seen together`, `alias`, or the rule of the
    /// merge it made (`shared email`).
    pub rule: String,
}

/// An identifier as a profile holds it: when it joined, and which profile
/// it joined (the live profile at that moment, since absorbed or not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// The identifier.
    pub identifier: Identifier,
    /// The position of the event that brought it in.
    pub position: Position,
    /// The profile it joined then.
    pub member: ProfileId,
}

/// An identifier an event of a profile named but the profile does not hold:
/// left out of the event because joining it would have broken a limit
/// (step 2 of the module doc). It stays where it was (`held_by`), or, when
/// it was new, is not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBack {
    /// The identifier left out.
    pub identifier: Identifier,
    /// The event that named it.
    pub position: Position,
    /// That event's id.
    pub event_id: EventId,
    /// The profile that held it when it was held back, if any (it may have
    /// merged into another since; resolve it to read the live one).
    pub held_by: Option<ProfileId>,
    /// The kind whose limit joining it would have broken.
    pub limit_kind: IdentifierKind,
    /// That limit.
    pub limit: usize,
    /// Why, in words: `user_id limit 1: joining would give the profile 2`.
    pub reason: String,
}

/// A profile that is part of a live one: the live profile itself, or one it
/// absorbed (directly or through others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: ProfileId,
    /// The position of the event that created it.
    pub created_at: Position,
}

/// The identity graph of every workspace.
#[derive(Debug, Clone)]
pub struct IdentityGraph {
    default_rules: IdentityRules,
    facts: HashMap<WorkspaceId, (IdentityRules, HashSet<EventId>, HashSet<String>)>,
    /// Hashes identifiers to compare with erased people's suppression
    /// hashes; without one, nothing is suppressed.
    suppression: Option<Suppression>,
    workspaces: HashMap<WorkspaceId, WorkspaceIdentities>,
}

impl Default for IdentityGraph {
    /// A graph under [`IdentityRules::default`].
    fn default() -> IdentityGraph {
        IdentityGraph::new(IdentityRules::default())
    }
}

impl Fold for IdentityGraph {
    const EVENT_TYPES: &'static [&'static str] = &[MessageAccepted::TYPE];
    const PARTS: &'static [(&'static str, onepd_domain::fields::Fields)] = crate::profile::FOLDED_PARTS;

    fn apply(&mut self, event: &RecordedEvent) {
        self.resolve_event(event);
    }
}

impl IdentityGraph {
    /// Folds one event and returns the profile it resolved to: the profile
    /// that now holds the identifiers the event linked, or `None` when it
    /// linked none (every identifier blocked or left out, an erased payload,
    /// another event type).
    pub fn resolve_event(&mut self, event: &RecordedEvent) -> Option<ProfileId> {
        if event.event_type != MessageAccepted::TYPE {
            return None;
        }
        // An erased payload no longer says who it was about.
        let data = event.data.value()?;
        let message = data.get("message")?;
        // A message naming an erased person is, for every reader, what
        // ingest makes of it today: a rejection that keeps nothing.
        if self.names_erased(event.workspace_id, message) {
            return None;
        }
        let violations = data.get("violations");
        self.workspace_mut(event.workspace_id).apply(event, message, violations)
    }

    /// A workspace's identities, created empty under its facts when it has
    /// none yet.
    pub(crate) fn workspace_mut(&mut self, workspace: WorkspaceId) -> &mut WorkspaceIdentities {
        self.workspaces.entry(workspace).or_insert_with(|| {
            let (rules, unlinked) = match self.facts.get(&workspace) {
                Some((rules, unlinked, _)) => (rules.clone(), unlinked.clone()),
                None => (self.default_rules.clone(), HashSet::new()),
            };
            WorkspaceIdentities::new(workspace, rules, unlinked)
        })
    }

    /// The rules `workspace` is folded under.
    pub fn rules_of(&self, workspace: WorkspaceId) -> &IdentityRules {
        match self.facts.get(&workspace) {
            Some((rules, _, _)) => rules,
            None => &self.default_rules,
        }
    }

    /// Whether `message` names (`userId`, `anonymousId`, `previousId`, an
    /// email or phone of its traits) an identifier a `workspace` erasure
    /// suppressed; always `false` without a hasher.
    pub fn names_erased(&self, workspace: WorkspaceId, message: &Value) -> bool {
        let Some(Suppression(hasher)) = &self.suppression else { return false };
        let Some((_, _, hashes)) = self.facts.get(&workspace) else { return false };
        if hashes.is_empty() {
            return false;
        }
        onepd_domain::events::erasure::message_identifiers(message)
            .iter()
            .any(|identifier| hasher(workspace, identifier).is_some_and(|hash| hashes.contains(&hash)))
    }

    /// An empty graph applying `rules` in every workspace without rules of
    /// its own.
    pub fn new(rules: IdentityRules) -> IdentityGraph {
        IdentityGraph { default_rules: rules, facts: HashMap::new(), suppression: None, workspaces: HashMap::new() }
    }

    /// This graph with `rules` for `workspace`. Takes effect for a workspace
    /// only before its first event is folded.
    pub fn with_rules(mut self, workspace: WorkspaceId, rules: IdentityRules) -> IdentityGraph {
        self.facts.insert(workspace, (rules, HashSet::new(), HashSet::new()));
        self
    }

    /// This graph skipping every message that names an identifier whose
    /// suppression hash (`hasher`) a workspace's facts list: an erased
    /// person's identifiers link nothing and lend no traits, even where
    /// another person's events name them ([`IdentityGraph::names_erased`]).
    pub fn with_suppression(mut self, hasher: SuppressionHasher) -> IdentityGraph {
        self.suppression = Some(Suppression(hasher));
        self
    }

    /// This graph under `facts` for `workspace`: its rules (or this graph's
    /// defaults), blocked identifiers and unlinked events. Takes effect for
    /// a workspace only before its first event is folded.
    pub fn with_facts(mut self, workspace: WorkspaceId, facts: &IdentityFacts) -> IdentityGraph {
        let rules = facts.effective_rules(&self.default_rules);
        self.facts.insert(
            workspace,
            (rules, facts.unlinked.iter().copied().collect(), facts.suppressed.iter().cloned().collect()),
        );
        self
    }

    /// Folds `events` in order; the same as applying them one by one.
    pub fn apply_all(&mut self, events: &[RecordedEvent]) {
        for event in events {
            self.apply(event);
        }
    }

    /// One workspace's identities, if it has seen an event.
    pub fn workspace(&self, workspace: WorkspaceId) -> Option<&WorkspaceIdentities> {
        self.workspaces.get(&workspace)
    }

    /// Replaces everything this graph knows of `workspace` (its facts and
    /// identities) with what `from` knows of it. Workspaces never share
    /// identities, so the others are untouched.
    pub fn replace_workspace(&mut self, workspace: WorkspaceId, from: &mut IdentityGraph) {
        match from.facts.remove(&workspace) {
            Some(facts) => self.facts.insert(workspace, facts),
            None => self.facts.remove(&workspace),
        };
        match from.workspaces.remove(&workspace) {
            Some(identities) => self.workspaces.insert(workspace, identities),
            None => self.workspaces.remove(&workspace),
        };
    }
}

/// The suppression hash (hex) of an identifier in a workspace, keyed with
/// the master key; `None` when it cannot be computed.
pub type SuppressionHasher = std::sync::Arc<dyn Fn(WorkspaceId, &Identifier) -> Option<String> + Send + Sync>;

/// A [`SuppressionHasher`] the graph can carry (it is not `Debug` itself).
#[derive(Clone)]
pub struct Suppression(pub SuppressionHasher);

impl std::fmt::Debug for Suppression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Suppression")
    }
}

/// One workspace's profiles, merges and links.
#[derive(Debug, Clone)]
pub struct WorkspaceIdentities {
    workspace: WorkspaceId,
    rules: IdentityRules,
    /// Events a `ProfileSplit` unlinked: each keeps only its strongest
    /// identifier.
    unlinked: HashSet<EventId>,
    /// Which slot of `slots` holds each known identifier.
    slot_of: HashMap<Identifier, usize>,
    /// Live profiles; a merge moves the smaller identifier set into the
    /// larger slot and empties the other, so a merge costs the smaller side.
    slots: Vec<Option<ProfileState>>,
    /// Emptied slots, reused before the list grows.
    free: Vec<usize>,
    slot_by_id: HashMap<ProfileId, usize>,
    /// Each absorbed profile's survivor at the time of its merge; follow the
    /// chain to reach the live profile.
    absorbed_into: HashMap<ProfileId, ProfileId>,
}

#[derive(Debug, Clone)]
struct ProfileState {
    id: ProfileId,
    created_at: Position,
    identifiers: Vec<Attached>,
    /// Itself and every profile it absorbed.
    members: Vec<Member>,
    counts: BTreeMap<IdentifierKind, usize>,
    /// Every merge that formed it, its absorbed profiles' included, by
    /// position.
    merges: Vec<Merge>,
    /// Identifiers its events named that limits kept out, by position.
    held_back: Vec<HeldBack>,
    /// The links between its identifiers (a tree), in recording order.
    links: Vec<Link>,
}

impl ProfileState {
    fn count(&self, kind: &IdentifierKind) -> usize {
        self.counts.get(kind).copied().unwrap_or(0)
    }
}

/// Where an identifier of the event stands before the event is folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Known(usize),
    New,
}

impl WorkspaceIdentities {
    fn new(workspace: WorkspaceId, rules: IdentityRules, unlinked: HashSet<EventId>) -> WorkspaceIdentities {
        WorkspaceIdentities {
            workspace,
            rules,
            unlinked,
            slot_of: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            slot_by_id: HashMap::new(),
            absorbed_into: HashMap::new(),
        }
    }

    /// The rules this workspace is folded under.
    pub fn rules(&self) -> &IdentityRules {
        &self.rules
    }

    /// The live profile holding `identifier`.
    pub fn profile_of(&self, identifier: &Identifier) -> Option<ProfileId> {
        self.slot_of.get(identifier).map(|&slot| self.profile(slot).id)
    }

    /// The live profile `profile` is now part of: itself, or the survivor of
    /// the merges that absorbed it.
    pub fn resolve(&self, mut profile: ProfileId) -> Option<ProfileId> {
        while let Some(&survivor) = self.absorbed_into.get(&profile) {
            profile = survivor;
        }
        self.slot_by_id.contains_key(&profile).then_some(profile)
    }

    /// The identifiers of `profile` (resolved as in [`Self::resolve`]),
    /// sorted by kind, then value.
    pub fn identifiers(&self, profile: ProfileId) -> Vec<Identifier> {
        self.attached(profile).into_iter().map(|attached| attached.identifier).collect()
    }

    /// The identifiers of `profile` with when and where each joined, sorted
    /// by identifier.
    pub fn attached(&self, profile: ProfileId) -> Vec<Attached> {
        let Some(state) = self.state(profile) else { return Vec::new() };
        let mut attached = state.identifiers.clone();
        attached.sort_by(|a, b| a.identifier.cmp(&b.identifier));
        attached
    }

    /// `profile` and every profile it absorbed, oldest first.
    pub fn members(&self, profile: ProfileId) -> Vec<Member> {
        let Some(state) = self.state(profile) else { return Vec::new() };
        let mut members = state.members.clone();
        members.sort_by_key(|member| member.created_at);
        members
    }

    /// Every link between identifiers of `profile`, by position: a tree
    /// over its identifiers.
    pub fn links(&self, profile: ProfileId) -> Vec<Link> {
        self.state(profile).map(|state| state.links.clone()).unwrap_or_default()
    }

    /// Every merge that formed `profile` (resolved as in [`Self::resolve`]),
    /// by position.
    pub fn merges(&self, profile: ProfileId) -> &[Merge] {
        self.state(profile).map(|state| state.merges.as_slice()).unwrap_or_default()
    }

    /// The identifiers events of `profile` named but limits kept out of it,
    /// by position.
    pub fn held_back(&self, profile: ProfileId) -> &[HeldBack] {
        self.state(profile).map(|state| state.held_back.as_slice()).unwrap_or_default()
    }

    /// The live profiles, oldest first.
    pub fn profiles(&self) -> Vec<ProfileId> {
        let mut live: Vec<&ProfileState> = self.slots.iter().flatten().collect();
        live.sort_by_key(|state| state.created_at);
        live.into_iter().map(|state| state.id).collect()
    }

    /// The links joining `a` to `b`, in order from `a`, or `None` when they
    /// are not in one profile. Empty when `a` is `b`.
    pub fn explain(&self, a: &Identifier, b: &Identifier) -> Option<Vec<Link>> {
        let (&start, &goal) = (self.slot_of.get(a)?, self.slot_of.get(b)?);
        if start != goal {
            return None;
        }
        let links = &self.profile(start).links;
        let mut adjacency: HashMap<&Identifier, Vec<&Link>> = HashMap::new();
        for link in links {
            adjacency.entry(&link.from).or_default().push(link);
            adjacency.entry(&link.to).or_default().push(link);
        }
        path(a, b, |node| adjacency.get(node).into_iter().flatten().copied())
    }

    /// Whether `identifier` is held by a profile in memory.
    pub fn holds(&self, identifier: &Identifier) -> bool {
        self.slot_of.contains_key(identifier)
    }

    /// Whether `profile` (a live id) is in memory.
    pub fn is_loaded(&self, profile: ProfileId) -> bool {
        self.slot_by_id.contains_key(&profile)
    }

    /// Puts a live profile read back from its stored parts into memory, as
    /// the fold had it when it was written; nothing happens when it is
    /// there already. `members` oldest first, the live profile among them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        &mut self,
        id: ProfileId,
        members: Vec<Member>,
        identifiers: Vec<Attached>,
        links: Vec<Link>,
        merges: Vec<Merge>,
        held_back: Vec<HeldBack>,
    ) {
        if self.slot_by_id.contains_key(&id) {
            return;
        }
        let created_at = members.iter().find(|member| member.id == id).map_or(Position::START, |m| m.created_at);
        let mut counts: BTreeMap<IdentifierKind, usize> = BTreeMap::new();
        for attached in &identifiers {
            *counts.entry(attached.identifier.kind.clone()).or_default() += 1;
        }
        for merge in &merges {
            self.absorbed_into.insert(merge.absorbed, merge.survivor);
        }
        let slot = self.take_slot();
        for attached in &identifiers {
            self.slot_of.insert(attached.identifier.clone(), slot);
        }
        self.slots[slot] =
            Some(ProfileState { id, created_at, identifiers, members, counts, merges, held_back, links });
        self.slot_by_id.insert(id, slot);
    }

    /// Drops a live profile from memory (its stored copy stays the truth);
    /// `false` when it was not there.
    pub(crate) fn evict(&mut self, profile: ProfileId) -> bool {
        let Some(slot) = self.slot_by_id.remove(&profile) else { return false };
        let state = self.slots[slot].take().expect("a loaded profile has a live slot");
        for attached in &state.identifiers {
            self.slot_of.remove(&attached.identifier);
        }
        for merge in &state.merges {
            self.absorbed_into.remove(&merge.absorbed);
        }
        self.free.push(slot);
        true
    }

    /// How many live profiles are in memory.
    pub fn loaded(&self) -> usize {
        self.slot_by_id.len()
    }

    /// A rough count of the bytes `profile`'s identity takes in memory.
    pub(crate) fn approximate_bytes(&self, profile: ProfileId) -> usize {
        let Some(state) = self.state(profile) else { return 0 };
        let text = |identifier: &Identifier| identifier.value.len() + 48;
        let identifiers: usize = state.identifiers.iter().map(|a| 2 * text(&a.identifier) + 64).sum();
        let links: usize = state.links.iter().map(|l| text(&l.from) + text(&l.to) + 96).sum();
        256 + identifiers + links + state.members.len() * 48 + state.merges.len() * 200 + state.held_back.len() * 240
    }

    fn take_slot(&mut self) -> usize {
        match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        }
    }

    fn profile(&self, slot: usize) -> &ProfileState {
        self.slots[slot].as_ref().expect("an identifier points at a live slot")
    }

    fn state(&self, profile: ProfileId) -> Option<&ProfileState> {
        let live = self.resolve(profile)?;
        self.slot_by_id.get(&live).map(|&slot| self.profile(slot))
    }

    fn unit(&self, identifier: &Identifier) -> Unit {
        self.slot_of.get(identifier).map_or(Unit::New, |&slot| Unit::Known(slot))
    }

    /// Folds one event; returns the profile it resolved to (the survivor of
    /// its links), or `None` when it stored no identifier.
    fn apply(&mut self, event: &RecordedEvent, message: &Value, violations: Option<&Value>) -> Option<ProfileId> {
        let violations: Vec<(&str, &str)> = violations
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|violation| Some((violation.get("field")?.as_str()?, violation.get("rule")?.as_str()?)))
            .collect();
        let known_user_id = |value: &str| self.slot_of.contains_key(&Identifier::new(IdentifierKind::UserId, value));
        let observed = extract::observed(message, &violations, &self.rules, known_user_id)?;
        let mut identifiers = observed.identifiers;
        if self.unlinked.contains(&event.event_id) {
            identifiers.truncate(1);
        }
        let left_out = self.leave_out_over_limit(&mut identifiers, event.position);
        if identifiers.is_empty() {
            return None;
        }

        // The event's units, oldest profile first; the first is the survivor.
        let mut profiles: Vec<usize> = Vec::new();
        for identifier in &identifiers {
            if let Unit::Known(slot) = self.unit(identifier)
                && !profiles.contains(&slot)
            {
                profiles.push(slot);
            }
        }
        profiles.sort_by_key(|&slot| self.profile(slot).created_at);
        let anchor_of = |slot: usize, slot_of: &HashMap<Identifier, usize>| {
            identifiers.iter().find(|identifier| slot_of.get(*identifier) == Some(&slot)).cloned()
        };

        let (mut survivor, anchor) = match profiles.first() {
            Some(&oldest) => (oldest, anchor_of(oldest, &self.slot_of).expect("the oldest profile has an identifier")),
            None => {
                let id = ProfileId::created_by(self.workspace, event.event_id);
                let slot = self.take_slot();
                self.slots[slot] = Some(ProfileState {
                    id,
                    created_at: event.position,
                    identifiers: Vec::new(),
                    members: vec![Member { id, created_at: event.position }],
                    counts: BTreeMap::new(),
                    merges: Vec::new(),
                    held_back: Vec::new(),
                    links: Vec::new(),
                });
                self.slot_by_id.insert(id, slot);
                let anchor = identifiers[0].clone();
                self.attach(slot, anchor.clone(), event.position);
                (slot, anchor)
            }
        };

        let source_id = event.metadata.get("source_id").and_then(Value::as_str).map(str::to_owned);
        for &absorbed in profiles.iter().skip(1) {
            let joined = anchor_of(absorbed, &self.slot_of).expect("an absorbed profile has an identifier");
            let shared = if self.rules.rank(&anchor.kind) <= self.rules.rank(&joined.kind) {
                anchor.clone()
            } else {
                joined.clone()
            };
            let rule = if observed.alias { "alias".to_owned() } else { format!("shared {}", shared.kind) };
            self.link(&anchor, &joined, event, &source_id, &rule);
            let merge = Merge {
                survivor: self.profile(survivor).id,
                absorbed: self.profile(absorbed).id,
                position: event.position,
                event_id: event.event_id,
                source_id: source_id.clone(),
                shared,
                rule,
            };
            survivor = self.merge(survivor, absorbed, merge);
        }
        let rule = if observed.alias { "alias" } else { "seen together" };
        for identifier in &identifiers {
            if identifier != &anchor && self.unit(identifier) == Unit::New {
                self.link(&anchor, identifier, event, &source_id, rule);
                self.attach(survivor, identifier.clone(), event.position);
            }
        }
        for (identifier, kind, total) in left_out {
            let held = HeldBack {
                held_by: self.profile_of(&identifier),
                limit: self.rules.limit(&kind),
                reason: format!(
                    "{kind} limit {}: joining {identifier_kind} would give the profile {total}",
                    self.rules.limit(&kind),
                    identifier_kind = identifier.kind,
                ),
                limit_kind: kind,
                identifier,
                position: event.position,
                event_id: event.event_id,
            };
            let state = self.slots[survivor].as_mut().expect("the survivor is live");
            if !state.held_back.iter().any(|known| known.identifier == held.identifier) {
                state.held_back.push(held);
            }
        }
        Some(self.profile(survivor).id)
    }

    /// Drops identifiers from `identifiers` (ordered by priority) until
    /// joining the rest breaks no limit; see the module doc for the rule.
    /// Returns each identifier dropped, with the over-limit kind it was
    /// dropped for and the total joining would have given.
    fn leave_out_over_limit(
        &self,
        identifiers: &mut Vec<Identifier>,
        position: Position,
    ) -> Vec<(Identifier, IdentifierKind, usize)> {
        let mut left_out = Vec::new();
        loop {
            let units: Vec<Unit> = identifiers.iter().map(|identifier| self.unit(identifier)).collect();
            let mut totals: BTreeMap<&IdentifierKind, usize> = BTreeMap::new();
            let mut counted: Vec<usize> = Vec::new();
            for (identifier, unit) in identifiers.iter().zip(&units) {
                match *unit {
                    Unit::New => *totals.entry(&identifier.kind).or_default() += 1,
                    Unit::Known(slot) if !counted.contains(&slot) => {
                        counted.push(slot);
                        for (kind, count) in &self.profile(slot).counts {
                            *totals.entry(kind).or_default() += count;
                        }
                    }
                    Unit::Known(_) => {}
                }
            }
            let over: Vec<(&IdentifierKind, usize)> =
                totals.into_iter().filter(|&(kind, total)| total > self.rules.limit(kind)).collect();
            if over.is_empty() {
                return left_out;
            }
            let conflicting = identifiers.iter().zip(&units).enumerate().filter(|(_, (identifier, unit))| match unit {
                Unit::New => over.iter().any(|(kind, _)| **kind == identifier.kind),
                Unit::Known(slot) => over.iter().any(|(kind, _)| self.profile(*slot).count(kind) > 0),
            });
            let weakest = conflicting
                .max_by(|(_, (a, a_unit)), (_, (b, b_unit))| {
                    let age = |unit: &Unit| match unit {
                        Unit::New => position,
                        Unit::Known(slot) => self.profile(*slot).created_at,
                    };
                    (self.rules.rank(&a.kind), &a.kind, age(a_unit), &a.value).cmp(&(
                        self.rules.rank(&b.kind),
                        &b.kind,
                        age(b_unit),
                        &b.value,
                    ))
                })
                .map(|(index, _)| index)
                .expect("an over-limit kind has a conflicting identifier");
            // The over-limit kind it was dropped for: its own, else the
            // first its profile holds.
            let dropped = &identifiers[weakest];
            let (kind, total) = over
                .iter()
                .find(|(kind, _)| **kind == dropped.kind)
                .or_else(|| match units[weakest] {
                    Unit::Known(slot) => over.iter().find(|(kind, _)| self.profile(slot).count(kind) > 0),
                    Unit::New => None,
                })
                .map(|(kind, total)| ((*kind).clone(), *total))
                .expect("an over-limit kind has a conflicting identifier");
            left_out.push((identifiers.remove(weakest), kind, total));
        }
    }

    fn attach(&mut self, slot: usize, identifier: Identifier, position: Position) {
        let state = self.slots[slot].as_mut().expect("attach to a live slot");
        *state.counts.entry(identifier.kind.clone()).or_default() += 1;
        state.identifiers.push(Attached { identifier: identifier.clone(), position, member: state.id });
        self.slot_of.insert(identifier, slot);
    }

    fn link(
        &mut self,
        from: &Identifier,
        to: &Identifier,
        event: &RecordedEvent,
        source_id: &Option<String>,
        rule: &str,
    ) {
        let link = Link {
            from: from.clone(),
            to: to.clone(),
            position: event.position,
            event_id: event.event_id,
            source_id: source_id.clone(),
            rule: rule.to_owned(),
        };
        // `from` is the event's anchor, held by the profile the event extends.
        let slot = self.slot_of[from];
        self.slots[slot].as_mut().expect("the anchor's profile is live").links.push(link);
    }

    /// Folds `absorbed` into `survivor`, moving the smaller identifier set
    /// into the larger slot; returns the slot that now holds the survivor.
    fn merge(&mut self, survivor: usize, absorbed: usize, merge: Merge) -> usize {
        let survivor_state = self.slots[survivor].take().expect("survivor is live");
        let absorbed_state = self.slots[absorbed].take().expect("absorbed is live");
        let (id, created_at) = (survivor_state.id, survivor_state.created_at);
        let (mut kept, moved, kept_slot) = if survivor_state.identifiers.len() >= absorbed_state.identifiers.len() {
            (survivor_state, absorbed_state, survivor)
        } else {
            (absorbed_state, survivor_state, absorbed)
        };
        for attached in &moved.identifiers {
            self.slot_of.insert(attached.identifier.clone(), kept_slot);
        }
        kept.identifiers.extend(moved.identifiers);
        kept.members.extend(moved.members);
        for (kind, count) in moved.counts {
            *kept.counts.entry(kind).or_default() += count;
        }
        kept.merges.extend(moved.merges);
        // Two runs in recording order, and no event links into two profiles:
        // a stable sort by position restores the order they were recorded in.
        kept.links.extend(moved.links);
        kept.links.sort_by_key(|link| link.position);
        kept.held_back.extend(moved.held_back);
        kept.held_back.sort_by_key(|held| held.position);
        kept.merges.push(merge.clone());
        kept.merges.sort_by_key(|merge| merge.position);
        kept.id = id;
        kept.created_at = created_at;
        self.slots[kept_slot] = Some(kept);
        self.free.push(if kept_slot == survivor { absorbed } else { survivor });
        self.slot_by_id.remove(&merge.absorbed);
        self.slot_by_id.insert(id, kept_slot);
        self.absorbed_into.insert(merge.absorbed, id);
        kept_slot
    }
}

#[cfg(test)]
mod tests;
