//! A task's directory, `<work>/tasks/<job>-<task>-<attempt>`, and everything a build keeps:
//! HOME, TMPDIR, GOCACHE, the module cache, GOPATH, the bridge's local tier and the outputs
//! are the task's own, so no build can plant something another task (or tenant) reads.
//!
//! With build users the task directory belongs to the agent with the task's group (0750): only
//! the task's uid gets in, and it cannot swap the directories the agent later reads (`out`) for
//! links. Its private directories belong to the build user (0700). The tasks directory and the
//! work directory are 0711: reachable, not listable.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::TaskError;
use crate::sandbox::{self, Owner};

/// The build's own directories, created empty for every task.
const PRIVATE: &[&str] = &["home", "tmp", "gocache", "gomodcache", "gopath", "gocacheprog", "out"];

/// What agents before per-task state shared between every build in the work dir.
const LEGACY_SHARED: &[&str] = &["gocache", "gomodcache", "gopath", "gocacheprog"];

/// Empties `<work>/tasks` (what a stopped agent left) and makes it reachable, not listable;
/// removes the shared caches older agents kept (every build could write them).
pub fn reset(work_dir: &Path) -> Result<PathBuf, String> {
    for legacy in LEGACY_SHARED {
        let _ = remove_tree(&work_dir.join(legacy));
    }
    let tasks = tasks_dir(work_dir);
    if let Err(err) = remove_tree(&tasks) {
        return Err(format!("removing {}: {err}", tasks.display()));
    }
    std::fs::create_dir_all(&tasks).map_err(|err| format!("{}: {err}", tasks.display()))?;
    sandbox::set_mode(&tasks, 0o711)?;
    Ok(tasks)
}

fn tasks_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("tasks")
}

/// Where the task named `key` (`task::token_name`) keeps its files.
pub fn task_path(work_dir: &Path, key: &str) -> PathBuf {
    tasks_dir(work_dir).join(key)
}

/// One task's directory.
#[derive(Debug)]
pub struct TaskDir {
    pub root: PathBuf,
    owner: Option<Owner>,
}

impl TaskDir {
    /// Creates `root` afresh with the build's private directories.
    pub fn create(root: PathBuf, owner: Option<Owner>) -> Result<Self, TaskError> {
        let failed =
            |path: &Path, err: String| TaskError::Infrastructure(format!("{}: {err}", path.display()));
        let _ = remove_tree(&root);
        std::fs::create_dir(&root).map_err(|err| failed(&root, err.to_string()))?;
        match owner {
            Some(owner) => {
                rustix::fs::chown(&root, None, Some(sandbox::gid(owner.gid)))
                    .map_err(|err| failed(&root, format!("chown: {err}")))?;
                sandbox::set_mode(&root, 0o750).map_err(|err| failed(&root, err))?;
            }
            None => sandbox::set_mode(&root, 0o700).map_err(|err| failed(&root, err))?,
        }
        for name in PRIVATE {
            let dir = root.join(name);
            std::fs::create_dir(&dir).map_err(|err| failed(&dir, err.to_string()))?;
            if let Some(owner) = owner {
                // Nothing runs as the uid yet: the path cannot have been swapped.
                rustix::fs::chown(&dir, Some(sandbox::uid(owner.uid)), Some(sandbox::gid(owner.gid)))
                    .map_err(|err| failed(&dir, format!("chown: {err}")))?;
            }
            sandbox::set_mode(&dir, 0o700).map_err(|err| failed(&dir, err))?;
        }
        Ok(Self { root, owner })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// Removes the directory; call once nothing of the build runs.
    pub fn remove(&self) {
        if let Err(err) = remove_tree(&self.root) {
            tracing::warn!(dir = %self.root.display(), error = %err, "cannot remove a task directory");
        }
    }
}

/// Who wrote a task's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outputs {
    /// The go command, as the build user: a miss.
    Built,
    /// The agent itself, from the whole-build cache: a hit.
    Restored,
}

/// Refuses an output directory holding anything but regular files with one link each, of the
/// build user's (or of the agent's, when it restored them itself). The agent reads outputs with
/// its own rights, so a symbolic link would hand it whatever the build points at, and so would a
/// hard link to a file of the agent's (its token file) where the kernel lets a user link files
/// it does not own (`fs.protected_hardlinks = 0`): such a link belongs to the agent and has a
/// second name.
pub fn check_outputs(dir: &Path, owner: Option<Owner>, outputs: Outputs) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let agent = sandbox::agent_uid();
    let build = owner.map_or(agent, |owner| owner.uid);
    for entry in entries {
        let entry = entry.map_err(|err| format!("{}: {err}", dir.display()))?;
        let metadata =
            std::fs::symlink_metadata(entry.path()).map_err(|err| format!("{}: {err}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !metadata.file_type().is_file() {
            return Err(format!(
                "the build left {name:?} in its output directory, which is not a regular file; refused"
            ));
        }
        let restored = outputs == Outputs::Restored && metadata.uid() == agent;
        if metadata.uid() != build && !restored {
            return Err(format!(
                "the build's output {name:?} belongs to uid {}, not to the build (uid {build}); refused",
                metadata.uid()
            ));
        }
        if metadata.nlink() != 1 {
            return Err(format!(
                "the build's output {name:?} has {} links: it is another file's too, not the build's own; refused",
                metadata.nlink()
            ));
        }
    }
    Ok(())
}

/// What a task's directory takes on disk, at least: every entry the build made counted once
/// (a file with several names too), at a block or more each.
pub const ENTRY_COST: u64 = 4096;

/// What a file of `size` bytes takes on disk at least: whole blocks, and one even when it is
/// tiny or empty (its inode and name are not free either).
pub fn file_cost(size: u64) -> u64 {
    size.div_ceil(ENTRY_COST).max(1).saturating_mul(ENTRY_COST)
}

/// Bytes of disk the build's own files, directories and links under `root` take, stopping
/// once past `stop_at`. With a build user, what belongs to it (the agent's files there, the
/// sources and the module store's links, have caps of their own); without one, what has a
/// single name (the agent's shared files have several). Never follows a link; entries that
/// vanish meanwhile (the go command removes its temporary files) are skipped.
pub fn disk_use(root: &Path, owner: Option<Owner>, stop_at: u64) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else { continue };
            if metadata.is_dir() {
                stack.push(entry.path());
            }
            let builds = match owner {
                Some(owner) => metadata.uid() == owner.uid,
                None => metadata.is_dir() || metadata.nlink() == 1,
            };
            if builds && (metadata.nlink() == 1 || seen.insert((metadata.dev(), metadata.ino()))) {
                total += (metadata.blocks() * 512).max(ENTRY_COST);
                if total > stop_at {
                    return total;
                }
            }
        }
    }
    total
}

/// Removes a directory tree, making read-only directories writable first (without root, the
/// go command leaves module directories read-only unless -modcacherw). Never follows a link.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(dir);
            std::fs::remove_dir_all(dir)
        }
    }
}

fn make_writable(dir: &Path) {
    let Ok(metadata) = std::fs::symlink_metadata(dir) else { return };
    if !metadata.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_must_be_regular_files_of_the_build() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app"), b"\x7fELF").unwrap();
        assert!(check_outputs(dir.path(), None, Outputs::Built).is_ok());
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("steal")).unwrap();
        let err = check_outputs(dir.path(), None, Outputs::Built).unwrap_err();
        assert!(err.contains("\"steal\"") && err.contains("not a regular file"), "{err}");
        std::fs::remove_file(dir.path().join("steal")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(check_outputs(dir.path(), None, Outputs::Built).is_err());
    }

    /// A hard link to a file of the agent's (its token), as a build user could make where
    /// `fs.protected_hardlinks` is 0: made here by the agent's uid itself.
    #[test]
    fn a_built_output_is_the_build_users_own_file_with_one_link() {
        let build = Owner { uid: 61_999, gid: 61_999 };
        let secrets = tempfile::tempdir().unwrap();
        let token = secrets.path().join("agent.token");
        std::fs::write(&token, b"cached_secret").unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::hard_link(&token, out.path().join("app")).unwrap();
        let err = check_outputs(out.path(), Some(build), Outputs::Built).unwrap_err();
        assert!(err.contains("\"app\"") && err.contains("not to the build (uid 61999)"), "{err}");
        // Even as the build's own file, a second name is refused; a restored output of the
        // agent's with one link is fine on a hit.
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&token, Some(sandbox::uid(build.uid)), None).unwrap();
            let err = check_outputs(out.path(), Some(build), Outputs::Built).unwrap_err();
            assert!(err.contains("has 2 links"), "{err}");
        }
        std::fs::remove_file(out.path().join("app")).unwrap();
        std::fs::write(out.path().join("app"), b"\x7fELF").unwrap();
        assert!(check_outputs(out.path(), Some(build), Outputs::Restored).is_ok());
        assert!(check_outputs(out.path(), Some(build), Outputs::Built).is_err());
    }

    #[test]
    fn a_builds_disk_use_counts_its_own_entries_once_each_at_a_block_or_more() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/big"), vec![1u8; 1 << 20]).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        let me = Some(Owner { uid: sandbox::agent_uid(), gid: 0 });
        let counted = disk_use(dir.path(), me, u64::MAX);
        assert_eq!(counted, (1 << 20) + 2 * ENTRY_COST, "a directory, a MiB and an empty file");
        // A second name for the MiB costs nothing more.
        std::fs::hard_link(dir.path().join("sub/big"), dir.path().join("again")).unwrap();
        assert_eq!(disk_use(dir.path(), me, u64::MAX), counted);
        // Another user's files are not the build's; the walk stops once past its limit.
        assert_eq!(disk_use(dir.path(), Some(Owner { uid: 61_999, gid: 61_999 }), u64::MAX), 0);
        assert!(disk_use(dir.path(), me, 1) < counted);
    }

    #[test]
    fn task_directories_are_fresh_and_private() {
        let work = tempfile::tempdir().unwrap();
        let tasks = reset(work.path()).unwrap();
        assert_eq!(std::fs::metadata(&tasks).unwrap().mode() & 0o777, 0o711);
        let task = TaskDir::create(tasks.join("job-0-1"), None).unwrap();
        std::fs::write(task.path("out/stale"), b"x").unwrap();
        let task = TaskDir::create(tasks.join("job-0-1"), None).unwrap();
        assert!(!task.path("out/stale").exists());
        for name in PRIVATE {
            assert_eq!(std::fs::metadata(task.path(name)).unwrap().mode() & 0o777, 0o700, "{name}");
        }
        task.remove();
        assert!(!task.root.exists());
    }
}
