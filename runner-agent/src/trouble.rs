//! What the machine says about a build while it runs: the disk its files take in the task
//! directory, the free space of the task's filesystem, and the kernel's out-of-memory kills. A
//! failed build is the agent's trouble (retried on another agent) only when these say so, never
//! because of words the build printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::build::BuildInput;
use crate::sandbox::Owner;
use crate::taskdir;

/// Why a failed go command is this agent's trouble rather than the code's, if it is. The output
/// alone never decides: the job's code can make the compiler print any words (a string
/// constant quoted in a type error), and a failure blamed on the agent is retried elsewhere.
pub(crate) fn agent_trouble(exit_code: i32, output: &[String], facts: &Facts) -> Option<&'static str> {
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

/// Why a build whose processes the kernel killed at the task's own memory limit failed: the
/// job asked more of the agent than any task gets, and would on any agent alike.
pub(crate) fn over_memory_limit(limit: u64) -> String {
    format!(
        "the build needed more than the agent's per-task memory limit of {} (--build-memory), and the kernel \
         killed it",
        cached_client::size::human(limit)
    )
}

/// What the machine said while a build ran.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Facts {
    /// The task's filesystem had (or has) too little room left for a build.
    pub(crate) disk_low: bool,
    /// The kernel's out-of-memory killer killed a process (or this kernel does not count).
    oom_killed: bool,
}

/// How often the task's free disk space is read while a build runs: the go command removes
/// its temporary files when it fails, so the room it ran out of may be back by the end.
pub(crate) const DISK_SAMPLE: Duration = Duration::from_secs(1);

/// Less room than this on the task's filesystem, for users without root's reserve, is a full
/// disk: a compile or a link writes tens to hundreds of MiB.
const LOW_DISK: u64 = 256 << 20;
/// Fewer free inodes than this is a full disk as well: a build creates thousands of files, and
/// a filesystem out of inodes fails them with ENOSPC while its bytes look free.
const LOW_INODES: u64 = 16_384;

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
pub(crate) struct TaskDisk {
    dir: PathBuf,
    owner: Option<Owner>,
    stop_at: u64,
    walking: Option<tokio::task::JoinHandle<(u64, Duration)>>,
    next_walk: Instant,
    most: u64,
}

impl TaskDisk {
    pub(crate) fn new(input: &BuildInput) -> Self {
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

    pub(crate) fn walk_if_due(&mut self) {
        if self.walking.is_none() && Instant::now() >= self.next_walk {
            self.walking = Some(self.walk());
        }
    }

    /// The bytes the walk under way found, once it is over; never, while none is.
    pub(crate) async fn walked(&mut self) -> u64 {
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
    pub(crate) async fn last_use(&mut self) -> u64 {
        if self.walking.is_none() {
            self.walking = Some(self.walk());
        }
        self.walked().await;
        self.most
    }

    pub(crate) fn over_budget(&self) -> String {
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
pub(crate) struct Machine {
    dir: PathBuf,
    least_free: Option<Room>,
    oom_kills: Option<u64>,
}

/// What a filesystem still takes: bytes and inodes (`None` where it has no inode table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Room {
    bytes: u64,
    inodes: Option<u64>,
}

impl Room {
    fn least(self, other: Self) -> Self {
        let inodes = match (self.inodes, other.inodes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Self { bytes: self.bytes.min(other.bytes), inodes }
    }

    fn is_low(self) -> bool {
        self.bytes < LOW_DISK || self.inodes.is_some_and(|inodes| inodes < LOW_INODES)
    }
}

impl Machine {
    pub(crate) fn watch(dir: &Path) -> Self {
        let mut machine = Self { dir: dir.to_owned(), least_free: None, oom_kills: oom_kills() };
        machine.sample();
        machine
    }

    pub(crate) fn sample(&mut self) {
        if let Some(free) = room(&self.dir) {
            self.least_free = Some(self.least_free.map_or(free, |least| least.least(free)));
        }
    }

    pub(crate) fn facts(&mut self) -> Facts {
        self.sample();
        let oom_killed = match (self.oom_kills, oom_kills()) {
            (Some(before), Some(after)) => after > before,
            // A kernel before 4.13 does not count: a killed process is all there is to go by.
            _ => true,
        };
        Facts { disk_low: self.least_free.is_some_and(Room::is_low), oom_killed }
    }
}

/// What users without root's reserve may still write on the filesystem of `dir`.
fn room(dir: &Path) -> Option<Room> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    // A filesystem without an inode table (btrfs) reports none at all.
    let inodes = (stat.f_files > 0).then_some(stat.f_favail);
    Some(Room { bytes: stat.f_bavail.saturating_mul(stat.f_frsize), inodes })
}

/// The kernel's count of processes its out-of-memory killer killed since boot.
fn oom_kills() -> Option<u64> {
    let vmstat = std::fs::read_to_string("/proc/vmstat").ok()?;
    vmstat.lines().find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// The exit code the build library gives a process SIGKILL ended (128 + the signal).
const SIGKILLED: i32 = 128 + 9;

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    const ROOMY: Facts = Facts { disk_low: false, oom_killed: false };

    /// Out of inodes is a full disk, whatever bytes are free; a filesystem without an inode
    /// table is judged by its bytes.
    #[test]
    fn a_filesystem_out_of_inodes_is_full() {
        let plenty = Room { bytes: 100 << 30, inodes: Some(1 << 20) };
        assert!(!plenty.is_low());
        assert!(Room { inodes: Some(100), ..plenty }.is_low());
        assert!(!Room { inodes: None, ..plenty }.is_low());
        assert!(Room { bytes: 1 << 20, ..plenty }.is_low());
        let later = Room { bytes: 200 << 30, inodes: Some(10) };
        assert_eq!(plenty.least(later), Room { bytes: 100 << 30, inodes: Some(10) });
    }

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
        assert!(room(dir.path()).is_some_and(|free| free.bytes > 0));
        assert!(Path::new("/proc/vmstat").exists() && oom_kills().is_some());
        let facts = Machine::watch(dir.path()).facts();
        assert!(!facts.oom_killed || oom_kills().is_none(), "{facts:?}");
    }
}
