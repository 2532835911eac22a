//! What the agent checks and sets up before it leases anything: who builds run as (see
//! [`sandbox`]), the work directory's layout and modes, the bridge binary builds can run, and
//! that nothing of the agent's credentials is within a build's reach.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::caps;
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
}

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
    let Some((first, last)) = range else { return shared(work) };
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
    let users = BuildUsers::take(first, last, options.concurrency)?;
    let version = caps::go_info(options.go)?.version;
    sandbox::self_check(users.first(), options.go, &bridge, &tasks, &version).map_err(|err| {
        format!("{err} (the agent needs root, or CAP_SETUID, CAP_SETGID, CAP_CHOWN and CAP_FOWNER)")
    })?;
    tracing::info!(uids = %users.range(), "builds run as unprivileged build users, one per task");
    Ok(Prepared { sandbox: Sandbox::Users(Arc::new(users)), bridge })
}

/// Not root, no --build-uids: builds run as this user. Said loudly, since a job can then read
/// the agent's token and write its caches.
fn shared(work: &Path) -> Result<Prepared, String> {
    tracing::warn!(
        "UNSAFE FOR UNTRUSTED JOBS: runner-agent is not root and has no --build-uids, so builds run as the \
         agent's own user and a job can read this agent's token, work directory and other tasks. Run the agent \
         as root (builds then run as unprivileged build users) unless every job is trusted"
    );
    taskdir::reset(work)?;
    let bridge = std::env::current_exe().map_err(|err| format!("cannot find this binary: {err}"))?;
    Ok(Prepared { sandbox: Sandbox::Shared, bridge })
}
