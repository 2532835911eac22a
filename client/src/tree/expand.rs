//! The pure part of reading a source tree back: `Directory` messages (already fetched, by
//! digest) expanded into the files, directories and links a runner agent writes, with every
//! check a tree from anyone with `cas-write` needs before it touches a disk.
//!
//! - Caps on entries, path bytes, depth, path length and name length, counting a directory
//!   every time it appears: a Directory naming the same child twice, twenty levels deep, is a
//!   million directories from twenty blobs. The caps are measured per distinct blob first
//!   (memoised by digest), so a tree over them is refused before anything is expanded.
//! - Names are single path components of at most 255 bytes, each at most once per directory.
//! - Every symlink is resolved as the kernel would, through the tree's other links (`a/b -> ..`
//!   makes `a/b/a/b/..` the root's parent), with a hop limit, and refused if it leaves the tree
//!   at any point. [`ExpandedTree::resolve`] does the same for paths such as the module
//!   directory.
//!
//! No I/O here: `tree::read_tree` fetches the blobs, and the `tree` fuzz target drives this
//! directly.

use std::collections::{HashMap, HashSet};

use proto::Digest;
use proto::platform::check_entry_name;
use proto::v1::Directory;

/// What a tree may hold. The defaults fit any real module (and Linux's own limits on names and
/// paths); the entry cap is the one an operator may want to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeLimits {
    /// Files, directories and links, a shared directory counted every time it appears.
    pub max_entries: u64,
    /// Sum of every entry's path length, and of every link's target.
    pub max_path_bytes: u64,
    /// Directories from the root to the deepest entry.
    pub max_depth: u32,
    /// Longest path of an entry, and longest link target (PATH_MAX).
    pub max_path_len: u64,
    /// Longest name (NAME_MAX).
    pub max_name_len: usize,
    /// Sum of the sizes of the distinct Directory blobs (what fetching them holds in memory).
    pub max_directory_bytes: u64,
    /// Links followed while resolving one link (the kernel's MAXSYMLINKS).
    pub max_link_hops: u32,
}

impl Default for TreeLimits {
    fn default() -> Self {
        Self {
            max_entries: 500_000,
            max_path_bytes: 64 << 20,
            max_depth: 256,
            max_path_len: 4096,
            max_name_len: 255,
            max_directory_bytes: 64 << 20,
            max_link_hops: 40,
        }
    }
}

/// Why a tree was refused. Each names what was wrong; a cap names the cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error(
        "the tree exceeds the cap on {cap} ({limit}), counting a shared directory every time it appears; \
         nothing was written"
    )]
    OverCap { cap: &'static str, limit: u64 },
    #[error("directory {0} is not in the cache (was the tree uploaded?)")]
    Missing(Digest),
    #[error("directory {digest} is not a Directory message: {reason}")]
    Malformed { digest: Digest, reason: String },
    #[error("directory {digest} contains itself")]
    Cycle { digest: Digest },
    #[error("in {dir:?}: {reason}")]
    BadName { dir: String, reason: String },
    #[error("directory {dir:?} names {name:?} more than once")]
    Duplicate { dir: String, name: String },
    #[error(
        "symlink {path} -> {target} resolves outside the tree (through the tree's own links); the tree was refused"
    )]
    LinkLeaves { path: String, target: String },
    #[error("symlink {path} -> {target}: {reason}")]
    BadLink { path: String, target: String, reason: String },
    #[error("{what} {path:?} resolves outside the tree")]
    PathLeaves { what: String, path: String },
}

/// One entry of an expanded tree, by its `/`-separated path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File { path: String, digest: Digest, executable: bool },
    Dir { path: String },
    Symlink { path: String, target: String },
}

impl Node {
    pub fn path(&self) -> &str {
        match self {
            Self::File { path, .. } | Self::Dir { path } | Self::Symlink { path, .. } => path,
        }
    }

    /// The directory the entry is in ("" for the root).
    pub fn parent(&self) -> &str {
        self.path().rsplit_once('/').map_or("", |(parent, _)| parent)
    }

    pub fn name(&self) -> &str {
        self.path().rsplit_once('/').map_or(self.path(), |(_, name)| name)
    }
}

/// A checked tree: its entries (each directory's entries together, after the directory's own
/// entry, parents before children) and an index to resolve paths through its links.
#[derive(Debug)]
pub struct ExpandedTree {
    pub nodes: Vec<Node>,
    index: Index,
    limits: TreeLimits,
}

/// Sizes of a directory's subtree, relative to the directory.
#[derive(Debug, Clone, Copy, Default)]
struct Measure {
    entries: u64,
    path_bytes: u64,
    depth: u32,
    longest: u64,
}

/// Checks and expands the tree `root` from `directories` (every distinct Directory it names).
pub fn expand(
    root: Digest,
    directories: &HashMap<Digest, Directory>,
    limits: &TreeLimits,
) -> Result<ExpandedTree, TreeError> {
    let mut measurer = Measurer { directories, limits, done: HashMap::new(), open: HashSet::new() };
    let total = measurer.measure(root, 0)?;
    check_caps(&total, limits)?;
    let nodes = expand_nodes(root, directories)?;
    let index = Index::build(&nodes);
    let tree = ExpandedTree { nodes, index, limits: *limits };
    tree.check_links()?;
    Ok(tree)
}

fn check_caps(total: &Measure, limits: &TreeLimits) -> Result<(), TreeError> {
    let over = |cap, limit| Err(TreeError::OverCap { cap, limit });
    if total.entries > limits.max_entries {
        return over("entries", limits.max_entries);
    }
    if total.path_bytes > limits.max_path_bytes {
        return over("path bytes", limits.max_path_bytes);
    }
    if total.depth > limits.max_depth {
        return over("depth", u64::from(limits.max_depth));
    }
    if total.longest > limits.max_path_len {
        return over("path length", limits.max_path_len);
    }
    Ok(())
}

struct Measurer<'a> {
    directories: &'a HashMap<Digest, Directory>,
    limits: &'a TreeLimits,
    done: HashMap<Digest, Measure>,
    /// Directories being measured: one seen again is its own ancestor.
    open: HashSet<Digest>,
}

impl Measurer<'_> {
    /// The subtree sizes of `digest` at `level` directories below the root, checking each
    /// distinct directory once. Saturating: a bomb's sizes overflow u64.
    fn measure(&mut self, digest: Digest, level: u32) -> Result<Measure, TreeError> {
        if level > self.limits.max_depth {
            return Err(TreeError::OverCap { cap: "depth", limit: u64::from(self.limits.max_depth) });
        }
        if let Some(done) = self.done.get(&digest) {
            return Ok(*done);
        }
        if !self.open.insert(digest) {
            return Err(TreeError::Cycle { digest });
        }
        let dir = self.directories.get(&digest).ok_or(TreeError::Missing(digest))?;
        check_directory(digest, dir, self.limits)?;
        let mut measure = Measure::default();
        for (name, extra) in dir
            .files
            .iter()
            .map(|file| (&file.name, 0))
            .chain(dir.symlinks.iter().map(|link| (&link.name, link.target.len() as u64)))
        {
            let len = name.len() as u64;
            measure.entries = measure.entries.saturating_add(1);
            measure.path_bytes = measure.path_bytes.saturating_add(len).saturating_add(extra);
            measure.depth = measure.depth.max(1);
            measure.longest = measure.longest.max(len);
        }
        for child in &dir.directories {
            let child_digest = Digest::from_wire(child.digest.as_ref())
                .map_err(|err| TreeError::Malformed { digest, reason: format!("{:?}: {err}", child.name) })?;
            let sub = self.measure(child_digest, level + 1)?;
            let len = child.name.len() as u64;
            measure.entries = measure.entries.saturating_add(1).saturating_add(sub.entries);
            measure.path_bytes = measure
                .path_bytes
                .saturating_add(len)
                .saturating_add(sub.entries.saturating_mul(len + 1))
                .saturating_add(sub.path_bytes);
            measure.depth = measure.depth.max(sub.depth.saturating_add(1));
            measure.longest = measure.longest.max(if sub.entries == 0 { len } else { len + 1 + sub.longest });
            // Fail as soon as a part is over a cap, not after measuring the rest.
            check_caps(&measure, self.limits)?;
        }
        self.open.remove(&digest);
        self.done.insert(digest, measure);
        Ok(measure)
    }
}

/// One directory on its own: names valid, each once; digests well-formed; link targets sane.
fn check_directory(digest: Digest, dir: &Directory, limits: &TreeLimits) -> Result<(), TreeError> {
    let here = format!("directory {digest}");
    let mut names = HashSet::new();
    let all = dir
        .files
        .iter()
        .map(|f| &f.name)
        .chain(dir.directories.iter().map(|d| &d.name))
        .chain(dir.symlinks.iter().map(|l| &l.name));
    for name in all {
        if name.len() > limits.max_name_len {
            return Err(TreeError::OverCap { cap: "name length", limit: limits.max_name_len as u64 });
        }
        check_entry_name(name).map_err(|reason| TreeError::BadName { dir: here.clone(), reason })?;
        if !names.insert(name.as_str()) {
            return Err(TreeError::Duplicate { dir: here, name: name.clone() });
        }
    }
    for file in &dir.files {
        Digest::from_wire(file.digest.as_ref())
            .map_err(|err| TreeError::Malformed { digest, reason: format!("{:?}: {err}", file.name) })?;
    }
    for link in &dir.symlinks {
        let bad = |reason: &str| TreeError::BadLink {
            path: link.name.clone(),
            target: link.target.clone(),
            reason: reason.to_owned(),
        };
        if link.target.is_empty() || link.target.contains('\0') {
            return Err(bad("a link target is a non-empty path without NUL"));
        }
        if link.target.len() as u64 > limits.max_path_len {
            return Err(TreeError::OverCap { cap: "path length", limit: limits.max_path_len });
        }
    }
    Ok(())
}

/// The entries, directory by directory (breadth first): each directory's entry, later its own
/// entries together. Only called once the caps hold, so its size is bounded.
fn expand_nodes(root: Digest, directories: &HashMap<Digest, Directory>) -> Result<Vec<Node>, TreeError> {
    let mut nodes = Vec::new();
    let mut queue = std::collections::VecDeque::from([(String::new(), root)]);
    let join = |prefix: &str, name: &str| {
        if prefix.is_empty() { name.to_owned() } else { format!("{prefix}/{name}") }
    };
    while let Some((prefix, digest)) = queue.pop_front() {
        let dir = directories.get(&digest).ok_or(TreeError::Missing(digest))?;
        for file in &dir.files {
            let digest = Digest::from_wire(file.digest.as_ref())
                .map_err(|err| TreeError::Malformed { digest, reason: err.to_string() })?;
            nodes.push(Node::File { path: join(&prefix, &file.name), digest, executable: file.executable });
        }
        for link in &dir.symlinks {
            nodes.push(Node::Symlink { path: join(&prefix, &link.name), target: link.target.clone() });
        }
        for child in &dir.directories {
            let child_digest = Digest::from_wire(child.digest.as_ref())
                .map_err(|err| TreeError::Malformed { digest, reason: err.to_string() })?;
            let path = join(&prefix, &child.name);
            nodes.push(Node::Dir { path: path.clone() });
            queue.push_back((path, child_digest));
        }
    }
    Ok(nodes)
}

/// The tree as linked nodes, for resolving paths: slot 0 is the root, slot `i + 1` is
/// `nodes[i]`.
#[derive(Debug)]
struct Index {
    parent: Vec<u32>,
    kind: Vec<Kind>,
}

#[derive(Debug)]
enum Kind {
    Dir(HashMap<Box<str>, u32>),
    File,
    /// Index into `nodes` of the link, for its target.
    Link(usize),
}

/// Where a resolution is: an entry of the tree, and how many names below it that the tree does
/// not have (a dangling path stays inside as long as it does not climb above `base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    base: u32,
    missing: u32,
}

const ROOT: u32 = 0;

impl Index {
    fn build(nodes: &[Node]) -> Self {
        let mut parent = vec![ROOT; nodes.len() + 1];
        let mut kind: Vec<Kind> = Vec::with_capacity(nodes.len() + 1);
        kind.push(Kind::Dir(HashMap::new()));
        let mut dirs: HashMap<&str, u32> = HashMap::from([("", ROOT)]);
        for (i, node) in nodes.iter().enumerate() {
            let slot = (i + 1) as u32;
            // Parents come first (expand_nodes), so the parent's slot is known.
            let up = dirs.get(node.parent()).copied().unwrap_or(ROOT);
            parent[slot as usize] = up;
            if let Kind::Dir(children) = &mut kind[up as usize] {
                children.insert(node.name().into(), slot);
            }
            kind.push(match node {
                Node::Dir { path } => {
                    dirs.insert(path, slot);
                    Kind::Dir(HashMap::new())
                }
                Node::File { .. } => Kind::File,
                Node::Symlink { .. } => Kind::Link(i),
            });
        }
        Self { parent, kind }
    }
}

/// Link resolution with memory: each link resolves from its own directory, so once.
struct Resolver<'a> {
    tree: &'a ExpandedTree,
    limits: &'a TreeLimits,
    done: HashMap<u32, Position>,
    open: HashSet<u32>,
}

/// Why a resolution failed, before it is told in the words of whoever asked.
enum Unresolved {
    Leaves,
    Loop,
}

impl Resolver<'_> {
    /// Walks `path` from `from` as the kernel would: `..` goes to the real parent, every link
    /// met (the last component's too) is followed.
    fn walk(&mut self, from: Position, path: &str, hops: u32) -> Result<Position, Unresolved> {
        if path.starts_with('/') {
            return Err(Unresolved::Leaves);
        }
        let index = &self.tree.index;
        let mut at = from;
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." if at.missing > 0 => at.missing -= 1,
                ".." if at.base == ROOT => return Err(Unresolved::Leaves),
                ".." => at.base = index.parent[at.base as usize],
                _ if at.missing > 0 => at.missing += 1,
                name => {
                    let child = match &index.kind[at.base as usize] {
                        Kind::Dir(children) => children.get(name).copied(),
                        _ => None,
                    };
                    at = match child {
                        None => Position { base: at.base, missing: 1 },
                        Some(slot) => match index.kind[slot as usize] {
                            Kind::Link(_) => self.link(slot, hops + 1)?,
                            _ => Position { base: slot, missing: 0 },
                        },
                    };
                }
            }
        }
        Ok(at)
    }

    /// Where the link in `slot` leads.
    fn link(&mut self, slot: u32, hops: u32) -> Result<Position, Unresolved> {
        if let Some(done) = self.done.get(&slot) {
            return Ok(*done);
        }
        if hops > self.limits.max_link_hops || !self.open.insert(slot) {
            return Err(Unresolved::Loop);
        }
        let Kind::Link(node) = self.tree.index.kind[slot as usize] else {
            return Ok(Position { base: slot, missing: 0 });
        };
        let Node::Symlink { target, .. } = &self.tree.nodes[node] else {
            return Ok(Position { base: slot, missing: 0 });
        };
        let from = Position { base: self.tree.index.parent[slot as usize], missing: 0 };
        let at = self.walk(from, target, hops)?;
        self.open.remove(&slot);
        self.done.insert(slot, at);
        Ok(at)
    }
}

impl ExpandedTree {
    fn check_links(&self) -> Result<(), TreeError> {
        let limits = &self.limits;
        let mut resolver = Resolver { tree: self, limits, done: HashMap::new(), open: HashSet::new() };
        for (i, node) in self.nodes.iter().enumerate() {
            let Node::Symlink { path, target } = node else { continue };
            match resolver.link((i + 1) as u32, 0) {
                Ok(_) => {}
                Err(Unresolved::Leaves) => {
                    return Err(TreeError::LinkLeaves { path: path.clone(), target: target.clone() });
                }
                Err(Unresolved::Loop) => {
                    return Err(TreeError::BadLink {
                        path: path.clone(),
                        target: target.clone(),
                        reason: format!(
                            "a loop, or more than {} links followed to resolve it",
                            limits.max_link_hops
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Resolves `path` (relative to the tree's root) through the tree's links: its real,
    /// link-free path when the tree has it, `None` when it does not (a path the build may
    /// create), or an error when it leaves the tree. `what` names it in the error.
    pub fn resolve(&self, path: &str, what: &str) -> Result<Option<String>, TreeError> {
        let mut resolver =
            Resolver { tree: self, limits: &self.limits, done: HashMap::new(), open: HashSet::new() };
        let leaves = || TreeError::PathLeaves { what: what.to_owned(), path: path.to_owned() };
        let at = resolver.walk(Position { base: ROOT, missing: 0 }, path, 0).map_err(|_| leaves())?;
        if at.missing > 0 {
            return Ok(None);
        }
        Ok(Some(self.real_path(at.base)))
    }

    fn real_path(&self, mut slot: u32) -> String {
        let mut parts = Vec::new();
        while slot != ROOT {
            parts.push(self.nodes[slot as usize - 1].name());
            slot = self.index.parent[slot as usize];
        }
        parts.reverse();
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use proto::v1::{DirectoryNode, FileNode, SymlinkNode};

    use super::*;

    /// Directories built bottom-up, keyed by their real digests.
    #[derive(Default)]
    struct Blobs(HashMap<Digest, Directory>);

    impl Blobs {
        fn add(&mut self, dir: Directory) -> Digest {
            let digest = Digest::of(&dir.encode_to_vec());
            self.0.insert(digest, dir);
            digest
        }

        fn expand(&self, root: Digest) -> Result<ExpandedTree, TreeError> {
            expand(root, &self.0, &TreeLimits::default())
        }
    }

    fn file(name: &str) -> FileNode {
        FileNode { name: name.into(), digest: Some(Digest::of(name.as_bytes()).to_wire()), executable: false }
    }

    fn dir(name: &str, digest: Digest) -> DirectoryNode {
        DirectoryNode { name: name.into(), digest: Some(digest.to_wire()) }
    }

    fn link(name: &str, target: &str) -> SymlinkNode {
        SymlinkNode { name: name.into(), target: target.into() }
    }

    #[test]
    fn a_tree_expands_parents_first_with_links_that_stay_inside() {
        let mut blobs = Blobs::default();
        let cmd = blobs.add(Directory {
            files: vec![file("main.go")],
            symlinks: vec![link("mod", "../go.mod")],
            ..Directory::default()
        });
        let root = blobs.add(Directory {
            files: vec![file("go.mod")],
            directories: vec![dir("cmd", cmd)],
            symlinks: vec![link("c", "cmd")],
        });
        let tree = blobs.expand(root).unwrap();
        let paths: Vec<&str> = tree.nodes.iter().map(Node::path).collect();
        assert_eq!(paths, ["go.mod", "c", "cmd", "cmd/main.go", "cmd/mod"]);
        assert_eq!(tree.resolve("c/mod", "x").unwrap().as_deref(), Some("go.mod"));
        assert_eq!(tree.resolve("c", "module_dir").unwrap().as_deref(), Some("cmd"));
        assert_eq!(tree.resolve("c/new/../main.go", "x").unwrap().as_deref(), Some("cmd/main.go"));
        assert_eq!(tree.resolve("absent/dir", "x").unwrap(), None);
        assert!(tree.resolve("..", "module_dir").unwrap_err().to_string().contains("module_dir"));
    }

    /// The escape: `a/b -> ..` is inside on its own, and so is every later link read
    /// lexically, but through `a/b` the chain climbs above the root.
    #[test]
    fn a_chain_through_a_link_to_a_parent_is_refused() {
        let mut blobs = Blobs::default();
        let a = blobs.add(Directory { symlinks: vec![link("b", "..")], ..Directory::default() });
        let inside = blobs.add(Directory {
            directories: vec![dir("a", a)],
            symlinks: vec![link("ok", "a/b/a/b/a")],
            ..Directory::default()
        });
        assert!(blobs.expand(inside).is_ok());
        let deep = format!("{}{}", "a/b/".repeat(8), "../".repeat(8));
        let escape = blobs.add(Directory {
            directories: vec![dir("a", a)],
            symlinks: vec![link("esc", &deep)],
            ..Directory::default()
        });
        let err = blobs.expand(escape).unwrap_err();
        assert!(matches!(err, TreeError::LinkLeaves { ref path, .. } if path == "esc"), "{err}");
        // The path of a module directory through the same links.
        let tree = blobs.expand(inside).unwrap();
        assert!(tree.resolve("a/b/a/b/../../..", "module_dir").is_err());
        assert_eq!(tree.resolve("a/b/a/b", "module_dir").unwrap().as_deref(), Some(""));
    }

    #[test]
    fn absolute_links_loops_and_duplicate_names_are_refused() {
        let mut blobs = Blobs::default();
        let absolute =
            blobs.add(Directory { symlinks: vec![link("p", "/etc/passwd")], ..Directory::default() });
        assert!(matches!(blobs.expand(absolute), Err(TreeError::LinkLeaves { .. })));
        let looped =
            blobs.add(Directory { symlinks: vec![link("x", "y"), link("y", "x/z")], ..Directory::default() });
        assert!(matches!(blobs.expand(looped), Err(TreeError::BadLink { .. })));
        let empty = blobs.add(Directory::default());
        let twice = blobs.add(Directory {
            directories: vec![dir("b", empty)],
            symlinks: vec![link("b", "..")],
            ..Directory::default()
        });
        assert!(matches!(blobs.expand(twice), Err(TreeError::Duplicate { ref name, .. }) if name == "b"));
        let dotdot = blobs.add(Directory { files: vec![file("..")], ..Directory::default() });
        assert!(matches!(blobs.expand(dotdot), Err(TreeError::BadName { .. })));
        let long = blobs.add(Directory { files: vec![file(&"n".repeat(256))], ..Directory::default() });
        assert!(matches!(blobs.expand(long), Err(TreeError::OverCap { cap: "name length", .. })));
    }

    /// 21 blobs naming their child twice: 2^21 directories. Refused from the measure, before
    /// anything is expanded, and quickly.
    #[test]
    fn a_tree_bomb_is_refused_from_its_distinct_blobs() {
        let mut blobs = Blobs::default();
        let mut child = blobs.add(Directory { files: vec![file("f")], ..Directory::default() });
        for _ in 0..21 {
            child = blobs.add(Directory {
                directories: vec![dir("a", child), dir("b", child)],
                ..Directory::default()
            });
        }
        let err = blobs.expand(child).unwrap_err();
        assert_eq!(err, TreeError::OverCap { cap: "entries", limit: 500_000 });
        assert!(err.to_string().contains("cap on entries"), "{err}");

        let mut deep = blobs.add(Directory::default());
        for _ in 0..300 {
            deep = blobs.add(Directory { directories: vec![dir("d", deep)], ..Directory::default() });
        }
        assert!(matches!(blobs.expand(deep), Err(TreeError::OverCap { cap: "depth", .. })));

        let mut long = blobs.add(Directory { files: vec![file("f")], ..Directory::default() });
        let name = "x".repeat(200);
        for _ in 0..25 {
            long = blobs.add(Directory { directories: vec![dir(&name, long)], ..Directory::default() });
        }
        assert!(matches!(blobs.expand(long), Err(TreeError::OverCap { cap: "path length", .. })));

        let limits = TreeLimits { max_path_bytes: 100, ..TreeLimits::default() };
        let many = blobs.add(Directory {
            files: (0..20).map(|i| file(&format!("file-{i}"))).collect(),
            ..Directory::default()
        });
        let err = expand(many, &blobs.0, &limits).unwrap_err();
        assert!(matches!(err, TreeError::OverCap { cap: "path bytes", .. }), "{err}");
    }

    #[test]
    fn missing_and_self_containing_directories_are_errors() {
        let mut blobs = Blobs::default();
        let gone = Digest::of(b"never uploaded");
        let root = blobs.add(Directory { directories: vec![dir("x", gone)], ..Directory::default() });
        assert_eq!(blobs.expand(root).unwrap_err(), TreeError::Missing(gone));
        // Only a forged map can hold a cycle (a digest cannot name itself), as a fuzzer's can.
        let forged = Digest::of(b"forged");
        blobs.0.insert(forged, Directory { directories: vec![dir("x", forged)], ..Directory::default() });
        assert!(matches!(blobs.expand(forged), Err(TreeError::Cycle { .. })));
    }
}
