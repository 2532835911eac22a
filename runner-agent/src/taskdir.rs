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
    let tasks = work_dir.join("tasks");
    if let Err(err) = remove_tree(&tasks) {
        return Err(format!("removing {}: {err}", tasks.display()));
    }
    std::fs::create_dir_all(&tasks).map_err(|err| format!("{}: {err}", tasks.display()))?;
    sandbox::set_mode(&tasks, 0o711)?;
    Ok(tasks)
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

/// Refuses an output directory holding anything but regular files of the build user's (or the
/// agent's: a whole-build hit restores them). The agent reads outputs with its own rights, so a
/// link (or a hard link to someone else's file) would hand it whatever the build points at.
pub fn check_outputs(dir: &Path, owner: Option<Owner>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let agent = sandbox::agent_uid();
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
        let own = owner.map_or(agent, |owner| owner.uid);
        if metadata.uid() != own && metadata.uid() != agent {
            return Err(format!(
                "the build's output {name:?} belongs to uid {}, not to the build; refused",
                metadata.uid()
            ));
        }
    }
    Ok(())
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
        assert!(check_outputs(dir.path(), None).is_ok());
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("steal")).unwrap();
        let err = check_outputs(dir.path(), None).unwrap_err();
        assert!(err.contains("\"steal\"") && err.contains("not a regular file"), "{err}");
        std::fs::remove_file(dir.path().join("steal")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(check_outputs(dir.path(), None).is_err());
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
