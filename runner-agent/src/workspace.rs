//! Trees from the CAS into a task directory. The tree is read and checked first
//! (`cached_client::tree::read_tree`: caps, names, links resolved inside the tree), its files
//! fetched into the [`BlobCache`] and hard-linked into place. go.mod, go.sum and go.work are
//! copied instead: the go command rewrites them in place, which would change the cached blob
//! under every other link.
//!
//! Everything is created relative to the tree's root without following a link: each directory
//! is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and its entries made with
//! mkdirat, linkat, symlinkat and openat against that descriptor, so no entry of a tree can
//! redirect where another is written.
//!
//! With build users, the tree's directories belong to the agent with the task's group (mode
//! 0750: the build reads them, cannot change them, and no other task gets in); shared files
//! stay the agent's (0444/0555, never chowned: the inode is every task's); copied files are
//! the build's own.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use cached_client::connect::Client;
use cached_client::error::ClientError;
use cached_client::tree::{ExpandedTree, Node, TreeLimits, read_tree};
use futures::{StreamExt, TryStreamExt};
use proto::Digest;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::TaskError;
use crate::blobcache::{BlobCache, Pins};
use crate::cancel::Cancel;
use crate::sandbox::{self, Owner};
use crate::taskdir::{ENTRY_COST, file_cost};

/// Downloads in flight per task.
const PARALLEL_DOWNLOADS: usize = 16;

/// Files written in place by the go command, so never hard-linked.
const COPIED: &[&str] = &["go.mod", "go.sum", "go.work", "go.work.sum"];

/// A tree that was refused fails the same way everywhere: a build error, not retried.
fn tree_error(err: ClientError) -> TaskError {
    match err {
        ClientError::Usage(reason) => TaskError::Build(format!("the job's tree was refused: {reason}")),
        other => TaskError::from(other),
    }
}

/// The disk a tree's entries take in all (each file counted every time it appears: the copied
/// ones take their size again), refusing a tree past `max_bytes` before any of it is fetched:
/// fetched blobs are pinned in the cache for the task's life, past `--cache-size`, so a tree
/// naming a huge blob (a small upload of compressed zeros) would fill the agent's disk. The
/// declared sizes are the blobs' own: the cache refuses a blob of another size. Every entry
/// takes at least [`ENTRY_COST`], a file whole blocks ([`file_cost`]), as the build's own disk
/// is counted: a tree of half a million empty directories declares no bytes but takes 2 GiB and
/// as many inodes.
fn check_size(tree: &ExpandedTree, max_bytes: u64) -> Result<u64, TaskError> {
    let total = tree
        .nodes
        .iter()
        .map(|node| match node {
            Node::File { digest, .. } => file_cost(digest.size),
            _ => ENTRY_COST,
        })
        .fold(0u64, u64::saturating_add);
    if total > max_bytes {
        return Err(TaskError::Build(format!(
            "the job's tree was refused: its files and directories take {total} bytes, more than the \
             {max_bytes} left for it on this agent (--max-task-disk, which a job's source and module proxy \
             trees share; each entry counts at least {ENTRY_COST})"
        )));
    }
    Ok(total)
}

/// A materialized tree: what it holds, and its blobs kept in the cache while this lives (the
/// task's life).
#[derive(Debug)]
pub struct Materialized {
    pub tree: ExpandedTree,
    pub pins: Pins,
    /// The disk its entries take, as counted against `--max-task-disk`.
    pub disk: u64,
}

impl Materialized {
    /// Every file's path in the tree.
    pub fn file_paths(&self) -> impl Iterator<Item = &str> {
        self.tree.nodes.iter().filter(|node| matches!(node, Node::File { .. })).map(Node::path)
    }

    pub fn files(&self) -> usize {
        self.file_paths().count()
    }
}

/// Writes the tree `root` into `dest` (created; must not exist yet). With `owner`, the tree is
/// laid out for that build user (see the module's doc). A tree whose files declare more than
/// `max_bytes` is refused before anything is fetched. Once `cancel` is set, nothing more is
/// fetched or written.
#[allow(clippy::too_many_arguments)]
pub async fn materialize(
    client: &Client,
    cache: &BlobCache,
    root: Digest,
    dest: &Path,
    limits: &TreeLimits,
    max_bytes: u64,
    owner: Option<Owner>,
    cancel: &Cancel,
) -> Result<Materialized, TaskError> {
    let tree = cancel.guard(async { read_tree(client, root, limits).await.map_err(tree_error) }).await?;
    let disk = check_size(&tree, max_bytes)?;
    let wanted: BTreeSet<(Digest, bool)> = tree
        .nodes
        .iter()
        .filter_map(|node| match node {
            Node::File { digest, executable, .. } => Some((*digest, *executable)),
            _ => None,
        })
        .collect();
    let pins = cache.pin(wanted.iter().copied());
    let fetches = futures::stream::iter(
        wanted.into_iter().map(|(digest, executable)| cache.fetch(client, digest, executable)),
    )
    .buffer_unordered(PARALLEL_DOWNLOADS)
    .try_collect::<Vec<_>>();
    cancel.guard(fetches).await?;
    let (dest, blobs, cancel) = (dest.to_owned(), cache.dir().to_owned(), cancel.clone());
    let tree = cached_client::task::spawn_blocking("write-tree", move || {
        write_tree(&tree.nodes, &dest, &blobs, owner, &cancel).map(|()| tree)
    })
    .await
    .map_err(|err| TaskError::Infrastructure(format!("writing a tree: {err}")))??;
    Ok(Materialized { tree, pins, disk })
}

/// Mode of the tree's directories.
fn dir_mode(owner: Option<Owner>) -> u32 {
    if owner.is_some() { 0o750 } else { 0o755 }
}

/// Creates `nodes` (each directory's entries together, parents first) under the new directory
/// `dest`, every entry relative to its parent's descriptor; stops between entries once `cancel`
/// is set.
fn write_tree(
    nodes: &[Node],
    dest: &Path,
    blobs: &Path,
    owner: Option<Owner>,
    cancel: &Cancel,
) -> Result<(), TaskError> {
    let failed = |what: &str, path: &str, err: Errno| {
        TaskError::Infrastructure(format!("{what} {path:?} in {}: {err}", dest.display()))
    };
    std::fs::create_dir(dest)
        .map_err(|err| TaskError::Infrastructure(format!("creating {}: {err}", dest.display())))?;
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let root = rustix::fs::open(dest, flags, Mode::empty()).map_err(|err| failed("opening", "", err))?;
    share_with_group(&root, owner).map_err(|err| failed("chown", "", err))?;
    let blobs = rustix::fs::open(blobs, flags, Mode::empty())
        .map_err(|err| TaskError::Infrastructure(format!("opening {}: {err}", blobs.display())))?;
    let mut parent: Option<(&str, OwnedFd)> = None;
    for node in nodes {
        cancel.check()?;
        let dir = node.parent();
        let fd = match parent.take() {
            Some((open, fd)) if open == dir => fd,
            _ => open_beneath(&root, dir).map_err(|err| failed("opening", dir, err))?,
        };
        create(&fd, &blobs, node, owner).map_err(|err| failed("creating", node.path(), err))?;
        parent = Some((dir, fd));
    }
    Ok(())
}

/// `dir` under `root`, refusing any link on the way and anything outside.
fn open_beneath(root: &OwnedFd, dir: &str) -> rustix::io::Result<OwnedFd> {
    let path = if dir.is_empty() { "." } else { dir };
    rustix::fs::openat2(
        root,
        path,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
}

/// One entry in the directory `parent`.
fn create(parent: &OwnedFd, blobs: &OwnedFd, node: &Node, owner: Option<Owner>) -> rustix::io::Result<()> {
    let name = node.name();
    match node {
        Node::Dir { .. } => {
            rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(dir_mode(owner)))?;
            let dir = open_beneath(parent, name)?;
            share_with_group(&dir, owner)
        }
        Node::File { digest, executable, .. } => {
            let blob = BlobCache::name(*digest, *executable);
            if COPIED.contains(&name) {
                return copy(blobs, &blob, parent, name, 0o644, owner);
            }
            match rustix::fs::linkat(blobs, &blob, parent, name, AtFlags::empty()) {
                // Another file system, or a blob at the file system's most links (every task
                // links the same inode, and one job's tree of 65,000 copies of a file other
                // tenants ship too, the empty one, held ext4's limit): a copy of the agent's,
                // read-only like the blob.
                Err(Errno::XDEV | Errno::MLINK) => {
                    copy(blobs, &blob, parent, name, if *executable { 0o555 } else { 0o444 }, None)
                }
                linked => linked,
            }
        }
        Node::Symlink { target, .. } => rustix::fs::symlinkat(target.as_str(), parent, name),
    }
}

/// The agent keeps a directory; the task's group reads it.
fn share_with_group(dir: &OwnedFd, owner: Option<Owner>) -> rustix::io::Result<()> {
    let Some(owner) = owner else { return Ok(()) };
    rustix::fs::fchown(dir, None, Some(sandbox::gid(owner.gid)))?;
    rustix::fs::fchmod(dir, Mode::from_raw_mode(dir_mode(Some(owner))))
}

/// A new file `name` in `parent` with the blob's bytes, belonging to `owner` (or the agent).
fn copy(
    blobs: &OwnedFd,
    blob: &str,
    parent: &OwnedFd,
    name: &str,
    mode: u32,
    owner: Option<Owner>,
) -> rustix::io::Result<()> {
    let source =
        rustix::fs::openat(blobs, blob, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW, Mode::empty())?;
    let created = rustix::fs::openat(
        parent,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )?;
    let (mut from, mut to) = (std::fs::File::from(source), std::fs::File::from(created));
    std::io::copy(&mut from, &mut to).map_err(|err| Errno::from_io_error(&err).unwrap_or(Errno::IO))?;
    if let Some(owner) = owner {
        rustix::fs::fchown(to.as_fd(), Some(sandbox::uid(owner.uid)), Some(sandbox::gid(owner.gid)))?;
    }
    rustix::fs::fchmod(to.as_fd(), Mode::from_raw_mode(mode))
}

/// The module directory of a job, as a link-free path under `src`: `module_dir` resolved
/// through the tree's links, refused unless it stays inside and is a directory of the tree.
pub fn module_dir(src: &Path, tree: &ExpandedTree, module_dir: &str) -> Result<PathBuf, TaskError> {
    let refused = |why: String| TaskError::Build(format!("module_dir {module_dir:?} {why}"));
    match tree.resolve(module_dir, "module_dir") {
        Err(err) => Err(TaskError::Build(err.to_string())),
        Ok(None) => Err(refused("is not in the source tree".to_owned())),
        Ok(Some(real)) if real.is_empty() => Ok(src.to_owned()),
        Ok(Some(real)) => match tree.nodes.iter().find(|node| node.path() == real) {
            Some(Node::Dir { .. }) => Ok(src.join(real)),
            _ => Err(refused("is not a directory of the source tree".to_owned())),
        },
    }
}

/// Refuses package patterns that name a directory outside the tree (`./x` resolved from the
/// module directory through the tree's links, and absolute paths). Import paths and `...`
/// patterns name packages, not directories, and the go command keeps those in the module.
pub fn check_packages(tree: &ExpandedTree, module_dir: &str, packages: &[String]) -> Result<(), TaskError> {
    for package in packages {
        if package.starts_with('/') {
            return Err(TaskError::Build(format!(
                "package {package:?}: absolute paths are not in the source tree"
            )));
        }
        let relative =
            package == "." || package == ".." || package.starts_with("./") || package.starts_with("../");
        if !relative {
            continue;
        }
        let dir = package.trim_end_matches("/...").trim_end_matches("...");
        let path = if module_dir.is_empty() { dir.to_owned() } else { format!("{module_dir}/{dir}") };
        tree.resolve(&path, &format!("package {package}"))
            .map_err(|err| TaskError::Build(err.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use cached_client::tree::expand;
    use prost::Message;
    use proto::v1::{Directory, DirectoryNode, FileNode, SymlinkNode};

    use super::*;

    /// A cancel flag and the sender that sets it.
    fn cancel() -> (tokio::sync::watch::Sender<bool>, Cancel) {
        let (abort, flag) = tokio::sync::watch::channel(false);
        (abort, Cancel::new(flag))
    }

    /// A blob at the file system's most links is copied: a job's tree repeating a file other
    /// tenants ship too (the empty one) held every link ext4 allows, and their trees failed.
    #[test]
    fn a_blob_at_its_most_links_is_copied() {
        let (_abort, cancel) = cancel();
        let work = tempfile::tempdir().unwrap();
        let (blobs, hoard) = (work.path().join("blobs"), work.path().join("hoard"));
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(&hoard).unwrap();
        let body = Digest::of(b"");
        let blob = blobs.join(BlobCache::name(body, false));
        std::fs::write(&blob, b"").unwrap();
        let mut links = 0;
        loop {
            // A file system without a limit within reach: nothing to test here.
            if links > 1_000_000 {
                return;
            }
            match std::fs::hard_link(&blob, hoard.join(links.to_string())) {
                Ok(()) => links += 1,
                Err(err) if err.raw_os_error() == Some(Errno::MLINK.raw_os_error()) => break,
                Err(err) => panic!("{err}"),
            }
        }
        let dest = work.path().join("src");
        let nodes = vec![Node::File { path: "LICENSE".into(), digest: body, executable: false }];
        write_tree(&nodes, &dest, &blobs, None, &cancel).expect("the blob is copied");
        use std::os::unix::fs::MetadataExt;
        let copied = std::fs::metadata(dest.join("LICENSE")).unwrap();
        assert_eq!((copied.nlink(), copied.len()), (1, 0));
    }

    #[test]
    fn trees_are_written_relative_to_their_root_without_following_links() {
        let (_abort, cancel) = cancel();
        let work = tempfile::tempdir().unwrap();
        let blobs = work.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        let body = Digest::of(b"package main\n");
        std::fs::write(blobs.join(BlobCache::name(body, false)), b"package main\n").unwrap();
        let dest = work.path().join("src");
        let nodes = vec![
            Node::File { path: "go.mod".into(), digest: body, executable: false },
            Node::Symlink { path: "up".into(), target: "cmd".into() },
            Node::Dir { path: "cmd".into() },
            Node::File { path: "cmd/main.go".into(), digest: body, executable: false },
        ];
        write_tree(&nodes, &dest, &blobs, None, &cancel).unwrap();
        assert_eq!(std::fs::read(dest.join("cmd/main.go")).unwrap(), b"package main\n");
        assert_eq!(std::fs::read_link(dest.join("up")).unwrap(), Path::new("cmd"));
        use std::os::unix::fs::MetadataExt;
        // Shared with the cache, except the copied go.mod.
        assert_eq!(std::fs::metadata(dest.join("cmd/main.go")).unwrap().nlink(), 2);
        assert_eq!(std::fs::metadata(dest.join("go.mod")).unwrap().nlink(), 1);

        // Entries under a link (only a forged listing has them: read_tree refuses the
        // duplicate) are not written through it.
        let outside = work.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let forged = vec![
            Node::Symlink { path: "esc".into(), target: outside.display().to_string() },
            Node::File { path: "esc/planted".into(), digest: body, executable: false },
        ];
        let err = write_tree(&forged, &work.path().join("forged"), &blobs, None, &cancel).unwrap_err();
        assert!(matches!(err, TaskError::Infrastructure(_)), "{err}");
        assert!(!outside.join("planted").exists(), "written through a link");
    }

    #[test]
    fn an_aborted_tasks_tree_is_not_written() {
        let work = tempfile::tempdir().unwrap();
        let blobs = work.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        let body = Digest::of(b"package main\n");
        std::fs::write(blobs.join(BlobCache::name(body, false)), b"package main\n").unwrap();
        let nodes: Vec<Node> = (0..100)
            .map(|i| Node::File { path: format!("f{i}.go"), digest: body, executable: false })
            .collect();
        let (abort, cancel) = cancel();
        abort.send(true).unwrap();
        let dest = work.path().join("src");
        let err = write_tree(&nodes, &dest, &blobs, None, &cancel).unwrap_err();
        assert!(matches!(err, TaskError::Cancelled), "{err}");
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0, "entries written after the abort");
    }

    #[test]
    fn a_tree_declaring_more_bytes_than_the_cap_is_refused_before_any_fetch() {
        // A few bytes of zstd that would decode to 20 GiB, named twice, and a small file.
        let bomb = Digest { hash: [7; 32], size: 20 << 30 };
        let small = Digest::of(b"module m\n");
        let mut blobs: HashMap<Digest, Directory> = HashMap::new();
        let files = vec![
            FileNode { name: "a.go".into(), digest: Some(bomb.to_wire()), executable: false },
            FileNode { name: "go.mod".into(), digest: Some(small.to_wire()), executable: false },
        ];
        let sub = Directory { files: files.clone(), ..Directory::default() };
        let sub_digest = Digest::of(&sub.encode_to_vec());
        blobs.insert(sub_digest, sub);
        let root_dir = Directory {
            files,
            directories: vec![DirectoryNode { name: "sub".into(), digest: Some(sub_digest.to_wire()) }],
            ..Directory::default()
        };
        let root = Digest::of(&root_dir.encode_to_vec());
        blobs.insert(root, root_dir);
        let tree = expand(root, &blobs, &TreeLimits::default()).unwrap();
        // The two files twice (the small one at its least), and `sub`.
        let total = 2 * ((20u64 << 30) + small.size.max(ENTRY_COST)) + ENTRY_COST;

        let err = check_size(&tree, 10 << 30).unwrap_err();
        let TaskError::Build(reason) = &err else { panic!("not the job's fault: {err}") };
        assert!(reason.contains(&total.to_string()), "names the total: {reason}");
        assert!(reason.contains(&(10u64 << 30).to_string()), "names the cap: {reason}");
        assert!(reason.contains("--max-task-disk"), "names the flag: {reason}");
        // Each file counted every time it appears: one copy of the bomb fits 21 GiB, two do not.
        assert!(check_size(&tree, 21 << 30).is_err());
        assert!(check_size(&tree, total).is_ok());
    }

    /// Directories declare no bytes, but each takes a block and an inode: a tree of many empty
    /// ones (one small blob, named many times) is refused like one of large files.
    #[test]
    fn a_tree_of_empty_directories_takes_disk_too() {
        let mut blobs: HashMap<Digest, Directory> = HashMap::new();
        let empty = Directory::default();
        let empty_digest = Digest::of(&empty.encode_to_vec());
        blobs.insert(empty_digest, empty);
        let directories = (0..1000)
            .map(|i| DirectoryNode { name: format!("d{i}"), digest: Some(empty_digest.to_wire()) })
            .collect();
        let root_dir = Directory { directories, ..Directory::default() };
        let root = Digest::of(&root_dir.encode_to_vec());
        blobs.insert(root, root_dir);
        let tree = expand(root, &blobs, &TreeLimits::default()).unwrap();
        let err = check_size(&tree, 1 << 20).unwrap_err();
        assert!(err.to_string().contains(&(1000 * ENTRY_COST).to_string()), "{err}");
        assert!(check_size(&tree, 1000 * ENTRY_COST).is_ok());
    }

    #[test]
    fn module_dirs_and_packages_resolve_inside_the_tree() {
        let mut blobs: HashMap<Digest, Directory> = HashMap::new();
        let mut add = |dir: Directory| {
            let digest = Digest::of(&dir.encode_to_vec());
            blobs.insert(digest, dir);
            digest
        };
        let file =
            FileNode { name: "go.mod".into(), digest: Some(Digest::of(b"m").to_wire()), executable: false };
        let module = add(Directory { files: vec![file], ..Directory::default() });
        let a = add(Directory {
            symlinks: vec![SymlinkNode { name: "b".into(), target: "..".into() }],
            ..Directory::default()
        });
        let root = add(Directory {
            directories: vec![
                DirectoryNode { name: "a".into(), digest: Some(a.to_wire()) },
                DirectoryNode { name: "mod".into(), digest: Some(module.to_wire()) },
            ],
            symlinks: vec![SymlinkNode { name: "m".into(), target: "a/b/mod".into() }],
            ..Directory::default()
        });
        let tree = expand(root, &blobs, &TreeLimits::default()).unwrap();
        let src = Path::new("/t/src");
        assert_eq!(module_dir(src, &tree, "m").unwrap(), Path::new("/t/src/mod"));
        assert_eq!(module_dir(src, &tree, "").unwrap(), src);
        for bad in ["a/b/a/b/..", "absent", "mod/go.mod"] {
            assert!(matches!(module_dir(src, &tree, bad), Err(TaskError::Build(_))), "{bad}");
        }
        let packages = |list: &[&str]| list.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        assert!(
            check_packages(&tree, "mod", &packages(&[".", "./...", "./cmd/app", "example.com/x/..."]))
                .is_ok()
        );
        for bad in ["../..", "/etc", "../a/b/../..", "./../a/b/a/b/../../.."] {
            assert!(check_packages(&tree, "mod", &packages(&[bad])).is_err(), "{bad}");
        }
    }
}
