//! The build step of a task: `go build` for one target, through the same library as
//! `cachectl go build` (`cached_gobuild`): a whole-build hit restores the outputs without
//! the compiler; a miss runs go with the GOCACHEPROG bridge (this binary's `gocacheprog`
//! subcommand) and records the build. Every process the library starts goes through
//! [`GroupExec`]: a clean environment, the task's build user, its own process group, the task's
//! timeout and cancel. Whenever none of them is running, nothing of the build user may run
//! either: what is left is killed before the agent reads what the build wrote.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cached_client::connect::{Client, ConnectOptions};
use cached_gobuild::exec::{Captured, Exec, Invocation, Prepare, Processes, Sink};
use cached_gobuild::{BuildOptions, BuildRequest, build_with};
use proto::Digest;
use tokio::sync::{mpsc, watch};

use crate::TaskError;
use crate::cancel::Cancel;
use crate::cgroup::{Memory, Placement};
use crate::sandbox::{self, Owner};
use crate::taskdir;
use crate::trouble::{DISK_SAMPLE, Machine, TaskDisk, agent_trouble, over_memory_limit};

/// Whether builds go through the whole-build cache (`cached_gobuild`), so an unchanged
/// target is a hit without the go command.
pub const WHOLE_BUILD_CACHE: bool = true;

/// What to build, in the shape of `cached_gobuild::BuildRequest`.
#[derive(Debug, Clone)]
pub struct BuildInput {
    pub module_dir: PathBuf,
    /// The job's source tree, which module_dir is in: includes may name files anywhere in it.
    pub source_tree: PathBuf,
    pub packages: Vec<String>,
    /// Directory the executables are written to.
    pub output_dir: PathBuf,
    pub go_flags: Vec<String>,
    /// The go command's whole environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    pub namespace: String,
    pub timeout: Duration,
    /// The build user; `None`: the agent's own.
    pub owner: Option<Owner>,
    /// The task's directory, all the build writes (see [`TaskDisk`]).
    pub task_dir: PathBuf,
    /// The most disk the build's files there may take.
    pub max_disk: u64,
    /// How the build's processes join the task's control group, where it has one.
    pub placement: Option<Placement>,
    /// The memory counters of the task's group, where it has a memory limit.
    pub memory: Option<Memory>,
}

/// What came out, in the shape of `cached_gobuild::BuildOutcome`.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub hit: bool,
    pub key: String,
    /// Executables in `output_dir`, with their digests.
    pub outputs: Vec<(PathBuf, Digest)>,
    pub duration: Duration,
    pub explanation: Option<String>,
}

/// Lines of output kept for the failure message of a build error (each at most
/// `cached_gobuild::exec::MAX_LINE` bytes).
pub const ERROR_TAIL: usize = 200;

/// Bytes of one build's output forwarded to cached as its log. A build prints what its code
/// makes the compiler print, and every line waits in the agent until cached has it.
pub const MAX_LOG_BYTES: usize = 8 << 20;

pub struct Builder {
    pub go: PathBuf,
    /// The GOCACHEPROG command line.
    pub gocacheprog: String,
    /// This binary as build users reach it, which every build process starts through.
    pub entry: PathBuf,
    /// How the builds' bridge connects: the agent's TLS settings, never its token (the bridge
    /// fetches the lease's own credential from the task's socket, `crate::credential`).
    pub bridge_connect: ConnectOptions,
}

impl Builder {
    /// Runs the build, sending its output lines to `lines`. A failed build is a
    /// [`TaskError::Build`] carrying the tail of the go command's output.
    pub async fn build(
        &self,
        client: &Client,
        input: &BuildInput,
        lines: mpsc::UnboundedSender<String>,
        cancel: &Cancel,
    ) -> Result<BuildOutput, TaskError> {
        std::fs::create_dir_all(&input.output_dir).map_err(|err| {
            TaskError::Infrastructure(format!("creating {}: {err}", input.output_dir.display()))
        })?;
        let exec = Arc::new(GroupExec::new(input, &self.entry, cancel.flag()));
        let options = BuildOptions {
            go: self.go.clone(),
            gocacheprog: Some(self.gocacheprog.clone()),
            inherit_stdio: false,
            timeout: Duration::from_secs(20),
            exec: Arc::clone(&exec) as Arc<dyn Exec>,
            bridge_connect: self.bridge_connect.clone(),
            read_only: false,
        };
        let request = BuildRequest {
            module_dir: input.module_dir.clone(),
            packages: input.packages.clone(),
            output: Some(PathBuf::from(format!("{}/", input.output_dir.display()))),
            go_flags: input.go_flags.clone(),
            env: Vec::new(),
            namespace: input.namespace.clone(),
            source_tree: Some(input.source_tree.clone()),
            // The key is read here, by the agent, from directories the job's go.mod names.
            confine_to: vec![input.task_dir.clone()],
        };
        let mut tail = std::collections::VecDeque::new();
        let mut forwarded = LogBudget::new(MAX_LOG_BYTES);
        let mut log = |line: &str| {
            if tail.len() == ERROR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line.to_owned());
            if let Some(line) = forwarded.pass(line) {
                let _ = lines.send(line);
            }
        };
        let mut machine = Machine::watch(&input.output_dir);
        let mut disk = TaskDisk::new(input);
        let outcome = {
            let build = build_with(Some(client), &request, &options, &mut log);
            tokio::pin!(build);
            loop {
                tokio::select! {
                    outcome = &mut build => break Some(outcome),
                    // Not only the go command: a whole-build hit restores its outputs without it.
                    () = cancel.cancelled() => break None,
                    () = tokio::time::sleep(DISK_SAMPLE) => {
                        machine.sample();
                        disk.walk_if_due();
                    }
                    used = disk.walked() => if used > input.max_disk {
                        // Dropping the build kills its process group; the task kills the rest
                        // of the build user's processes before it removes the directory.
                        break None;
                    }
                }
            }
        };
        let tail: Vec<String> = tail.into_iter().collect();
        cancel.check()?;
        let Some(outcome) = outcome else { return Err(TaskError::Build(disk.over_budget())) };
        if let Some(reason) = exec.refused() {
            return Err(TaskError::Build(reason));
        }
        // Before the machine's facts: a kill at the task's own limit counts as the machine's
        // out-of-memory kill too, and that one is handed on to another agent.
        let over_limit = input.memory.as_ref().filter(|memory| memory.own_limit_killed());
        let output = tail.join("\n");
        if let (Some(memory), false) = (over_limit, outcome.as_ref().is_ok_and(|o| o.exit_code == 0)) {
            return Err(TaskError::Build(format!("{}:\n{output}", over_memory_limit(memory.limit()))));
        }
        let outcome = outcome.map_err(|err| TaskError::Infrastructure(format!("build failed: {err}")))?;
        if outcome.exit_code != 0 {
            let facts = machine.facts();
            // A full disk is the agent's trouble only when this build's own files did not fill it.
            if facts.disk_low && disk.last_use().await > input.max_disk {
                return Err(TaskError::Build(format!("{}:\n{output}", disk.over_budget())));
            }
            // Not the code's fault: another agent, or this one later, may well succeed.
            if let Some(trouble) = agent_trouble(outcome.exit_code, &tail, &facts) {
                return Err(TaskError::Infrastructure(format!(
                    "go build failed because {trouble} (exit status {}):\n{output}",
                    outcome.exit_code
                )));
            }
            return Err(TaskError::Build(format!(
                "go build failed (exit status {}):\n{output}",
                outcome.exit_code
            )));
        }
        let outputs =
            if outcome.outputs.is_empty() { hash_outputs(&input.output_dir)? } else { outcome.outputs };
        Ok(BuildOutput {
            hit: outcome.hit,
            key: outcome.key,
            outputs,
            duration: outcome.duration,
            explanation: outcome.explanation,
        })
    }
}

/// What of a build's output is forwarded: whole lines up to a number of bytes, then one line
/// saying the rest was not.
struct LogBudget {
    left: usize,
    spent: bool,
}

impl LogBudget {
    fn new(bytes: usize) -> Self {
        Self { left: bytes, spent: false }
    }

    fn pass(&mut self, line: &str) -> Option<String> {
        if self.spent {
            return None;
        }
        match self.left.checked_sub(line.len() + 1) {
            Some(left) => {
                self.left = left;
                Some(line.to_owned())
            }
            None => {
                self.spent = true;
                Some(format!(
                    "runner-agent: the build's output passed {} MiB; the rest is not shown (a failure keeps its last lines)",
                    MAX_LOG_BYTES >> 20
                ))
            }
        }
    }
}

/// Credentials the build library would hand its bridge (the process's own token or client
/// key), and the lease credential's socket: the task's environment decides these, never the
/// library, so no agent secret reaches a build and the bridge fetches the lease's own.
const TASK_DECIDES: &[&str] = &[
    "CACHED_TOKEN",
    "CACHED_TOKEN_FILE",
    crate::credential::SOCKET_ENV,
    "CACHED_TLS_CLIENT_CERT",
    "CACHED_TLS_CLIENT_KEY",
];

/// Runs the build library's processes with the task's sealed environment (nothing inherited
/// but what `env` holds), as the task's build user, in their own process group, killed as a
/// group on timeout, cancel or drop.
pub struct GroupExec {
    processes: Processes,
    /// This binary as the build user reaches it: every process starts through it.
    entry: PathBuf,
    /// How it joins the task's control group.
    placement: Option<Placement>,
    owner: Option<Owner>,
    output_dir: PathBuf,
    /// Processes running now; at zero the build user's leftovers are killed.
    running: Mutex<usize>,
    /// Why the build's outputs were refused.
    refused: Mutex<Option<String>>,
}

impl GroupExec {
    pub fn new(input: &BuildInput, entry: &Path, cancel: watch::Receiver<bool>) -> Self {
        let owner = input.owner;
        let prepare = owner.map(|owner| -> Prepare {
            Arc::new(move |command: &mut tokio::process::Command| {
                // As root, std drops the supplementary groups too.
                command.uid(owner.uid).gid(owner.gid);
            })
        });
        let processes = Processes {
            clean_env: Some(input.env.clone()),
            own_group: true,
            timeout: Some(input.timeout),
            cancel: Some(cancel),
            prepare,
        };
        Self {
            processes,
            entry: entry.to_owned(),
            placement: input.placement.clone(),
            owner,
            output_dir: input.output_dir.clone(),
            running: Mutex::new(0),
            refused: Mutex::new(None),
        }
    }

    fn refused(&self) -> Option<String> {
        self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// The invocation as the build runs it: through the entry, without the credentials the
    /// task decides.
    fn sealed(&self, invocation: &Invocation) -> Invocation {
        let decided_by_task = |name: &str| TASK_DECIDES.contains(&name);
        let (program, args) = sandbox::through_entry(
            &self.entry,
            self.placement.as_ref(),
            &invocation.program,
            &invocation.args,
        );
        Invocation {
            program,
            args,
            env_remove: invocation.env_remove.iter().filter(|name| !decided_by_task(name)).cloned().collect(),
            env: invocation.env.iter().filter(|(name, _)| !decided_by_task(name)).cloned().collect(),
            dir: invocation.dir.clone(),
        }
    }

    fn started(&self) {
        *self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
    }

    /// One process ended; with none left, nothing of the build user may run on.
    async fn ended(&self) -> std::io::Result<()> {
        let idle = {
            let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *running -= 1;
            *running == 0
        };
        match self.owner {
            Some(owner) if idle => sandbox::kill_all(owner.uid).await.map_err(std::io::Error::other),
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Exec for GroupExec {
    async fn output(&self, invocation: &Invocation) -> std::io::Result<Captured> {
        self.started();
        let result = self.processes.output(&self.sealed(invocation)).await;
        self.ended().await?;
        result
    }

    fn inherited_var(&self, name: &str) -> Option<String> {
        self.processes.inherited_var(name)
    }

    /// go build. Once it and everything of the build user are gone, the outputs are checked
    /// before the library reads (and caches) them.
    async fn stream(&self, invocation: &Invocation, sink: Sink<'_>) -> std::io::Result<i32> {
        self.started();
        let result = self.processes.stream(&self.sealed(invocation), sink).await;
        self.ended().await?;
        let code = result?;
        if let Err(reason) = taskdir::check_outputs(&self.output_dir, self.owner, taskdir::Outputs::Built) {
            *self.refused.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason.clone());
            return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason));
        }
        Ok(code)
    }
}

fn hash_outputs(dir: &Path) -> Result<Vec<(PathBuf, Digest)>, TaskError> {
    let mut outputs = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|err| TaskError::Infrastructure(format!("{}: {err}", dir.display())))?;
    for entry in entries {
        let path = entry.map_err(|err| TaskError::Infrastructure(err.to_string()))?.path();
        if path.is_file() {
            outputs.push((path.clone(), cached_client::transfer::hash_file(&path)?));
        }
    }
    outputs.sort();
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_forwards_whole_lines_up_to_its_budget_then_says_so_once() {
        let mut budget = LogBudget::new(10);
        assert_eq!(budget.pass("12345").as_deref(), Some("12345"));
        assert_eq!(budget.pass("123").as_deref(), Some("123"));
        assert!(budget.pass("1").unwrap().contains("the rest is not shown"));
        assert_eq!(budget.pass(""), None);
    }
}
