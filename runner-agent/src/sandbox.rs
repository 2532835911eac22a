//! Who a build runs as. A job is hostile input, so as root the agent runs every build task as
//! a uid of its own from a pool (`--build-uids`, default 61000-61063), with the same number as
//! its only group: the build cannot read the agent's token, work directory, blob cache or other
//! tasks, nor write anything shared. When a task ends everything its uid still runs is killed
//! (`kill -9 -1` as that uid: a build that daemonised has left its process group), and what it
//! left where every user writes (`/tmp`, `/var/tmp`, `/dev/shm`, `/dev/mqueue`, SysV IPC) is
//! removed, before the uid is handed out again. Without root, builds run as the agent's own user, which is only
//! safe for trusted jobs; the agent says so loudly at start.
//!
//! Every build process starts through this binary ([`enter_build`]), which joins the task's
//! control group where the agent has them ([`crate::cgroup`]: the task's memory, process and
//! CPU limits) and makes itself the kernel's out-of-memory killer's first choice
//! (`oom_score_adj` 1000, inherited by what it runs) with no core dumps: a build that eats the
//! machine's memory is what dies, never the agent, another task's bridge or a cached beside it.
//!
//! Start-up checks what builds will need: the work dir reachable by the build uids, the bridge
//! (this binary; copied into the work dir when it is not reachable) and the go command runnable
//! by them, no account using the range, and no other agent on this machine holding the same
//! uids (a lock per uid under /run/runner-agent).

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::cgroup::{Cgroups, Placement, TaskGroup};

/// The first uid of the default pool; the pool has 64 uids, or `--concurrency` if more.
pub const DEFAULT_FIRST_UID: u32 = 61000;
const DEFAULT_POOL: u32 = 64;

/// Where the per-uid locks live (root only: pools need root).
const LOCK_DIR: &str = "/run/runner-agent";

/// A uid and the group it runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Who builds run as.
#[derive(Debug, Clone)]
pub enum Sandbox {
    /// Each running task has a uid of its own from the pool.
    Users(Arc<BuildUsers>),
    /// Builds run as the agent's own user (not root): for trusted jobs only.
    Shared,
}

impl Sandbox {
    /// A user for one task, for as long as the guard lives; waits while every uid is taken
    /// (or still being cleared of a finished task's processes).
    pub async fn acquire(&self) -> Result<BuildUser, String> {
        match self {
            Self::Shared => Ok(BuildUser { owner: None, pool: None, permit: None, group: None }),
            Self::Users(pool) => {
                let permit = Arc::clone(&pool.permits)
                    .acquire_owned()
                    .await
                    .map_err(|_| "the build uid pool is closed".to_owned())?;
                let uid = pool.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
                // A permit is a free uid; never fall back to the agent's own user.
                let uid = uid.ok_or("no build uid is free")?;
                let mut user = BuildUser {
                    owner: Some(Owner { uid, gid: uid }),
                    pool: Some(Arc::clone(pool)),
                    permit: Some(permit),
                    group: None,
                };
                // Dropped on failure, the user goes back to the pool as after a task.
                if let Some(cgroups) = &pool.cgroups {
                    user.group =
                        Some(cgroups.create(uid).map_err(|err| format!("the task's control group: {err}"))?);
                }
                Ok(user)
            }
        }
    }
}

/// The pool of build uids. Holds a lock per uid so no other agent on the machine uses them.
#[derive(Debug)]
pub struct BuildUsers {
    first: u32,
    last: u32,
    free: Mutex<Vec<u32>>,
    permits: Arc<Semaphore>,
    /// Each task's control group, where the agent limits builds.
    cgroups: Option<Arc<Cgroups>>,
    _locks: Vec<File>,
}

impl BuildUsers {
    /// Takes the uids `first..=last` for this agent, checking that no account uses them and no
    /// other agent holds them, and kills what a previous agent left running as them.
    pub fn take(first: u32, last: u32, concurrency: u32) -> Result<Self, String> {
        check_range(first, last, concurrency)?;
        check_unused(Path::new("/etc/passwd"), first, last, "user")?;
        check_unused(Path::new("/etc/group"), first, last, "group")?;
        let locks = lock_uids(first, last)?;
        for uid in first..=last {
            reap(uid).map_err(|err| {
                format!("cannot clear build uid {uid} of a previous agent's processes: {err}")
            })?;
            clear_leftovers(uid)
                .map_err(|err| format!("cannot clear build uid {uid} of a previous agent's files: {err}"))?;
        }
        let count = (last - first + 1) as usize;
        Ok(Self {
            first,
            last,
            free: Mutex::new((first..=last).rev().collect()),
            permits: Arc::new(Semaphore::new(count)),
            cgroups: None,
            _locks: locks,
        })
    }

    pub fn first(&self) -> Owner {
        Owner { uid: self.first, gid: self.first }
    }

    pub fn range(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }

    /// The uids, as `(first, last)`.
    pub fn uids(&self) -> (u32, u32) {
        (self.first, self.last)
    }

    /// Gives every task a control group of `cgroups`.
    pub fn limit(&mut self, cgroups: Arc<Cgroups>) {
        self.cgroups = Some(cgroups);
    }
}

fn check_range(first: u32, last: u32, concurrency: u32) -> Result<(), String> {
    if first == 0 || first > last || last >= u32::MAX - 1 {
        return Err(format!("--build-uids {first}-{last}: expected FIRST-LAST with 0 < FIRST <= LAST"));
    }
    let count = u64::from(last - first) + 1;
    if count < u64::from(concurrency) {
        return Err(format!(
            "--build-uids {first}-{last} has {count} uids but --concurrency is {concurrency}: every running \
             task needs a uid of its own; widen the range or lower the concurrency"
        ));
    }
    Ok(())
}

/// Parses `FIRST-LAST`.
pub fn parse_range(text: &str) -> Result<(u32, u32), String> {
    let (first, last) =
        text.split_once('-').ok_or_else(|| format!("{text:?}: expected FIRST-LAST, e.g. 61000-61063"))?;
    let number = |part: &str| part.trim().parse::<u32>().map_err(|err| format!("{text:?}: {part:?}: {err}"));
    Ok((number(first)?, number(last)?))
}

/// The default pool for `concurrency` tasks.
pub fn default_range(concurrency: u32) -> (u32, u32) {
    (DEFAULT_FIRST_UID, DEFAULT_FIRST_UID + DEFAULT_POOL.max(concurrency) - 1)
}

/// Refuses a range an account of `file` (/etc/passwd, /etc/group) uses: its files and
/// processes would be the builds'.
fn check_unused(file: &Path, first: u32, last: u32, what: &str) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(file) else { return Ok(()) };
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else { continue };
        if let Ok(id) = id.parse::<u32>()
            && (first..=last).contains(&id)
        {
            return Err(format!(
                "--build-uids {first}-{last}: the {what} {name} ({} in {}) is in the range; builds would run as \
                 it. Choose a range no account uses",
                id,
                file.display()
            ));
        }
    }
    Ok(())
}

fn lock_uids(first: u32, last: u32) -> Result<Vec<File>, String> {
    std::fs::create_dir_all(LOCK_DIR).map_err(|err| format!("{LOCK_DIR}: {err}"))?;
    let _ = std::fs::set_permissions(LOCK_DIR, std::fs::Permissions::from_mode(0o700));
    (first..=last)
        .map(|uid| {
            let path = Path::new(LOCK_DIR).join(format!("uid-{uid}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|err| format!("{}: {err}", path.display()))?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
                format!(
                    "build uid {uid} is taken by another runner-agent on this machine ({} is locked): give \
                     each agent its own --build-uids range",
                    path.display()
                )
            })?;
            Ok(file)
        })
        .collect()
}

/// A task's user; handed back to the pool, once nothing runs as it, when dropped.
#[derive(Debug)]
pub struct BuildUser {
    owner: Option<Owner>,
    pool: Option<Arc<BuildUsers>>,
    permit: Option<OwnedSemaphorePermit>,
    /// The task's control group; removed once nothing runs as the user.
    group: Option<TaskGroup>,
}

impl BuildUser {
    /// The uid and gid builds run as; `None` for the agent's own user.
    pub fn owner(&self) -> Option<Owner> {
        self.owner
    }

    /// The task's control group, where the agent limits builds.
    pub fn group(&self) -> Option<&TaskGroup> {
        self.group.as_ref()
    }

    /// Kills every process of this user (nothing when builds share the agent's user: their
    /// process groups are killed instead).
    pub async fn kill_all(&self) -> Result<(), String> {
        match self.owner {
            Some(owner) => kill_all(owner.uid).await,
            None => Ok(()),
        }
    }
}

impl Drop for BuildUser {
    fn drop(&mut self) {
        let (Some(owner), Some(pool)) = (self.owner.take(), self.pool.take()) else { return };
        let (permit, group) = (self.permit.take(), self.group.take());
        // Off the runtime: the uid goes back only once nothing runs as it, its group is gone
        // (the next task's starts with nothing counted) and nothing it left where others write
        // remains for the next tenant.
        let cleared = move || {
            reap(owner.uid)?;
            group.map_or(Ok(()), TaskGroup::remove)?;
            clear_leftovers(owner.uid)
        };
        cached_client::task::spawn_thread("reap-build-user", move || match cleared() {
            Ok(()) => {
                pool.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(owner.uid);
                drop(permit);
            }
            Err(err) => {
                tracing::error!(uid = owner.uid, error = %err, "a build uid could not be cleared; it is retired");
                // The permit goes with it: the pool is one smaller.
                if let Some(permit) = permit {
                    permit.forget();
                }
            }
        });
    }
}

/// How readily the out-of-memory killer takes a build's processes: first of all.
const BUILD_OOM_SCORE_ADJ: &str = "1000";

/// The subcommand of this binary every build process starts through.
pub const ENTER_BUILD: &str = "enter-build";

/// `program args` started through [`ENTER_BUILD`] of `entry` (this binary, as build users
/// reach it), in the task's control group when it has one.
pub fn through_entry(
    entry: &Path,
    placement: Option<&Placement>,
    program: &Path,
    args: &[String],
) -> (PathBuf, Vec<String>) {
    let mut wrapped = vec![ENTER_BUILD.to_owned()];
    if let Some(placement) = placement {
        wrapped.extend([PLACEMENT_FLAG.to_owned(), placement.socket.display().to_string()]);
        for line in &placement.expected {
            wrapped.extend([CGROUP_FLAG.to_owned(), line.clone()]);
        }
    }
    wrapped.extend(["--".to_owned(), program.display().to_string()]);
    wrapped.extend(args.iter().cloned());
    (entry.to_owned(), wrapped)
}

/// [`ENTER_BUILD`]'s options: the agent's placement socket, and each `CONTROLLERS:PATH` line
/// /proc/self/cgroup must show once placed.
pub const PLACEMENT_FLAG: &str = "--placement";
pub const CGROUP_FLAG: &str = "--cgroup";

/// Runs in the build's process, already its user, and becomes `program`: first in the task's
/// control group (before anything of the build can fork), then the out-of-memory killer's first
/// choice, with no core dumps. Done here, after the user changed, because a process whose uid
/// changed is not dumpable until it execs, and until then its /proc files are root's; raising
/// one's own score needs no privilege. Returns only on failure.
pub fn enter_build(placement: Option<&Placement>, program: &Path, args: &[std::ffi::OsString]) -> String {
    if let Some(placement) = placement
        && let Err(err) = crate::cgroup::join(placement)
    {
        return format!("cannot join the task's control group: {err}");
    }
    if let Err(err) = std::fs::write("/proc/self/oom_score_adj", BUILD_OOM_SCORE_ADJ) {
        return format!("cannot make the build the out-of-memory killer's first choice: {err}");
    }
    let no_core = rustix::process::Rlimit { current: Some(0), maximum: Some(0) };
    if let Err(err) = rustix::process::setrlimit(rustix::process::Resource::Core, no_core) {
        return format!("cannot turn core dumps off for the build: {err}");
    }
    let err = Command::new(program).args(args).exec();
    format!("cannot run {}: {err}", program.display())
}

/// Kills every process `uid` runs, from a blocking thread.
pub async fn kill_all(uid: u32) -> Result<(), String> {
    cached_client::task::spawn_blocking("reap-build-user", move || reap(uid))
        .await
        .map_err(|err| err.to_string())?
}

/// `kill -9 -1` as `uid` (the kernel signals all its processes at once, so a forking build
/// cannot outrun it), until /proc shows none left.
fn reap(uid: u32) -> Result<(), String> {
    for round in 0..100u32 {
        if let Err(err) = run_as(uid, Command::new("/bin/sh").args(["-c", "kill -9 -1 2>/dev/null"])) {
            return Err(format!("cannot run /bin/sh as uid {uid}: {err}"));
        }
        if !runs_as(uid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(u64::from(round.min(10)) * 10));
    }
    Err(format!("processes of uid {uid} survived SIGKILL"))
}

/// Directories every user may write in, whose entries outlive the processes that made them
/// (`/dev/mqueue` holds POSIX message queues, `/dev/shm` POSIX shared memory and semaphores).
/// A build's TMPDIR is its task's, but what the tools it runs put here themselves would be the
/// next tenant's to see under the same uid.
const SHARED_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue"];

/// SysV IPC objects, as `/proc/sysvipc/<file>` lists them and `ipcrm <flag>` removes them.
const SYSV_IPC: &[(&str, &str, &str)] =
    &[("shm", "shmid", "-m"), ("sem", "semid", "-s"), ("msg", "msqid", "-q")];

/// Removes what `uid` left behind outside its task directory: its top-level entries in
/// [`SHARED_DIRS`], as whole trees (a link itself, never what it points at), and the SysV IPC
/// objects it owns or made. Call once nothing runs as `uid`. The removal runs as `uid` itself,
/// so it can touch nothing the build could not have touched: no link or rename a tenant
/// prepared can turn it against another user's files. Fails when something is left.
pub fn clear_leftovers(uid: u32) -> Result<(), String> {
    let (entries, ipc) = (shared_entries(uid), ipc_objects(uid));
    if entries.is_empty() && ipc.is_empty() {
        return Ok(());
    }
    // The owner may open up what it made read-only; rm never follows a link it removes.
    let script = r#"for p; do
  if [ -d "$p" ] && [ ! -L "$p" ]; then chmod -R u+rwx -- "$p" 2>/dev/null; fi
  rm -rf -- "$p"
done"#;
    if !entries.is_empty() {
        as_user(uid, Command::new("/bin/sh").args(["-c", script, "sh"]).args(&entries))?;
    }
    if !ipc.is_empty() {
        as_user(uid, Command::new("ipcrm").args(&ipc))?;
    }
    let (entries, ipc) = (shared_entries(uid), ipc_objects(uid));
    if entries.is_empty() && ipc.is_empty() {
        return Ok(());
    }
    Err(format!(
        "uid {uid} still owns {} after removing them, and SysV IPC objects {ipc:?}",
        entries.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
    ))
}

fn as_user(uid: u32, command: &mut Command) -> Result<(), String> {
    run_as(uid, command).map(drop).map_err(|err| format!("cannot clear what uid {uid} left: {err}"))
}

/// Runs `command` to its end as `uid` (and its group), from `/`, with a plain PATH and no
/// stdio: nothing of the agent's environment or files goes with it.
fn run_as(uid: u32, command: &mut Command) -> std::io::Result<std::process::ExitStatus> {
    command
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir("/")
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

/// The top-level entries of [`SHARED_DIRS`] that belong to `uid` (not following links).
fn shared_entries(uid: u32) -> Vec<PathBuf> {
    SHARED_DIRS
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|entry| entry.metadata().is_ok_and(|metadata| metadata.uid() == uid))
        .map(|entry| entry.path())
        .collect()
}

/// `ipcrm` arguments for the SysV IPC objects `uid` owns or created.
fn ipc_objects(uid: u32) -> Vec<String> {
    let mut args = Vec::new();
    for (file, id_column, flag) in SYSV_IPC {
        let Ok(table) = std::fs::read_to_string(format!("/proc/sysvipc/{file}")) else { continue };
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        let column = |name: &str| header.iter().position(|field| *field == name);
        let (Some(id), Some(owner), Some(creator)) = (column(id_column), column("uid"), column("cuid"))
        else {
            continue;
        };
        for line in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let is =
                |index: usize| fields.get(index).and_then(|field| field.parse::<u32>().ok()) == Some(uid);
            if (is(owner) || is(creator))
                && let Some(id) = fields.get(id)
            {
                args.extend([(*flag).to_owned(), (*id).to_owned()]);
            }
        }
    }
    args
}

/// Whether a live (not zombie) process has `uid` as its real, effective, saved or file uid.
pub fn runs_as(uid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())))
        .any(|entry| {
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { return false };
            let zombie = status.lines().any(|line| line.starts_with("State:") && line.contains('Z'));
            let uids = status.lines().find_map(|line| line.strip_prefix("Uid:")).unwrap_or("");
            !zombie && uids.split_whitespace().any(|id| id.parse() == Ok(uid))
        })
}

/// Refuses a path the build uids cannot reach: every directory from `/` down must let
/// others traverse it (they are neither its owner nor in its group).
pub fn check_reachable(path: &Path, what: &str) -> Result<(), String> {
    let path = std::fs::canonicalize(path).map_err(|err| format!("{what} {}: {err}", path.display()))?;
    for dir in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let metadata = std::fs::metadata(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        if metadata.is_dir() && metadata.mode() & 0o001 == 0 {
            return Err(format!(
                "{what} {}: builds run as other users (--build-uids), and they cannot reach it: {} is mode {:o} \
                 (owner uid {}). Let others traverse it (chmod o+x {}) or choose another directory",
                path.display(),
                dir.display(),
                metadata.mode() & 0o7777,
                metadata.uid(),
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Whether users other than the owner and group can read `path` (every directory on the way
/// traversable, the file readable by others).
pub fn readable_by_others(path: &Path) -> bool {
    let Ok(path) = std::fs::canonicalize(path) else { return false };
    let Ok(metadata) = std::fs::metadata(&path) else { return false };
    metadata.mode() & 0o004 != 0
        && path.ancestors().skip(1).all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o001 != 0))
}

/// The binary builds run as their GOCACHEPROG bridge: this one where the build uids can run
/// it, else a copy in `<work>/bin` (0755 in a 0711 directory).
pub fn bridge_binary(work_dir: &Path) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|err| format!("cannot find this binary: {err}"))?;
    let runnable = std::fs::metadata(&exe).is_ok_and(|m| m.mode() & 0o001 != 0);
    if runnable && check_reachable(&exe, "this binary").is_ok() {
        return Ok(exe);
    }
    let dir = work_dir.join("bin");
    std::fs::create_dir_all(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    set_mode(&dir, 0o711)?;
    let copy = dir.join("runner-agent");
    let temp = dir.join(format!(".runner-agent.{}", std::process::id()));
    // /proc/self/exe still reads when the file was replaced since it started.
    std::fs::copy("/proc/self/exe", &temp)
        .map_err(|err| format!("copying this binary to {}: {err}", temp.display()))?;
    set_mode(&temp, 0o755)?;
    std::fs::rename(&temp, &copy).map_err(|err| format!("{}: {err}", copy.display()))?;
    tracing::info!(copy = %copy.display(), "this binary is out of the build users' reach; builds use a copy");
    Ok(copy)
}

pub fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|err| format!("chmod {:o} {}: {err}", mode, path.display()))
}

/// Runs `go env GOVERSION` and the bridge's `--version` as `owner` in a scratch directory
/// under `tasks`, so a toolchain or binary the build users cannot run fails the start, not
/// every build.
pub fn self_check(owner: Owner, go: &Path, bridge: &Path, tasks: &Path, version: &str) -> Result<(), String> {
    let scratch = tasks.join(".self-check");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir(&scratch).map_err(|err| format!("{}: {err}", scratch.display()))?;
    rustix::fs::chown(&scratch, Some(uid(owner.uid)), Some(gid(owner.gid)))
        .map_err(|err| format!("chown {}: {err}", scratch.display()))?;
    set_mode(&scratch, 0o700)?;
    let run = |program: &Path, args: &[&str]| {
        Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", crate::caps::build_path())
            .env("HOME", &scratch)
            .env("GOCACHE", scratch.join("gocache"))
            .env("GOENV", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOTELEMETRY", "off")
            .current_dir(&scratch)
            .uid(owner.uid)
            .gid(owner.gid)
            .stdin(Stdio::null())
            .output()
    };
    let result = (|| {
        let ran = run(go, &["env", "GOVERSION"]).map_err(|err| err.to_string())?;
        let said = String::from_utf8_lossy(&ran.stdout).trim().to_owned();
        if !ran.status.success() || said != version {
            return Err(format!(
                "the go command ({}) does not run as build uid {} ({}{}): builds run as other users, so Go must be \
                 installed where every user can read it (e.g. /usr/local/go), or pass --go",
                go.display(),
                owner.uid,
                ran.status,
                String::from_utf8_lossy(&ran.stderr).trim()
            ));
        }
        let ran = run(bridge, &["--version"]).map_err(|err| format!("{}: {err}", bridge.display()))?;
        if !ran.status.success() {
            return Err(format!(
                "this binary ({}) does not run as build uid {}: {}",
                bridge.display(),
                owner.uid,
                String::from_utf8_lossy(&ran.stderr).trim()
            ));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    reap(owner.uid)?;
    result
}

pub fn uid(raw: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(raw)
}

pub fn gid(raw: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(raw)
}

/// The effective uid of the agent.
pub fn agent_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_must_cover_the_concurrency() {
        assert_eq!(parse_range("61000-61063"), Ok((61000, 61063)));
        assert!(parse_range("61000").is_err());
        assert!(parse_range("a-b").is_err());
        assert!(check_range(61000, 61001, 2).is_ok());
        let err = check_range(61000, 61001, 3).unwrap_err();
        assert!(err.contains("2 uids") && err.contains("--concurrency is 3"), "{err}");
        assert!(check_range(0, 10, 1).is_err());
        assert!(check_range(10, 5, 1).is_err());
        assert_eq!(default_range(8), (61000, 61063));
        assert_eq!(default_range(100), (61000, 61099));
    }

    #[test]
    fn a_range_an_account_uses_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/sh\nci:x:61005:61005::/home/ci:/bin/sh\n")
            .unwrap();
        let err = check_unused(&passwd, 61000, 61063, "user").unwrap_err();
        assert!(err.contains("ci (61005"), "{err}");
        assert!(check_unused(&passwd, 62000, 62063, "user").is_ok());
    }

    #[test]
    fn unreachable_directories_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("work");
        std::fs::create_dir(&inner).unwrap();
        set_mode(dir.path(), 0o700).unwrap();
        let err = check_reachable(&inner, "--work-dir").unwrap_err();
        assert!(err.contains(&format!("{} is mode 700", dir.path().display())), "{err}");
        set_mode(dir.path(), 0o711).unwrap();
        // /tmp and the rest of the way are traversable on any sane machine.
        assert!(check_reachable(&inner, "--work-dir").is_ok());
    }
}
