//! The event id index that makes appends idempotent.
//!
//! Deterministic event ids (UUIDv5 of a client's `messageId`) are random, and a
//! database index on random keys slows every insert once it outgrows the page
//! cache. So the database indexes events by position only, and the ids are
//! checked here, in memory: a 64-bit fingerprint of each stored id maps to the
//! position holding it. A fingerprint hit is only a candidate; the appender
//! confirms it against the stored id before calling an event a duplicate, so a
//! fingerprint collision can never drop a new event.
//!
//! Memory: about 20 bytes per stored event (200 MB at 10M events).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use uuid::Uuid;

/// The fingerprint of an event id: both halves folded together. Both UUIDv5
/// and the random tail of UUIDv7 are uniformly distributed, so this is too.
pub(crate) fn fingerprint(id: Uuid) -> u64 {
    let value = id.as_u128();
    (value as u64) ^ ((value >> 64) as u64)
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

/// Fingerprint → position of every stored event, up to `indexed_up_to`.
#[derive(Default)]
pub(crate) struct IdIndex {
    first: FingerprintMap<u64>,
    /// Further positions whose ids share a fingerprint with `first`'s entry.
    collisions: FingerprintMap<Vec<u64>>,
    indexed_up_to: u64,
}

impl IdIndex {
    /// An empty index with room for `events` ids: loading a log's ids into
    /// it never grows the table, which would hold the old and the new table
    /// at once (half as much memory again, at the worst moment).
    pub(crate) fn with_capacity(events: usize) -> IdIndex {
        IdIndex { first: FingerprintMap::with_capacity_and_hasher(events, Default::default()), ..IdIndex::default() }
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
        let mut index = IdIndex::with_capacity(10_000);
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
}
