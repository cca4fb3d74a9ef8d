//! The profiles projection at work: [`runner`] keeps its read model current
//! in the background, and [`ProfileReader`] answers reads from the live
//! generation of that read model, with the log for the events themselves.
//!
//! Every read is scoped to one workspace: a document of another workspace is
//! never looked up, whatever id is asked for.

pub mod as_of;
pub mod runner;

use std::sync::Arc;

use onepd_domain::identity::{Identifier, ProfileId};
use onepd_domain::{EventStore, Position, ProjectionStore, StoreError, Timestamp, WorkspaceId};
use onepd_projections::audience::PersonFacts;
use onepd_projections::identity::{HeldBack, Link, Merge};
use onepd_projections::profile::{FOLDED_PARTS, Lookup, Profile, ProfileDoc, TimelineEntry, timeline_entry_of};
use onepd_projections::runner::{IDENTIFIER_DOCS, MEMBER_DOCS, PROFILE_DOCS, PROFILES, identifier_key};
use uuid::Uuid;

use crate::EventLog;

/// When a point-in-time read looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Just after the event at this position.
    Position(Position),
    /// Just before this time: after the last event recorded before it.
    Time(Timestamp),
}

/// How two identifiers are joined.
#[derive(Debug, Clone, PartialEq)]
pub enum Explanation {
    /// Both are in `profile`; `links` is the path from the first to the
    /// second, each link naming its event.
    Linked {
        /// The live profile holding both.
        profile: ProfileId,
        /// The path, in order from the first identifier.
        links: Vec<Link>,
    },
    /// Each is known, in different profiles.
    Apart {
        /// The first identifier's profile.
        a: ProfileId,
        /// The second identifier's profile.
        b: ProfileId,
        /// When an event of one profile named the other identifier and an
        /// identity limit kept it out: that record (why they did not merge).
        held_back: Option<HeldBack>,
    },
    /// An event of `profile` (holding the first identifier) named the
    /// second, which no profile holds: an identity limit kept it out.
    HeldBack {
        /// The profile the event was attributed to.
        profile: ProfileId,
        /// What was kept out, when and why.
        held: HeldBack,
    },
    /// This identifier is in no profile.
    Unknown(Identifier),
}

/// Reads profiles from the live generation of the profiles read model.
#[derive(Clone)]
pub struct ProfileReader {
    store: Arc<dyn ProjectionStore>,
    log: EventLog,
}

impl std::fmt::Debug for ProfileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileReader").finish_non_exhaustive()
    }
}

impl ProfileReader {
    /// A reader over `store`'s read model and `log`'s events.
    pub fn new(store: Arc<dyn ProjectionStore>, log: EventLog) -> ProfileReader {
        ProfileReader { store, log }
    }

    /// The log this reader reads events from.
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// The read store this reader reads.
    pub fn store(&self) -> Arc<dyn ProjectionStore> {
        self.store.clone()
    }

    /// The position the live read model reflects, or `None` before the
    /// first build finished.
    pub async fn checkpoint(&self) -> Result<Option<Position>, StoreError> {
        Ok(self.store.live(PROFILES).await?.map(|generation| generation.checkpoint))
    }

    /// The document of the live profile `lookup` names now.
    pub async fn doc(&self, workspace: WorkspaceId, lookup: &Lookup) -> Result<Option<ProfileDoc>, StoreError> {
        let Some(generation) = self.store.live(PROFILES).await? else { return Ok(None) };
        let (collection, key) = match lookup {
            Lookup::Identifier(identifier) => (IDENTIFIER_DOCS, identifier_key(identifier)),
            Lookup::Profile(profile) => (MEMBER_DOCS, profile.to_string()),
        };
        let Some(Some(id)) = self.store.get(generation.id, workspace, collection, &[key]).await?.pop() else {
            return Ok(None);
        };
        let id = String::from_utf8(id).map_err(|_| corrupt("a profile id is not UTF-8"))?;
        let Some(Some(doc)) = self.store.get(generation.id, workspace, PROFILE_DOCS, &[id]).await?.pop() else {
            return Ok(None);
        };
        serde_json::from_slice(&doc).map(Some).map_err(|err| corrupt(&format!("profile document: {err}")))
    }

    /// The profile `lookup` names: now, or as it stood at `as_of`.
    pub async fn get(
        &self,
        workspace: WorkspaceId,
        lookup: &Lookup,
        as_of: Option<AsOf>,
    ) -> Result<Option<Profile>, StoreError> {
        let Some(doc) = self.doc(workspace, lookup).await? else { return Ok(None) };
        let Some(as_of) = as_of else { return Ok(Some(doc.profile())) };
        let position = self.position(as_of).await?;
        let Some(past) = doc.as_of(position, lookup) else { return Ok(None) };
        // Folded only: decoded in the parts the fold reads.
        let events = self.log.read_parts_at(workspace, &past.positions, FOLDED_PARTS).await?;
        Ok(Some(past.fold(&events)))
    }

    /// The profile `lookup` names as an audience condition reads it, now
    /// or as it stood at `as_of`: its traits, groups and every one of its
    /// events up to then, read back from the log whole (so that filters
    /// can read their properties).
    pub async fn person(
        &self,
        workspace: WorkspaceId,
        lookup: &Lookup,
        as_of: Option<AsOf>,
    ) -> Result<Option<PersonFacts>, StoreError> {
        Ok(self.identified_person(workspace, lookup, as_of).await?.map(|(_, person)| person))
    }

    /// [`ProfileReader::person`] with the id of the profile it is (as of
    /// `as_of`): the live profile now, or the profile that held `lookup`
    /// then.
    pub async fn identified_person(
        &self,
        workspace: WorkspaceId,
        lookup: &Lookup,
        as_of: Option<AsOf>,
    ) -> Result<Option<(ProfileId, PersonFacts)>, StoreError> {
        let Some(doc) = self.doc(workspace, lookup).await? else { return Ok(None) };
        let (profile, positions) = match as_of {
            None => {
                let positions = doc.timeline_page(None, usize::MAX).into_iter().map(|(position, _)| position);
                (doc.profile(), positions.collect::<Vec<_>>())
            }
            Some(as_of) => {
                let position = self.position(as_of).await?;
                let Some(past) = doc.as_of(position, lookup) else { return Ok(None) };
                let positions = past.positions.clone();
                let folded = self.log.read_parts_at(workspace, &positions, FOLDED_PARTS).await?;
                (past.fold(&folded), positions)
            }
        };
        let events = self.log.read_at(workspace, &positions).await?;
        Ok(Some((profile.id, PersonFacts::of(&profile, &events))))
    }

    /// Every profile of `workspace` as an audience condition reads it, now
    /// or as the profiles stood at `as_of` (a profile that merged since is
    /// the separate profiles it was then), handed to `visit` with its id,
    /// page by page in the order of the read store's keys. Reads every
    /// event of the workspace's profiles: a scan, for previews and tools.
    pub async fn each_person(
        &self,
        workspace: WorkspaceId,
        as_of: Option<AsOf>,
        mut visit: impl FnMut(ProfileId, &PersonFacts),
    ) -> Result<u64, StoreError> {
        const PAGE: usize = 500;
        let Some(generation) = self.store.live(PROFILES).await? else { return Ok(0) };
        let position = match as_of {
            Some(as_of) => Some(self.position(as_of).await?),
            None => None,
        };
        let (mut after, mut visited) = (None::<String>, 0);
        loop {
            let page = self.store.scan(generation.id, workspace, PROFILE_DOCS, after.as_deref(), PAGE).await?;
            let Some((last, _)) = page.last() else { return Ok(visited) };
            after = Some(last.clone());
            // Each profile as it is (or was), and the positions of its events.
            let mut people: Vec<(Profile, Vec<Position>)> = Vec::new();
            for (_, bytes) in &page {
                let doc: ProfileDoc =
                    serde_json::from_slice(bytes).map_err(|err| corrupt(&format!("profile document: {err}")))?;
                match position {
                    None => {
                        let positions = doc.timeline_page(None, usize::MAX).into_iter().map(|(p, _)| p).collect();
                        people.push((doc.profile(), positions));
                    }
                    Some(position) => {
                        let mut seen = std::collections::HashSet::new();
                        for member in &doc.members {
                            let Some(past) = doc.as_of(position, &Lookup::Profile(member.id)) else { continue };
                            if !seen.insert(past.id) {
                                continue;
                            }
                            let positions = past.positions.clone();
                            let folded = self.log.read_parts_at(workspace, &positions, FOLDED_PARTS).await?;
                            people.push((past.fold(&folded), positions));
                        }
                    }
                }
            }
            let wanted: Vec<Position> = people.iter().flat_map(|(_, positions)| positions.iter().copied()).collect();
            let events = self.log.read_at(workspace, &wanted).await?;
            let by_position: std::collections::HashMap<Position, &onepd_domain::RecordedEvent> =
                events.iter().map(|event| (event.position, event)).collect();
            for (profile, positions) in &people {
                let own = positions.iter().filter_map(|p| by_position.get(p).copied());
                visit(profile.id, &PersonFacts::of(profile, own));
                visited += 1;
            }
        }
    }

    /// Up to `limit` events of the profile `lookup` names, newest first,
    /// below `before` when given; `None` when there is no such profile.
    pub async fn timeline(
        &self,
        workspace: WorkspaceId,
        lookup: &Lookup,
        before: Option<Position>,
        limit: usize,
    ) -> Result<Option<Vec<TimelineEntry>>, StoreError> {
        let Some(doc) = self.doc(workspace, lookup).await? else { return Ok(None) };
        let page = doc.timeline_page(before, limit);
        let positions: Vec<Position> = page.iter().map(|(position, _)| *position).collect();
        let events = self.log.read_at(workspace, &positions).await?;
        let members: std::collections::HashMap<Position, ProfileId> = page.into_iter().collect();
        let mut entries: Vec<TimelineEntry> =
            events.iter().filter_map(|event| timeline_entry_of(event, *members.get(&event.position)?)).collect();
        entries.reverse();
        Ok(Some(entries))
    }

    /// Every merge that formed the profile `lookup` names, by position.
    pub async fn merges(&self, workspace: WorkspaceId, lookup: &Lookup) -> Result<Option<Vec<Merge>>, StoreError> {
        Ok(self.doc(workspace, lookup).await?.map(|doc| doc.merges))
    }

    /// How `a` and `b` are joined, if they are.
    pub async fn explain(
        &self,
        workspace: WorkspaceId,
        a: &Identifier,
        b: &Identifier,
    ) -> Result<Explanation, StoreError> {
        let Some(doc_a) = self.doc(workspace, &Lookup::Identifier(a.clone())).await? else {
            return Ok(Explanation::Unknown(a.clone()));
        };
        if let Some(links) = doc_a.explain(a, b) {
            return Ok(Explanation::Linked { profile: doc_a.id, links });
        }
        let held_from = |doc: &ProfileDoc, identifier: &Identifier| {
            doc.held_back.iter().find(|held| &held.identifier == identifier).cloned()
        };
        match self.doc(workspace, &Lookup::Identifier(b.clone())).await? {
            Some(doc_b) => Ok(Explanation::Apart {
                a: doc_a.id,
                b: doc_b.id,
                held_back: held_from(&doc_a, b).or_else(|| held_from(&doc_b, a)),
            }),
            None => match held_from(&doc_a, b) {
                Some(held) => Ok(Explanation::HeldBack { profile: doc_a.id, held }),
                None => Ok(Explanation::Unknown(b.clone())),
            },
        }
    }

    /// The last position at or before `as_of`.
    pub async fn position(&self, as_of: AsOf) -> Result<Position, StoreError> {
        match as_of {
            AsOf::Position(position) => Ok(position),
            AsOf::Time(time) => Ok(Position(self.log.position_at(time).await?.0.saturating_sub(1))),
        }
    }
}

/// A profile id as text, if it is one.
pub fn parse_profile_id(text: &str) -> Option<ProfileId> {
    Uuid::parse_str(text).ok().map(ProfileId)
}

fn corrupt(reason: &str) -> StoreError {
    StoreError::Database(format!("profiles read model: {reason}"))
}
