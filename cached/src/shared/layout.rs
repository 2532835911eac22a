//! The bucket's layout, version 1. Every key starts with the configured prefix, then `v1/`:
//!
//! - `v1/cas/<blake3 hex>-<size>`: a blob, as the zstd frames the local tier keeps (replicas
//!   serve them without recompressing), each preceded by its length (u32, little-endian), then
//!   a trailer of `TRAILER_LEN` bytes: the SHA-256 of the blob's bytes (Go's OutputID of them),
//!   the frames' total length (u64, little-endian) and `TRAILER_MAGIC`. A blob's object is
//!   immutable: its key is its content.
//! - `v1/go/<namespace>/<ActionID hex>`: a Go action entry, in the local tier's encoding
//!   (`GoEntry::encode`). Stored only once its blob's object is in the bucket. The bridge's
//!   session lists are such entries, so fresh runners preload through any replica.
//! - `v1/purges/<namespace>`: word of the namespace's last purge, for the replicas that did not
//!   take it (`super::purges`): a line that changes with every purge, then the namespace.
//! - `v1/probe`: never written; health probes ask for it while the bucket does not answer.
//!
//! A later layout gets a new version directory; version 1 readers never look beyond `v1/`.

use object_store::path::{Path, PathPart};
use proto::{ActionId, Digest};

pub(super) const TRAILER_MAGIC: &[u8; 8] = b"cachedv1";
pub(super) const TRAILER_LEN: usize = 32 + 8 + TRAILER_MAGIC.len();
pub(super) const LENGTH_PREFIX: usize = 4;

#[derive(Debug, Clone)]
pub(super) struct Layout {
    root: Vec<PathPart<'static>>,
}

impl Layout {
    pub(super) fn new(prefix: &str) -> Self {
        let mut root: Vec<PathPart<'static>> = prefix
            .split('/')
            .filter(|part| !part.is_empty())
            .map(|part| PathPart::from(part.to_owned()))
            .collect();
        root.push(PathPart::from("v1"));
        Self { root }
    }

    fn path<'a>(&self, parts: impl IntoIterator<Item = PathPart<'a>>) -> Path {
        Path::from_iter(self.root.iter().cloned().chain(parts))
    }

    pub(super) fn blob(&self, digest: &Digest) -> Path {
        self.path([PathPart::from("cas"), PathPart::from(format!("{}-{}", digest.hex(), digest.size))])
    }

    pub(super) fn entry(&self, namespace: &str, action_id: &ActionId) -> Path {
        self.path([PathPart::from("go"), PathPart::from(namespace), PathPart::from(hex(&action_id.0))])
    }

    /// The word of `namespace`'s last purge.
    pub(super) fn purge_marker(&self, namespace: &str) -> Path {
        self.path([PathPart::from("purges"), PathPart::from(namespace)])
    }

    /// Where every purge marker lives.
    pub(super) fn purge_markers(&self) -> Path {
        self.path([PathPart::from("purges")])
    }

    /// A key nothing writes, which health probes ask for.
    pub(super) fn probe(&self) -> Path {
        self.path([PathPart::from("probe")])
    }

    /// Where every entry of `namespace` lives.
    pub(super) fn namespace(&self, namespace: &str) -> Path {
        self.path([PathPart::from("go"), PathPart::from(namespace)])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The trailer of a blob's object.
pub(super) fn trailer(sha256: &[u8; 32], frame_bytes: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(TRAILER_LEN);
    out.extend_from_slice(sha256);
    out.extend_from_slice(&frame_bytes.to_le_bytes());
    out.extend_from_slice(TRAILER_MAGIC);
    out
}

/// What a blob's trailer says, if it is one whose object has the size it implies.
pub(super) fn parse_trailer(digest: &Digest, trailer: &[u8], object_size: u64) -> Option<([u8; 32], u64)> {
    if trailer.len() != TRAILER_LEN || &trailer[40..] != TRAILER_MAGIC {
        return None;
    }
    let sha256: [u8; 32] = trailer[..32].try_into().ok()?;
    let frame_bytes = u64::from_le_bytes(trailer[32..40].try_into().ok()?);
    let framing = LENGTH_PREFIX as u64 * proto::frames::frame_count(digest.size) + TRAILER_LEN as u64;
    (frame_bytes.checked_add(framing) == Some(object_size)).then_some((sha256, frame_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let layout = Layout::new("team/ci");
        let digest = Digest::of(b"x");
        assert_eq!(layout.blob(&digest).as_ref(), format!("team/ci/v1/cas/{}-1", digest.hex()));
        let entry = layout.entry("org/main", &ActionId([0xab; 32]));
        assert_eq!(entry.as_ref(), format!("team/ci/v1/go/org%2Fmain/{}", "ab".repeat(32)));
        assert!(entry.prefix_matches(&layout.namespace("org/main")));
        assert_eq!(Layout::new("").blob(&digest).as_ref(), format!("v1/cas/{}-1", digest.hex()));
    }

    #[test]
    fn a_trailer_must_match_the_object_it_ends() {
        let digest = Digest::of(b"abc");
        let bytes = trailer(&[7; 32], 12);
        let size = 12 + 4 + TRAILER_LEN as u64;
        assert_eq!(parse_trailer(&digest, &bytes, size), Some(([7; 32], 12)));
        assert_eq!(parse_trailer(&digest, &bytes, size + 1), None, "a truncated or padded object");
        let mut flipped = bytes.clone();
        flipped[45] ^= 1;
        assert_eq!(parse_trailer(&digest, &flipped, size), None);
    }
}
