//! On-disk encodings of keys and values. Every value starts with a format version byte so a
//! future layout can be recognised rather than misread.

use proto::Digest;

use crate::error::{Error, Result};

/// The digest function a key was made with, as its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum DigestFunction {
    Blake3 = 1,
}

/// Key of a blob: digest function tag + hash. The size lives in the value and is checked on
/// every lookup, so a digest with the right hash and a wrong size is a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobKey([u8; 33]);

impl BlobKey {
    pub fn blake3(digest: &Digest) -> Self {
        let mut key = [0u8; 33];
        key[0] = DigestFunction::Blake3 as u8;
        key[1..].copy_from_slice(&digest.hash);
        Self(key)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let key: [u8; 33] =
            bytes.try_into().map_err(|_| Error::Corrupt(format!("blob key of {} bytes", bytes.len())))?;
        if key[0] != DigestFunction::Blake3 as u8 {
            return Err(Error::Corrupt(format!("unknown digest function tag {}", key[0])));
        }
        Ok(Self(key))
    }

    pub fn hash(&self) -> [u8; 32] {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&self.0[1..]);
        hash
    }
}

/// Metadata before blobs carried their SHA-256. Such a blob is a miss (see `BlobMeta::sha256`)
/// and the next upload of its digest replaces it.
const META_V1: u8 = 1;
const META_V1_LEN: usize = 1 + 8 * 4;
/// Metadata before blobs were charged to an owner: their owner is [`UNATTRIBUTED`].
const META_V2: u8 = 2;
const META_V2_LEN: usize = META_V1_LEN + 32;
const META_VERSION: u8 = 3;
const META_LEN: usize = META_V2_LEN + 8;

/// The owner of blobs stored before there were owners, and of those the server stores for
/// itself (no caller).
pub(crate) const UNATTRIBUTED: u64 = 0;

/// The owner a blob stored for `name` (a token, or the share of a tenant's leases) is charged
/// to: 8 bytes of the name's BLAKE3, never [`UNATTRIBUTED`] for a name.
pub(crate) fn owner_id(name: &str) -> u64 {
    if name.is_empty() {
        return UNATTRIBUTED;
    }
    u64_be(&blake3::hash(name.as_bytes()).as_bytes()[..8]).max(1)
}

/// What the store knows about one committed blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobMeta {
    /// Uncompressed size.
    pub size: u64,
    /// Bytes of the stored frames.
    pub stored_bytes: u64,
    /// The upload whose chunks hold the frames. Never reused, so a chunk key either holds this
    /// blob's frame or nothing.
    pub upload_id: u64,
    /// Last access, milliseconds since the Unix epoch, updated lazily.
    pub atime_ms: u64,
    /// SHA-256 of the uncompressed bytes, taken while the upload was verified. `None` for a
    /// blob stored before that (version 1), whose frames were also never checked for padding:
    /// it is treated as absent.
    pub sha256: Option<[u8; 32]>,
    /// Whom the blob is charged to ([`owner_id`]): who stored it first.
    pub owner: u64,
}

impl BlobMeta {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(META_LEN);
        out.push(if self.sha256.is_some() { META_VERSION } else { META_V1 });
        for value in [self.size, self.stored_bytes, self.upload_id, self.atime_ms] {
            out.extend_from_slice(&value.to_be_bytes());
        }
        if let Some(sha256) = &self.sha256 {
            out.extend_from_slice(sha256);
            out.extend_from_slice(&self.owner.to_be_bytes());
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let sha256_at = |bytes: &[u8]| {
            let mut sha256 = [0u8; 32];
            sha256.copy_from_slice(&bytes[META_V1_LEN..META_V2_LEN]);
            Some(sha256)
        };
        let (sha256, owner) = match (bytes.first(), bytes.len()) {
            (Some(&META_V1), META_V1_LEN) => (None, UNATTRIBUTED),
            (Some(&META_V2), META_V2_LEN) => (sha256_at(bytes), UNATTRIBUTED),
            (Some(&META_VERSION), META_LEN) => (sha256_at(bytes), u64_be(&bytes[META_V2_LEN..])),
            _ => {
                return Err(Error::Corrupt(format!(
                    "blob metadata of {} bytes with version {:?}",
                    bytes.len(),
                    bytes.first()
                )));
            }
        };
        let field = |i: usize| u64_be(&bytes[1 + 8 * i..9 + 8 * i]);
        Ok(Self {
            size: field(0),
            stored_bytes: field(1),
            upload_id: field(2),
            atime_ms: field(3),
            sha256,
            owner,
        })
    }
}

pub(crate) fn chunk_key(upload_id: u64, frame: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&upload_id.to_be_bytes());
    key[8..].copy_from_slice(&(frame as u32).to_be_bytes());
    key
}

/// The key of a blob in the access order: its owner, then its last access, so that each
/// owner's blobs are listed oldest first.
pub(crate) fn lru_key(owner: u64, atime_ms: u64, blob: &BlobKey) -> [u8; LRU_KEY_LEN] {
    let mut key = [0u8; LRU_KEY_LEN];
    key[..8].copy_from_slice(&owner.to_be_bytes());
    key[8..16].copy_from_slice(&atime_ms.to_be_bytes());
    key[16..].copy_from_slice(blob.as_bytes());
    key
}

pub(crate) const LRU_KEY_LEN: usize = 16 + 33;
/// The key of a blob in the access order before there were owners: last access, blob key.
pub(crate) const UNOWNED_LRU_KEY_LEN: usize = 8 + 33;

pub(crate) fn u64_be(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_rejects_other_versions() {
        let meta = BlobMeta {
            size: 5,
            stored_bytes: 9,
            upload_id: 7,
            atime_ms: 11,
            sha256: Some([3; 32]),
            owner: 13,
        };
        let mut encoded = meta.encode();
        assert_eq!(BlobMeta::decode(&encoded).unwrap(), meta);
        encoded[0] = 4;
        assert!(BlobMeta::decode(&encoded).is_err());

        let before_owners = &meta.encode()[..META_V2_LEN];
        let mut before_owners = before_owners.to_vec();
        before_owners[0] = META_V2;
        assert_eq!(BlobMeta::decode(&before_owners).unwrap(), BlobMeta { owner: UNATTRIBUTED, ..meta });

        let legacy = BlobMeta { sha256: None, owner: UNATTRIBUTED, ..meta };
        let mut encoded = legacy.encode();
        assert_eq!(encoded.len(), META_V1_LEN);
        assert_eq!(BlobMeta::decode(&encoded).unwrap(), legacy);
        encoded[0] = META_VERSION;
        assert!(BlobMeta::decode(&encoded).is_err(), "a version 3 record without its SHA-256");
    }
}
