//! A build uid goes to the next tenant without what the last one left where every user writes:
//! real files, links and IPC objects made by a process of the uid.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use runner_agent::sandbox::{BuildUsers, Sandbox};

/// A uid no account uses, outside the agents' default pool and the other tests' uids.
const UID: u32 = 61_992;

#[tokio::test]
async fn what_a_build_left_in_shared_directories_is_gone_before_its_uid_is_handed_out_again() {
    assert!(rustix::process::geteuid().is_root(), "build users need root: run this test as root");
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("agent-file");
    std::fs::write(&victim, b"the agent's").unwrap();
    let left = |dir: &str| format!("{dir}/left-by-{UID}");
    let script = format!(
        "set -e
        mkdir -p {tmp}/sub && echo x > {tmp}/sub/file && chmod 500 {tmp}/sub {tmp}
        echo x > {var_tmp}
        echo x > {shm}
        ln -s {victim} {link}
        ipcmk -M 4096 | sed 's/[^0-9]//g'",
        tmp = left("/tmp"),
        var_tmp = left("/var/tmp"),
        shm = left("/dev/shm"),
        victim = victim.display(),
        link = left("/tmp") + "-link",
    );
    let pool = Sandbox::Users(Arc::new(BuildUsers::take(UID, UID, 1).unwrap()));
    let user = pool.acquire().await.unwrap();
    let made =
        Command::new("/bin/sh").args(["-c", &script]).current_dir("/").uid(UID).gid(UID).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let shm_id = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    assert!(ipc_exists(&shm_id), "ipcmk made no segment {shm_id:?}");
    drop(user);
    // The next tenant gets the uid once it is cleared.
    let _next = tokio::time::timeout(Duration::from_secs(30), pool.acquire()).await.unwrap().unwrap();
    for path in [left("/tmp"), left("/tmp") + "-link", left("/var/tmp"), left("/dev/shm")] {
        assert!(std::fs::symlink_metadata(&path).is_err(), "{path}, left by the last tenant, is still there");
    }
    assert!(!ipc_exists(&shm_id), "the last tenant's shared memory segment {shm_id} is still there");
    assert_eq!(std::fs::read(&victim).unwrap(), b"the agent's", "a link's target was removed");
}

fn ipc_exists(id: &str) -> bool {
    let table = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    table.lines().skip(1).any(|line| line.split_whitespace().nth(1) == Some(id))
}
