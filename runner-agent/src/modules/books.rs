//! The store's books: which trees it holds, what they take, which running tasks hold them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use proto::Digest;

/// Refused zips remembered (32 bytes each) before the list starts over.
pub(super) const REFUSED_REMEMBERED: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Books {
    pub(super) cap: u64,
    /// What one task may make the agent extract.
    pub(super) task_share: u64,
    /// Bytes of the trees in the store (as [`super::extract::charge`] counts them), held or not.
    pub(super) total: u64,
    /// Bytes set aside for extractions under way.
    pub(super) reserved: u64,
    pub(super) clock: u64,
    /// zip digest → extracted tree
    pub(super) trees: HashMap<Digest, Tree>,
    /// Zips found not to extract as the go command would: left to it.
    pub(super) refused: HashSet<Digest>,
    /// Trees running tasks have linked (or are linking), and how many such tasks: never
    /// dropped, their blocks stay in use through the tasks' links.
    pub(super) in_use: HashMap<Digest, usize>,
}

impl Books {
    pub(super) fn remember_refused(&mut self, digest: Digest) {
        // Forgetting costs one more attempt at a zip; remembering every distinct one a
        // tenant sends would grow without bound.
        if self.refused.len() >= REFUSED_REMEMBERED {
            self.refused.clear();
        }
        self.refused.insert(digest);
    }

    /// Sets `bytes` aside for an extraction, first dropping the least recently used trees no
    /// task holds as far as needed; `None` when even that leaves too little room. The trees
    /// dropped are returned, for their directories to be removed.
    pub(super) fn reserve(&mut self, bytes: u64) -> Option<Vec<Digest>> {
        let fits = |books: &Self| books.total + books.reserved + bytes <= books.cap;
        let mut unheld: Vec<(u64, Digest, u64)> = self
            .trees
            .iter()
            .filter(|(digest, _)| !self.in_use.contains_key(*digest))
            .map(|(digest, tree)| (tree.used, *digest, tree.size))
            .collect();
        let freeable: u64 = unheld.iter().map(|(_, _, size)| size).sum();
        if self.total - freeable + self.reserved + bytes > self.cap {
            return None;
        }
        unheld.sort();
        let mut victims = Vec::new();
        for (_, digest, size) in unheld {
            if fits(self) {
                break;
            }
            self.trees.remove(&digest);
            self.total -= size;
            victims.push(digest);
        }
        self.reserved += bytes;
        Some(victims)
    }

    pub(super) fn hold(&mut self, digest: Digest) {
        *self.in_use.entry(digest).or_default() += 1;
    }
}

#[derive(Debug, Clone)]
pub(super) struct Tree {
    /// Paths relative to the module's directory; shared, so handing a tree to a task is cheap.
    pub(super) files: Arc<[String]>,
    /// `h1:` of the zip, as go.sum has it.
    pub(super) hash: String,
    /// Its cost on disk, as [`super::extract::charge`] counts it.
    pub(super) size: u64,
    pub(super) used: u64,
}

/// The trees a task linked into its module cache, held in the store (and in its count) until
/// this is dropped: drop it once the task's directory is removed.
#[derive(Debug)]
pub struct Linked {
    pub(super) books: Arc<Mutex<Books>>,
    pub(super) digests: Vec<Digest>,
}

impl Drop for Linked {
    fn drop(&mut self) {
        let mut books = self.books.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for digest in &self.digests {
            release(&mut books, *digest);
        }
    }
}

pub(super) fn release(books: &mut Books, digest: Digest) {
    if let Some(count) = books.in_use.get_mut(&digest) {
        *count -= 1;
        if *count == 0 {
            books.in_use.remove(&digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_zips_remembered_are_bounded() {
        let mut books = Books::default();
        let digests: Vec<Digest> =
            (0..=REFUSED_REMEMBERED as u32).map(|i| Digest::of(&i.to_le_bytes())).collect();
        for digest in &digests {
            books.remember_refused(*digest);
            assert!(books.refused.len() <= REFUSED_REMEMBERED);
        }
        let last = digests.last().unwrap();
        assert!(books.refused.contains(last), "the newest refusal is remembered");
        assert_eq!(books.refused.len(), 1, "the list started over once full");
    }

    #[test]
    fn room_is_made_from_the_least_recently_used_trees_no_task_holds() {
        let tree = |size, used| Tree { files: Arc::from([]), hash: String::new(), size, used };
        let (old, new, held) = (Digest::of(b"old"), Digest::of(b"new"), Digest::of(b"held"));
        let mut books = Books { cap: 100, total: 90, ..Books::default() };
        books.trees.insert(old, tree(30, 1));
        books.trees.insert(new, tree(30, 2));
        books.trees.insert(held, tree(30, 0));
        books.hold(held);
        assert_eq!(books.reserve(40), Some(vec![old]), "the oldest unheld tree goes, and only it");
        assert_eq!((books.total, books.reserved), (60, 40));
        assert_eq!(books.reserve(40), None, "the held tree is never dropped: no room");
        assert_eq!((books.total, books.reserved, books.trees.len()), (60, 40, 2), "nothing changed");
        release(&mut books, held);
        assert_eq!(books.reserve(40).map(|victims| victims.len()), Some(2), "released, it may go");
        assert_eq!((books.total, books.reserved), (0, 80));
    }
}
