//! The event id index that makes appends idempotent.
//!
//! Deterministic event ids (UUIDv5 of a client's `messageId`) are random, and a
//! database index on random keys slows every insert once it outgrows the page
//! cache. So the database indexes events by position only, and the ids are
//! checked in two tiers: a 64-bit fingerprint of each of the newest ids maps to
//! its position here, in memory ([`IdIndex`], a bounded number of them), and
//! the fingerprints of older ids are moved to the `event_fingerprints` table in
//! large sorted batches, where the appender looks up every id this index does
//! not hold. A fingerprint hit is only a candidate; the appender confirms it
//! against the stored id before calling an event a duplicate, so a fingerprint
//! collision can never drop a new event.
//!
//! Memory: about 20 bytes per id held, whatever the log's length.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use uuid::Uuid;

/// The fingerprint of an event id: both halves folded together. Both UUIDv5
/// and the random tail of UUIDv7 are uniformly distributed, so this is too.
pub(crate) fn fingerprint(id: Uuid) -> u64 {
    let value = id.as_u128();
    (value as u64) ^ ((value >> 64) as u64)
}

/// A fingerprint as the database stores it: the same 64 bits, read as a
/// signed integer (the columns are `BIGINT`), so the database orders them
/// as `i64` does.
pub(crate) fn as_stored(fingerprint: u64) -> i64 {
    fingerprint as i64
}

/// Keys are already uniform fingerprints; hashing them again would only cost time.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type FingerprintMap<V> = HashMap<u64, V, BuildHasherDefault<IdentityHasher>>;

/// A map keyed by values that are already uniformly distributed (UUIDs,
/// SHA-256 digests), hashed by folding their bytes instead of SipHash.
pub(crate) type UniformMap<K, V> = HashMap<K, V, BuildHasherDefault<IdentityHasher>>;

/// Fingerprint → position of every stored event after `floor`, up to
/// `indexed_up_to`. The ids at `floor` and before are in the database's
/// `event_fingerprints` table.
#[derive(Default)]
pub(crate) struct IdIndex {
    first: FingerprintMap<u64>,
    /// Further positions whose ids share a fingerprint with `first`'s entry.
    collisions: FingerprintMap<Vec<u64>>,
    floor: u64,
    indexed_up_to: u64,
}

impl IdIndex {
    /// An empty index of the ids after `floor`, with room for `events` of
    /// them: loading that many never grows the table, which would hold the
    /// old and the new table at once (half as much memory again, at the
    /// worst moment).
    pub(crate) fn with_capacity(events: usize, floor: u64) -> IdIndex {
        IdIndex {
            first: FingerprintMap::with_capacity_and_hasher(events, Default::default()),
            floor,
            indexed_up_to: floor,
            ..IdIndex::default()
        }
    }

    /// The last position whose id is not held here (0: every id is).
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// `(fingerprint, position)` of every id held at `up_to` and before,
    /// sorted as the database orders them (fingerprints as signed integers).
    pub(crate) fn up_to(&self, up_to: u64) -> Vec<(i64, i64)> {
        let first = self.first.iter().map(|(key, position)| (*key, *position));
        let more = self.collisions.iter().flat_map(|(key, positions)| positions.iter().map(move |p| (*key, *p)));
        let mut found: Vec<(i64, i64)> = first
            .chain(more)
            .filter(|(_, position)| *position <= up_to)
            .map(|(key, position)| (as_stored(key), position as i64))
            .collect();
        found.sort_unstable();
        found
    }

    /// Drops the ids at `up_to` and before, once the database holds them.
    pub(crate) fn forget_up_to(&mut self, up_to: u64) {
        self.collisions.retain(|_, positions| {
            positions.retain(|position| *position > up_to);
            !positions.is_empty()
        });
        let collisions = &mut self.collisions;
        self.first.retain(|key, position| {
            if *position > up_to {
                return true;
            }
            // A later id of the same fingerprint takes the first place.
            if let Some(positions) = collisions.get_mut(key) {
                *position = positions.remove(0);
                if positions.is_empty() {
                    collisions.remove(key);
                }
                return true;
            }
            false
        });
        self.floor = self.floor.max(up_to);
    }

    /// The last position whose id is indexed.
    pub(crate) fn indexed_up_to(&self) -> u64 {
        self.indexed_up_to
    }

    /// Records that `id` is stored at `position`. Positions must come in
    /// increasing order.
    pub(crate) fn insert(&mut self, id: Uuid, position: u64) {
        let key = fingerprint(id);
        match self.first.entry(key) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(position);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collisions.entry(key).or_default().push(position);
            }
        }
        self.indexed_up_to = self.indexed_up_to.max(position);
    }

    /// The positions that may hold `id`; the caller confirms each one.
    pub(crate) fn candidates(&self, id: Uuid) -> impl Iterator<Item = u64> + '_ {
        let key = fingerprint(id);
        let first = self.first.get(&key).copied();
        let more = if first.is_some() && !self.collisions.is_empty() { self.collisions.get(&key) } else { None };
        first.into_iter().chain(more.into_iter().flatten().copied())
    }

    /// How many events are indexed.
    pub(crate) fn len(&self) -> usize {
        self.first.len() + self.collisions.values().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_id_is_a_candidate_at_its_position() {
        let mut index = IdIndex::default();
        let id = Uuid::new_v4();
        index.insert(id, 7);
        assert_eq!(index.candidates(id).collect::<Vec<_>>(), vec![7]);
        assert_eq!(index.candidates(Uuid::new_v4()).count(), 0);
        assert_eq!(index.indexed_up_to(), 7);
    }

    #[test]
    fn an_index_made_for_a_log_holds_its_ids_without_growing() {
        let mut index = IdIndex::with_capacity(10_000, 0);
        let room = index.first.capacity();
        assert!(room >= 10_000);
        let ids: Vec<Uuid> = (0..10_000).map(|_| Uuid::new_v4()).collect();
        for (position, id) in ids.iter().enumerate() {
            index.insert(*id, position as u64 + 1);
        }
        assert_eq!(index.first.capacity(), room, "the table was not reallocated");
        assert_eq!(index.candidates(ids[4_321]).collect::<Vec<_>>(), vec![4_322]);
    }

    #[test]
    fn ids_sharing_a_fingerprint_keep_every_position() {
        let mut index = IdIndex::default();
        let a = Uuid::from_u128((5u128 << 64) | 3);
        let b = Uuid::from_u128((3u128 << 64) | 5);
        assert_eq!(fingerprint(a), fingerprint(b));
        index.insert(a, 1);
        index.insert(b, 2);
        assert_eq!(index.candidates(a).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn ids_handed_to_the_database_are_forgotten_and_the_rest_kept() {
        let mut index = IdIndex::with_capacity(8, 2);
        assert_eq!(index.indexed_up_to(), 2, "an index above a floor catches up from it");
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::new_v4()).collect();
        for (n, id) in ids.iter().enumerate() {
            index.insert(*id, n as u64 + 3);
        }
        // Ids sharing a fingerprint on both sides of the cut.
        let a = Uuid::from_u128((9u128 << 64) | 4);
        let b = Uuid::from_u128((4u128 << 64) | 9);
        index.insert(a, 9);
        index.insert(b, 10);

        let older = index.up_to(5);
        let mut expected: Vec<(i64, i64)> =
            ids[..3].iter().enumerate().map(|(n, id)| (fingerprint(*id) as i64, n as i64 + 3)).collect();
        expected.sort_unstable();
        assert_eq!(older, expected);
        index.forget_up_to(5);
        assert_eq!(index.floor(), 5);
        assert_eq!(index.len(), 5);
        assert_eq!(index.candidates(ids[0]).count(), 0);
        assert_eq!(index.candidates(ids[3]).collect::<Vec<_>>(), vec![6]);

        assert_eq!(index.up_to(9), {
            let mut v: Vec<(i64, i64)> =
                ids[3..].iter().enumerate().map(|(n, id)| (fingerprint(*id) as i64, n as i64 + 6)).collect();
            v.push((fingerprint(a) as i64, 9));
            v.sort_unstable();
            v
        });
        index.forget_up_to(9);
        assert_eq!(index.candidates(b).collect::<Vec<_>>(), vec![10], "the later id of a shared fingerprint stays");
        assert_eq!(index.len(), 1);
        assert_eq!(index.indexed_up_to(), 10);
    }
}
