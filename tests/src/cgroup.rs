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
            Ok(()) => Some(Self { dir, root }),
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
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|err| panic!("moving {pid} into {}: {err}", self.dir.display()));
    }

    /// How many processes the kernel's out-of-memory killer has killed in the group.
    pub fn oom_kills(&self) -> u64 {
        // v1 counts them in memory.oom_control, v2 in memory.events; both as "oom_kill N".
        ["memory.oom_control", "memory.events"]
            .iter()
            .filter_map(|file| std::fs::read_to_string(self.dir.join(file)).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|line| line.strip_prefix("oom_kill ")?.parse().ok())
                    .collect::<Vec<u64>>()
            })
            .sum()
    }
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
        // A group is removed only once empty; processes that outlived the test leave first.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            if std::fs::remove_dir(&self.dir).is_ok() || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
