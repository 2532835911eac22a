//! A memory-limited control group: a runner whose compiler the kernel's out-of-memory killer
//! really stops.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::is_root;

/// A memory cgroup (v1 or v2) with a hard limit, removed on drop.
pub struct MemoryCgroup {
    dir: PathBuf,
    /// The hierarchy's root, where processes left in the group go before it is removed.
    root: PathBuf,
    /// The machine's count of out-of-memory kills when the group was made.
    machine_kills: u64,
}

impl MemoryCgroup {
    /// None (having said why) where it cannot be made: it needs root and the memory
    /// controller, which CI has.
    pub fn create(limit_bytes: u64) -> Option<Self> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let Some((root, limit_file)) = memory_hierarchy() else {
            eprintln!("skipped: this machine has no cgroup memory controller");
            return None;
        };
        let name = format!("cached-e2e-{}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed));
        let dir = root.join(name);
        let created = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::write(dir.join(limit_file), limit_bytes.to_string()));
        match created {
            Ok(()) => Some(Self { dir, root, machine_kills: machine_oom_kills() }),
            Err(err) => {
                let _ = std::fs::remove_dir(&dir);
                assert!(!is_root(), "creating a memory cgroup as root failed: {err}");
                eprintln!("skipped: a memory cgroup needs root");
                None
            }
        }
    }

    /// Moves a process into the group; the processes it starts later are in it too.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.procs(), pid.to_string())
            .unwrap_or_else(|err| panic!("moving {pid} into {}: {err}", self.dir.display()));
    }

    /// The file a process writes its pid to, to join the group.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Whether this machine lets the tests limit memory with a group (root and a memory
    /// controller, as in CI); says why not when it does not.
    pub fn possible() -> bool {
        Self::create(64 << 20).is_some()
    }

    /// How many processes the kernel's out-of-memory killer has killed in the group, in the
    /// groups a process made in it too (a runner agent's task groups).
    pub fn oom_kills(&self) -> u64 {
        // v2 counts a kill in the victim's group and its ancestors, in memory.events; v1 only in
        // the victim's, in memory.oom_control ("oom_kill N" in both). A runner agent removes a
        // task's group, and its count, when the task ends: on v1 the machine's count since the
        // group was made stands in (the tests that use a group run one at a time).
        let counted = |dir: &Path| -> u64 {
            ["memory.oom_control", "memory.events"]
                .iter()
                .filter_map(|file| std::fs::read_to_string(dir.join(file)).ok())
                .flat_map(|text| {
                    text.lines()
                        .filter_map(|line| line.strip_prefix("oom_kill ")?.parse().ok())
                        .collect::<Vec<u64>>()
                })
                .sum()
        };
        if self.dir.join("memory.events").exists() {
            return counted(&self.dir);
        }
        let in_groups: u64 = groups_under(&self.dir).iter().map(|dir| counted(dir)).sum();
        in_groups.max(machine_oom_kills().saturating_sub(self.machine_kills))
    }
}

/// The kernel's count of out-of-memory kills since boot.
fn machine_oom_kills() -> u64 {
    let vmstat = std::fs::read_to_string("/proc/vmstat").unwrap_or_default();
    vmstat.lines().find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok()).unwrap_or(0)
}

/// `dir` and the groups under it, deepest first.
fn groups_under(dir: &Path) -> Vec<PathBuf> {
    let mut groups: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .flat_map(|entry| groups_under(&entry.path()))
        .collect();
    groups.push(dir.to_owned());
    groups
}

/// The memory controller's root directory and its limit file.
fn memory_hierarchy() -> Option<(PathBuf, &'static str)> {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("memory.limit_in_bytes").exists() {
        return Some((v1.to_owned(), "memory.limit_in_bytes"));
    }
    let v2 = Path::new("/sys/fs/cgroup");
    let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
    controllers.split_whitespace().any(|c| c == "memory").then(|| (v2.to_owned(), "memory.max"))
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // A group is removed only once empty, the groups a runner agent made in it first;
        // processes that outlived the test leave first.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let groups = groups_under(&self.dir);
            for group in &groups {
                let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.split_whitespace() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let removed = groups.iter().all(|group| match std::fs::remove_dir(group) {
                Ok(()) => true,
                Err(err) => err.kind() == std::io::ErrorKind::NotFound,
            });
            if removed || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
