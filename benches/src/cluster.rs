//! What the remote-build drivers (`matrix_bench`, `delivery_bench`) share: a sealed go
//! environment over a scratch directory, a real module from the proxy, and cached with two
//! runner-agents as processes on loopback.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace::{copy_dir, gomodcache, proxy, sealed_go_env, sibling_or};

/// The flags of a driver that runs cached and runner agents as processes.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Builds each agent runs at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// Where the release binaries of cached, runner-agent and cachectl are [default: next to
    /// this binary].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

impl ClusterArgs {
    /// The directory of the cached, runner-agent and cachectl binaries, each checked to be there.
    pub fn bin(&self) -> Result<PathBuf, String> {
        let mut bin = PathBuf::new();
        for name in ["cached", "runner-agent", "cachectl"] {
            let found = sibling_or(self.bin_dir.as_ref().map(|dir| dir.join(name)), name)?;
            bin = found.parent().map(Path::to_owned).unwrap_or_default();
        }
        Ok(bin)
    }
}

/// The go environment of every command: the shared module cache (no network once it is
/// filled), this run's GOCACHE and HOME, no cgo.
pub struct GoBench {
    pub scratch: PathBuf,
    pub gomodcache: PathBuf,
    /// Where the binaries of cached, runner-agent and cachectl are.
    pub bin: PathBuf,
    /// Builds each agent runs at once.
    pub concurrency: u32,
}

impl GoBench {
    pub fn new(scratch: &Path, bin: &Path, concurrency: u32) -> Self {
        Self { scratch: scratch.to_owned(), gomodcache: gomodcache(), bin: bin.to_owned(), concurrency }
    }

    pub fn local_gocache(&self) -> PathBuf {
        self.scratch.join("gocache-local")
    }

    pub fn env(&self, proxy: &str) -> Vec<(String, String)> {
        sealed_go_env(&self.scratch, &self.gomodcache, &self.local_gocache(), proxy)
    }

    pub fn go(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("go");
        command.args(args).current_dir(dir).env_clear().envs(self.env("off")).stdin(Stdio::null());
        command
    }

    pub fn cachectl(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(self.bin.join("cachectl"));
        command.args(args).current_dir(dir).env_clear().envs(self.env("off")).stdin(Stdio::null());
        command
    }

    /// Downloads `spec` (`module@version`, once) and its dependencies, and copies the module
    /// out of the module cache into the scratch directory as `name`, a main module.
    pub fn fetch(&self, spec: &str, name: &str) -> PathBuf {
        let proxy = proxy();
        std::fs::create_dir_all(&self.scratch).expect("scratch");
        let mut download = Command::new("go");
        download.args(["mod", "download", "-json", spec]).current_dir(&self.scratch).env_clear();
        download.envs(self.env(&proxy));
        let text = run(download, "go mod download");
        let dir = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("\"Dir\": \""))
            .and_then(|rest| rest.strip_suffix("\","))
            .expect("a Dir in go mod download -json");
        let module = self.scratch.join(name);
        copy_dir(Path::new(dir), &module);
        let started = Instant::now();
        let mut deps = Command::new("go");
        deps.args(["mod", "download"]).current_dir(&module).env_clear().envs(self.env(&proxy));
        run(deps, "go mod download (dependencies)");
        eprintln!(
            "{spec} and its dependencies ready in {:.1?} ({})",
            started.elapsed(),
            self.gomodcache.display()
        );
        module
    }

    /// Packages `package` builds from, itself included.
    pub fn package_count(&self, module: &Path, package: &str) -> usize {
        run(self.go(module, &["list", "-deps", package]), "go list").lines().count()
    }
}

/// cached and two runner-agents, their state under the scratch directory; stopped and
/// removed on drop.
pub struct Cluster {
    pub url: String,
    /// The registry's address, when started with one.
    pub registry: Option<String>,
    cached: Child,
    agents: Vec<Child>,
    dir: PathBuf,
}

impl Cluster {
    pub fn start(bench: &GoBench, name: &str, with_registry: bool) -> Self {
        let dir = bench.scratch.join(format!("cluster-{name}"));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let (addr, registry) = (free_addr(), with_registry.then(free_addr));
        let mut command = Command::new(bench.bin.join("cached"));
        command.args(["--listen", &addr, "--metrics-listen", "off", "--log-level", "warn"]);
        if let Some(registry) = &registry {
            command.args(["--registry-listen", registry]);
        }
        let cached = command
            .arg("--data-dir")
            .arg(dir.join("db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("cached.log")).expect("log"))
            .spawn()
            .expect("start cached");
        wait_listening(&addr, "cached");
        if let Some(registry) = &registry {
            wait_listening(registry, "cached's registry");
        }
        let url = format!("http://{addr}");
        let agents = (1..=2).map(|i| start_agent(bench, &url, &dir, i)).collect();
        let mut cluster = Self { url, registry, cached, agents, dir };
        cluster.check_agents_stay_up();
        cluster
    }

    /// An agent that cannot start (its build uids taken, say) exits at once; the other would
    /// then build everything and the figures would be of one agent.
    fn check_agents_stay_up(&mut self) {
        std::thread::sleep(Duration::from_secs(1));
        for (index, agent) in self.agents.iter_mut().enumerate() {
            if let Ok(Some(status)) = agent.try_wait() {
                let log = self.dir.join(format!("agent{}/agent.log", index + 1));
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("runner agent {} exited at start ({status}):\n{log}", index + 1);
            }
        }
    }
}

fn start_agent(bench: &GoBench, url: &str, dir: &Path, index: usize) -> Child {
    let work = dir.join(format!("agent{index}"));
    std::fs::create_dir_all(&work).expect("agent dir");
    let mut agent = Command::new(bench.bin.join("runner-agent"));
    if cached_e2e::is_root() {
        // As root each agent takes a pool of build uids, and two agents with the same pool
        // cannot both start: the second would exit and the first build everything.
        let first = 61000 + 100 * index as u32;
        agent.arg("--build-uids").arg(format!("{first}-{}", first + 63));
    }
    agent
        .args(["--server", url, "--name", &format!("agent-{index}"), "--log-level", "warn"])
        .arg("--concurrency")
        .arg(bench.concurrency.to_string())
        .arg("--work-dir")
        .arg(&work)
        .env_remove("CACHED_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(work.join("agent.log")).expect("log"))
        .spawn()
        .expect("start runner-agent")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            // SIGTERM: the agent stops its builds' process groups on the way out.
            let _ = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status();
        }
        for agent in &mut self.agents {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(agent.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = self.cached.kill();
        let _ = self.cached.wait();
        make_writable(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback address nothing listens on (yet).
pub fn free_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind").port();
    format!("127.0.0.1:{port}")
}

pub fn wait_listening(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to success; its stdout.
pub fn run(mut command: Command, what: &str) -> String {
    let output = command.stdout(Stdio::piped()).stderr(Stdio::piped()).output().expect(what);
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The agents' module caches are read-only trees.
pub fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            make_writable(&entry.path());
        }
    }
}
