//! CPU seconds from /proc: a process's own (the drivers run cached embedded, so this process's
//! is cached's) and those of the children it has waited for.

use std::process::Command;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub own: f64,
    pub children: f64,
}

impl CpuTimes {
    /// This process's times now; zero if /proc cannot say.
    pub fn now() -> Self {
        Self::of("self")
    }

    /// The times of process `pid` (or `self`) now; zero if /proc cannot say.
    pub fn of(pid: &str) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        stat.and_then(|stat| parse_stat(&stat, ticks())).unwrap_or_default()
    }

    pub fn since(self, earlier: Self) -> Self {
        Self { own: self.own - earlier.own, children: self.children - earlier.children }
    }
}

/// utime+stime and cutime+cstime (fields 14-17) of /proc/<pid>/stat. The command name before
/// them is in parentheses and may hold spaces, so fields are counted after its last `)`.
fn parse_stat(stat: &str, ticks_per_second: f64) -> Option<CpuTimes> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<f64> =
        after_name.split_whitespace().skip(11).take(4).map_while(|f| f.parse().ok()).collect();
    let [utime, stime, cutime, cstime] = fields[..] else { return None };
    Some(CpuTimes { own: (utime + stime) / ticks_per_second, children: (cutime + cstime) / ticks_per_second })
}

/// The kernel's clock ticks per second for those fields (100 on Linux, but asked).
fn ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_counted_after_the_command_name() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 30 20 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(stat, 100.0), Some(CpuTimes { own: 3.0, children: 0.5 }));
        assert_eq!(parse_stat("42 (x) S 1", 100.0), None);
    }

    #[test]
    fn this_process_counts_its_own_work() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut spin = 0u64;
        while CpuTimes::now().own == 0.0 && std::time::Instant::now() < deadline {
            spin = (0..100_000u64).fold(spin, |acc, i| acc.wrapping_mul(31).wrapping_add(i));
        }
        assert!(CpuTimes::now().own > 0.0, "no CPU time after spinning ({spin})");
    }
}
