//! Reading a job's tree back, as a runner agent does before writing anything: an arbitrary set
//! of Directory blobs keyed by their digests (built from the input, children naming earlier
//! blobs so shared subtrees and bombs are easy to reach; a raw blob decoded as a Directory on
//! the side). Never a panic; an accepted tree respects every cap, names each entry once, and
//! has no link that a plain kernel-style walk resolves outside it.
#![no_main]

use std::collections::{HashMap, HashSet};

use cached_client::tree::{ExpandedTree, Node, TreeLimits, expand};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::Digest;
use proto::platform::check_entry_name;
use proto::v1::{Directory, DirectoryNode, FileNode, SymlinkNode};

const LIMITS: TreeLimits = TreeLimits {
    max_entries: 2_000,
    max_path_bytes: 64 << 10,
    max_depth: 16,
    max_path_len: 256,
    max_name_len: 255,
    max_directory_bytes: 1 << 20,
    max_link_hops: 40,
};

const NAMES: &[&str] = &["a", "b", "c", "go.mod", "..", ".", "", "x/y", "d\0", "long"];
const PARTS: &[&str] = &["a", "b", "c", "..", ".", "", "go.mod"];

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((first, rest)) => {
                self.0 = rest;
                *first
            }
            None => 0,
        }
    }

    fn name(&mut self) -> String {
        match NAMES[usize::from(self.byte()) % NAMES.len()] {
            "long" => "n".repeat(200 + usize::from(self.byte())),
            name => name.to_owned(),
        }
    }

    fn target(&mut self) -> String {
        let parts: Vec<&str> = (0..1 + self.byte() % 8).map(|_| PARTS[usize::from(self.byte()) % PARTS.len()]).collect();
        let joined = parts.join("/");
        if self.byte() % 8 == 0 { format!("/{joined}") } else { joined }
    }
}

/// Directories built from the input, each naming only earlier ones (or, rarely, a digest
/// nobody has); the last is the root.
fn directories(input: &mut Input<'_>) -> (Digest, HashMap<Digest, Directory>) {
    let mut blobs = HashMap::new();
    let mut order: Vec<Digest> = Vec::new();
    for _ in 0..1 + input.byte() % 12 {
        let mut dir = Directory::default();
        for _ in 0..input.byte() % 6 {
            let name = input.name();
            match input.byte() % 4 {
                0 | 3 => dir.files.push(FileNode {
                    name,
                    digest: Some(Digest::of(&[input.byte()]).to_wire()),
                    executable: false,
                }),
                1 => {
                    let child = match (order.len(), input.byte()) {
                        (_, 255) | (0, _) => Digest::of(b"missing"),
                        (n, pick) => order[usize::from(pick) % n],
                    };
                    dir.directories.push(DirectoryNode { name, digest: Some(child.to_wire()) });
                }
                _ => dir.symlinks.push(SymlinkNode { name, target: input.target() }),
            }
        }
        let digest = Digest::of(&dir.encode_to_vec());
        blobs.insert(digest, dir);
        order.push(digest);
    }
    let root = *order.last().expect("at least one directory");
    (root, blobs)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let raw = input.byte() % 4 == 0;
    let (mut root, mut blobs) = directories(&mut input);
    if raw {
        // The rest of the input as a blob of its own, decoded as the agent decodes one.
        if let Ok(dir) = Directory::decode(input.0) {
            root = Digest::of(input.0);
            blobs.insert(root, dir);
        }
    }
    if let Ok(tree) = expand(root, &blobs, &LIMITS) {
        check(&tree);
    }
});

/// What an accepted tree must be.
fn check(tree: &ExpandedTree) {
    assert!(tree.nodes.len() as u64 <= LIMITS.max_entries);
    let mut bytes = 0u64;
    let mut kinds: HashMap<&str, &Node> = HashMap::new();
    let mut dirs: HashSet<&str> = HashSet::from([""]);
    for node in &tree.nodes {
        let path = node.path();
        assert!(path.len() as u64 <= LIMITS.max_path_len, "{path}");
        assert!(path.split('/').count() as u32 <= LIMITS.max_depth, "{path}");
        for part in path.split('/') {
            assert!(check_entry_name(part).is_ok() && part.len() <= LIMITS.max_name_len, "{path}");
        }
        assert!(dirs.contains(node.parent()), "{path} comes before its directory");
        assert!(kinds.insert(path, node).is_none(), "{path} twice");
        if let Node::Dir { path } = node {
            dirs.insert(path);
        }
        bytes += path.len() as u64;
    }
    assert!(bytes <= LIMITS.max_path_bytes);
    for node in &tree.nodes {
        if let Node::Symlink { path, target } = node {
            let mut hops = 0;
            let parent: Vec<String> = node.parent().split('/').filter(|p| !p.is_empty()).map(str::to_owned).collect();
            if let Err(Walk::Escapes) = walk(&kinds, parent, target, &mut hops) {
                panic!("{path} -> {target} was accepted but leaves the tree");
            }
        }
    }
}

enum Walk {
    Escapes,
    TooManyLinks,
}

/// A plain kernel-style walk of `target` from `at` over the tree's paths, following every link.
/// Returns where it ends: the existing directories on the way and how many missing names follow.
fn walk(
    kinds: &HashMap<&str, &Node>,
    mut at: Vec<String>,
    target: &str,
    hops: &mut u32,
) -> Result<(Vec<String>, usize), Walk> {
    if target.starts_with('/') {
        return Err(Walk::Escapes);
    }
    let mut missing = 0usize;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if missing > 0 => missing -= 1,
            ".." => {
                at.pop().ok_or(Walk::Escapes)?;
            }
            _ if missing > 0 => missing += 1,
            name => {
                let mut candidate = at.clone();
                candidate.push(name.to_owned());
                let joined = candidate.join("/");
                let parent_is_dir = at.is_empty() || matches!(kinds.get(at.join("/").as_str()), Some(Node::Dir { .. }));
                match kinds.get(joined.as_str()).filter(|_| parent_is_dir) {
                    None => missing = 1,
                    Some(Node::Symlink { target, .. }) => {
                        *hops += 1;
                        if *hops > LIMITS.max_link_hops {
                            return Err(Walk::TooManyLinks);
                        }
                        let (base, more) = walk(kinds, at.clone(), target, hops)?;
                        at = base;
                        missing = more;
                    }
                    Some(_) => at = candidate,
                }
            }
        }
    }
    Ok((at, missing))
}
