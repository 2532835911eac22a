use super::*;

/// This development machine's: cgroup v1, the memory group a container's, a unified mount
/// beside the v1 ones with no controller.
const V1_CGROUP: &str =
    "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/c97a\n2:cpuacct:/\n1:cpu:/\n0::/\n";
const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn proc_self_cgroup_lines_parse() {
    let lines = parse_memberships("4:memory:/a/b\n3:cpu,cpuacct:/\n0::/system.slice/x.service\n");
    assert_eq!(lines.len(), 3);
    assert!(lines[0].has("memory") && !lines[0].unified());
    assert!(lines[1].has("cpu") && lines[1].has("cpuacct") && !lines[1].has("cpuset"));
    assert!(lines[2].unified());
    assert_eq!(lines[2].path, "/system.slice/x.service");
    assert!(parse_memberships("garbage\n").is_empty());
}

#[test]
fn mountinfo_lines_parse_with_escapes_and_read_only_mounts() {
    let mounts = parse_mounts(V1_MOUNTS);
    assert_eq!(mounts.len(), 5, "the tmpfs is no cgroup: {mounts:?}");
    assert_eq!(mounts[2].point, Path::new("/sys/fs/cgroup/memory"));
    assert!(mounts[2].options.contains(&"memory".to_owned()) && !mounts[2].unified);
    assert!(mounts[4].unified);
    let container =
        "1 0 0:1 /docker/a\\040b /sys/fs/cgroup ro,nosuid shared:1 - cgroup2 cgroup2 rw,nsdelegate";
    let mount = parse_mount(container).unwrap();
    assert_eq!(mount.root, "/docker/a b");
    assert!(mount.read_only && mount.unified, "{mount:?}");
}

#[test]
fn a_group_is_found_under_the_mount_that_shows_it() {
    let mount = |root: &str| Mount {
        root: root.into(),
        point: "/sys/fs/cgroup/memory".into(),
        unified: false,
        options: vec![],
        read_only: false,
    };
    assert_eq!(group_dir(&mount("/"), "/a/b"), Some("/sys/fs/cgroup/memory/a/b".into()));
    assert_eq!(group_dir(&mount("/"), "/"), Some("/sys/fs/cgroup/memory".into()));
    // A container's view: the mount shows its own group at the mount point.
    assert_eq!(group_dir(&mount("/docker/x"), "/docker/x"), Some("/sys/fs/cgroup/memory".into()));
    assert_eq!(group_dir(&mount("/docker/x"), "/docker/x/y"), Some("/sys/fs/cgroup/memory/y".into()));
    assert_eq!(group_dir(&mount("/docker/x"), "/docker/xy"), None);
    assert_eq!(group_dir(&mount("/docker/x"), "/other"), None);
}

#[test]
fn v1_is_used_where_its_hierarchies_hold_the_controllers() {
    let found = find(V1_CGROUP, V1_MOUNTS);
    assert!(!found.unified && found.missing.is_empty(), "{found:?}");
    let dirs: Vec<(&str, &Path)> =
        found.hierarchies.iter().map(|h| (h.field.as_str(), h.dir.as_path())).collect();
    assert_eq!(
        dirs,
        [
            ("memory", Path::new("/sys/fs/cgroup/memory/process_api/c97a")),
            ("pids", Path::new("/sys/fs/cgroup/pids")),
            ("cpu", Path::new("/sys/fs/cgroup/cpu")),
        ]
    );
    // cpu and cpuacct mounted together are one hierarchy.
    let comounted = "3:cpu,cpuacct:/a\n4:memory:/a\n";
    let mounts =
        "1 0 0:1 / /c rw - cgroup cgroup rw,cpu,cpuacct\n2 0 0:2 / /m rw - cgroup cgroup rw,memory\n";
    let found = find(comounted, mounts);
    assert_eq!(found.hierarchies.len(), 2, "{found:?}");
    assert_eq!(found.hierarchies[1].field, "cpu,cpuacct");
    assert_eq!(found.missing.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [Controller::Pids]);
}

#[test]
fn v2_is_used_where_no_v1_hierarchy_holds_them() {
    let mounts = "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
    let found = find("0::/system.slice/runner-agent.service\n", mounts);
    assert!(found.unified, "{found:?}");
    assert_eq!(found.hierarchies[0].dir, Path::new("/sys/fs/cgroup/system.slice/runner-agent.service"));
    assert_eq!(found.hierarchies[0].controllers, WANTED);
    // Nothing mounted: everything is missing, said why.
    let found = find("0::/x\n", "");
    assert!(found.hierarchies.is_empty());
    assert_eq!(found.missing.len(), 3, "{found:?}");
}

#[test]
fn enter_build_checks_every_hierarchy_shows_the_task_group() {
    let expected =
        vec!["memory:/a/runner-agent-builds/uid-7".to_owned(), "pids:/runner-agent-builds/uid-7".to_owned()];
    let placed = "8:pids:/runner-agent-builds/uid-7\n4:memory:/a/runner-agent-builds/uid-7\n1:cpu:/\n";
    assert_eq!(missing_membership(placed, &expected), None);
    let half = "8:pids:/runner-agent-builds/uid-7\n4:memory:/a\n";
    assert_eq!(missing_membership(half, &expected), Some(&expected[0]));
    let v2 = vec![":/s/runner-agent-builds/uid-7".to_owned()];
    assert_eq!(missing_membership("0::/s/runner-agent-builds/uid-7\n", &v2), None);
    assert_eq!(missing_membership("0::/s/runner-agent\n", &v2), Some(&v2[0]));
}

/// A pid the kernel named may have gone to another user's process by the time it is moved.
#[test]
fn only_a_process_running_as_the_uid_throughout_is_placed() {
    let status =
        |ids: &str| format!("Name:\tgo\nUmask:\t0022\nUid:\t{ids}\nGid:\t61000\t61000\t61000\t61000\n");
    assert!(runs_only_as(&status("61000\t61000\t61000\t61000"), 61000));
    assert!(!runs_only_as(&status("0\t0\t0\t0"), 61000));
    assert!(!runs_only_as(&status("61000\t0\t61000\t61000"), 61000));
    assert!(!runs_only_as("Name:\tgone\n", 61000));
}

#[test]
fn counters_and_sizes_parse() {
    let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\noom_group_kill 0\n";
    assert_eq!(counter(events, "oom"), Some(1));
    assert_eq!(counter(events, "oom_kill"), Some(2));
    assert_eq!(counter("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"), Some(3));
    assert_eq!(mem_total("MemTotal:       24684000 kB\nMemFree: 1 kB\n"), Some(24_684_000 * 1024));
    assert_eq!(parse_memory("256MiB"), Ok(BuildMemory::Bytes(256 << 20)));
    assert_eq!(parse_memory("none"), Ok(BuildMemory::Unlimited));
    assert!(parse_memory("1KiB").is_err());
    let request = Request { memory: Some(BuildMemory::Unlimited), pids: None, concurrency: 2 };
    assert_eq!(request.explicit_flag(), None);
    let request = Request { memory: Some(BuildMemory::Bytes(1 << 30)), ..request };
    assert_eq!(request.explicit_flag(), Some("--build-memory"));
}

/// A uid no account or agent has, for the groups the kernel tests make.
const TEST_UID: u32 = 3_999_999_000;

/// The real kernel, where this process may make groups (root, writable cgroups: CI): a task's
/// group refuses the fork past its process limit, and its memory counters tell a kill at its
/// own limit. Elsewhere it says why it proves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_group_stops_forks_at_its_limit_and_counts_its_own_out_of_memory_kills() {
    let uid = TEST_UID + std::process::id() % 1000;
    let dir = tempfile::tempdir().unwrap();
    let request = Request { memory: Some(BuildMemory::Bytes(64 << 20)), pids: Some(16), concurrency: 1 };
    let set_up = match Cgroups::set_up(&request, (uid, uid), &dir.path().join("place.sock")) {
        Ok(set_up) => set_up,
        Err(err) => {
            assert!(sandbox_agent_uid() != 0, "as root, with cgroups: {err}");
            eprintln!("skipped: this process cannot make control groups: {err}");
            return;
        }
    };
    let cgroups = set_up.cgroups.expect("memory and pids, so groups");
    assert!(cgroups.describe().contains("memory 64.0 MiB, 16 processes"), "{}", cgroups.describe());
    let group = cgroups.create(uid).unwrap();
    let pids_dir = cgroups.parents.iter().find(|p| p.controllers.contains(&Controller::Pids)).unwrap();
    let pids_dir = Cgroups::task_dir(pids_dir, uid);

    // Forks past the limit fail: the kernel counts them in pids.events.
    let forks = "read go; for i in $(seq 40); do sleep 2 & done 2>/dev/null; wait";
    run_placed(&cgroups, uid, forks);
    let refused = counter(&read(&pids_dir, "pids.events").unwrap(), "max").unwrap_or(0);
    assert!(refused > 0, "no fork was refused at 16 processes");
    empty(&pids_dir);

    let memory = group.memory().unwrap().clone();
    assert!(!memory.own_limit_killed());
    let hog = "read go; x=$(head -c 300000000 /dev/zero | tr '\\000' a); echo ${#x}";
    run_placed(&cgroups, uid, hog);
    assert!(memory.own_limit_killed(), "the shell holding 300 MB in 64 MiB was not killed at the limit");

    group.remove().unwrap();
    assert!(!pids_dir.exists());
}

/// Kills what is left in the group (the sleeps the shell started) until none is, nor counts.
fn empty(dir: &Path) {
    loop {
        let procs = read(dir, "cgroup.procs").unwrap();
        if procs.trim().is_empty() && read(dir, "pids.current").unwrap().trim() == "0" {
            return;
        }
        for pid in
            procs.split_whitespace().filter_map(|pid| rustix::process::Pid::from_raw(pid.parse().ok()?))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sandbox_agent_uid() -> u32 {
    crate::sandbox::agent_uid()
}

/// Runs `script` with sh as `uid`, placed in its group before it reads its first line.
fn run_placed(cgroups: &Cgroups, uid: u32, script: &str) {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", script])
        .uid(uid)
        .gid(uid)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    cgroups.place(child.id(), uid).unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let _ = child.wait();
}
