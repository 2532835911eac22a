//! Remote builds for tests and benchmarks: real `runner-agent` processes and a one-package Go
//! module submitted with `cachectl submit`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{GoEnv, binary, is_root, run};

/// A range of build uids no other agent of this process uses (as root). Starts above the
/// ranges other test binaries give their agents, so concurrent suites never share a uid.
fn build_uids() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(63000);
    let first = NEXT.fetch_add(4, Ordering::SeqCst);
    format!("{first}-{}", first + 3)
}

/// A `runner-agent` process with a work directory of its own; killed on drop.
pub struct Agent {
    child: Option<Child>,
    _work: tempfile::TempDir,
}

impl Agent {
    /// An agent given `servers` (a comma list), building `concurrency` tasks at once.
    pub fn start(servers: &str, name: &str, concurrency: u32) -> Self {
        let work = tempfile::tempdir().unwrap();
        std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let log = std::fs::File::create(work.path().join("agent.log")).unwrap();
        let child = Command::new(binary("runner-agent"))
            .args(["--server", servers, "--name", name, "--grace", "2s"])
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--work-dir")
            .arg(work.path().join("work"))
            .args(if is_root() { vec!["--build-uids".to_owned(), build_uids()] } else { Vec::new() })
            .env_remove("CACHED_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start runner-agent");
        Self { child: Some(child), _work: work }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A one-package module with no dependencies, in a sealed go environment.
pub struct TinyModule {
    env: GoEnv,
}

impl Default for TinyModule {
    fn default() -> Self {
        Self::new()
    }
}

impl TinyModule {
    pub fn new() -> Self {
        let env = GoEnv::new();
        let dir = env.root.path().join("tiny");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("go.mod"), "module example.com/tiny\n\ngo 1.21\n").unwrap();
        std::fs::write(dir.join("main.go"), "package main\n\nfunc main() { println(\"tiny\") }\n").unwrap();
        Self { env }
    }

    pub fn dir(&self) -> PathBuf {
        self.env.root.path().join("tiny")
    }

    /// `cachectl` in the module, with the sealed go environment, talking to `server`.
    pub fn cachectl(&self, server: &str, args: &[&str]) -> Command {
        let template = self.env.go(&[]);
        let mut command = Command::new(binary("cachectl"));
        command.env_clear();
        for (name, value) in template.get_envs() {
            if let Some(value) = value {
                command.env(name, value);
            }
        }
        command
            .current_dir(self.dir())
            .env("CACHED_ADDR", server)
            .env("CACHED_GOCACHE_DIR", self.env.root.path().join("tier"))
            .args(args);
        command
    }

    /// Submits the module for linux/amd64 without waiting; the job id. Always a new job
    /// (`--rebuild`): the tests that submit it many times count leases and completions, which
    /// reusing a finished job would skip.
    pub fn submit(&self, server: &str) -> String {
        let args = ["submit", "--detach", "--rebuild", "--targets", "linux/amd64", "."];
        run(self.cachectl(server, &args)).success("detached submit").stdout.trim().to_owned()
    }

    /// Submits it as a user would (a finished job with the same spec may answer); the job id.
    pub fn submit_reusing(&self, server: &str) -> String {
        let args = ["submit", "--detach", "--targets", "linux/amd64", "."];
        run(self.cachectl(server, &args)).success("detached submit").stdout.trim().to_owned()
    }

    /// Every job `server` lists, as `cachectl jobs list --json` prints them.
    pub fn jobs(&self, server: &str) -> Vec<serde_json::Value> {
        let listed = run(self.cachectl(server, &["jobs", "list", "--all", "--json", "--limit", "1000"]))
            .success("jobs list");
        let jobs: serde_json::Value = serde_json::from_str(&listed.stdout).expect("jobs JSON");
        jobs.as_array().expect("a list").clone()
    }

    /// Waits until every job in `ids` finished, as `server` sees it; returns them.
    pub fn wait_finished(&self, server: &str, ids: &[String], within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let jobs: Vec<serde_json::Value> = self
                .jobs(server)
                .into_iter()
                .filter(|job| ids.iter().any(|id| job["job_id"] == id.as_str()))
                .collect();
            let finished = jobs.iter().filter(|job| finished(job)).count();
            if jobs.len() == ids.len() && finished == ids.len() {
                return jobs;
            }
            assert!(Instant::now() < deadline, "{finished} of {} jobs finished: {jobs:?}", ids.len());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A job (as `cachectl jobs list --json` prints it) that will not change any more.
pub fn finished(job: &serde_json::Value) -> bool {
    ["succeeded", "failed", "cancelled"].iter().any(|state| job["state"] == *state)
}

/// A job whose every task succeeded and produced outputs.
pub fn succeeded_with_outputs(job: &serde_json::Value) -> bool {
    job["state"] == "succeeded"
        && job["tasks"].as_array().is_some_and(|tasks| {
            tasks.iter().all(|task| {
                task["state"] == "succeeded" && task["outputs"].as_array().is_some_and(|o| !o.is_empty())
            })
        })
}
