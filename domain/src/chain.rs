//! The hash chain: `hash_n = sha256(hash_{n-1} ‖ canonical bytes of event n)`.
//!
//! The canonical bytes are computed over what the log *stores* — sealed
//! payloads as ciphertext — so shredding a subject's key changes nothing the
//! chain covers and verification still passes after an erasure.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The hash that precedes the first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// One event exactly as stored: the input of the chain hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent<'a> {
    /// Global position.
    pub position: u64,
    /// The event id.
    pub event_id: Uuid,
    /// The workspace id.
    pub workspace_id: Uuid,
    /// The stream id.
    pub stream_id: &'a str,
    /// The version within the stream.
    pub stream_version: u64,
    /// The event type.
    pub event_type: &'a str,
    /// The stored schema version.
    pub schema_version: u32,
    /// Microseconds since the epoch.
    pub recorded_at: i64,
    /// The subject key the payload is sealed with, if any.
    pub key_id: Option<Uuid>,
    /// The stored payload bytes (JSON text, or nonce and ciphertext when sealed).
    pub data: &'a [u8],
    /// The stored metadata bytes (JSON text).
    pub metadata: &'a [u8],
}

impl StoredEvent<'_> {
    /// The chain hash of this event after an event whose hash was `previous`.
    ///
    /// Every variable-length field is length-prefixed, so no two different
    /// events share canonical bytes.
    pub fn chain_hash(&self, previous: &[u8; 32]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(previous);
        hasher.update(self.position.to_be_bytes());
        hasher.update(self.event_id.as_bytes());
        hasher.update(self.workspace_id.as_bytes());
        update_with_len(&mut hasher, self.stream_id.as_bytes());
        hasher.update(self.stream_version.to_be_bytes());
        update_with_len(&mut hasher, self.event_type.as_bytes());
        hasher.update(self.schema_version.to_be_bytes());
        hasher.update(self.recorded_at.to_be_bytes());
        match self.key_id {
            Some(key) => {
                hasher.update([1]);
                hasher.update(key.as_bytes());
            }
            None => hasher.update([0]),
        }
        update_with_len(&mut hasher, self.data);
        update_with_len(&mut hasher, self.metadata);
        hasher.finalize().into()
    }
}

fn update_with_len(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// Where a walk of the chain found that a stored hash does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The first position whose hash does not hold.
    pub position: u64,
    /// The hash the log stores there.
    pub stored: [u8; 32],
    /// The hash recomputed from the stored bytes.
    pub recomputed: [u8; 32],
}

/// Walks a chain one event at a time, remembering the previous hash.
#[derive(Debug, Clone)]
pub struct ChainWalker {
    previous: [u8; 32],
    expected_position: u64,
}

impl Default for ChainWalker {
    fn default() -> Self {
        ChainWalker { previous: GENESIS, expected_position: 1 }
    }
}

impl ChainWalker {
    /// Checks the next stored event and its stored hash. A position out of
    /// sequence (a gap or a repeat) is a break too, reported with the hash the
    /// event would have needed.
    pub fn check(&mut self, event: &StoredEvent<'_>, stored_hash: &[u8; 32]) -> Result<(), ChainBreak> {
        let recomputed = event.chain_hash(&self.previous);
        if event.position != self.expected_position || &recomputed != stored_hash {
            return Err(ChainBreak { position: event.position, stored: *stored_hash, recomputed });
        }
        self.previous = recomputed;
        self.expected_position += 1;
        Ok(())
    }

    /// The hash of the last event checked ([`GENESIS`] before any).
    pub fn last_hash(&self) -> [u8; 32] {
        self.previous
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(position: u64, data: &[u8]) -> StoredEvent<'_> {
        StoredEvent {
            position,
            event_id: Uuid::from_u128(position as u128),
            workspace_id: Uuid::from_u128(7),
            stream_id: "workspace-7",
            stream_version: position,
            event_type: "MessageAccepted",
            schema_version: 1,
            recorded_at: 1_700_000_000_000_000,
            key_id: None,
            data,
            metadata: b"{}",
        }
    }

    #[test]
    fn a_chain_of_untouched_events_verifies() {
        let mut hash = GENESIS;
        let mut walker = ChainWalker::default();
        for position in 1..=5 {
            let stored = event(position, b"{\"a\":1}");
            hash = stored.chain_hash(&hash);
            walker.check(&stored, &hash).unwrap();
        }
        assert_eq!(walker.last_hash(), hash);
    }

    #[test]
    fn a_gap_in_positions_is_a_break() {
        let mut walker = ChainWalker::default();
        let first = event(1, b"{}");
        walker.check(&first, &first.chain_hash(&GENESIS)).unwrap();
        let third = event(3, b"{}");
        let hash = third.chain_hash(&walker.last_hash());
        assert_eq!(walker.check(&third, &hash).unwrap_err().position, 3);
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_hash() {
        let mut a = event(1, b"ab");
        a.metadata = b"c";
        let mut b = event(1, b"a");
        b.metadata = b"bc";
        assert_ne!(a.chain_hash(&GENESIS), b.chain_hash(&GENESIS));
    }

    proptest! {
        #[test]
        fn changing_any_byte_of_the_payload_is_detected(
            data in proptest::collection::vec(any::<u8>(), 1..200),
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let stored = event(1, &data);
            let hash = stored.chain_hash(&GENESIS);
            let mut tampered = data.clone();
            let i = index.index(tampered.len());
            tampered[i] ^= flip;
            let mut walker = ChainWalker::default();
            let broken = walker.check(&event(1, &tampered), &hash).unwrap_err();
            prop_assert_eq!(broken.position, 1);
            prop_assert_eq!(broken.stored, hash);
        }
    }
}
