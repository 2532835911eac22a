//! Every process of a build starts through the agent's binary, which puts it in its task's
//! control group and makes it the kernel's out-of-memory killer's first choice with no core
//! dumps, as the build's user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cached_gobuild::exec::{Exec, Invocation};
use runner_agent::build::{BuildInput, GroupExec};
use runner_agent::cgroup::{BuildMemory, Cgroups, Request, SetUp};
use runner_agent::sandbox::Owner;

/// Uids no account uses, outside the agents' default pool the other tests take; one per test,
/// since a build's end kills whatever its uid still runs.
const BUILD_UIDS: [u32; 3] = [61_990, 61_991, 61_992];

/// The agent binary copied where a build user can run it, once for every test: a copy made
/// while another test forks could be held open for writing by that child, and would not run
/// ("text file busy").
fn entry() -> &'static Path {
    static ENTRY: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, entry) = ENTRY.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let entry = dir.path().join("runner-agent");
        std::fs::copy(env!("CARGO_BIN_EXE_runner-agent"), &entry).unwrap();
        (dir, entry)
    });
    entry
}

/// A build of `uid` (or, without root, of this user).
fn input(uid: u32) -> BuildInput {
    let root = rustix::process::geteuid().is_root();
    BuildInput {
        module_dir: PathBuf::from("/"),
        source_tree: PathBuf::from("/"),
        packages: Vec::new(),
        output_dir: std::env::temp_dir().join("unused-outputs"),
        go_flags: Vec::new(),
        env: vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
        namespace: "test".to_owned(),
        timeout: Duration::from_secs(60),
        owner: root.then_some(Owner { uid, gid: uid }),
        task_dir: std::env::temp_dir().join("unused-task"),
        max_disk: u64::MAX,
        placement: None,
        memory: None,
    }
}

async fn run(input: &BuildInput, program: &str, args: &[&str]) -> cached_gobuild::exec::Captured {
    let (_cancel, cancelled) = tokio::sync::watch::channel(false);
    let exec = GroupExec::new(input, entry(), cancelled);
    exec.output(&Invocation::new(program, args, Path::new("/"))).await.unwrap()
}

#[tokio::test]
async fn a_build_process_is_the_first_the_out_of_memory_killer_takes() {
    let input = input(BUILD_UIDS[0]);
    let script = "cat /proc/self/oom_score_adj; ulimit -c; ulimit -H -c; id -u; id -G";
    let ran = run(&input, "sh", &["-c", script]).await;
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert_eq!(ran.code, 0, "{stdout}{}", String::from_utf8_lossy(&ran.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..3], ["1000", "0", "0"], "score, soft and hard core limits: {stdout}");
    if let Some(owner) = input.owner {
        // The build's own user and group, and no other group.
        assert_eq!(lines[3..], [owner.uid.to_string(), owner.gid.to_string()], "{stdout}");
    }
}

#[tokio::test]
async fn a_program_that_cannot_start_is_named() {
    let input = input(BUILD_UIDS[1]);
    let ran = run(&input, "/nonexistent/go", &["version"]).await;
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.code, 126, "{stderr}");
    assert!(stderr.contains("cannot run /nonexistent/go"), "{stderr}");
}

/// The process the build library starts is in the task's group before the program runs: what
/// it runs (`cat`, a child) shows the group in every hierarchy.
#[tokio::test(flavor = "multi_thread")]
async fn a_build_process_runs_in_its_tasks_control_group() {
    let uid = BUILD_UIDS[2];
    let sockets = tempfile::tempdir().unwrap();
    std::fs::set_permissions(sockets.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let request = Request { memory: Some(BuildMemory::Bytes(256 << 20)), pids: Some(64), concurrency: 1 };
    let set_up = Cgroups::set_up(&request, (uid, uid), &sockets.path().join("place.sock"));
    let cgroups = match set_up {
        Ok(SetUp { cgroups: Some(cgroups), .. }) if rustix::process::geteuid().is_root() => cgroups,
        Ok(_) => return eprintln!("skipped: task groups need root"),
        Err(err) => {
            assert!(!rustix::process::geteuid().is_root(), "as root, with cgroups: {err}");
            return eprintln!("skipped: this process cannot make control groups: {err}");
        }
    };
    let group = cgroups.create(uid).unwrap();
    let mut input = input(uid);
    input.placement = Some(group.placement().clone());
    let ran = run(&input, "cat", &["/proc/self/cgroup"]).await;
    let shown = String::from_utf8_lossy(&ran.stdout);
    assert_eq!(ran.code, 0, "{shown}{}", String::from_utf8_lossy(&ran.stderr));
    for line in &group.placement().expected {
        let (controllers, path) = line.split_once(':').unwrap();
        assert!(path.ends_with(&format!("/uid-{uid}")), "{line}");
        let shows =
            |l: &str| l.split_once(':').is_some_and(|(_, rest)| rest == format!("{controllers}:{path}"));
        assert!(shown.lines().any(shows), "{line} not in:\n{shown}");
    }
    group.remove().unwrap();
}
