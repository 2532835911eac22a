//! What the registry keeps besides blob bytes (which are CAS blobs): which blobs a repository
//! holds, its manifests (the exact bytes pushed), its tags and the referrers of its manifests.
//! Behind a trait, so another backend can hold them; every method blocks.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// Stored, adding `counted` bytes of new records (0 when all of it was stored already).
    Stored { counted: u64 },
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

impl ManifestWrite<'_> {
    /// Whether the push leaves the manifest [loose](OrderRow::loose): pushed by digest, without
    /// a subject, it needed only `cas-write`.
    pub(super) fn is_loose(&self) -> bool {
        self.tag.is_none() && self.referrer.is_none()
    }
}

/// Every record a push adds (a blob link, a manifest with its referrer entry, a tag) also adds
/// an order row: when it was written ([`order_time`], i64 BE) · 16 bytes of the BLAKE3 of what it names →
/// the bytes it counts (u64 BE) · what it names ([`Recorded`]), loose or kept (see
/// [`OrderRow::loose`]). The registry forgets the oldest beyond `max_registry_records`
/// (`super::retention`), loose ones first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Blob {
        repo: Repository,
        sha256: Sha256Digest,
    },
    /// A manifest, and the subject whose referrer it is.
    Manifest {
        repo: Repository,
        digest: Sha256Digest,
        subject: Option<Sha256Digest>,
    },
    /// A tag and the manifest it named: moved since, it is another row's to forget.
    Tag {
        repo: Repository,
        tag: String,
        digest: Sha256Digest,
    },
}

/// An order row as read back: what it counts and names (`None`: unreadable, only the row goes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRow {
    pub key: Vec<u8>,
    pub size: u64,
    pub recorded: Option<Recorded>,
    /// A blob link or a manifest pushed by digest that nothing kept names yet: `cas-write` may
    /// push those without end, so they are forgotten before any record a tag or a signature
    /// (`ac-write`) reaches, and cannot make a namespace forget those. An unreadable row is
    /// loose.
    pub loose: bool,
    /// The row's value as read: a forget goes ahead only while the row still holds it.
    pub value: Vec<u8>,
}

/// What a forget removed: records, and the bytes of the rows that named them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    pub records: u64,
    pub bytes: u64,
}

/// The kind bytes of loose records (blob links and manifests without a subject; tags and
/// referrers are never loose): the kept kind in lower case. Rows written before there were
/// loose ones read as kept, as protected as they were.
const LOOSE_BLOB: u8 = b'b';
const LOOSE_MANIFEST: u8 = b'm';

/// Where the key of a row given to a record written before there were rows starts: before
/// every other, so those are forgotten first.
pub(super) const UNKNOWN_TIME: i64 = 0;

/// The time of a row written now: microseconds since the epoch, and after every row this
/// process wrote before, so its rows keep the order they were written in (across replicas,
/// their clocks order them).
pub(super) fn order_time() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let previous = LAST.fetch_max(now, Ordering::Relaxed);
    if previous < now {
        return now;
    }
    LAST.fetch_add(1, Ordering::Relaxed) + 1
}

impl Recorded {
    /// What names the record, its subject aside: kind, repository, digest, tag.
    fn identity(&self) -> Vec<u8> {
        let (kind, repo, digest) = match self {
            Self::Blob { repo, sha256 } => (b'B', repo, sha256),
            Self::Manifest { repo, digest, .. } => (b'M', repo, digest),
            Self::Tag { repo, digest, .. } => (b'T', repo, digest),
        };
        let mut out = vec![kind];
        out.extend_from_slice(&(repo.as_str().len() as u16).to_be_bytes());
        out.extend_from_slice(repo.as_str().as_bytes());
        out.extend_from_slice(&digest.0);
        if let Self::Tag { tag, .. } = self {
            out.extend_from_slice(tag.as_bytes());
        }
        out
    }

    fn encode(&self, loose: bool) -> Vec<u8> {
        let mut out = self.identity();
        match self {
            Self::Blob { .. } if loose => out[0] = LOOSE_BLOB,
            Self::Manifest { subject: None, .. } if loose => out[0] = LOOSE_MANIFEST,
            Self::Manifest { subject: Some(subject), .. } => out.extend_from_slice(&subject.0),
            _ => {}
        }
        out
    }

    /// The record and whether it is loose.
    fn decode(bytes: &[u8]) -> Option<(Self, bool)> {
        let (&kind, rest) = bytes.split_first()?;
        let (kind, loose) = match kind {
            LOOSE_BLOB => (b'B', true),
            LOOSE_MANIFEST => (b'M', true),
            kind => (kind, false),
        };
        Some((Self::decode_kind(kind, rest)?, loose))
    }

    fn decode_kind(kind: u8, rest: &[u8]) -> Option<Self> {
        let (len, rest) = rest.split_first_chunk::<2>()?;
        let (repo, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*len)))?;
        let repo = Repository::parse(std::str::from_utf8(repo).ok()?).ok()?;
        let (digest, rest) = rest.split_first_chunk::<32>()?;
        let digest = Sha256Digest(*digest);
        match kind {
            b'B' if rest.is_empty() => Some(Self::Blob { repo, sha256: digest }),
            b'M' => {
                let subject = match rest {
                    [] => None,
                    subject => Some(Sha256Digest(subject.try_into().ok()?)),
                };
                Some(Self::Manifest { repo, digest, subject })
            }
            b'T' => Some(Self::Tag { repo, tag: String::from_utf8(rest.to_vec()).ok()?, digest }),
            _ => None,
        }
    }

    /// The key of the pointer to this record's row: [`POINTERS`] and 16 bytes of the BLAKE3 of
    /// its identity, → the time of its row (i64 BE).
    pub(super) fn pointer_key(&self) -> Vec<u8> {
        let mut key = vec![POINTERS];
        key.extend_from_slice(&blake3::hash(&self.identity()).as_bytes()[..16]);
        key
    }

    /// The order row (key, value) of this record at `time`, taking `size` bytes besides
    /// the row and its pointer, which count too.
    fn row(&self, time: i64, size: u64, loose: bool) -> (Vec<u8>, Vec<u8>) {
        let key = row_key(time, &self.pointer_key());
        let named = self.encode(loose);
        let counted = size + (key.len() + 8 + named.len() + 24) as u64;
        let mut value = counted.to_be_bytes().to_vec();
        value.extend_from_slice(&named);
        (key, value)
    }
}

/// Pointers sort after every row and the marker: a walk of the rows stops before them.
pub(super) const POINTERS: u8 = 0xff;

/// A row's key: its time and the hash its pointer's key ends with.
pub(super) fn row_key(time: i64, pointer_key: &[u8]) -> Vec<u8> {
    let mut key = time.to_be_bytes().to_vec();
    key.extend_from_slice(&pointer_key[1..]);
    key
}

/// The key of the pointer to the row `row_key`.
pub(super) fn pointer_of(row_key: &[u8]) -> Vec<u8> {
    let mut key = vec![POINTERS];
    key.extend_from_slice(&row_key[8..]);
    key
}

/// Where a record's row goes, and what that adds to the count.
#[derive(Debug, Default)]
pub(super) struct Placement {
    pub delete: Option<Vec<u8>>,
    pub put: Vec<(Vec<u8>, Vec<u8>)>,
    pub counted: u64,
}

/// How a record is written: `size` bytes (`None`: written already, only used or pushed
/// again) and whether this write leaves it [loose](OrderRow::loose). A record written already
/// and kept stays kept: pushing it again by digest takes nothing from what a tag vouched for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    pub(super) size: Option<u64>,
    pub(super) loose: bool,
}

impl Written {
    /// A record only used: its row moves, loose or kept as it was.
    pub(super) const USED: Self = Self { size: None, loose: true };
    /// A record a tag or a referrer reaches, used: its row moves, and is kept.
    pub(super) const KEPT: Self = Self { size: None, loose: false };

    pub(super) fn new(size: Option<usize>, loose: bool) -> Self {
        Self { size: size.map(|size| size as u64), loose }
    }
}

/// Places `recorded`'s row at `time`, given its row now (`current`, found through its
/// pointer): a record written (`size` of bytes) gets a row, or its row anew; a record only
/// used (`size` `None`) has its row moved to `time`, if it has one, and stays loose or kept as
/// it was. One row per record: the oldest rows are the records longest unwritten and unused.
pub(super) fn place(
    recorded: &Recorded,
    time: i64,
    written: Written,
    current: Option<(Vec<u8>, Vec<u8>)>,
) -> Placement {
    let Written { size, loose } = written;
    let pointer = (recorded.pointer_key(), time.to_be_bytes().to_vec());
    match (size, current) {
        (None, None) => Placement::default(),
        (Some(size), None) => {
            let (key, value) = recorded.row(time, size, loose);
            let counted = OrderRow::parse(&key, &value).size;
            Placement { delete: None, put: vec![(key, value), pointer], counted }
        }
        (size, Some((old_key, old_value))) => {
            let (key, value) = match size {
                Some(size) => recorded.row(time, size, loose),
                None if loose => (row_key(time, &recorded.pointer_key()), old_value.clone()),
                None => {
                    let kept = kept_value(&old_value).unwrap_or_else(|| old_value.clone());
                    (row_key(time, &recorded.pointer_key()), kept)
                }
            };
            let counted =
                OrderRow::parse(&key, &value).size.saturating_sub(OrderRow::parse(&old_key, &old_value).size);
            let delete = (old_key != key).then_some(old_key);
            Placement { delete, put: vec![(key, value), pointer], counted }
        }
    }
}

impl OrderRow {
    pub(super) fn parse(key: &[u8], value: &[u8]) -> Self {
        let (size, named) = value
            .split_first_chunk::<8>()
            .map_or((0, &[][..]), |(size, named)| (u64::from_be_bytes(*size), named));
        let (recorded, loose) = Recorded::decode(named).map_or((None, true), |(r, loose)| (Some(r), loose));
        Self { key: key.to_vec(), size, recorded, loose, value: value.to_vec() }
    }
}

/// A loose row's value made kept (`None` when it is kept already): the same size and record.
pub(super) fn kept_value(value: &[u8]) -> Option<Vec<u8>> {
    let kind = *value.get(8)?;
    if !matches!(kind, LOOSE_BLOB | LOOSE_MANIFEST) {
        return None;
    }
    let mut kept = value.to_vec();
    kept[8] = kind.to_ascii_uppercase();
    Some(kept)
}

/// The row a pointer's value (its time) points at, if it is one.
pub(super) fn pointed_row(pointer_key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    let time = i64::from_be_bytes(value.try_into().ok()?);
    Some(row_key(time, pointer_key))
}

/// Whether `key` is an order row's (the marker that rows were given to earlier records is not).
pub(super) fn is_order_key(key: &[u8]) -> bool {
    key.len() == 24
}

/// The marker, in the order table, that records written before there were rows have theirs.
pub(super) const ORDER_MARKER: &[u8] = b"order v1";

pub trait RegistryRecords: Send + Sync + 'static {
    /// The CAS digest of the blob `sha256` in `repo`, if the repository holds it.
    fn blob(&self, repo: &Repository, sha256: &Sha256Digest) -> Result<Option<Digest>>;
    /// Links the blob (a link already there is left as it is); returns the bytes of records
    /// it added.
    fn link_blob(&self, repo: &Repository, sha256: &Sha256Digest, digest: &Digest) -> Result<u64>;
    /// Whether the repository held it.
    fn unlink_blob(&self, repo: &Repository, sha256: &Sha256Digest) -> Result<bool>;

    fn manifest(&self, repo: &Repository, digest: &Sha256Digest) -> Result<Option<StoredManifest>>;
    /// Whether the repository holds the manifest, without reading its bytes out: an index may
    /// name thousands of children, each up to 4 MiB.
    fn has_manifest(&self, repo: &Repository, digest: &Sha256Digest) -> Result<bool>;
    /// `blob` for each of `sha256s`, in order: a backend across the network answers them in
    /// one round trip (a manifest names up to [`super::manifests::MAX_REFERENCES`]).
    fn blobs(&self, repo: &Repository, sha256s: &[Sha256Digest]) -> Result<Vec<Option<Digest>>> {
        sha256s.iter().map(|sha256| self.blob(repo, sha256)).collect()
    }
    /// `has_manifest` for each of `digests`, in order, as `blobs`.
    fn has_manifests(&self, repo: &Repository, digests: &[Sha256Digest]) -> Result<Vec<bool>> {
        digests.iter().map(|digest| self.has_manifest(repo, digest)).collect()
    }
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

    /// At most `limit` order rows, oldest first, from the first after `after` on.
    fn oldest(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<OrderRow>>;

    /// Moves the rows of `recorded`, records a push used (the blobs and manifests a manifest
    /// names), to now: the oldest rows are of records longest unwritten and unused. Returns
    /// those the registry no longer holds, checked in one step with the move: a forget that
    /// read a row before it finds the row moved and leaves the record, one after it finds the
    /// record newer than what it removes first.
    fn touch(&self, recorded: &[Recorded]) -> Result<Vec<Recorded>>;

    /// As [`RegistryRecords::touch`], and makes the rows kept (see [`OrderRow::loose`]):
    /// `recorded` are records a tag or a referrer reaches.
    fn keep(&self, recorded: &[Recorded]) -> Result<Vec<Recorded>>;

    /// Gives an order row (at [`UNKNOWN_TIME`]) to every record written before there were rows,
    /// unless the [`ORDER_MARKER`] says that was done. Doing it again adds nothing.
    fn give_order_rows(&self) -> Result<()>;

    /// Removes the records `rows` name, each only as its row recorded it, and the rows: each
    /// only while its row is as it was read, in one step with the check. A push since may have
    /// made the row kept (a tag now reaches the record) or moved it (a push used the record):
    /// what it names stays then, as the push left it.
    fn forget(&self, rows: &[OrderRow]) -> Result<Forgotten>;
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
