//! What the registry keeps besides blob bytes (which are CAS blobs): which blobs a repository
//! holds, its manifests (the exact bytes pushed), its tags and the referrers of its manifests.
//! Behind a trait, so another backend can hold them; every method blocks.

use bytes::Bytes;
use proto::Digest;

use super::names::{Repository, Sha256Digest};
use crate::error::Result;

/// A manifest as pushed: its media type and bytes, unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub bytes: Bytes,
}

/// Most referrers one subject may have in a repository: the referrers API lists them all in
/// one reply, so a push past it is refused rather than stored and silently left out (whoever
/// sorted first would decide what is listed).
pub(super) const MAX_REFERRERS: usize = 4096;

/// Most bytes the entry of one referrer takes in its subject's listing. A manifest may carry
/// 4 MiB of annotations; copied into every listing they made one GET build gigabytes, so
/// annotations that would take an entry past this are left out of it (the manifest keeps them).
pub(super) const MAX_DESCRIPTOR_BYTES: usize = 4 << 10;

/// Most bytes of a subject's referrer entries together: their listing is one image index, which
/// clients read within the manifest limit (4 MiB); the rest is room for the index around them.
pub(super) const MAX_REFERRERS_BYTES: usize = (4 << 20) - (16 << 10);

/// What a manifest push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestPut {
    Stored,
    /// The subject already has [`MAX_REFERRERS`], or its entries would take more than
    /// [`MAX_REFERRERS_BYTES`]; nothing was written.
    ReferrersFull,
    /// The manifest is stored already, with this other media type; nothing was written. A
    /// stored manifest never changes: its first push decides how every pull is answered.
    MediaTypeDiffers(String),
}

/// What a manifest push writes at once.
pub struct ManifestWrite<'a> {
    pub digest: Sha256Digest,
    pub manifest: &'a StoredManifest,
    pub tag: Option<&'a str>,
    /// The subject the manifest refers to, and the descriptor the referrers API lists for it.
    pub referrer: Option<(Sha256Digest, Vec<u8>)>,
}

pub trait RegistryRecords: Send + Sync + 'static {
    /// The CAS digest of the blob `sha256` in `repo`, if the repository holds it.
    fn blob(&self, repo: &Repository, sha256: &Sha256Digest) -> Result<Option<Digest>>;
    fn link_blob(&self, repo: &Repository, sha256: &Sha256Digest, digest: &Digest) -> Result<()>;
    /// Whether the repository held it.
    fn unlink_blob(&self, repo: &Repository, sha256: &Sha256Digest) -> Result<bool>;

    fn manifest(&self, repo: &Repository, digest: &Sha256Digest) -> Result<Option<StoredManifest>>;
    /// Stores the manifest (unless it is stored already), its tag and its referrer entry in
    /// one atomic write; nothing when the manifest is stored with another media type, or when
    /// the entry would be a new referrer of a subject whose referrers are full (see
    /// [`ManifestPut::ReferrersFull`]).
    fn put_manifest(&self, repo: &Repository, write: ManifestWrite<'_>) -> Result<ManifestPut>;
    /// Removes the manifest, the tags that point at it and its referrer entry (`subject`).
    /// Whether it was there.
    fn delete_manifest(
        &self,
        repo: &Repository,
        digest: &Sha256Digest,
        subject: Option<&Sha256Digest>,
    ) -> Result<bool>;

    fn tag(&self, repo: &Repository, tag: &str) -> Result<Option<Sha256Digest>>;
    fn delete_tag(&self, repo: &Repository, tag: &str) -> Result<bool>;
    /// At most `limit` tags, in lexical order, after `last`.
    fn tags(&self, repo: &Repository, last: Option<&str>, limit: usize) -> Result<Vec<String>>;

    /// The descriptors of at most `limit` manifests whose subject is `subject`, taking at most
    /// `max_bytes` together, each as [`listed_descriptor`] makes it.
    fn referrers(
        &self,
        repo: &Repository,
        subject: &Sha256Digest,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Vec<u8>>>;
}

/// A stored referrer entry as listed: entries stored before [`MAX_DESCRIPTOR_BYTES`] was
/// enforced lose their annotations, and are left out if that is not enough.
pub(super) fn listed_descriptor(stored: &[u8]) -> Option<Vec<u8>> {
    if stored.len() <= MAX_DESCRIPTOR_BYTES {
        return Some(stored.to_vec());
    }
    let mut descriptor: serde_json::Value = serde_json::from_slice(stored).ok()?;
    descriptor.as_object_mut()?.remove("annotations");
    let trimmed = descriptor.to_string().into_bytes();
    (trimmed.len() <= MAX_DESCRIPTOR_BYTES).then_some(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_stored_entries_are_listed_without_annotations_or_not_at_all() {
        let small = br#"{"digest":"sha256:00","annotations":{"a":"b"}}"#;
        assert_eq!(listed_descriptor(small).as_deref(), Some(&small[..]));
        let large = serde_json::json!({"digest": "sha256:00", "annotations": {"a": "x".repeat(1 << 20)}});
        assert_eq!(listed_descriptor(large.to_string().as_bytes()).unwrap(), br#"{"digest":"sha256:00"}"#);
        let hopeless = serde_json::json!({"digest": "sha256:00", "artifactType": "x".repeat(8 << 10)});
        assert_eq!(listed_descriptor(hopeless.to_string().as_bytes()), None);
    }
}
