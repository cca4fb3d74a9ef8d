//! The caches of unwrapped subject keys, and their invalidation.
//!
//! Unwrapping a key costs a database read and a decryption, so keys are
//! cached: by subject hash for sealing (in the appender) and by key id for
//! opening (in readers). A shred anywhere bumps the log head's `key_epoch`;
//! whoever sees a new epoch drops its cache, so a shredded key stops opening
//! payloads in every process as soon as it next reads the head.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

use super::sealing::SubjectKey;

/// Entries a cache holds before it is emptied and starts again. An entry
/// holds the key's expanded cipher (about 700 bytes), so 100,000 of them
/// took 70 MB; this many cover a few pages of a big read.
pub(crate) const KEY_CACHE_LIMIT: usize = 20_000;

/// The keys one read needs: key id → key, or `None` when the key is shredded.
pub(crate) type ReadKeys = HashMap<Uuid, Option<SubjectKey>>;

/// The readers' cache: key id → key, or `None` when the key is shredded,
/// valid for one key epoch.
pub(crate) struct OpenKeys {
    cache: Mutex<EpochCache>,
}

struct EpochCache {
    /// The epoch the entries are valid for; `None` right after a local shred,
    /// until a read learns the new epoch.
    epoch: Option<i64>,
    keys: HashMap<Uuid, Option<SubjectKey>>,
}

impl Default for OpenKeys {
    fn default() -> Self {
        OpenKeys { cache: Mutex::new(EpochCache { epoch: None, keys: HashMap::new() }) }
    }
}

impl OpenKeys {
    /// Drops every cached key if `epoch` is not the one the cache was filled under.
    pub(crate) fn observe_epoch(&self, epoch: i64) {
        let mut cache = self.cache.lock().expect("key cache lock");
        if cache.epoch != Some(epoch) {
            cache.keys.clear();
            cache.epoch = Some(epoch);
        }
    }

    /// Drops every cached key and forgets the epoch, so keys fetched under
    /// the old epoch by reads still in flight are not cached again.
    pub(crate) fn invalidate(&self) {
        let mut cache = self.cache.lock().expect("key cache lock");
        cache.keys.clear();
        cache.epoch = None;
    }

    /// Takes the cached entries of `wanted` into `into`; returns the ids not cached.
    pub(crate) fn take_cached(&self, wanted: impl IntoIterator<Item = Uuid>, into: &mut ReadKeys) -> Vec<Uuid> {
        let cache = self.cache.lock().expect("key cache lock");
        let mut missing = Vec::new();
        for key_id in wanted {
            if into.contains_key(&key_id) {
                continue;
            }
            match cache.keys.get(&key_id) {
                Some(key) => {
                    into.insert(key_id, key.clone());
                }
                None => missing.push(key_id),
            }
        }
        missing
    }

    /// Caches what a read learned under `epoch`; ignored if the cache has
    /// moved to another epoch since (a shred happened in between).
    pub(crate) fn put(&self, epoch: i64, key_id: Uuid, key: Option<SubjectKey>) {
        let mut cache = self.cache.lock().expect("key cache lock");
        if cache.epoch != Some(epoch) {
            return;
        }
        if cache.keys.len() >= KEY_CACHE_LIMIT {
            cache.keys.clear();
        }
        cache.keys.insert(key_id, key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sealing::MasterKey;

    fn key() -> SubjectKey {
        MasterKey::generate().new_subject_key(Uuid::now_v7()).0
    }

    #[test]
    fn a_key_fetched_before_a_shred_is_not_cached_after_it() {
        let cache = OpenKeys::default();
        cache.observe_epoch(1);
        let id = Uuid::now_v7();
        // A read under epoch 1 fetched the key; meanwhile a shred moved the epoch.
        cache.observe_epoch(2);
        cache.put(1, id, Some(key()));
        let mut keys = ReadKeys::new();
        assert_eq!(cache.take_cached([id], &mut keys), vec![id]);
    }

    #[test]
    fn a_local_shred_rejects_keys_of_reads_in_flight() {
        let cache = OpenKeys::default();
        cache.observe_epoch(1);
        let id = Uuid::now_v7();
        cache.invalidate();
        cache.put(1, id, Some(key()));
        let mut keys = ReadKeys::new();
        assert_eq!(cache.take_cached([id], &mut keys), vec![id]);
    }

    #[test]
    fn an_overflowing_cache_never_loses_keys_a_read_already_took() {
        let cache = OpenKeys::default();
        cache.observe_epoch(1);
        let first = Uuid::now_v7();
        cache.put(1, first, Some(key()));
        let mut keys = ReadKeys::new();
        assert!(cache.take_cached([first], &mut keys).is_empty());
        for _ in 0..KEY_CACHE_LIMIT {
            cache.put(1, Uuid::now_v7(), None);
        }
        assert!(matches!(keys.get(&first), Some(Some(_))), "the read's own map still holds it");
    }
}
