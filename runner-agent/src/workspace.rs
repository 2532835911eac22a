//! Trees from the CAS into a task directory. Every file goes through a local blob cache
//! (`<work-dir>/blobs/<hash>`, read-only) and is hard-linked into place, so inputs that repeat
//! across tasks (the same sources for every target, the same module zips for every job) are
//! downloaded once. go.mod, go.sum and go.work are copied instead: the go command rewrites
//! them in place, which would change the cached blob under every other link.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cachectl::client::Client;
use cachectl::submit::tree::{Node, read_tree};
use cachectl::transfer;
use futures::{StreamExt, TryStreamExt};
use proto::Digest;

use crate::TaskError;

/// Downloads in flight per task.
const PARALLEL_DOWNLOADS: usize = 16;

/// Files written in place by the go command, so never hard-linked.
const COPIED: &[&str] = &["go.mod", "go.sum", "go.work", "go.work.sum"];

#[derive(Debug, Clone)]
pub struct BlobCache {
    dir: PathBuf,
}

fn io_error(what: &str, path: &Path, err: std::io::Error) -> TaskError {
    TaskError::Infrastructure(format!("{what} {}: {err}", path.display()))
}

impl BlobCache {
    pub fn open(dir: PathBuf) -> Result<Self, TaskError> {
        std::fs::create_dir_all(&dir).map_err(|err| io_error("creating", &dir, err))?;
        Ok(Self { dir })
    }

    fn path(&self, digest: Digest, executable: bool) -> PathBuf {
        self.dir.join(format!("{}{}", digest.hex(), if executable { "-x" } else { "" }))
    }

    /// The cached copy of a blob, downloading (and verifying) it first if needed.
    pub async fn fetch(
        &self,
        client: &Client,
        digest: Digest,
        executable: bool,
    ) -> Result<PathBuf, TaskError> {
        let path = self.path(digest, executable);
        if path.is_file() {
            return Ok(path);
        }
        transfer::download_to_file(client, digest, &path).await?;
        set_mode(&path, if executable { 0o555 } else { 0o444 })?;
        Ok(path)
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), TaskError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|err| io_error("chmod", path, err))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), TaskError> {
    Ok(())
}

/// What a materialized tree held.
#[derive(Debug, Default)]
pub struct Materialized {
    pub files: usize,
    /// Every file's path in the tree.
    pub paths: Vec<String>,
}

/// Writes the tree `root` into `dest` (created; must not exist yet).
pub async fn materialize(
    client: &Client,
    cache: &BlobCache,
    root: Digest,
    dest: &Path,
) -> Result<Materialized, TaskError> {
    std::fs::create_dir_all(dest).map_err(|err| io_error("creating", dest, err))?;
    let nodes = read_tree(client, root).await?;
    let mut wanted = BTreeSet::new();
    for node in &nodes {
        match node {
            Node::Dir { path } => {
                let dir = dest.join(path);
                std::fs::create_dir_all(&dir).map_err(|err| io_error("creating", &dir, err))?;
            }
            Node::File { digest, executable, .. } => {
                wanted.insert((*digest, *executable));
            }
            Node::Symlink { .. } => {}
        }
    }
    futures::stream::iter(
        wanted.into_iter().map(|(digest, executable)| cache.fetch(client, digest, executable)),
    )
    .buffer_unordered(PARALLEL_DOWNLOADS)
    .try_collect::<Vec<_>>()
    .await?;
    let mut out = Materialized::default();
    for node in &nodes {
        match node {
            Node::File { path, digest, executable } => {
                let source = cache.path(*digest, *executable);
                let target = dest.join(path);
                let name = path.rsplit('/').next().unwrap_or(path);
                if COPIED.contains(&name) {
                    std::fs::copy(&source, &target).map_err(|err| io_error("copying to", &target, err))?;
                    set_mode(&target, 0o644)?;
                } else if std::fs::hard_link(&source, &target).is_err() {
                    // Another file system: copy.
                    std::fs::copy(&source, &target).map_err(|err| io_error("copying to", &target, err))?;
                }
                out.files += 1;
                out.paths.push(path.clone());
            }
            Node::Symlink { path, target } => {
                let link = dest.join(path);
                #[cfg(unix)]
                std::os::unix::fs::symlink(target, &link).map_err(|err| io_error("linking", &link, err))?;
                #[cfg(not(unix))]
                let _ = (target, link);
            }
            Node::Dir { .. } => {}
        }
    }
    Ok(out)
}
