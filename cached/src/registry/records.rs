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

/// What a manifest push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestPut {
    Stored,
    /// The subject already has [`MAX_REFERRERS`]; nothing was written.
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
    /// the entry would be a new referrer of a subject that has [`MAX_REFERRERS`] already.
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

    /// The descriptors of at most `limit` manifests whose subject is `subject`.
    fn referrers(&self, repo: &Repository, subject: &Sha256Digest, limit: usize) -> Result<Vec<Vec<u8>>>;
}
