//! Attacks on a runner agent by the jobs it builds: the real cached with tokens, the real
//! runner-agent as root (as in CI: builds then run as unprivileged build users) and the real go
//! command. A job holds only a `submit` token; everything it ships is hostile.
//!
//! - a "spy" go command stands for code running inside the build: it must not see the agent's
//!   token, list its work dir or blob cache, or enter another task's directory; concurrent tasks
//!   run as different uids; what it leaves running (in a session of its own) is killed;
//! - a build whose output is a link to the agent's token file fails: the agent does not upload
//!   what the build points it at;
//! - a tree whose link climbs out through another link (`a/b -> ..`) is refused, and nothing
//!   outside it is built or written;
//! - a tree bomb (a directory naming its child twice, 21 levels deep) is refused by the caps at
//!   once, with the agent's memory flat;
//! - a cgo package whose assembly takes in `/proc/self/environ` finds no lease credential in
//!   it: only the bridge gets that, from a socket;
//! - a program the job ships (`as`) is not run through an empty or relative entry of the
//!   agent's PATH;
//! - a job cancelled while the agent downloads its huge tree stops the download at once, and
//!   its task directory is removed.
//!
//! The tests run one at a time: each agent takes the default build uid range.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cached_client::connect::ConnectOptions;
use cached_client::remote_exec::RemoteExec;
use cached_e2e::{Daemon, binary, go, is_root, run};
use prost::Message;
use proto::Digest;
use proto::v1::{self, Directory, DirectoryNode, FileNode, SymlinkNode};

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(
        is_root(),
        "these tests run runner-agent as root, as CI does, so that builds run as build users: run them as root"
    );
    guard
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// cached with two tokens: the agent's (`worker` and the cache scopes, every namespace) and a
/// submitter's (`submit`, `read`, `cas-write`).
struct Cluster {
    daemon: Daemon,
    dir: tempfile::TempDir,
    agent_secret: String,
    submit_secret: String,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Open like a home directory: only the token file's own mode keeps builds out.
        chmod(dir.path(), 0o755);
        let mut tables = String::new();
        for (name, scopes) in [("agent", "read,cas-write,worker"), ("submitter", "read,cas-write,submit")] {
            let mut new = Command::new(binary("cached"));
            new.args([
                "token",
                "new",
                "--name",
                name,
                "--scopes",
                scopes,
                "--namespaces",
                "*",
                "--secret-file",
            ])
            .arg(dir.path().join(format!("{name}.token")));
            tables.push_str(&run(new).success("cached token new").stdout);
        }
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(&tokens, tables).unwrap();
        let tokens_arg = tokens.display().to_string();
        let data = tempfile::tempdir().unwrap();
        let daemon = Daemon::start_in(
            data,
            &["--tokens-file", &tokens_arg, "--heartbeat-interval", "200ms", "--lease-timeout", "5s"],
        );
        let secret = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.token"))).unwrap();
        Self { agent_secret: secret("agent"), submit_secret: secret("submitter"), daemon, dir }
    }

    fn agent_token_file(&self) -> PathBuf {
        self.dir.path().join("agent.token")
    }

    /// cachectl as the submitter, in `module`, with a sealed go environment.
    fn cachectl(&self, module: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(binary("cachectl"));
        let home = self.dir.path().join("client");
        command
            .arg("--server")
            .arg(self.daemon.url())
            .args(args)
            .current_dir(module)
            .env("CACHED_TOKEN", self.submit_secret.trim())
            .env_remove("CACHED_TOKEN_FILE")
            .env("HOME", &home)
            .env("GOMODCACHE", home.join("gomodcache"))
            .env("GOCACHE", home.join("gocache"))
            .env("GOPATH", home.join("gopath"))
            .env("GOPROXY", "off")
            .env("GOSUMDB", "off")
            .env("GOFLAGS", "-modcacherw")
            .env("GOENV", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOWORK", "off")
            .env("GOTELEMETRY", "off")
            .env("CGO_ENABLED", "0");
        command
    }

    /// The task of `job` once it is over (succeeded or failed), waiting up to `deadline`,
    /// calling `watch` meanwhile.
    fn finished_task(&self, job: &str, deadline: Duration, mut watch: impl FnMut()) -> serde_json::Value {
        let until = Instant::now() + deadline;
        loop {
            watch();
            let listed = run(self.cachectl(self.dir.path(), &["jobs", "list", "--all", "--json"]))
                .success("jobs list");
            let jobs: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
            let task =
                jobs.as_array().unwrap().iter().find(|j| j["job_id"] == job).map(|j| j["tasks"][0].clone());
            if let Some(task) = task.filter(|t| t["state"] == "succeeded" || t["state"] == "failed") {
                return task;
            }
            assert!(Instant::now() < until, "the task of {job} is not over after {deadline:?}: {jobs}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Go action entries stored in all namespaces, as the submitter reads the counters.
    fn go_puts(&self) -> u64 {
        self.as_submitter(|client| async move {
            let stats = client.stats.clone().get(v1::StatsRequest {}).await.unwrap().into_inner();
            stats.namespaces.iter().map(|namespace| namespace.go_puts).sum()
        })
    }

    /// Whole builds recorded in all namespaces, as the submitter reads them.
    fn build_records(&self) -> u64 {
        self.as_submitter(|client| async move {
            let request = v1::BuildStatsRequest::default();
            let stats = client.builds.clone().stats(request).await.unwrap().into_inner();
            stats.namespaces.iter().map(|namespace| namespace.records).sum()
        })
    }

    /// Runs `call` with a client holding the submitter's token.
    fn as_submitter<F: Future<Output = u64>>(&self, call: impl FnOnce(cached_client::Client) -> F) -> u64 {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let options = ConnectOptions::with_token(self.submit_secret.trim());
            let remote = RemoteExec::connect(&self.daemon.url(), &options).await.unwrap();
            call(remote.client).await
        })
    }

    /// Uploads `blobs` and submits a job of one linux/amd64 target over the tree `root`, as the
    /// submitter, through the cachectl library (cachectl submit refuses such trees itself).
    fn submit_tree(&self, blobs: Vec<(Digest, Bytes)>, root: Digest, module_dir: &str) -> String {
        self.submit_trees(blobs, root, module_dir, None)
    }

    /// Submits the source tree `root`, and `module_proxy` as its module proxy tree.
    fn submit_trees(
        &self,
        blobs: Vec<(Digest, Bytes)>,
        root: Digest,
        module_dir: &str,
        module_proxy: Option<Digest>,
    ) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let options = ConnectOptions::with_token(self.submit_secret.trim());
            let remote = RemoteExec::connect(&self.daemon.url(), &options).await.unwrap();
            // In requests cached takes: a tree may have many more blobs than one holds.
            for batch in blobs.chunks(1000) {
                cached_client::transfer::batch_write(&remote.client, batch.to_vec(), 3).await.unwrap();
            }
            let spec = v1::JobSpec {
                source_root: Some(root.to_wire()),
                module_proxy: module_proxy.map(|proxy| proxy.to_wire()),
                module_dir: module_dir.to_owned(),
                packages: vec!["./cmd/app".to_owned()],
                targets: vec![v1::Target {
                    goos: "linux".into(),
                    goarch: "amd64".into(),
                    ..v1::Target::default()
                }],
                build_flags: vec!["-trimpath".to_owned()],
                ..v1::JobSpec::default()
            };
            let submitted = remote
                .jobs
                .clone()
                .submit(v1::SubmitRequest { spec: Some(spec), rebuild: false })
                .await
                .unwrap();
            submitted.into_inner().job_id
        })
    }
}

/// A runner-agent as root with the agent token's file, in a work dir its build users can reach.
struct Agent {
    child: Child,
    work: PathBuf,
    _parent: tempfile::TempDir,
}

/// A parent for a work dir: 0711, as an operator would make it for build users.
fn agent_parent() -> tempfile::TempDir {
    let parent = tempfile::tempdir().unwrap();
    chmod(parent.path(), 0o711);
    parent
}

impl Agent {
    fn start(cluster: &Cluster, concurrency: u32, go: &Path) -> Self {
        Self::start_in(agent_parent(), cluster, concurrency, go)
    }

    fn start_in(parent: tempfile::TempDir, cluster: &Cluster, concurrency: u32, go: &Path) -> Self {
        Self::start_with_env(parent, cluster, concurrency, go, &[])
    }

    /// With `env` set for the agent (settings by their environment variable, which an agent
    /// without the setting ignores).
    fn start_with_env(
        parent: tempfile::TempDir,
        cluster: &Cluster,
        concurrency: u32,
        go: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let work = parent.path().join("agent");
        std::fs::create_dir_all(&work).unwrap();
        let log = std::fs::File::create(parent.path().join("agent.log")).unwrap();
        let child = Command::new(binary("runner-agent"))
            .current_dir(parent.path())
            .args(["--server", &cluster.daemon.url(), "--name", "target", "--grace", "2s"])
            .arg("--token-file")
            .arg(cluster.agent_token_file())
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--work-dir")
            .arg(&work)
            .arg("--go")
            .arg(go)
            .env_remove("CACHED_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start runner-agent");
        Self { child, work, _parent: parent }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.parent().unwrap().join("agent.log")).unwrap_or_default()
    }

    /// Resident memory, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib = status.lines().find_map(|line| line.strip_prefix("VmRSS:")).unwrap_or("0 kB");
        kib.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0) * 1024
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The go command's absolute path.
fn real_go() -> PathBuf {
    on_path(&go().display().to_string())
}

/// The absolute path of `command`, which must be on PATH.
fn on_path(command: &str) -> PathBuf {
    let found = Command::new("sh").args(["-c", &format!("command -v {command}")]).output().unwrap();
    let path = PathBuf::from(String::from_utf8_lossy(&found.stdout).trim());
    assert!(path.is_absolute(), "{command} is required on PATH");
    path
}

/// A go command standing for code inside a build. Once both tasks of the job have arrived (so
/// they run at once), each records its uid, environment and what it could reach, then runs go.
const SPY: &str = r#"#!/bin/sh
real=@GO@
# The agent's own start-up checks (what this go is, and that build users can run it): not a build.
case "$*" in "env GOVERSION"*) exec "$real" "$@";; esac
spy=@SPY@
me=$(id -u)
touch "$spy/arrived-$me"
together=no
i=0
while [ $i -lt 300 ]; do
    if [ "$(ls "$spy" | grep -c '^arrived-')" -ge 2 ]; then together=yes; break; fi
    sleep 0.1
    i=$((i + 1))
done
task=$(dirname "$HOME")
tasks=$(dirname "$task")
name=$(basename "$task")
job=${name%-*-*}
try() { if sh -c "$1" >/dev/null 2>&1; then echo "reached:$2"; else echo "refused:$2"; fi; }
# Something that outlives the build, out of its process group.
setsid sh -c "echo \$\$ > '$spy/daemon-$me-$$'; exec sleep 600" </dev/null >/dev/null 2>&1 &
{
    echo "uid=$me"
    echo "together=$together"
    env | sed 's/^/env:/'
    try "cat '@TOKEN@'" "the agent's token file"
    try "ls '@WORK@'" "the work dir's listing"
    try "ls '@WORK@/blobs'" "the blob cache"
    try "ls '$tasks'" "the tasks' listing"
    try "cat /proc/$PPID/environ" "the agent's environment"
    try "touch '@WORK@/planted'" "a file in the work dir"
    for other in "$tasks/$job-0-1" "$tasks/$job-1-1"; do
        [ "$other" = "$task" ] && continue
        try "ls '$other'" "another task's directory"
        try "ls '$other/src'" "another task's sources"
    done
} > "$spy/record-$me-$$.tmp"
mv "$spy/record-$me-$$.tmp" "$spy/record-$me-$$"
exec "$real" "$@"
"#;

#[test]
fn a_build_cannot_reach_the_agents_credentials_work_dir_or_other_tasks() {
    let _serial = serial();
    let cluster = Cluster::start();
    let spy_dir = tempfile::tempdir().unwrap();
    let records = spy_dir.path().join("records");
    std::fs::create_dir(&records).unwrap();
    chmod(spy_dir.path(), 0o755);
    chmod(&records, 0o777);
    let parent = agent_parent();
    let spy = spy_dir.path().join("go");
    let script = SPY
        .replace("@GO@", &real_go().display().to_string())
        .replace("@SPY@", &records.display().to_string())
        .replace("@TOKEN@", &cluster.agent_token_file().display().to_string())
        .replace("@WORK@", &parent.path().join("agent").display().to_string());
    std::fs::write(&spy, script).unwrap();
    chmod(&spy, 0o755);
    let agent = Agent::start_in(parent, &cluster, 2, &spy);
    let module = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(module.path().join("cmd/app")).unwrap();
    std::fs::write(module.path().join("go.mod"), "module example.com/spied\n\ngo 1.21\n").unwrap();
    std::fs::write(
        module.path().join("cmd/app/main.go"),
        "package main\n\nfunc main() { println(\"built\") }\n",
    )
    .unwrap();
    let submitted = run(
        cluster.cachectl(module.path(), &["submit", "--targets", "linux/amd64,linux/arm64", "./cmd/app"])
    );
    let log = agent.log();
    let submitted = submitted.success(&format!("the spied build\n{log}"));
    assert!(submitted.stdout.contains("succeeded"), "{}", submitted.stdout);

    let mut uids = std::collections::BTreeSet::new();
    let mut together = false;
    let mut count = 0;
    for entry in std::fs::read_dir(&records).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("record-") || name.ends_with(".tmp") {
            continue;
        }
        count += 1;
        let record = std::fs::read_to_string(entry.path()).unwrap();
        assert!(
            !record.contains(cluster.agent_secret.trim()),
            "the agent's token reached a build:\n{record}"
        );
        assert!(
            !record.contains("cached_lease."),
            "the lease's cache credential is in a build's environment:\n{record}"
        );
        for line in record.lines() {
            assert!(!line.starts_with("reached:"), "{line}: the build could do it\n{record}");
            assert!(!line.starts_with("env:CACHED_TOKEN_FILE="), "{line}");
            if let Some(uid) = line.strip_prefix("uid=") {
                let uid: u32 = uid.parse().unwrap();
                assert!((61000..=61063).contains(&uid), "built as uid {uid}, not a build user");
                uids.insert(uid);
            }
            together |= line == "together=yes";
        }
        assert!(record.contains("refused:the agent's token file"), "{record}");
        assert!(record.contains("refused:another task's directory"), "{record}");
    }
    assert!(count >= 2, "the spy ran in {count} build processes:\n{log}");
    assert!(together, "the two tasks never ran at once");
    assert_eq!(uids.len(), 2, "two tasks running at once ran as {uids:?}");
    // The agent itself says which uids builds run as.
    assert!(agent.log().contains("61000-61063"), "{}", agent.log());
    // The job is over: nothing it started runs on.
    let daemons: Vec<String> = std::fs::read_dir(&records)
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("daemon-"))
        .map(|entry| std::fs::read_to_string(entry.path()).unwrap().trim().to_owned())
        .collect();
    assert!(!daemons.is_empty(), "the spy started no daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in daemons {
        while Path::new(&format!("/proc/{pid}")).exists() && !zombie(&pid) {
            assert!(Instant::now() < deadline, "process {pid}, started by a build, outlived its task");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn zombie(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| stat.contains(") Z "))
}

/// A go command whose build replaces its output with a link to the agent's token file.
const SMUGGLER: &str = r#"#!/bin/sh
real=@GO@
case "$1" in build) ;; *) exec "$real" "$@";; esac
"$real" "$@" || exit $?
prev=
for arg; do
    if [ "$prev" = "-o" ]; then out=$arg; fi
    prev=$arg
done
rm -f "${out}app"
ln -s '@TOKEN@' "${out}app"
"#;

#[test]
fn a_build_cannot_smuggle_the_agents_files_out_as_its_outputs() {
    let _serial = serial();
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let smuggler = dir.path().join("go");
    let script = SMUGGLER
        .replace("@GO@", &real_go().display().to_string())
        .replace("@TOKEN@", &cluster.agent_token_file().display().to_string());
    std::fs::write(&smuggler, script).unwrap();
    chmod(&smuggler, 0o755);
    let agent = Agent::start(&cluster, 1, &smuggler);
    let module = dir.path().join("module");
    std::fs::create_dir_all(module.join("cmd/app")).unwrap();
    std::fs::write(module.join("go.mod"), "module example.com/smuggler\n\ngo 1.21\n").unwrap();
    std::fs::write(module.join("cmd/app/main.go"), "package main\n\nfunc main() {}\n").unwrap();
    let submitted = run(cluster.cachectl(&module, &["submit", "--targets", "linux/amd64", "./cmd/app"]));
    let output = module.join("dist/linux_amd64/app");
    let got = std::fs::read_to_string(&output).unwrap_or_default();
    assert!(
        !got.contains(cluster.agent_secret.trim()),
        "the agent uploaded its own token as the build's output"
    );
    assert!(!submitted.status.success(), "{}\n{}", submitted.stdout, agent.log());
    assert!(
        submitted.stderr.contains("not a regular file"),
        "the failure says why: {}\n{}",
        submitted.stderr,
        agent.log()
    );
}

fn dir(name: &str, digest: Digest) -> DirectoryNode {
    DirectoryNode { name: name.into(), digest: Some(digest.to_wire()) }
}

fn file(name: &str, body: &[u8]) -> FileNode {
    FileNode { name: name.into(), digest: Some(Digest::of(body).to_wire()), executable: false }
}

/// The blobs of a module's `go.mod` and `cmd/app/main.go`, and the digest of its `cmd`
/// directory, for a root the caller makes with entries of its own.
fn app_sources(go_mod: &'static [u8], main_go: &'static [u8]) -> (Vec<(Digest, Bytes)>, Digest) {
    let mut blobs =
        vec![(Digest::of(go_mod), Bytes::from(go_mod)), (Digest::of(main_go), Bytes::from(main_go))];
    let app = add(&mut blobs, Directory { files: vec![file("main.go", main_go)], ..Directory::default() });
    let cmd = add(&mut blobs, Directory { directories: vec![dir("app", app)], ..Directory::default() });
    (blobs, cmd)
}

/// A module of `go.mod` and `cmd/app/main.go`: its blobs and its root.
fn app_module(go_mod: &'static [u8], main_go: &'static [u8]) -> (Vec<(Digest, Bytes)>, Digest) {
    let (mut blobs, cmd) = app_sources(go_mod, main_go);
    let root = add(
        &mut blobs,
        Directory {
            files: vec![file("go.mod", go_mod)],
            directories: vec![dir("cmd", cmd)],
            ..Directory::default()
        },
    );
    (blobs, root)
}

/// Encodes `directory`, adds it to `blobs` and returns its digest.
fn add(blobs: &mut Vec<(Digest, Bytes)>, directory: Directory) -> Digest {
    let bytes = Bytes::from(directory.encode_to_vec());
    let digest = Digest::of(&bytes);
    blobs.push((digest, bytes));
    digest
}

#[test]
fn a_tree_whose_link_climbs_out_through_another_link_is_refused() {
    let _serial = serial();
    let cluster = Cluster::start();
    let agent = Agent::start(&cluster, 1, &real_go());
    // A module outside the tree, which the job's link points at.
    let outside = tempfile::tempdir().unwrap();
    chmod(outside.path(), 0o755);
    std::fs::create_dir_all(outside.path().join("cmd/app")).unwrap();
    std::fs::write(outside.path().join("go.mod"), "module example.com/outside\n\ngo 1.21\n").unwrap();
    std::fs::write(outside.path().join("cmd/app/main.go"), "package main\n\nfunc main() {}\n").unwrap();
    let before = run({
        let mut find = Command::new("find");
        find.arg(outside.path());
        find
    })
    .stdout;

    let (go_mod, main_go) = (b"module example.com/esc\n\ngo 1.21\n".as_slice(), b"package main\n".as_slice());
    let (mut blobs, cmd) = app_sources(go_mod, main_go);
    // `a/b -> ..`: inside on its own.
    let a = add(
        &mut blobs,
        Directory {
            symlinks: vec![SymlinkNode { name: "b".into(), target: "..".into() }],
            ..Directory::default()
        },
    );
    // Read lexically, `esc` goes down 40 and up 40: inside. Through `a/b` it goes nowhere down,
    // then 40 up, to `/`, and on to the module outside.
    let target = format!(
        "{}{}{}",
        "a/b/".repeat(20),
        "../".repeat(40),
        outside.path().display().to_string().trim_start_matches('/')
    );
    let root = add(
        &mut blobs,
        Directory {
            files: vec![file("go.mod", go_mod)],
            directories: vec![dir("a", a), dir("cmd", cmd)],
            symlinks: vec![SymlinkNode { name: "esc".into(), target: target.clone() }],
        },
    );
    let job = cluster.submit_tree(blobs, root, "esc");
    let task = cluster.finished_task(&job, Duration::from_secs(120), || {});
    let log = agent.log();
    assert_eq!(task["state"], "failed", "the job built what its link pointed at: {task}\n{log}");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("symlink esc -> {target}")) && error.contains("outside the tree"),
        "{error}"
    );
    assert_eq!(task["attempt"], 1, "a refused tree is the job's fault, not retried: {task}");
    let after = run({
        let mut find = Command::new("find");
        find.arg(outside.path());
        find
    })
    .stdout;
    assert_eq!(before, after, "something was written outside the tree");
}

#[test]
fn a_tree_bomb_is_refused_by_the_caps_and_the_agent_stays_small() {
    let _serial = serial();
    let cluster = Cluster::start();
    let agent = Agent::start(&cluster, 1, &real_go());
    let go_mod = b"module example.com/bomb\n\ngo 1.21\n".as_slice();
    let mut blobs = vec![(Digest::of(go_mod), Bytes::from(go_mod))];
    // A directory naming its child twice, 21 levels deep: 22 small blobs, 2^21 directories.
    let mut level =
        add(&mut blobs, Directory { files: vec![file("go.mod", go_mod)], ..Directory::default() });
    for _ in 0..21 {
        level = add(
            &mut blobs,
            Directory { directories: vec![dir("a", level), dir("b", level)], ..Directory::default() },
        );
    }
    let root = add(
        &mut blobs,
        Directory {
            files: vec![file("go.mod", go_mod)],
            directories: vec![dir("bomb", level)],
            ..Directory::default()
        },
    );
    let job = cluster.submit_tree(blobs, root, "");
    let mut peak = 0;
    let task = cluster.finished_task(&job, Duration::from_secs(60), || peak = peak.max(agent.rss()));
    let log = agent.log();
    assert_eq!(task["state"], "failed", "{task}\n{log}");
    let error = task["error"].as_str().unwrap();
    assert!(error.contains("cap on entries"), "the refusal names the cap: {error}");
    assert_eq!(task["attempt"], 1, "a refused tree is not retried: {task}");
    peak = peak.max(agent.rss());
    assert!(peak > 0 && peak < 200 << 20, "the agent grew to {} MiB", peak >> 20);
}

/// A job's source tree and its module proxy tree share one --max-task-disk: two trees each
/// under it but over it together are refused before the second is downloaded, where each
/// tree had the whole budget and a task took twice it before its build began.
#[test]
fn the_source_and_module_proxy_trees_share_the_task_disk() {
    let _serial = serial();
    let cluster = Cluster::start();
    let agent =
        Agent::start_with_env(agent_parent(), &cluster, 1, &real_go(), &[("CACHED_MAX_TASK_DISK", "64MiB")]);
    let go_mod = b"module example.com/heavy\n\ngo 1.21\n".as_slice();
    let main_go = b"package main\n\nfunc main() {}\n".as_slice();
    let (mut blobs, cmd) = app_sources(go_mod, main_go);
    // 40 MiB each, from one 1 MiB blob named 40 times (every copy takes its size on disk).
    let mut forty_copies = |seed: u8| {
        let body = Bytes::from(vec![seed; 1 << 20]);
        let digest = Digest::of(&body);
        blobs.push((digest, body.clone()));
        let files = (0..40).map(|i| file(&format!("copy{i}"), &body)).collect();
        add(&mut blobs, Directory { files, ..Directory::default() })
    };
    let (data, modules) = (forty_copies(1), forty_copies(2));
    let root = add(
        &mut blobs,
        Directory {
            files: vec![file("go.mod", go_mod)],
            directories: vec![dir("cmd", cmd), dir("data", data)],
            ..Directory::default()
        },
    );
    let proxy =
        add(&mut blobs, Directory { directories: vec![dir("cache", modules)], ..Directory::default() });
    let job = cluster.submit_trees(blobs, root, "", Some(proxy));
    let task = cluster.finished_task(&job, Duration::from_secs(120), || {});
    let log = agent.log();
    assert_eq!(task["state"], "failed", "{task}\n{log}");
    let error = task["error"].as_str().unwrap();
    assert!(error.contains("tree was refused") && error.contains("--max-task-disk"), "{error}\n{log}");
    assert_eq!(task["attempt"], 1, "a refused tree is not retried: {task}");
}

/// An operator is told when the work directory cannot hold every task at its disk cap: one
/// job's files could then fail another's build as a full disk.
#[test]
fn an_agent_whose_tasks_do_not_fit_its_disk_says_so() {
    let _serial = serial();
    let cluster = Cluster::start();
    let agent =
        Agent::start_with_env(agent_parent(), &cluster, 2, &real_go(), &[("CACHED_MAX_TASK_DISK", "512TiB")]);
    let said =
        eventually(Duration::from_secs(20), || agent.log().contains("less free space than --concurrency"));
    assert!(said, "{}", agent.log());
}

/// A job's go.mod may replace a module with any path. Through `/proc/self/cwd` the path is the
/// job's own tree to the go command (run in it as the build user) but the agent's working
/// directory to the agent, which reads the build key's files (as root): the key hashed, and the
/// include scan quoted into the job's log, files of the agent's choosing none of the job's.
#[test]
fn a_replace_through_proc_self_reads_nothing_of_the_agents() {
    let _serial = serial();
    let cluster = Cluster::start();
    let parent = agent_parent();
    const MARKER: &str = "ONLY_ROOT_MAY_READ_THIS_41f9";
    const ASM: &str = "#include \"secret.h\"\n#include \"textflag.h\"\n\nTEXT ·f(SB),NOSPLIT,$0-8\n\tMOVQ $7, ret+0(FP)\n\tRET\n";
    let probe_files = |dir: &Path, header: &str| {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("go.mod"), "module example.com/x\n\ngo 1.21\n").unwrap();
        std::fs::write(dir.join("x.go"), "package x\n\nfunc f() int\n\nfunc F() int { return f() }\n")
            .unwrap();
        std::fs::write(dir.join("x_amd64.s"), ASM).unwrap();
        std::fs::write(dir.join("secret.h"), header).unwrap();
    };
    // The agent's own: in its working directory, readable by root only.
    let secret = parent.path().join("probe");
    probe_files(&secret, &format!("#include {MARKER}\n"));
    chmod(&secret, 0o700);
    // The job's: the same names in its tree, which the go command reads.
    let module = tempfile::tempdir().unwrap();
    chmod(module.path(), 0o755);
    probe_files(&module.path().join("probe"), "// nothing\n");
    std::fs::write(
        module.path().join("go.mod"),
        "module example.com/m\n\ngo 1.21\n\nrequire example.com/x v0.0.0\n\nreplace example.com/x => /proc/self/cwd/probe\n",
    )
    .unwrap();
    std::fs::create_dir_all(module.path().join("cmd/app")).unwrap();
    std::fs::write(
        module.path().join("cmd/app/main.go"),
        "package main\n\nimport \"example.com/x\"\n\nfunc main() { println(x.F()) }\n",
    )
    .unwrap();
    let agent = Agent::start_in(parent, &cluster, 1, &real_go());
    let submitted =
        run(cluster.cachectl(module.path(), &["submit", "--targets", "linux/amd64", "./cmd/app"]));
    let log = agent.log();
    let said = format!("{}\n{}\n{log}", submitted.stdout, submitted.stderr);
    assert!(!said.contains(MARKER), "the agent read its own file for the job: {said}");
    assert!(said.contains("outside the job's directories"), "the log says why the build has no key: {said}");
    // The build itself fails: go runs the assembler in another directory, where the path
    // names nothing.
}

/// A go command on a host whose system git configuration trusts every repository
/// (`safe.directory = *`, common in CI images): git then reads a job's own `.git/config`.
const TRUSTING_GIT: &str = r#"#!/bin/sh
export GIT_CONFIG_SYSTEM=@GITCONFIG@
exec @GO@ "$@"
"#;

#[test]
fn a_trees_git_config_runs_nothing_on_the_agent() {
    let _serial = serial();
    let cluster = Cluster::start();
    let host = tempfile::tempdir().unwrap();
    chmod(host.path(), 0o755);
    let marker_dir = host.path().join("marker");
    std::fs::create_dir(&marker_dir).unwrap();
    chmod(&marker_dir, 0o777);
    let gitconfig = host.path().join("gitconfig");
    std::fs::write(&gitconfig, "[safe]\n\tdirectory = *\n").unwrap();
    chmod(&gitconfig, 0o644);
    let go = host.path().join("go");
    let script = TRUSTING_GIT
        .replace("@GO@", &real_go().display().to_string())
        .replace("@GITCONFIG@", &gitconfig.display().to_string());
    std::fs::write(&go, script).unwrap();
    chmod(&go, 0o755);
    let agent = Agent::start(&cluster, 1, &go);

    let marker = marker_dir.join("ran");
    let config = format!(
        "[core]\n\trepositoryformatversion = 0\n\tfsmonitor = \"id -u > {}; true\"\n",
        marker.display()
    );
    let (go_mod, main_go, head) = (
        b"module example.com/vcs\n\ngo 1.21\n".as_slice(),
        b"package main\n\nfunc main() {}\n".as_slice(),
        b"ref: refs/heads/main\n".as_slice(),
    );
    let (mut blobs, cmd) = app_sources(go_mod, main_go);
    blobs.push((Digest::of(head), Bytes::from(head)));
    blobs.push((Digest::of(config.as_bytes()), Bytes::from(config.clone())));
    let empty = add(&mut blobs, Directory::default());
    let git = add(
        &mut blobs,
        Directory {
            files: vec![file("HEAD", head), file("config", config.as_bytes())],
            directories: vec![dir("objects", empty), dir("refs", empty)],
            ..Directory::default()
        },
    );
    let root = add(
        &mut blobs,
        Directory {
            files: vec![file("go.mod", go_mod)],
            directories: vec![dir(".git", git), dir("cmd", cmd)],
            ..Directory::default()
        },
    );
    let job = cluster.submit_tree(blobs, root, "");
    let task = cluster.finished_task(&job, Duration::from_secs(120), || {});
    let log = agent.log();
    assert!(
        !marker.exists(),
        "the tree's .git/config ran a command on the agent as uid {}: {task}\n{log}",
        std::fs::read_to_string(&marker).unwrap_or_default().trim()
    );
    assert_eq!(task["state"], "succeeded", "a tree with VCS metadata still builds: {task}\n{log}");
}

#[test]
fn a_compile_error_cannot_blame_the_agent_for_its_disk_or_memory() {
    let _serial = serial();
    let cluster = Cluster::start();
    let agent = Agent::start(&cluster, 1, &real_go());
    // The compiler quotes the constant: the words of an agent's trouble, on a disk with room.
    let go_mod = b"module example.com/blame\n\ngo 1.21\n".as_slice();
    let main_go =
        b"package main\n\nvar disk int = \"no space left on device\"\n\nfunc main() {}\n".as_slice();
    let (blobs, root) = app_module(go_mod, main_go);
    let job = cluster.submit_tree(blobs, root, "");
    let task = cluster.finished_task(&job, Duration::from_secs(120), || {});
    let log = agent.log();
    assert_eq!(task["state"], "failed", "{task}\n{log}");
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("cannot use \"no space left on device\""),
        "the failure shows go's error: {error}"
    );
    assert!(!error.contains("disk is full"), "a compile error was blamed on the agent's disk: {error}");
    assert_eq!(task["attempt"], 1, "a compile error is the code's fault, not retried: {task}\n{log}");
}

#[test]
fn a_build_printing_huge_lines_fails_once_with_a_bounded_reason() {
    let _serial = serial();
    let cluster = Cluster::start();
    let agent = Agent::start(&cluster, 1, &real_go());
    let module = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(module.path().join("cmd/app")).unwrap();
    std::fs::write(module.path().join("go.mod"), "module example.com/loud\n\ngo 1.21\n").unwrap();
    std::fs::write(module.path().join("cmd/app/main.go"), "package main\n\nfunc main() {}\n").unwrap();
    // 220 type errors, each quoting its 90 KB constant whole (-e: go reports them all): 20 MB
    // of output, whose last 200 lines were a failure reason cached refuses (16 MiB).
    let constant = "a".repeat(90_000);
    for part in 0..4 {
        let mut source = String::from("package main\n\n");
        for i in 0..55 {
            source.push_str(&format!("var loud{part}x{i} int = \"{constant}\"\n"));
        }
        std::fs::write(module.path().join(format!("cmd/app/loud{part}.go")), source).unwrap();
    }
    let submitted = run(cluster.cachectl(
        module.path(),
        &["submit", "--targets", "linux/amd64", "--build-flag=-gcflags=-e", "./cmd/app"],
    ));
    assert!(!submitted.status.success(), "{}", submitted.stdout);
    let listed =
        run(cluster.cachectl(module.path(), &["jobs", "list", "--all", "--json"])).success("jobs list");
    let jobs: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let job = jobs[0]["job_id"].as_str().unwrap().to_owned();
    let task = cluster.finished_task(&job, Duration::from_secs(180), || {});
    let log = agent.log();
    assert_eq!(task["state"], "failed", "{task}\n{log:.4000}");
    assert_eq!(task["attempt"], 1, "the failure reached cached at once, not by lease expiry: {task:.2000}");
    let error = task["error"].as_str().unwrap();
    assert!(error.len() <= 64 << 10, "a failure reason of {} bytes", error.len());
    assert!(error.contains("[line cut at 4096 bytes"), "{error:.2000}");
    assert!(error.contains("cannot use \"aaaa"), "the reason still shows go's errors: {error:.2000}");
}

/// A go command standing for a build that fills the disk: it writes 256 MiB under its TMPDIR
/// (the go command's own work directory lives there) before building, slowly enough to be seen.
const FILLER: &str = r#"#!/bin/sh
real=@GO@
case "$1" in build) ;; *) exec "$real" "$@";; esac
dd if=/dev/zero of="$TMPDIR/fill" bs=1M count=256 2>/dev/null
sleep 20
exec "$real" "$@"
"#;

#[test]
fn a_build_filling_its_task_directory_is_stopped_and_fails_as_its_own_fault() {
    let _serial = serial();
    let cluster = Cluster::start();
    let host = tempfile::tempdir().unwrap();
    chmod(host.path(), 0o755);
    let filler = host.path().join("go");
    std::fs::write(&filler, FILLER.replace("@GO@", &real_go().display().to_string())).unwrap();
    chmod(&filler, 0o755);
    let agent =
        Agent::start_with_env(agent_parent(), &cluster, 1, &filler, &[("CACHED_MAX_TASK_DISK", "64MiB")]);
    let go_mod = b"module example.com/filler\n\ngo 1.21\n".as_slice();
    let main_go = b"package main\n\nfunc main() {}\n".as_slice();
    let (blobs, root) = app_module(go_mod, main_go);
    let started = Instant::now();
    let job = cluster.submit_tree(blobs, root, "");
    let task = cluster.finished_task(&job, Duration::from_secs(120), || {});
    let log = agent.log();
    assert_eq!(task["state"], "failed", "a build past --max-task-disk went on: {task}\n{log}");
    let error = task["error"].as_str().unwrap();
    assert!(error.contains("more than 64 MiB") && error.contains("--max-task-disk"), "{error}");
    assert_eq!(task["attempt"], 1, "the build's own disk use is its fault, not retried: {task}\n{log}");
    assert!(started.elapsed() < Duration::from_secs(20), "stopped only after {:?}", started.elapsed());
}

/// The host's gcc, with an `.incbin` that reads a file as a stream, to its end. GNU as 2.40
/// sizes an `.incbin` file by seeking to its end, and /proc files say 0 bytes, so there
/// `/proc/self/environ` comes in empty; its `.include` and the Go assembler's `#include` read
/// it whole, and other assemblers and preprocessors may as well. This stands for the tools'
/// file reads only: the job still runs nothing of its own.
const STREAMING_INCBIN_CC: &str = r#"#!/bin/bash
set -e
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=()
for arg in "$@"; do
    if [[ $arg == *.S && -f $arg ]]; then
        copy="$tmp/${#args[@]}.S"
        n=0
        while IFS= read -r line; do
            if [[ $line =~ \.incbin\ \"([^\"]+)\" ]]; then
                n=$((n + 1))
                blob="$tmp/${#args[@]}-$n.bin"
                cat -- "${BASH_REMATCH[1]}" > "$blob"
                line=${line/"${BASH_REMATCH[1]}"/$blob}
            fi
            printf '%s\n' "$line"
        done < "$arg" > "$copy"
        arg=$copy
    fi
    args+=("$arg")
done
status=0
@GCC@ "${args[@]}" || status=$?
exit $status
"#;

/// A cgo package whose assembly takes in the environment the go command hands its tools, into a
/// symbol the program uses, so the linker keeps it.
const LEAKING_MAIN: &str = r#"package main

/*
extern const char leaked_environ[];
static const char *leaked(void) { return leaked_environ; }
*/
import "C"

import "fmt"

func main() { fmt.Println(C.GoString(C.leaked())) }
"#;

const LEAKING_ASSEMBLY: &str = r#"	.section .rodata
	.globl leaked_environ
leaked_environ:
	.incbin "/proc/self/environ"
	.byte 0
	.section .note.GNU-stack,"",@progbits
"#;

/// The lease's cache credential writes the job's namespace's action cache (`ac-write`), which
/// a submitter must never hold. Every tool the go command runs gets its environment, and a
/// job's sources choose files those tools read: nothing any of them can read may hold it. A
/// build whose sources name a file outside its tree does not even run the bridge: which files
/// it reads is not known, so it uses no shared go cache (and cannot write one).
#[test]
fn a_builds_tools_cannot_read_the_leases_cache_credential() {
    let _serial = serial();
    let cluster = Cluster::start();
    let host = tempfile::tempdir().unwrap();
    chmod(host.path(), 0o755);
    let cc = host.path().join("cc");
    let gcc = on_path("gcc");
    std::fs::write(&cc, STREAMING_INCBIN_CC.replace("@GCC@", &gcc.display().to_string())).unwrap();
    chmod(&cc, 0o755);
    let cc_flag = format!("linux/amd64={}", cc.display());
    let agent =
        Agent::start_with_env(agent_parent(), &cluster, 1, &real_go(), &[("CACHED_CC", cc_flag.as_str())]);
    let module = host.path().join("module");
    std::fs::create_dir_all(module.join("cmd/app")).unwrap();
    std::fs::write(module.join("go.mod"), "module example.com/leak\n\ngo 1.21\n").unwrap();
    std::fs::write(module.join("cmd/app/main.go"), LEAKING_MAIN).unwrap();
    std::fs::write(module.join("cmd/app/leak.S"), LEAKING_ASSEMBLY).unwrap();
    let submitted = run(cluster.cachectl(&module, &["submit", "--targets", "linux/amd64+cgo", "./cmd/app"]));
    let log = agent.log();
    let submitted = submitted.success(&format!("the cgo build\n{log}"));
    let binary = std::fs::read(module.join("dist/linux_amd64/app")).unwrap();
    let has = |needle: &[u8]| binary.windows(needle.len()).any(|window| window == needle);
    // The assembly took the environment in: the attack reached its file.
    assert!(has(b"CACHED_NAMESPACE="), "the build's environment is not in its binary");
    assert!(!has(b"cached_lease."), "the lease's cache credential is in the job's binary");
    for text in [&submitted.stdout, &submitted.stderr, &log] {
        assert!(!text.contains("cached_lease."), "{text}");
    }
    // The scan cannot follow `/proc/self/environ`: the build ran without the shared go cache.
    assert_eq!(cluster.go_puts(), 0, "the build wrote the namespace's go cache\n{log}");
}

/// A cgo program: building it runs gcc, and gcc runs `as`.
const CGO_MAIN: &str = r#"package main

/*
static int answer(void) { return 42; }
*/
import "C"

import "fmt"

func main() { fmt.Println(C.answer()) }
"#;

/// gcc runs `as` from PATH, in the package directory: an agent whose PATH has an empty or a
/// relative entry (`./node_modules/.bin`) would run the job's own `as` with the task's rights,
/// its credential socket included. Builds get only the absolute entries of the agent's PATH.
#[test]
fn a_relative_entry_on_the_agents_path_runs_nothing_the_job_ships() {
    let _serial = serial();
    let cluster = Cluster::start();
    let host = tempfile::tempdir().unwrap();
    chmod(host.path(), 0o755);
    let marks = host.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    chmod(&marks, 0o777);
    let path = format!(":{}", std::env::var("PATH").unwrap());
    let agent = Agent::start_with_env(agent_parent(), &cluster, 1, &real_go(), &[("PATH", path.as_str())]);
    let module = host.path().join("module");
    std::fs::create_dir_all(module.join("cmd/app")).unwrap();
    std::fs::write(module.join("go.mod"), "module example.com/shipped\n\ngo 1.21\n").unwrap();
    std::fs::write(module.join("cmd/app/main.go"), CGO_MAIN).unwrap();
    let shipped =
        format!("#!/bin/sh\ntouch {}/ran\nexec {} \"$@\"\n", marks.display(), on_path("as").display());
    std::fs::write(module.join("cmd/app/as"), shipped).unwrap();
    chmod(&module.join("cmd/app/as"), 0o755);
    let submitted = run(cluster.cachectl(&module, &["submit", "--targets", "linux/amd64+cgo", "./cmd/app"]));
    let log = agent.log();
    submitted.success(&format!("the cgo build\n{log}"));
    assert!(!marks.join("ran").exists(), "the agent ran the job's own `as`\n{log}");
    assert!(log.contains("PATH has entries that are not absolute"), "{log}");
}

/// The agent's token here has no `ac-write`: what a task writes to the namespace's action cache
/// (the build's whole-build record, the image's layer cache) goes with the lease's cache
/// credential, which a purge's cancel ends, never with the agent's token, which outlives it (a
/// build that read what a purge removed would record its outputs again).
#[test]
fn an_agents_build_and_layers_are_cached_with_the_leases_credential() {
    let _serial = serial();
    let cluster = Cluster::start();
    let agent = Agent::start(&cluster, 1, &real_go());
    let host = tempfile::tempdir().unwrap();
    let module = host.path().join("module");
    std::fs::create_dir_all(module.join("cmd/app")).unwrap();
    std::fs::write(module.join("go.mod"), "module example.com/recorded\n\ngo 1.21\n").unwrap();
    std::fs::write(module.join("cmd/app/main.go"), "package main\n\nfunc main() {}\n").unwrap();
    let layout = host.path().join("layout").display().to_string();
    let submit = |again: &str| {
        let args = ["submit", again, "--targets", "linux/amd64", "--oci-layout", &layout, "./cmd/app"];
        run(cluster.cachectl(&module, &args)).success(&format!("image submit\n{}", agent.log()));
    };
    submit("--priority=0");
    assert_eq!(cluster.build_records(), 1, "the build was not recorded\n{}", cluster.daemon.log());
    submit("--rebuild");
    let listed = run(cluster.cachectl(&module, &["jobs", "list", "--all", "--json"])).success("jobs list");
    let jobs: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let layered: Vec<bool> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["tasks"][0]["image"]["layer_cached"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(
        layered.iter().filter(|cached| **cached).count(),
        1,
        "the rebuild's layer was not cached: {jobs}"
    );
}

/// Files in the job's tree of [`a_cancelled_jobs_tree_stops_downloading_at_once`]: each its own
/// blob, fetched on its own, so the download takes seconds, long after the cancel arrives.
const MANY_FILES: usize = 20_000;

/// Entries in the agent's blob cache (partial downloads aside).
fn cached_blobs(agent: &Agent) -> usize {
    let Ok(entries) = std::fs::read_dir(agent.work.join("blobs")) else { return 0 };
    entries.flatten().filter(|entry| !entry.file_name().to_string_lossy().starts_with('.')).count()
}

/// Waits up to `within` for `done`, calling it every 20 ms; whether it came true.
fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while !done() {
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn a_cancelled_jobs_tree_stops_downloading_at_once() {
    let _serial = serial();
    let cluster = Cluster::start();
    let agent = Agent::start(&cluster, 1, &real_go());
    let go_mod = b"module example.com/huge\n\ngo 1.21\n".as_slice();
    let (mut blobs, cmd) = app_sources(go_mod, b"package main\n");
    let mut directories = vec![dir("cmd", cmd)];
    for part in 0..MANY_FILES / 1000 {
        let mut files = Vec::new();
        for i in 0..1000 {
            let body = Bytes::from(format!("package p{part}\n\n// {i}\n"));
            files.push(file(&format!("f{i}.go"), &body));
            blobs.push((Digest::of(&body), body));
        }
        directories
            .push(dir(&format!("p{part}"), add(&mut blobs, Directory { files, ..Directory::default() })));
    }
    let root = add(
        &mut blobs,
        Directory { files: vec![file("go.mod", go_mod)], directories, ..Directory::default() },
    );
    let job = cluster.submit_tree(blobs, root, "");
    assert!(
        eventually(Duration::from_secs(60), || cached_blobs(&agent) >= 200),
        "the agent never started downloading the tree\n{}",
        agent.log()
    );
    run(cluster.cachectl(cluster.dir.path(), &["jobs", "cancel", &job])).success("jobs cancel");
    let tasks = agent.work.join("tasks");
    let task_gone = || std::fs::read_dir(&tasks).map(|mut entries| entries.next().is_none()).unwrap_or(true);
    assert!(
        eventually(Duration::from_secs(5), task_gone),
        "the cancelled task's directory is still there; {} of {MANY_FILES} blobs fetched\n{}",
        cached_blobs(&agent),
        agent.log()
    );
    let stopped = cached_blobs(&agent);
    std::thread::sleep(Duration::from_secs(1));
    let later = cached_blobs(&agent);
    assert_eq!(stopped, later, "the agent went on downloading the cancelled job's tree\n{}", agent.log());
    assert!(
        later < MANY_FILES / 4,
        "{later} of {MANY_FILES} blobs downloaded after the cancel\n{}",
        agent.log()
    );
    assert!(agent.log().contains("lease aborted by cached"), "{}", agent.log());
    // Its one slot is free again.
    let (blobs, root) =
        app_module(b"module example.com/next\n\ngo 1.21\n", b"package main\n\nfunc main() {}\n");
    let next = cluster.submit_tree(blobs, root, "");
    let task = cluster.finished_task(&next, Duration::from_secs(120), || {});
    assert_eq!(task["state"], "succeeded", "{task}\n{}", agent.log());
}
