//! The caches of unwrapped subject keys, and their invalidation.
//!
//! Unwrapping a key costs a database read and a decryption, so keys are
//! cached: by subject hash for sealing (in the appender) and by key id for
//! opening (in readers). A shred anywhere bumps the log head's `key_epoch`;
//! whoever sees a new epoch drops its cache, so a shredded key stops opening
//! payloads in every process as soon as it next reads the head.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use uuid::Uuid;

use super::sealing::SubjectKey;

/// Entries a cache holds before it is emptied and starts again.
pub(crate) const KEY_CACHE_LIMIT: usize = 100_000;

/// The readers' cache: key id → key, or `None` when the key is shredded.
#[derive(Default)]
pub(crate) struct OpenKeys {
    keys: Mutex<HashMap<Uuid, Option<SubjectKey>>>,
    epoch: AtomicI64,
}

impl OpenKeys {
    /// Drops every cached key if `epoch` is not the one the cache was filled under.
    pub(crate) fn observe_epoch(&self, epoch: i64) {
        if self.epoch.swap(epoch, Ordering::AcqRel) != epoch {
            self.clear();
        }
    }

    /// Drops every cached key.
    pub(crate) fn clear(&self) {
        self.keys.lock().expect("key cache lock").clear();
    }

    /// The cached entry of a key id: `Some(None)` means known to be shredded.
    pub(crate) fn get(&self, key_id: &Uuid) -> Option<Option<SubjectKey>> {
        self.keys.lock().expect("key cache lock").get(key_id).cloned()
    }

    /// Caches what is known of a key id.
    pub(crate) fn put(&self, key_id: Uuid, key: Option<SubjectKey>) {
        let mut keys = self.keys.lock().expect("key cache lock");
        if keys.len() >= KEY_CACHE_LIMIT {
            keys.clear();
        }
        keys.insert(key_id, key);
    }
}
