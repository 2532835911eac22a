//! Source trees as Merkle trees in the CAS: every directory is a `Directory` message (files
//! with digest and executable bit, subdirectories by digest, symlinks that stay inside the
//! tree), stored as a blob; the root's digest names the whole tree. Uploading asks the server
//! what it lacks and sends only that, so an unchanged tree costs one FindMissing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use proto::frames::FrameDecoder;
use proto::platform::check_entry_name;
use proto::v1::{Compression, Directory, DirectoryNode, FileNode, SymlinkNode};
use proto::{Digest, FRAME_SIZE};

mod expand;

pub use self::expand::{ExpandedTree, Node, TreeError, TreeLimits, expand};
use crate::connect::Client;
use crate::error::{ClientError, Result};
use crate::transfer::{self, DEFAULT_LEVEL};

/// One entry of a tree being built, by its `/`-separated path inside the tree.
#[derive(Debug, Clone)]
enum Entry {
    File { source: PathBuf, digest: Digest, executable: bool },
    Symlink { target: String },
}

/// A tree built from local files, before or after upload.
#[derive(Debug, Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    pub root: Digest,
    pub files: usize,
    pub bytes: u64,
    /// Blobs (files and directories) the server lacked and got.
    pub sent_blobs: usize,
    pub sent_bytes: u64,
}

fn invalid(message: String) -> ClientError {
    ClientError::Usage(message)
}

impl Tree {
    /// The files of `root` that git would track: `.git` and what `.gitignore` (and
    /// `.git/info/exclude`) ignores are left out; hidden files are kept. Symlinks must stay
    /// inside `root`.
    pub fn from_dir(root: &Path) -> Result<Self> {
        let mut tree = Self::default();
        let walker = ignore::WalkBuilder::new(root)
            .hidden(false)
            .ignore(false)
            .parents(false)
            .git_global(false)
            .git_ignore(true)
            .git_exclude(true)
            .require_git(false)
            .follow_links(false)
            .filter_entry(|entry| entry.file_name() != ".git")
            .build();
        for entry in walker {
            let entry = entry.map_err(|err| invalid(format!("walking {}: {err}", root.display())))?;
            let path = entry.path();
            let Some(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                continue;
            }
            let relative = relative_name(root, path)?;
            if kind.is_symlink() {
                let target = std::fs::read_link(path).map_err(ClientError::file(path))?;
                tree.add_symlink(&relative, &target)?;
            } else if kind.is_file() {
                tree.add_file(&relative, path)?;
            }
        }
        Ok(tree)
    }

    /// Adds `source` as the file at `relative` (`a/b/c.go`), hashing it now.
    pub fn add_file(&mut self, relative: &str, source: &Path) -> Result<()> {
        check_path(relative)?;
        let metadata = std::fs::metadata(source).map_err(ClientError::file(source))?;
        let executable = is_executable(&metadata);
        let digest = transfer::hash_file(source)?;
        self.entries
            .insert(relative.to_owned(), Entry::File { source: source.to_owned(), digest, executable });
        Ok(())
    }

    /// Adds a symlink, refused unless its target resolves inside the tree.
    pub fn add_symlink(&mut self, relative: &str, target: &Path) -> Result<()> {
        check_path(relative)?;
        let text =
            target.to_str().ok_or_else(|| invalid(format!("symlink {relative}: target is not UTF-8")))?;
        if !link_stays_inside(relative, target) {
            return Err(invalid(format!(
                "symlink {relative} -> {text} points outside the source tree; remote builds only get the tree, \
                 so replace the link with a copy or add the target to .gitignore"
            )));
        }
        self.entries.insert(relative.to_owned(), Entry::Symlink { target: text.to_owned() });
        Ok(())
    }

    /// Leaves out everything under `prefix` (e.g. the output directory inside the module).
    pub fn remove_prefix(&mut self, prefix: &str) {
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return;
        }
        self.entries.retain(|path, _| !(path == prefix || path.starts_with(&format!("{prefix}/"))));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The Directory messages, encoded, by directory path ("" is the root), and the root
    /// digest.
    fn directories(&self) -> Result<(Digest, Vec<(Digest, Bytes)>)> {
        // Every directory that holds something, with its entries.
        let mut dirs: BTreeMap<String, Directory> = BTreeMap::new();
        dirs.insert(String::new(), Directory::default());
        for (path, entry) in &self.entries {
            let (parent, name) = split(path);
            let mut ancestor = parent;
            loop {
                dirs.entry(ancestor.to_owned()).or_default();
                if ancestor.is_empty() {
                    break;
                }
                ancestor = split(ancestor).0;
            }
            let dir = dirs.get_mut(parent).unwrap_or_else(|| unreachable_dir());
            match entry {
                Entry::File { digest, executable, .. } => dir.files.push(FileNode {
                    name: name.to_owned(),
                    digest: Some(digest.to_wire()),
                    executable: *executable,
                }),
                Entry::Symlink { target } => {
                    dir.symlinks.push(SymlinkNode { name: name.to_owned(), target: target.clone() })
                }
            }
        }
        // Children before parents: longest paths first.
        let mut order: Vec<String> = dirs.keys().cloned().collect();
        order
            .sort_by_key(|path| std::cmp::Reverse(path.matches('/').count() + usize::from(!path.is_empty())));
        let mut encoded: BTreeMap<String, (Digest, Bytes)> = BTreeMap::new();
        let mut decoded: HashMap<Digest, Directory> = HashMap::new();
        for path in order {
            let mut dir = dirs.remove(&path).unwrap_or_default();
            let children: Vec<(String, Digest)> = encoded
                .iter()
                .filter(|(child, _)| !child.is_empty() && split(child).0 == path)
                .map(|(child, (digest, _))| (split(child).1.to_owned(), *digest))
                .collect();
            for (name, digest) in children {
                dir.directories.push(DirectoryNode { name, digest: Some(digest.to_wire()) });
            }
            dir.files.sort_by(|a, b| a.name.cmp(&b.name));
            dir.directories.sort_by(|a, b| a.name.cmp(&b.name));
            dir.symlinks.sort_by(|a, b| a.name.cmp(&b.name));
            let bytes = Bytes::from(dir.encode_to_vec());
            let digest = Digest::of(&bytes);
            encoded.insert(path, (digest, bytes));
            decoded.insert(digest, dir);
        }
        let root = encoded.get("").map(|(digest, _)| *digest).unwrap_or_else(|| unreachable_dir());
        // What agents check, checked here first: the submitter hears it before uploading. The
        // size caps are the agents' to set (a local tree cannot be a bomb); names, paths and
        // links are the same everywhere.
        let limits = TreeLimits { max_entries: u64::MAX, max_path_bytes: u64::MAX, ..TreeLimits::default() };
        expand(root, &decoded, &limits)
            .map_err(|err| invalid(format!("runner agents would refuse this source tree: {err}")))?;
        Ok((root, encoded.into_values().collect()))
    }

    /// The root digest without uploading anything.
    pub fn root_digest(&self) -> Result<Digest> {
        Ok(self.directories()?.0)
    }

    /// Uploads what the server lacks: file contents and directory messages.
    pub async fn upload(&self, client: &Client) -> Result<Uploaded> {
        let (root, directories) = self.directories()?;
        let mut files: BTreeMap<Digest, &Path> = BTreeMap::new();
        let mut bytes = 0;
        let mut count = 0;
        for entry in self.entries.values() {
            if let Entry::File { source, digest, .. } = entry {
                files.entry(*digest).or_insert(source);
                bytes += digest.size;
                count += 1;
            }
        }
        let mut all: Vec<Digest> = files.keys().copied().collect();
        all.extend(directories.iter().map(|(digest, _)| *digest));
        all.sort();
        all.dedup();
        let missing = transfer::find_missing(client, &all).await?;
        let missing: std::collections::BTreeSet<Digest> = missing.into_iter().collect();
        let mut small: Vec<(Digest, Bytes)> = Vec::new();
        let mut sent_bytes = 0;
        for (digest, data) in &directories {
            if missing.contains(digest) {
                small.push((*digest, data.clone()));
            }
        }
        let mut large = Vec::new();
        for (digest, source) in &files {
            if !missing.contains(digest) {
                continue;
            }
            if digest.size <= FRAME_SIZE as u64 {
                let data = std::fs::read(source).map_err(ClientError::file(*source))?;
                if Digest::of(&data) != *digest {
                    return Err(invalid(format!(
                        "{} changed while it was being uploaded; run again",
                        source.display()
                    )));
                }
                small.push((*digest, Bytes::from(data)));
            } else {
                large.push((*digest, *source));
            }
        }
        let sent_blobs = small.len() + large.len();
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for (digest, data) in small {
            sent_bytes += digest.size;
            batch_bytes += digest.size;
            batch.push((digest, data));
            if batch_bytes > 4 << 20 || batch.len() >= 500 {
                transfer::batch_write(client, std::mem::take(&mut batch), DEFAULT_LEVEL).await?;
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() {
            transfer::batch_write(client, batch, DEFAULT_LEVEL).await?;
        }
        for (digest, source) in large {
            sent_bytes += digest.size;
            transfer::upload_file(client, source, digest, DEFAULT_LEVEL).await?;
        }
        Ok(Uploaded { root, files: count, bytes, sent_blobs, sent_bytes })
    }
}

fn unreachable_dir() -> ! {
    panic!("every parent directory was inserted before its children")
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn check_path(relative: &str) -> Result<()> {
    for part in relative.split('/') {
        check_entry_name(part).map_err(|err| invalid(format!("{relative}: {err}")))?;
    }
    Ok(())
}

fn relative_name(root: &Path, path: &Path) -> Result<String> {
    let relative = path
        .strip_prefix(root)
        .map_err(|_| invalid(format!("{} is outside {}", path.display(), root.display())))?;
    let parts: Vec<&str> = relative
        .components()
        .map(|part| {
            part.as_os_str()
                .to_str()
                .ok_or_else(|| invalid(format!("{}: file names must be UTF-8", path.display())))
        })
        .collect::<Result<_>>()?;
    Ok(parts.join("/"))
}

/// Whether a link at `relative` (inside the tree) pointing at `target` resolves inside it.
pub fn link_stays_inside(relative: &str, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = relative.matches('/').count() as i64;
    for part in target.components() {
        match part {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(unix)]
fn is_executable(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::Metadata) -> bool {
    false
}

/// Reads a whole blob into memory (Directory messages and other small blobs), verified; one
/// that fails is reported to cached ([`crate::recheck`]).
pub async fn read_blob(client: &Client, digest: Digest) -> Result<Vec<u8>> {
    match read_verified(client, digest).await {
        Err(err) => Err(crate::recheck::after_failure(client, err).await),
        Ok(bytes) => Ok(bytes),
    }
}

async fn read_verified(client: &Client, digest: Digest) -> Result<Vec<u8>> {
    let Some(mut stream) = transfer::open_read(client, digest).await? else {
        return Err(ClientError::NotFound(digest));
    };
    let corrupt = |reason: String| ClientError::Corrupt { expected: digest, reason };
    let mut decoder = FrameDecoder::new(digest.size, 0).map_err(|err| corrupt(err.to_string()))?;
    let mut out = Vec::with_capacity(digest.size.min(64 << 20) as usize);
    while let Some(message) = stream.next().await {
        let message = message?;
        if message.compression == Compression::Zstd as i32 {
            out.extend_from_slice(decoder.decode(&message.data).map_err(|err| corrupt(err.to_string()))?);
        } else {
            out.extend_from_slice(&message.data);
        }
        if out.len() as u64 > digest.size {
            return Err(corrupt("the server sent more bytes than the digest's size".to_owned()));
        }
    }
    if Digest::of(&out) != digest {
        return Err(corrupt("the bytes do not match the digest".to_owned()));
    }
    Ok(out)
}

/// Every directory, file and symlink below `root`, checked as [`expand`] does (the tree may
/// come from anyone with cas-write): each distinct Directory blob is fetched once, level by
/// level, within `limits` (its size, depth and the bytes of all blobs), then measured against
/// the caps before anything is expanded. A refusal is [`ClientError::Usage`] naming what was
/// wrong; trouble fetching is any other error.
pub async fn read_tree(client: &Client, root: Digest, limits: &TreeLimits) -> Result<ExpandedTree> {
    let mut directories: HashMap<Digest, Directory> = HashMap::new();
    let mut level = vec![root];
    let mut depth = 0u32;
    let mut bytes = 0u64;
    while !level.is_empty() {
        if depth > limits.max_depth {
            return Err(TreeError::OverCap { cap: "depth", limit: u64::from(limits.max_depth) }.into());
        }
        bytes = level.iter().fold(bytes, |sum, digest| sum.saturating_add(digest.size));
        if bytes > limits.max_directory_bytes {
            return Err(
                TreeError::OverCap { cap: "directory bytes", limit: limits.max_directory_bytes }.into()
            );
        }
        let reads: Vec<_> = level.iter().map(|digest| read_directory(client.clone(), *digest)).collect();
        let fetched: Vec<(Digest, Directory)> =
            futures::stream::iter(reads).buffer_unordered(PARALLEL_READS).try_collect().await?;
        let mut next = BTreeSet::new();
        for (digest, dir) in fetched {
            for child in &dir.directories {
                if let Ok(child) = Digest::from_wire(child.digest.as_ref())
                    && !directories.contains_key(&child)
                {
                    next.insert(child);
                }
            }
            directories.insert(digest, dir);
        }
        next.retain(|digest| !directories.contains_key(digest));
        level = next.into_iter().collect();
        depth += 1;
    }
    Ok(expand(root, &directories, limits)?)
}

async fn read_directory(client: Client, digest: Digest) -> Result<(Digest, Directory)> {
    let blob = read_blob(&client, digest).await?;
    let dir = Directory::decode(blob.as_slice())
        .map_err(|err| TreeError::Malformed { digest, reason: err.to_string() })?;
    Ok((digest, dir))
}

/// Directory blobs fetched at once while reading a tree.
const PARALLEL_READS: usize = 16;

impl From<TreeError> for ClientError {
    fn from(err: TreeError) -> Self {
        Self::Usage(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_must_stay_inside() {
        assert!(link_stays_inside("a/link", Path::new("../b/file")));
        assert!(link_stays_inside("link", Path::new("./b")));
        assert!(!link_stays_inside("link", Path::new("../outside")));
        assert!(!link_stays_inside("a/link", Path::new("../../x")));
        assert!(!link_stays_inside("a/link", Path::new("/etc/passwd")));
        assert!(!link_stays_inside("a/link", Path::new("b/../../../x")));
    }

    #[test]
    fn trees_skip_git_and_ignored_files_and_have_stable_digests() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".git/objects")).unwrap();
        std::fs::write(root.join(".git/HEAD"), "ref").unwrap();
        std::fs::create_dir_all(root.join("cmd/app")).unwrap();
        std::fs::write(root.join("go.mod"), "module x\n").unwrap();
        std::fs::write(root.join("cmd/app/main.go"), "package main\n").unwrap();
        std::fs::write(root.join(".gitignore"), "dist/\n*.log\n").unwrap();
        std::fs::create_dir_all(root.join("dist")).unwrap();
        std::fs::write(root.join("dist/app"), "binary").unwrap();
        std::fs::write(root.join("build.log"), "log").unwrap();
        std::fs::write(root.join(".golangci.yml"), "x").unwrap();
        let tree = Tree::from_dir(root).unwrap();
        let names: Vec<&str> = tree.entries.keys().map(String::as_str).collect();
        assert_eq!(names, [".gitignore", ".golangci.yml", "cmd/app/main.go", "go.mod"]);
        let first = tree.root_digest().unwrap();
        assert_eq!(Tree::from_dir(root).unwrap().root_digest().unwrap(), first);
        std::fs::write(root.join("cmd/app/main.go"), "package main // changed\n").unwrap();
        assert_ne!(Tree::from_dir(root).unwrap().root_digest().unwrap(), first);

        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("../../go.mod", root.join("cmd/app/go.mod.link")).unwrap();
            assert!(Tree::from_dir(root).is_ok());
            std::os::unix::fs::symlink("/etc/passwd", root.join("escape")).unwrap();
            let err = Tree::from_dir(root).unwrap_err().to_string();
            assert!(err.contains("escape") && err.contains("outside"), "{err}");
            std::fs::remove_file(root.join("escape")).unwrap();
            // Each link inside on its own, but through `a/b -> ..` the chain climbs out: the
            // submitter hears what agents would say before anything is uploaded.
            std::fs::create_dir(root.join("a")).unwrap();
            std::os::unix::fs::symlink("..", root.join("a/b")).unwrap();
            std::os::unix::fs::symlink("a/b/a/b/a/b/../../../etc", root.join("chain")).unwrap();
            let tree = Tree::from_dir(root).unwrap();
            let err = tree.root_digest().unwrap_err().to_string();
            assert!(err.contains("chain -> a/b/a/b/a/b/../../../etc") && err.contains("outside"), "{err}");
        }
    }
}
