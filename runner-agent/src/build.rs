//! The build step of a task: `go build` for one target, through the same library as
//! `cachectl go build` (`cached_gobuild`): a whole-build hit restores the outputs without
//! the compiler; a miss runs go with the GOCACHEPROG bridge (this binary's `gocacheprog`
//! subcommand) and records the build. Every process the library starts goes through
//! [`GroupExec`]: a clean environment, the task's build user, its own process group, the task's
//! timeout and cancel. Whenever none of them is running, nothing of the build user may run
//! either: what is left is killed before the agent reads what the build wrote.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cached_client::connect::{Client, ConnectOptions};
use cached_gobuild::exec::{Captured, Exec, Invocation, Prepare, Processes, Sink};
use cached_gobuild::{BuildOptions, BuildRequest, build_with};
use proto::Digest;
use tokio::sync::{mpsc, watch};

use crate::TaskError;
use crate::sandbox::{self, Owner};
use crate::taskdir;

/// Whether builds go through the whole-build cache (`cached_gobuild`), so an unchanged
/// target is a hit without the go command.
pub const WHOLE_BUILD_CACHE: bool = true;

/// What to build, in the shape of `cached_gobuild::BuildRequest`.
#[derive(Debug, Clone)]
pub struct BuildInput {
    pub module_dir: PathBuf,
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
    /// How the builds' bridge connects: the agent's TLS settings, never its token (a build
    /// gets a per-lease credential through its environment instead).
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
        cancel: watch::Receiver<bool>,
    ) -> Result<BuildOutput, TaskError> {
        std::fs::create_dir_all(&input.output_dir).map_err(|err| {
            TaskError::Infrastructure(format!("creating {}: {err}", input.output_dir.display()))
        })?;
        let exec = Arc::new(GroupExec::new(input, &self.entry, cancel.clone()));
        let options = BuildOptions {
            go: self.go.clone(),
            gocacheprog: Some(self.gocacheprog.clone()),
            inherit_stdio: false,
            timeout: Duration::from_secs(20),
            exec: Arc::clone(&exec) as Arc<dyn Exec>,
            bridge_connect: self.bridge_connect.clone(),
        };
        let request = BuildRequest {
            module_dir: input.module_dir.clone(),
            packages: input.packages.clone(),
            output: Some(PathBuf::from(format!("{}/", input.output_dir.display()))),
            go_flags: input.go_flags.clone(),
            env: Vec::new(),
            namespace: input.namespace.clone(),
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
        if *cancel.borrow() {
            return Err(TaskError::Cancelled);
        }
        let Some(outcome) = outcome else { return Err(TaskError::Build(disk.over_budget())) };
        if let Some(reason) = exec.refused() {
            return Err(TaskError::Build(reason));
        }
        let outcome = outcome.map_err(|err| TaskError::Infrastructure(format!("build failed: {err}")))?;
        if outcome.exit_code != 0 {
            let output = tail.join("\n");
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

/// Why a failed go command is this agent's trouble rather than the code's, if it is. The output
/// alone never decides: the job's code can make the compiler print any words (a string
/// constant quoted in a type error), and a failure blamed on the agent is retried elsewhere.
fn agent_trouble(exit_code: i32, output: &[String], facts: &Facts) -> Option<&'static str> {
    // ENOSPC, whatever the build printed about it. EDQUOT is not here: a quota is the operator's
    // limit on the build user, which every agent would enforce alike.
    if facts.disk_low {
        return Some("this agent's disk is full");
    }
    // Nothing a build runs stops itself with SIGKILL, and the agent's own kills (timeout,
    // cancel) never get here: it is the kernel's out-of-memory killer when it killed something
    // meanwhile. The go command says "<package>: <tool>: signal: killed" for a compiler or
    // linker, and dies with 128 + 9 when it is the victim itself.
    let killed =
        exit_code == SIGKILLED || output.iter().any(|line| line.trim_end().ends_with(": signal: killed"));
    if killed && facts.oom_killed {
        return Some(
            "a process of the build was killed (SIGKILL) by the out-of-memory killer: \
             this agent has too little memory for this build",
        );
    }
    None
}

/// What the machine said while a build ran.
#[derive(Debug, Clone, Copy, Default)]
struct Facts {
    /// The task's filesystem had (or has) too little room left for a build.
    disk_low: bool,
    /// The kernel's out-of-memory killer killed a process (or this kernel does not count).
    oom_killed: bool,
}

/// How often the task's free disk space is read while a build runs: the go command removes
/// its temporary files when it fails, so the room it ran out of may be back by the end.
const DISK_SAMPLE: Duration = Duration::from_secs(1);

/// Less room than this on the task's filesystem, for users without root's reserve, is a full
/// disk: a compile or a link writes tens to hundreds of MiB.
const LOW_DISK: u64 = 256 << 20;

/// The least time between two walks of a task's directory, and how many times a walk's own
/// length the next waits at least: walking costs a stat per entry, so a build of many files
/// (or one that makes many to slow the walks) spends at most a twentieth of a core on it.
const MIN_WALK_GAP: Duration = Duration::from_secs(2);
const WALK_GAP_FACTOR: u32 = 20;

/// The disk a build's files take in its task directory, where everything it writes goes
/// (HOME, TMPDIR with the go command's work directory, GOCACHE and the bridge's tier, the
/// modules the go command extracts, the outputs). A build past `--max-task-disk` is stopped and
/// fails as the build's fault: a job that fills its agent's disk would otherwise fail as the
/// agent's trouble (a full disk) and be built again on the next agent, and the next.
///
/// The directory is walked and its entries summed (see [`taskdir::disk_use`]) in a blocking
/// thread, every [`MIN_WALK_GAP`] or less often for a slow walk. Free space alone cannot say
/// whose files took it: other tasks and the agent's caches share the filesystem. A disk quota
/// would be exact and free, but needs the operator's filesystem set up for it.
struct TaskDisk {
    dir: PathBuf,
    owner: Option<Owner>,
    stop_at: u64,
    walking: Option<tokio::task::JoinHandle<(u64, Duration)>>,
    next_walk: Instant,
    most: u64,
}

impl TaskDisk {
    fn new(input: &BuildInput) -> Self {
        Self {
            dir: input.task_dir.clone(),
            owner: input.owner,
            stop_at: input.max_disk,
            walking: None,
            next_walk: Instant::now() + MIN_WALK_GAP,
            most: 0,
        }
    }

    fn walk(&self) -> tokio::task::JoinHandle<(u64, Duration)> {
        let (dir, owner, stop_at) = (self.dir.clone(), self.owner, self.stop_at);
        cached_client::task::spawn_blocking("task-disk-use", move || {
            let started = Instant::now();
            (taskdir::disk_use(&dir, owner, stop_at), started.elapsed())
        })
    }

    fn walk_if_due(&mut self) {
        if self.walking.is_none() && Instant::now() >= self.next_walk {
            self.walking = Some(self.walk());
        }
    }

    /// The bytes the walk under way found, once it is over; never, while none is.
    async fn walked(&mut self) -> u64 {
        let Some(walking) = &mut self.walking else { return std::future::pending().await };
        let walked = walking.await;
        self.walking = None;
        let (used, took) = walked.unwrap_or_default();
        self.next_walk = Instant::now() + MIN_WALK_GAP.max(took * WALK_GAP_FACTOR);
        self.most = self.most.max(used);
        used
    }

    /// The most the build's files took, walking once more now (its failure may have come from
    /// what it wrote since the last walk).
    async fn last_use(&mut self) -> u64 {
        if self.walking.is_none() {
            self.walking = Some(self.walk());
        }
        self.walked().await;
        self.most
    }

    fn over_budget(&self) -> String {
        format!(
            "the build's files took more than {} MiB of disk in its task directory (module cache, GOCACHE, \
             temporary files, outputs), the most a build may take on this agent (--max-task-disk), and it was \
             stopped",
            self.stop_at >> 20
        )
    }
}

/// Free space of the task's filesystem and the kernel's out-of-memory kill count, read
/// before, during and after a build.
struct Machine {
    dir: PathBuf,
    least_free: Option<u64>,
    oom_kills: Option<u64>,
}

impl Machine {
    fn watch(dir: &Path) -> Self {
        let mut machine = Self { dir: dir.to_owned(), least_free: None, oom_kills: oom_kills() };
        machine.sample();
        machine
    }

    fn sample(&mut self) {
        if let Some(free) = free_bytes(&self.dir) {
            self.least_free = Some(self.least_free.map_or(free, |least| least.min(free)));
        }
    }

    fn facts(&mut self) -> Facts {
        self.sample();
        let oom_killed = match (self.oom_kills, oom_kills()) {
            (Some(before), Some(after)) => after > before,
            // A kernel before 4.13 does not count: a killed process is all there is to go by.
            _ => true,
        };
        Facts { disk_low: self.least_free.is_some_and(|free| free < LOW_DISK), oom_killed }
    }
}

/// Bytes users without root's reserve may still write on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The kernel's count of processes its out-of-memory killer killed since boot.
fn oom_kills() -> Option<u64> {
    let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
    vmstat.lines().find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// The exit code [`code`] gives a process SIGKILL ended.
const SIGKILLED: i32 = 128 + 9;

/// Credentials the build library would hand its bridge (the process's own token or client
/// key): the task's environment decides these, never the library, so no agent secret reaches a
/// build.
const TASK_DECIDES: &[&str] =
    &["CACHED_TOKEN", "CACHED_TOKEN_FILE", "CACHED_TLS_CLIENT_CERT", "CACHED_TLS_CLIENT_KEY"];

/// Runs the build library's processes with the task's sealed environment (nothing inherited
/// but what `env` holds), as the task's build user, in their own process group, killed as a
/// group on timeout, cancel or drop.
pub struct GroupExec {
    processes: Processes,
    /// This binary as the build user reaches it: every process starts through it.
    entry: PathBuf,
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
        let (program, args) = sandbox::through_entry(&self.entry, &invocation.program, &invocation.args);
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

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn the_log_forwards_whole_lines_up_to_its_budget_then_says_so_once() {
        let mut budget = LogBudget::new(10);
        assert_eq!(budget.pass("12345").as_deref(), Some("12345"));
        assert_eq!(budget.pass("123").as_deref(), Some("123"));
        assert!(budget.pass("1").unwrap().contains("the rest is not shown"));
        assert_eq!(budget.pass(""), None);
    }

    const ROOMY: Facts = Facts { disk_low: false, oom_killed: false };

    #[test]
    fn a_full_disk_is_what_the_filesystem_says_not_what_the_build_prints() {
        let full = Facts { disk_low: true, ..ROOMY };
        let said = "compile: writing output: write $WORK/b001/_pkg_.a: no space left on device";
        assert_eq!(agent_trouble(1, &lines(said), &full), Some("this agent's disk is full"));
        // A compile error quoting the words, on a disk with room.
        let quoted =
            "./main.go:3:16: cannot use \"no space left on device\" (untyped string constant) as int value";
        assert_eq!(agent_trouble(1, &lines(quoted), &ROOMY), None);
        assert_eq!(agent_trouble(1, &lines("open /work/x: disk quota exceeded"), &ROOMY), None);
    }

    #[test]
    fn a_process_is_the_out_of_memory_killers_only_when_the_kernel_killed_one() {
        let oom = Facts { oom_killed: true, ..ROOMY };
        let killed = "example.com/app/cmd/app: /usr/local/go/pkg/tool/linux_amd64/compile: signal: killed";
        assert!(agent_trouble(1, &lines(killed), &oom).unwrap().contains("out-of-memory killer"));
        assert!(agent_trouble(SIGKILLED, &[], &oom).unwrap().contains("out-of-memory killer"));
        // The words alone, with no kill by the kernel, are the build's.
        assert_eq!(agent_trouble(1, &lines(killed), &ROOMY), None);
        // The words in a compile error (a string literal, say) are not a killed process.
        let quoted = "./main.go:5:2: undefined: x (\"signal: killed\" is not a declaration)";
        assert_eq!(agent_trouble(1, &lines(quoted), &oom), None);
        // A tool that exited with 137 itself was not killed.
        assert_eq!(agent_trouble(1, &lines("exit status 137"), &oom), None);
    }

    #[test]
    fn the_machine_reads_free_space_and_the_kernels_kill_count() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some_and(|free| free > 0));
        assert!(Path::new("/proc/vmstat").exists() && oom_kills().is_some());
        let facts = Machine::watch(dir.path()).facts();
        assert!(!facts.oom_killed || oom_kills().is_none(), "{facts:?}");
    }
}
