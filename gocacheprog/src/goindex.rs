//! go's module index entries, which no other machine and no untrusted session may answer with.
//!
//! The go command keeps an index of each package it loads in its cache: the package's files,
//! their build constraints, imports and `#cgo` lines. The entry's ID is the package
//! directory's path with its files' names, sizes and modification times, and for a module in
//! the module cache the directory's path alone (cmd/go/internal/modindex). Neither says what
//! the files hold, so an entry is true only of the machine that wrote it: served from cached,
//! a runner whose module cache was edited would tell every runner with the same GOMODCACHE
//! path which files and `#cgo` flags honest modules have, and a pull request's session would
//! list main's files for a tree of the same names, sizes and times (its commit time chosen, a
//! content of the same size ground to match). So the bridge uploads none, lands none from
//! cached, and a session that trusts none of its work takes none from any record: go then
//! indexes the files that are there.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// What every index entry starts with: `indexVersion` (`go index v2` in Go 1.26), whatever
/// its version, so that a later format is not taken for a shareable body.
const MAGIC: &[u8] = b"go index v";

/// Whether a body's first bytes are those of an index entry.
pub(crate) fn starts_index(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// Whether the body at `path` (`size` bytes) is an index entry. One that cannot be read counts
/// as one: it is then neither shared nor taken.
pub(crate) fn is_index(path: &Path, size: u64) -> bool {
    if size < MAGIC.len() as u64 {
        return false;
    }
    let mut head = [0u8; MAGIC.len()];
    match File::open(path).and_then(|mut file| file.read_exact(&mut head)) {
        Ok(()) => starts_index(&head),
        Err(_) => true,
    }
}

/// A body's first bytes as they pass (a put, a landing), which tell an index entry without
/// reading the file again.
#[derive(Default)]
pub(crate) struct Head {
    bytes: Vec<u8>,
    /// Whether the whole body passed through [`Head::take`].
    pub(crate) complete: bool,
}

impl Head {
    pub(crate) fn take(&mut self, piece: &[u8]) {
        let wanted = MAGIC.len().saturating_sub(self.bytes.len()).min(piece.len());
        self.bytes.extend_from_slice(&piece[..wanted]);
    }

    /// The head, when the body's bytes were seen (not a body already here).
    pub(crate) fn known(&self) -> Option<&[u8]> {
        self.complete.then_some(self.bytes.as_slice())
    }

    /// Whether the bytes seen start an index entry.
    pub(crate) fn is_index(&self) -> bool {
        starts_index(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_are_known_by_their_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let (index, object) = (dir.path().join("index"), dir.path().join("object"));
        std::fs::write(&index, b"go index v2\n\0\0\0\0packages").unwrap();
        std::fs::write(&object, b"!<arch>\n__.PKGDEF").unwrap();
        assert!(is_index(&index, 20));
        assert!(!is_index(&object, 17));
        assert!(!is_index(&object, 3), "too short to be one");
        assert!(is_index(&dir.path().join("gone"), 20), "unreadable counts as one");
    }
}
