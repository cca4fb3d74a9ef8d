//! Sealed personal payloads (crypto-shredding).
//!
//! A payload that names a subject is stored encrypted with that subject's own
//! AES-256-GCM key. Subject keys live in the mutable `subject_keys` table,
//! wrapped (encrypted) with the master key from configuration and looked up by
//! a keyed hash of (workspace, subject), so the table never holds the subject
//! in clear. Deleting a subject's key row erases every payload sealed with it;
//! the event rows, and so the hash chain, are untouched.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use sha2::{Digest, Sha256};
use uuid::Uuid;

const NONCE_LEN: usize = 12;

/// The key that wraps every subject key. 32 bytes, from configuration.
#[derive(Clone)]
pub struct MasterKey {
    bytes: [u8; 32],
    cipher: Aes256Gcm,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

/// A master key given in a form that is not 32 bytes of hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("master key: expected 64 hexadecimal characters (32 bytes), found {found} characters")]
pub struct InvalidMasterKey {
    /// How many characters were given.
    pub found: usize,
}

impl MasterKey {
    /// A master key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> MasterKey {
        MasterKey { bytes, cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)) }
    }

    /// A master key from 64 hexadecimal characters (surrounding whitespace is ignored).
    pub fn from_hex(text: &str) -> Result<MasterKey, InvalidMasterKey> {
        let text = text.trim();
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| InvalidMasterKey { found: text.len() })?;
        Ok(MasterKey::from_bytes(bytes))
    }

    /// A new random master key.
    pub fn generate() -> MasterKey {
        MasterKey::from_bytes(rand::random())
    }

    /// The key as 64 hexadecimal characters, for writing to a key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// A hash that identifies this key without revealing it, recorded in the
    /// database so a process with a different key is refused.
    pub fn fingerprint(&self) -> [u8; 16] {
        let mut hasher = Sha256::new();
        hasher.update(b"onepd master key check v1");
        hasher.update(self.bytes);
        let digest: [u8; 32] = hasher.finalize().into();
        digest[..16].try_into().expect("16 of 32 bytes")
    }

    /// The keyed hash under which a subject's key is stored.
    pub(crate) fn subject_hash(&self, workspace: Uuid, subject: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"onepd subject key v1");
        hasher.update(self.bytes);
        hasher.update(workspace.as_bytes());
        hasher.update(subject.as_bytes());
        hasher.finalize().into()
    }

    /// The keyed hash under which an erased person's identifier is kept on
    /// the suppression list: without the master key it cannot be reversed
    /// by trying candidate emails.
    pub(crate) fn suppression_hash(&self, workspace: Uuid, subject: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"onepd suppression v1");
        hasher.update(self.bytes);
        hasher.update(workspace.as_bytes());
        hasher.update(subject.as_bytes());
        hasher.finalize().into()
    }

    /// An HMAC-SHA256 of `bytes` under the key derived for `purpose` (no
    /// workspace): signatures of heads and exports.
    pub fn mac(&self, purpose: &str, bytes: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let key = self.derived(purpose, Uuid::nil());
        let mut mac = <hmac::Hmac<Sha256> as hmac::Mac>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    /// A key for `purpose` in `workspace`, derived so that it is never
    /// stored: the same for every process with this master key.
    pub(crate) fn derived(&self, purpose: &str, workspace: Uuid) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"onepd derived key v1");
        hasher.update(self.bytes);
        hasher.update(purpose.as_bytes());
        hasher.update([0]);
        hasher.update(workspace.as_bytes());
        hasher.finalize().into()
    }

    /// Makes a new subject key; returns the cipher and the key wrapped for storage.
    pub(crate) fn new_subject_key(&self, key_id: Uuid) -> (SubjectKey, Vec<u8>) {
        let key: [u8; 32] = rand::random();
        let wrapped = seal_with(&self.cipher, key_id.as_bytes(), &key);
        (SubjectKey::from_bytes(&key), wrapped)
    }

    /// Unwraps a stored subject key.
    pub(crate) fn unwrap_subject_key(&self, key_id: Uuid, wrapped: &[u8]) -> Result<SubjectKey, SealError> {
        let key = open_with(&self.cipher, key_id.as_bytes(), wrapped)?;
        if key.len() != 32 {
            return Err(SealError);
        }
        Ok(SubjectKey::from_bytes(&key))
    }
}

/// One subject's payload key.
#[derive(Clone)]
pub(crate) struct SubjectKey(Aes256Gcm);

impl SubjectKey {
    fn from_bytes(key: &[u8]) -> SubjectKey {
        SubjectKey(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)))
    }

    /// Seals a payload; the event id is bound in as associated data, so a
    /// sealed payload cannot be moved to another event.
    pub(crate) fn seal(&self, event_id: Uuid, plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.0, event_id.as_bytes(), plaintext)
    }

    /// Opens a payload sealed by [`SubjectKey::seal`].
    pub(crate) fn open(&self, event_id: Uuid, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        open_with(&self.0, event_id.as_bytes(), sealed)
    }
}

/// Sealed bytes that do not open with the key they name: the wrong master
/// key, or tampering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed bytes do not open with their key")]
pub(crate) struct SealError;

fn seal_with(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("AES-GCM encryption of an in-memory buffer does not fail");
    let mut sealed = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

fn open_with(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < NONCE_LEN {
        return Err(SealError);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad }).map_err(|_| SealError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_payload_opens_only_for_its_own_event() {
        let master = MasterKey::generate();
        let key_id = Uuid::now_v7();
        let (key, wrapped) = master.new_subject_key(key_id);
        let event = Uuid::now_v7();
        let sealed = key.seal(event, b"{\"email\":\"a@b.c\"}");
        assert!(!sealed.windows(5).any(|w| w == b"email"));
        let unwrapped = master.unwrap_subject_key(key_id, &wrapped).unwrap();
        assert_eq!(unwrapped.open(event, &sealed).unwrap(), b"{\"email\":\"a@b.c\"}");
        assert_eq!(unwrapped.open(Uuid::now_v7(), &sealed), Err(SealError));
    }

    #[test]
    fn a_subject_key_does_not_unwrap_with_another_master_key() {
        let key_id = Uuid::now_v7();
        let (_, wrapped) = MasterKey::generate().new_subject_key(key_id);
        assert!(MasterKey::generate().unwrap_subject_key(key_id, &wrapped).is_err());
    }

    #[test]
    fn master_keys_round_trip_through_hex_and_reject_short_input() {
        let key = MasterKey::generate();
        assert_eq!(MasterKey::from_hex(&key.to_hex()).unwrap().to_hex(), key.to_hex());
        assert_eq!(MasterKey::from_hex("abcd").unwrap_err(), InvalidMasterKey { found: 4 });
    }

    #[test]
    fn subject_hashes_differ_by_workspace() {
        let key = MasterKey::generate();
        assert_ne!(key.subject_hash(Uuid::from_u128(1), "u1"), key.subject_hash(Uuid::from_u128(2), "u1"));
    }
}
