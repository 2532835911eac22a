//! What the agent checks and sets up before it leases anything: who builds run as (see
//! [`sandbox`]), the control groups that limit each task ([`cgroup`]), the work directory's
//! layout and modes, the bridge binary builds can run, and that nothing of the agent's
//! credentials is within a build's reach.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::caps;
use crate::cgroup::{self, Cgroups};
use crate::sandbox::{self, BuildUsers, Sandbox};
use crate::taskdir;

/// Where the work directory is when the agent runs as root and none is given.
pub const ROOT_WORK_DIR: &str = "/var/lib/runner-agent";

pub struct Options<'a> {
    pub work_dir: &'a Path,
    /// `--build-uids`, as given.
    pub build_uids: Option<&'a str>,
    pub concurrency: u32,
    pub go: &'a Path,
    pub token_file: Option<&'a Path>,
    /// The token was given as `--token` on the command line.
    pub token_on_command_line: bool,
    /// `--build-memory` and `--build-pids`.
    pub limits: cgroup::Request,
}

/// Where build processes ask to be placed in their task's control group.
const PLACEMENT_SOCKET: &str = "build-cgroups.sock";

pub struct Prepared {
    pub sandbox: Sandbox,
    /// The binary builds run as their GOCACHEPROG bridge.
    pub bridge: PathBuf,
}

pub fn prepare(options: &Options<'_>) -> Result<Prepared, String> {
    let range = match options.build_uids {
        Some(text) => Some(sandbox::parse_range(text).map_err(|err| format!("--build-uids {err}"))?),
        None if sandbox::agent_uid() == 0 => Some(sandbox::default_range(options.concurrency)),
        None => None,
    };
    let work = options.work_dir;
    std::fs::create_dir_all(work).map_err(|err| format!("--work-dir {}: {err}", work.display()))?;
    let Some((first, last)) = range else { return shared(work, &options.limits) };
    if options.token_on_command_line {
        return Err("--token on the command line is readable by every local user, builds included \
                    (/proc/<pid>/cmdline): pass it as CACHED_TOKEN or --token-file"
            .into());
    }
    if let Some(file) = options.token_file.filter(|file| sandbox::readable_by_others(file)) {
        return Err(format!(
            "the token file {} is readable by every user, builds included: chmod 600 {}",
            file.display(),
            file.display()
        ));
    }
    // Builds pass through the work dir to their task directories; they may not list it.
    sandbox::set_mode(work, 0o711)?;
    sandbox::check_reachable(work, "--work-dir")?;
    let tasks = taskdir::reset(work)?;
    let bridge = sandbox::bridge_binary(work)?;
    let mut users = BuildUsers::take(first, last, options.concurrency)?;
    if let Some(cgroups) = limits(&options.limits, users.uids(), &work.join(PLACEMENT_SOCKET))? {
        users.limit(cgroups);
    }
    let version = caps::go_info(options.go)?.version;
    sandbox::self_check(users.first(), options.go, &bridge, &tasks, &version).map_err(|err| {
        format!("{err} (the agent needs root, or CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_FOWNER)")
    })?;
    tracing::info!(uids = %users.range(), "builds run as unprivileged build users, one per task");
    Ok(Prepared { sandbox: Sandbox::Users(Arc::new(users)), bridge })
}

/// The control groups of the tasks of `uids`, or none (having said loudly what a job may then
/// take); an error where the operator asked for a limit that cannot be had.
fn limits(
    request: &cgroup::Request,
    uids: (u32, u32),
    socket: &Path,
) -> Result<Option<Arc<Cgroups>>, String> {
    let set_up = Cgroups::set_up(request, uids, socket)?;
    if !set_up.missing.is_empty() {
        tracing::warn!(
            missing = %set_up.missing.join("; "),
            "NO PER-TASK LIMIT for some resources: a job can take this machine's memory, fork without end or crowd \
             out other tasks' CPU for up to --task-timeout where its controller is missing. Run the agent as root \
             with a writable cgroup filesystem (under systemd, Delegate=yes)"
        );
    }
    if let Some(cgroups) = &set_up.cgroups {
        tracing::info!(limits = %cgroups.describe(), "each task's build runs in a control group of its own");
    }
    Ok(set_up.cgroups)
}

/// Not root, no --build-uids: builds run as this user. Said loudly, since a job can then read
/// the agent's token and write its caches.
fn shared(work: &Path, limits: &cgroup::Request) -> Result<Prepared, String> {
    // A task's group is its build uid's: without build uids there is none to limit.
    if let Some(flag) = limits.explicit_flag() {
        return Err(format!(
            "{flag} asks for per-task limits, which need build users: run the agent as root (or give it \
             --build-uids and the privileges they need)"
        ));
    }
    tracing::warn!(
        "UNSAFE FOR UNTRUSTED JOBS: runner-agent is not root and has no --build-uids, so builds run as the \
         agent's own user and a job can read this agent's token, work directory and other tasks. Run the agent \
         as root (builds then run as unprivileged build users) unless every job is trusted"
    );
    tracing::warn!(
        "NO PER-TASK LIMITS: without build users there are no control groups for tasks, and a job can take this \
         machine's memory, CPU and process table for up to --task-timeout"
    );
    taskdir::reset(work)?;
    let bridge = std::env::current_exe().map_err(|err| format!("cannot find this binary: {err}"))?;
    Ok(Prepared { sandbox: Sandbox::Shared, bridge })
}
