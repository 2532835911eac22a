//! Remote execution end to end: a real `cached`, real `runner-agent` processes and the real go
//! command, on loopback. The module under test has a dependency served from a file:// module
//! proxy made here, so the module files travel with the job and agents build offline.
//!
//! The tests run one at a time (they share two warm agent work directories, which keep the
//! agents' blob caches) and use short leases (heartbeat 200ms, lease 2s). As root (CI), agents
//! build as unprivileged build users, each agent with uids of its own; their work directories
//! are made reachable by those users, as an operator would.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cached_e2e::registry::{Registry, has_command};
use cached_e2e::{Finished, MemoryCgroup, Tmpfs, binary, free_port, go, is_root, run};

const LEASE: &[&str] = &["--heartbeat-interval", "200ms", "--lease-timeout", "2s"];
const MATRIX: &str = "linux/amd64,linux/arm64,darwin/arm64,windows/amd64";

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Work directories of the two long-lived agents, kept warm across tests.
fn warm_dir(index: usize) -> PathBuf {
    static DIRS: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIRS.get_or_init(agent_parent).path().join(format!("agent{index}"))
}

/// A temp dir for agent work directories: 0711, so build users can reach what is inside.
fn agent_parent() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// A range of build uids no other agent of these tests uses (as root).
fn build_uids() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(62000);
    let first = NEXT.fetch_add(4, Ordering::SeqCst);
    format!("{first}-{}", first + 3)
}

/// cached on a fixed port and data directory, so it can be killed and started again.
struct Server {
    child: Option<Child>,
    port: u16,
    data: tempfile::TempDir,
    flags: Vec<String>,
}

impl Server {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// As `start`, with more flags for cached.
    fn start_with(flags: &[&str]) -> Self {
        let flags = flags.iter().map(|flag| (*flag).to_owned()).collect();
        let mut server = Self { child: None, port: free_port(), data: tempfile::tempdir().unwrap(), flags };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("cached.log"))
            .unwrap();
        let addr = format!("127.0.0.1:{}", self.port);
        let child = Command::new(binary("cached"))
            .args(["--listen", &addr, "--metrics-listen", "off", "--log-level", "info"])
            .args(LEASE)
            .args(&self.flags)
            .arg("--data-dir")
            .arg(self.data.path().join("db"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start cached");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "cached did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("cached.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Agent {
    child: Option<Child>,
    work: PathBuf,
}

impl Agent {
    fn start(server: &Server, name: &str, work: &Path, concurrency: u32) -> Self {
        Self::launch(server, name, work, concurrency, &[], None)
    }

    /// As `start`, with more environment, and in `group` from its first instruction on (its
    /// task groups go inside the group it finds itself in when it starts).
    fn launch(
        server: &Server,
        name: &str,
        work: &Path,
        concurrency: u32,
        env: &[(&str, &str)],
        group: Option<&MemoryCgroup>,
    ) -> Self {
        std::fs::create_dir_all(work).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(work.join("agent.log")).unwrap();
        let mut command = match group {
            Some(group) => {
                let mut shell = Command::new("/bin/sh");
                shell
                    .args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(group.procs())
                    .arg(binary("runner-agent"));
                shell
            }
            None => Command::new(binary("runner-agent")),
        };
        let child = command
            .args(["--server", &server.url(), "--name", name, "--grace", "2s"])
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--work-dir")
            .arg(work)
            .args(if is_root() { vec!["--build-uids".to_owned(), build_uids()] } else { Vec::new() })
            .envs(env.iter().copied())
            .env_remove("CACHED_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start runner-agent");
        Self { child: Some(child), work: work.to_owned() }
    }

    fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the agent kills its builds' process groups on the way out.
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The module under test and the client's sealed go environment.
struct Module {
    root: tempfile::TempDir,
}

const GREETING_GO: &str =
    "package greeting\n\nfunc Hello(name string) string { return \"hello, \" + name }\n";

const GEN_ZIP: &str = r#"package main

import (
	"archive/zip"
	"os"
)

// gen <zip> <prefix> <name> <file>: a module zip holding one file.
func main() {
	out, err := os.Create(os.Args[1])
	if err != nil {
		panic(err)
	}
	w := zip.NewWriter(out)
	for i := 2; i+2 < len(os.Args)+1; i += 3 {
		body, err := os.ReadFile(os.Args[i+2])
		if err != nil {
			panic(err)
		}
		f, err := w.Create(os.Args[i] + "/" + os.Args[i+1])
		if err != nil {
			panic(err)
		}
		f.Write(body)
	}
	if err := w.Close(); err != nil {
		panic(err)
	}
	out.Close()
}
"#;

impl Module {
    /// `example.com/app` with ./cmd/app (pure Go, imports example.com/greeting v1.0.0 from a
    /// file:// proxy) and ./cmd/cgoapp (cgo).
    fn new() -> Self {
        Self::with_greeting(GREETING_GO)
    }

    /// The same, with `greeting` as example.com/greeting v1.0.0's source.
    fn with_greeting(greeting: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let module = Self { root };
        let r = module.root.path();
        // A module proxy holding example.com/greeting v1.0.0.
        let proxy = r.join("proxy/example.com/greeting/@v");
        std::fs::create_dir_all(&proxy).unwrap();
        std::fs::write(proxy.join("v1.0.0.mod"), "module example.com/greeting\n\ngo 1.21\n").unwrap();
        std::fs::write(
            proxy.join("v1.0.0.info"),
            "{\"Version\":\"v1.0.0\",\"Time\":\"2024-01-01T00:00:00Z\"}\n",
        )
        .unwrap();
        std::fs::write(proxy.join("list"), "v1.0.0\n").unwrap();
        let generator = r.join("gen");
        std::fs::create_dir_all(&generator).unwrap();
        std::fs::write(generator.join("main.go"), GEN_ZIP).unwrap();
        std::fs::write(generator.join("go.mod"), "module gen\n\ngo 1.21\n").unwrap();
        std::fs::write(generator.join("greeting.go.txt"), greeting).unwrap();
        std::fs::write(generator.join("go.mod.txt"), "module example.com/greeting\n\ngo 1.21\n").unwrap();
        let prefix = "example.com/greeting@v1.0.0";
        let mut zip = module.go(&generator, &["run", "."]);
        zip.arg(proxy.join("v1.0.0.zip")).args([
            prefix,
            "greeting.go",
            "greeting.go.txt",
            prefix,
            "go.mod",
            "go.mod.txt",
        ]);
        run(zip).success("making the module zip");

        let app = module.dir();
        std::fs::create_dir_all(app.join("cmd/app")).unwrap();
        std::fs::create_dir_all(app.join("cmd/cgoapp")).unwrap();
        std::fs::write(
            app.join("go.mod"),
            "module example.com/app\n\ngo 1.21\n\nrequire example.com/greeting v1.0.0\n",
        )
        .unwrap();
        std::fs::write(
            app.join("cmd/app/main.go"),
            "package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/greeting\"\n)\n\nfunc main() { fmt.Println(greeting.Hello(\"matrix\")) }\n",
        )
        .unwrap();
        std::fs::write(
            app.join("cmd/cgoapp/main.go"),
            "package main\n\n// int twice(int x) { return 2 * x; }\nimport \"C\"\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(C.twice(21)) }\n",
        )
        .unwrap();
        std::fs::write(app.join(".gitignore"), "dist/\n").unwrap();
        run(module.go(&app, &["mod", "tidy"])).success("go mod tidy");
        assert!(
            std::fs::read_to_string(app.join("go.sum")).unwrap().contains("example.com/greeting v1.0.0 h1:")
        );
        module
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("app")
    }

    /// The client's go environment: its own module cache, the file:// proxy, no network.
    fn env(&self, command: &mut Command) {
        let r = self.root.path();
        command
            .env("HOME", r.join("home"))
            .env("GOMODCACHE", r.join("gomodcache"))
            .env("GOCACHE", r.join("gocache"))
            .env("GOPATH", r.join("gopath"))
            .env("GOPROXY", format!("file://{}", r.join("proxy").display()))
            .env("GOSUMDB", "off")
            .env("GOFLAGS", "-modcacherw")
            .env("GOENV", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOWORK", "off")
            .env("GOTELEMETRY", "off")
            .env("CGO_ENABLED", "0");
    }

    fn go(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(go());
        command.args(args).current_dir(dir);
        self.env(&mut command);
        command
    }

    fn cachectl(&self, server: &Server, args: &[&str]) -> Command {
        let mut command = Command::new(binary("cachectl"));
        command.arg("--server").arg(server.url()).args(args).current_dir(self.dir());
        self.env(&mut command);
        command
    }

    fn submit(&self, server: &Server, extra: &[&str]) -> Finished {
        let mut args = vec!["submit", "--targets", MATRIX];
        args.extend_from_slice(extra);
        run(self.cachectl(server, &args))
    }

    /// Submits `./cmd/app` for `targets` without waiting; returns the job id.
    fn submit_detached(&self, server: &Server, targets: &str) -> String {
        let args = ["submit", "--detach", "--targets", targets, "./cmd/app"];
        run(self.cachectl(server, &args)).success("detached submit").stdout.trim().to_owned()
    }

    fn jobs(&self, server: &Server) -> serde_json::Value {
        let listed = run(self.cachectl(server, &["jobs", "list", "--all", "--json"])).success("jobs list");
        serde_json::from_str(&listed.stdout).expect("jobs JSON")
    }

    /// Waits until task 0 of `job` is leased (by `agent`, if given) and started.
    fn wait_leased(&self, server: &Server, job: &str, agent: Option<&str>) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let jobs = self.jobs(server);
            let task =
                jobs.as_array().unwrap().iter().find(|j| j["job_id"] == job).map(|j| j["tasks"][0].clone());
            if let Some(task) = task
                .filter(|task| task["state"] == "leased" && agent.is_none_or(|agent| task["agent"] == agent))
            {
                return task;
            }
            assert!(Instant::now() < deadline, "task of {job} never leased: {jobs}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// ELF e_machine, Mach-O cputype or PE machine of a binary, as a name.
fn machine(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if bytes.starts_with(b"\x7fELF") {
        return match u16_at(18) {
            0x3e => "elf/x86-64".into(),
            0xb7 => "elf/aarch64".into(),
            other => format!("elf/{other:#x}"),
        };
    }
    if bytes.starts_with(&[0xcf, 0xfa, 0xed, 0xfe]) {
        return match u32_at(4) {
            0x0100_000c => "macho/arm64".into(),
            0x0100_0007 => "macho/x86-64".into(),
            other => format!("macho/{other:#x}"),
        };
    }
    if bytes.starts_with(b"MZ") {
        let pe = u32_at(0x3c) as usize;
        assert_eq!(&bytes[pe..pe + 4], b"PE\0\0", "{}: no PE header", path.display());
        return match u16_at(pe + 4) {
            0x8664 => "pe/amd64".into(),
            0xaa64 => "pe/arm64".into(),
            other => format!("pe/{other:#x}"),
        };
    }
    panic!("{}: not an executable format we know", path.display());
}

#[test]
fn a_four_target_matrix_builds_right_binaries_and_the_second_submit_is_warm() {
    let _serial = serial();
    let server = Server::start();
    let (a, b) = (
        Agent::start(&server, "agent-1", &warm_dir(1), 2),
        Agent::start(&server, "agent-2", &warm_dir(2), 2),
    );
    let module = Module::new();

    let cold_started = Instant::now();
    let cold = module.submit(&server, &["./cmd/app"]);
    let cold_time = cold_started.elapsed();
    let cold = cold.success(&format!("cold submit\n{}\n{}", a.log(), b.log()));
    assert!(cold.stderr.contains("1 modules"), "the dependency travelled with the job: {}", cold.stderr);
    let dist = module.dir().join("dist");
    for (dir, name, expected) in [
        ("linux_amd64", "app", "elf/x86-64"),
        ("linux_arm64", "app", "elf/aarch64"),
        ("darwin_arm64", "app", "macho/arm64"),
        ("windows_amd64", "app.exe", "pe/amd64"),
    ] {
        assert_eq!(machine(&dist.join(dir).join(name)), expected, "{dir}/{name}");
    }
    let host = dist.join("linux_amd64/app");
    let said = Command::new(&host).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&said.stdout).trim(), "hello, matrix");
    assert!(cold.stdout.contains("TARGET") && cold.stdout.contains("agent-"), "{}", cold.stdout);
    let agents: std::collections::BTreeSet<&str> = cold
        .stdout
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|a| a.starts_with("agent-"))
        .collect();
    assert_eq!(agents.len(), 2, "both agents built: {}", cold.stdout);

    // The same source again, built again: every target is a whole-build hit (no compiler, no
    // linker).
    let warm_started = Instant::now();
    let warm = module.submit(&server, &["--rebuild", "./cmd/app"]).success("warm submit");
    let warm_time = warm_started.elapsed();
    let rows: Vec<&str> =
        warm.stdout.lines().filter(|line| line.contains('/') && line.contains("agent-")).collect();
    assert_eq!(rows.len(), 4, "{}", warm.stdout);
    assert!(
        rows.iter().all(|row| row.split_whitespace().nth(2) == Some("hit")),
        "all hits:\n{}",
        warm.stdout
    );
    assert!(warm_time < cold_time, "warm {warm_time:?} vs cold {cold_time:?}");
    assert!(warm.stderr.contains("0 new blobs"), "an unchanged tree uploads nothing: {}", warm.stderr);

    // And without --rebuild: the last job is the answer, its outputs downloaded, no task leased.
    std::fs::remove_dir_all(&dist).unwrap();
    let reused = module.submit(&server, &["./cmd/app"]).success("reusing submit");
    let job_of = |finished: &Finished| {
        let line =
            finished.stderr.lines().find(|line| line.starts_with("job ")).unwrap_or_default().to_owned();
        line.split_whitespace().nth(1).unwrap_or_default().to_owned()
    };
    assert!(reused.stderr.contains("(reused"), "{}", reused.stderr);
    assert_eq!(job_of(&reused), job_of(&warm), "{}", reused.stderr);
    assert_eq!(machine(&dist.join("linux_arm64/app")), "elf/aarch64");
    assert_eq!(module.jobs(&server).as_array().unwrap().len(), 2, "the reused submit queued a job");
}

/// An agent extracts a module zip of a job's proxy once and links it into its later tasks'
/// module caches. A job controls both its proxy and its go.sum, so another job may ship other
/// bytes under the same module version: each job builds with the zip it shipped (the store is
/// keyed by the zip's digest, not by module and version).
#[test]
fn module_zips_are_extracted_once_per_agent_and_never_stand_in_for_another_jobs_zip() {
    let _serial = serial();
    let server = Server::start();
    let parent = agent_parent();
    let agent = Agent::start(&server, "agent-1", &parent.path().join("agent"), 1);
    let prepared = |log: &str| -> Vec<(String, String)> {
        plain(log)
            .lines()
            .filter(|line| line.contains("module cache prepared"))
            .map(|line| (field(line, "linked"), field(line, "extracted")))
            .collect()
    };
    let build = |module: &Module, targets: &str| {
        let args = ["submit", "--rebuild", "--targets", targets, "./cmd/app"];
        run(module.cachectl(&server, &args)).success(&format!("submit\n{}", agent.log()));
        let said = Command::new(module.dir().join("dist/linux_amd64/app")).output().unwrap();
        String::from_utf8_lossy(&said.stdout).trim().to_owned()
    };

    let honest = Module::new();
    assert_eq!(build(&honest, "linux/amd64,linux/arm64"), "hello, matrix");
    let two = prepared(&agent.log());
    assert_eq!(two.len(), 2, "{}", agent.log());
    assert_eq!(two[0], ("1".into(), "1".into()), "the first task extracted the zip: {two:?}");
    assert_eq!(two[1], ("1".into(), "0".into()), "the second linked it: {two:?}");

    let other = Module::with_greeting(
        "package greeting\n\nfunc Hello(name string) string { return \"other bytes, \" + name }\n",
    );
    assert_eq!(build(&other, "linux/amd64"), "other bytes, matrix", "{}", agent.log());
    assert_eq!(prepared(&agent.log())[2], ("1".into(), "1".into()), "its own zip is extracted");
    assert_eq!(build(&honest, "linux/amd64"), "hello, matrix");
    assert_eq!(prepared(&agent.log())[3], ("1".into(), "0".into()));
}

/// A log line without its terminal colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `name=value` in a log line.
fn field(line: &str, name: &str) -> String {
    let prefix = format!("{name}=");
    line.split_whitespace().find_map(|word| word.strip_prefix(&prefix)).unwrap_or_default().to_owned()
}

#[test]
fn a_cgo_target_builds_with_the_debian_cross_compiler() {
    let _serial = serial();
    assert!(
        has_command("aarch64-linux-gnu-gcc"),
        "aarch64-linux-gnu-gcc is required (apt-get install -y gcc-aarch64-linux-gnu)"
    );
    let server = Server::start();
    let _agent = Agent::start(&server, "agent-1", &warm_dir(1), 2);
    let module = Module::new();
    let built = run(module.cachectl(&server, &["submit", "--targets", "linux/arm64+cgo", "./cmd/cgoapp"]))
        .success("cgo submit");
    let binary = module.dir().join("dist/linux_arm64/cgoapp");
    assert_eq!(machine(&binary), "elf/aarch64");
    let bytes = std::fs::read(&binary).unwrap();
    assert!(
        bytes.windows(b"ld-linux-aarch64".len()).any(|w| w == b"ld-linux-aarch64"),
        "dynamically linked by the cross toolchain"
    );
    assert!(built.stdout.contains("linux/arm64+cgo"), "{}", built.stdout);
}

#[test]
fn a_killed_agent_task_is_leased_again_and_the_job_succeeds() {
    let _serial = serial();
    let server = Server::start();
    let cold = agent_parent();
    let mut doomed = Agent::start(&server, "doomed", &cold.path().join("doomed"), 1);
    let module = Module::new();
    let job = module.submit_detached(&server, "linux/arm64");
    module.wait_leased(&server, &job, Some("doomed"));
    std::thread::sleep(Duration::from_millis(500));
    doomed.sigkill();

    let _rescuer = Agent::start(&server, "rescuer", &warm_dir(2), 2);
    let watched = run(module.cachectl(&server, &["jobs", "watch", &job])).success("watch");
    assert!(watched.stdout.contains("rescuer"), "{}", watched.stdout);
    assert_eq!(machine(&module.dir().join("dist/linux_arm64/app")), "elf/aarch64");
    let jobs = module.jobs(&server);
    let task = &jobs[0]["tasks"][0];
    assert_eq!(task["attempt"], 2, "{task}");
    assert_eq!(task["agent"], "rescuer");
    assert!(server.log().contains("lease expired"), "{}", server.log());
}

/// A full disk is the agent's trouble, not the code's: the attempt fails as retryable and
/// another agent builds the target.
#[test]
fn an_agent_out_of_disk_hands_the_task_on_and_the_job_succeeds() {
    let _serial = serial();
    // Room for a copy of the agent's binary too: it copies itself into its work dir when the
    // build users cannot reach it where it is (a target dir under /root, as in CI).
    let binary = std::fs::metadata(binary("runner-agent")).unwrap().len();
    let Some(disk) = Tmpfs::mount(binary + (16 << 20)) else { return };
    let server = Server::start();
    let cramped = Agent::start(&server, "cramped", &disk.path().join("cramped"), 1);
    let module = Module::new();
    let job = module.submit_detached(&server, "linux/amd64");
    hand_over(&server, &module, &job, cramped, "this agent's disk is full");
}

/// Running out of memory is the agent's trouble too: the compiler the kernel's out-of-memory
/// killer stops fails the attempt as retryable, and an agent with room builds the target.
#[test]
fn an_agent_out_of_memory_hands_the_task_on_and_the_job_succeeds() {
    let _serial = serial();
    let Some(memory) = MemoryCgroup::create(192 << 20) else { return };
    let server = Server::start();
    let cold = agent_parent();
    let cramped = Agent::launch(&server, "cramped", &cold.path().join("cramped"), 1, &[], Some(&memory));
    let module = Module::new();
    // Its compile needs twice the group's memory.
    write_big_table(&module, 300_000);
    let job = module.submit_detached(&server, "linux/amd64");
    hand_over(&server, &module, &job, cramped, "out-of-memory killer");
    assert!(memory.oom_kills() > 0, "the kernel killed nothing, so the test proved nothing");
}

/// A map literal of `entries` entries in ./cmd/app: its compile needs about 1.4 KiB an entry
/// (400 MiB for 300,000, 1.2 GiB for a million).
fn write_big_table(module: &Module, entries: u32) {
    let mut table = String::from("package main\n\nvar table = map[string]int{\n");
    for i in 0..entries {
        table.push_str(&format!("\t\"key{i}\": {i},\n"));
    }
    table.push_str("}\n");
    std::fs::write(module.dir().join("cmd/app/table.go"), table).unwrap();
}

/// A job whose build needs more memory than the agent gives each task (`--build-memory`) is
/// killed at that limit and fails as the job's fault, at once, with the limit in its message:
/// not handed on as the agent's trouble. The agent lives on, and another tenant's job it builds
/// at the same time succeeds. The limit goes in the environment (CACHED_BUILD_MEMORY), so an
/// agent without limits, which knows no such flag, runs this test too, and fails it.
#[test]
fn a_build_past_the_per_task_memory_limit_fails_as_the_jobs_fault_and_the_agent_builds_on() {
    let _serial = serial();
    if !is_root() || !MemoryCgroup::possible() {
        eprintln!("skipped: per-task limits need the agent to run as root with a cgroup memory controller");
        return;
    }
    let server = Server::start();
    let cold = agent_parent();
    // Room for a cold build of the standard library (its largest compiles take 300 MiB), not
    // for twice that.
    let env = [("CACHED_BUILD_MEMORY", "640MiB")];
    let mut agent = Agent::launch(&server, "limited", &cold.path().join("limited"), 2, &env, None);
    let hostile = Module::new();
    write_big_table(&hostile, 1_000_000);
    let tenant = Module::new();
    let hostile_job = hostile.submit_detached(&server, "linux/amd64");
    let tenant_job = tenant.submit_detached(&server, "linux/amd64");

    let watched = run(hostile.cachectl(&server, &["jobs", "watch", "--no-download", &hostile_job]));
    let said = format!("{}\n{}", watched.stdout, watched.stderr);
    assert!(!watched.status.success(), "the hostile job succeeded:\n{said}\n{}", agent.log());
    let limit = "needed more than the agent's per-task memory limit of 640.0 MiB (--build-memory)";
    let jobs = hostile.jobs(&server);
    let job = jobs.as_array().unwrap().iter().find(|job| job["job_id"] == hostile_job.as_str()).unwrap();
    let task = &job["tasks"][0];
    assert!(task.to_string().contains(limit) || said.contains(limit), "{task}\n{said}\n{}", agent.log());
    assert_eq!(task["state"], "failed", "{task}");
    assert_eq!(task["attempt"], 1, "the job's fault is not tried again: {task}");

    let built = run(tenant.cachectl(&server, &["jobs", "watch", &tenant_job]));
    let built = built.success(&format!("the other tenant's job\n{}", agent.log()));
    assert!(built.stdout.contains("limited"), "{}", built.stdout);
    assert_eq!(machine(&tenant.dir().join("dist/linux_amd64/app")), "elf/x86-64");
    let alive = agent.child.as_mut().unwrap().try_wait().unwrap();
    assert!(alive.is_none(), "the agent died: {alive:?}\n{}", agent.log());
    assert!(agent.log().contains("control group of its own"), "{}", agent.log());
}

/// The cramped agent fails its attempt as its own trouble (`why` in its log) and is stopped;
/// an agent with room then builds the linux/amd64 target of `job` as a later attempt.
fn hand_over(server: &Server, module: &Module, job: &str, mut cramped: Agent, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cramped.log().contains("task failed") {
        assert!(Instant::now() < deadline, "the cramped agent never failed:\n{}", cramped.log());
        // Quickly: the cramped agent must not burn the task's last attempt before it stops.
        std::thread::sleep(Duration::from_millis(20));
    }
    cramped.sigkill();
    assert!(cramped.log().contains(why), "{}", cramped.log());

    let _roomy = Agent::start(server, "roomy", &warm_dir(0), 2);
    let watched = run(module.cachectl(server, &["jobs", "watch", job])).success("watch");
    assert!(watched.stdout.contains("roomy"), "{}", watched.stdout);
    assert_eq!(machine(&module.dir().join("dist/linux_amd64/app")), "elf/x86-64");
    let task = &module.jobs(server)[0]["tasks"][0];
    assert_eq!(task["agent"], "roomy", "{task}");
    assert!(task["attempt"].as_u64().unwrap() >= 2, "{task}");
}

#[test]
fn cached_killed_mid_job_restarts_and_the_job_completes() {
    let _serial = serial();
    let mut server = Server::start();
    let cold = agent_parent();
    let agent = Agent::start(&server, "steady", &cold.path().join("steady"), 2);
    let module = Module::new();
    let job = module.submit_detached(&server, "linux/amd64,windows/amd64");
    module.wait_leased(&server, &job, Some("steady"));
    server.kill();
    std::thread::sleep(Duration::from_millis(300));
    server.spawn();

    let watched = run(module.cachectl(&server, &["jobs", "watch", &job]))
        .success(&format!("watch after restart\n{}", agent.log()));
    assert!(watched.stdout.contains("succeeded"), "{}", watched.stdout);
    assert_eq!(machine(&module.dir().join("dist/windows_amd64/app.exe")), "pe/amd64");
    let jobs = module.jobs(&server);
    assert_eq!(jobs.as_array().unwrap().len(), 1, "the job survived the restart: {jobs}");
    for task in jobs[0]["tasks"].as_array().unwrap() {
        assert_eq!(task["state"], "succeeded", "{task}");
        // Every accepted completion came from the task's current lease: its last attempt.
        assert!(task["attempt"].as_u64().unwrap() >= 1, "{task}");
    }
    // A completion the server refused would be logged as such by the agent and must concern
    // an attempt that is not the one recorded.
    for line in agent.log().lines().filter(|line| line.contains("completion refused")) {
        assert!(line.contains("stale lease"), "{line}");
    }
}

#[test]
fn a_compile_error_is_reported_with_the_compiler_output_and_nothing_is_cached() {
    let _serial = serial();
    let server = Server::start();
    let _agent = Agent::start(&server, "agent-1", &warm_dir(1), 2);
    let module = Module::new();
    std::fs::write(
        module.dir().join("cmd/app/main.go"),
        "package main\n\nfunc main() { undefinedThing() }\n",
    )
    .unwrap();
    for attempt in ["first", "second"] {
        let failed = run(module.cachectl(&server, &["submit", "--targets", "linux/amd64", "./cmd/app"]));
        assert!(!failed.status.success(), "{attempt}: {}", failed.stdout);
        assert!(
            failed.stderr.contains("undefined: undefinedThing"),
            "{attempt}: the compiler's words: {}",
            failed.stderr
        );
        assert!(failed.stdout.contains("FAILED"), "{attempt}: {}", failed.stdout);
        assert!(!module.dir().join("dist/linux_amd64/app").exists());
    }
    let jobs = module.jobs(&server);
    for job in jobs.as_array().unwrap() {
        assert_eq!(job["tasks"][0]["attempt"], 1, "a build error is not retried: {job}");
        assert_eq!(job["tasks"][0]["hit"], false, "a failed build is never a hit: {job}");
    }
}

#[test]
fn cancel_stops_the_running_builds() {
    let _serial = serial();
    let server = Server::start();
    let cold = agent_parent();
    let agent = Agent::start(&server, "busy", &cold.path().join("busy"), 1);
    let module = Module::new();
    let job = module.submit_detached(&server, "linux/amd64,linux/arm64");
    module.wait_leased(&server, &job, Some("busy"));
    let tasks_dir = agent.work.join("tasks");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&tasks_dir).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline, "the agent never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cancelled = Instant::now();
    run(module.cachectl(&server, &["jobs", "cancel", &job])).success("cancel");
    // The build is killed and its directory removed well before a cold build could finish.
    while std::fs::read_dir(&tasks_dir).map_or(0, |d| d.count()) > 0 {
        assert!(
            cancelled.elapsed() < Duration::from_secs(10),
            "the build kept running after cancel:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.log().contains("aborted"), "{}", agent.log());
    let jobs = module.jobs(&server);
    assert_eq!(jobs[0]["state"], "cancelled");
    let watched = run(module.cachectl(&server, &["jobs", "watch", "--no-download", &job]));
    assert!(!watched.status.success(), "a cancelled job is not a success: {}", watched.stdout);
}

/// `sha256:<hex>` of bytes, by sha256sum.
fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    format!("sha256:{}", String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap())
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let output = Command::new("skopeo").args(args).output().expect("skopeo (apt-get install skopeo)");
    assert!(output.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

#[test]
fn an_image_job_is_layered_by_the_agents_and_a_resubmit_pushes_no_blob() {
    let _serial = serial();
    let server = Server::start();
    let (a, b) = (
        Agent::start(&server, "agent-1", &warm_dir(1), 2),
        Agent::start(&server, "agent-2", &warm_dir(2), 2),
    );
    let registry = Registry::start(None);
    let module = Module::new();
    let layout = module.root.path().join("layout");
    let reference = format!("127.0.0.1:{}/matrix/app:v1", registry.port);
    let layout_arg = layout.display().to_string();
    // Two linux targets get images; windows is built, not imaged.
    let submit = |again: &str| {
        run(module.cachectl(
            &server,
            &[
                "submit",
                again,
                "--targets",
                "linux/amd64,linux/arm64,windows/amd64",
                "--image",
                &reference,
                "--oci-layout",
                &layout_arg,
                "--image-env",
                "MODE=matrix",
                "./cmd/app",
            ],
        ))
    };

    let first = submit("--priority=0").success(&format!("image submit\n{}\n{}", a.log(), b.log()));
    let index = first
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("index "))
        .unwrap_or_else(|| panic!("no index line: {}", first.stdout))
        .to_owned();
    assert!(first.stdout.contains("image index"), "the index task is in the table: {}", first.stdout);
    assert!(first.stdout.contains(&format!("wrote {layout_arg} (v1)")), "{}", first.stdout);
    assert!(first.stdout.contains(&format!("pushed {reference}@{index}")), "{}", first.stdout);

    // The job result carries the index digest; each linux target its platform image.
    let jobs = module.jobs(&server);
    let job = &jobs[0];
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["image"], index.as_str(), "{job}");
    let tasks = job["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 4, "three builds and the index: {job}");
    assert_eq!(tasks[3]["kind"], "image-index");
    assert_eq!(tasks[3]["index"], index.as_str());
    let imaged: Vec<&str> = tasks.iter().filter_map(|t| t["image"]["platform"].as_str()).collect();
    assert_eq!(imaged, ["linux/amd64", "linux/arm64"], "{job}");

    // The registry and the layout hold exactly that index, over both platforms.
    let docker = format!("docker://{reference}");
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &docker]);
    assert_eq!(sha256(&raw), index, "the pushed index is the job's");
    assert_eq!(skopeo(&["inspect", "--raw", &format!("oci:{layout_arg}:v1")]), raw, "the layout's index");
    let parsed: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let platforms: Vec<String> = parsed["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for (arch, digest) in
        tasks.iter().take(2).map(|t| (t["target"].as_str().unwrap(), &t["image"]["manifest"]))
    {
        let arch = arch.trim_start_matches("linux/");
        let config: serde_json::Value = serde_json::from_slice(&skopeo(&[
            "inspect",
            "--tls-verify=false",
            "--config",
            "--override-arch",
            arch,
            &docker,
        ]))
        .unwrap();
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/app/app"]));
        assert!(
            config["config"]["Env"].as_array().unwrap().contains(&serde_json::json!("MODE=matrix")),
            "{config}"
        );
        // The index references the manifests the agents built.
        let entry =
            parsed["manifests"].as_array().unwrap().iter().find(|m| m["platform"]["architecture"] == arch);
        assert_eq!(&entry.unwrap()["digest"], digest, "{arch}: the agent's manifest is in the index");
    }
    // The amd64 layer from the layout holds the binary, which runs.
    let amd64 = parsed["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(amd64)).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let rootfs = module.root.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let untar = Command::new("tar")
        .arg("xzf")
        .arg(layout.join("blobs/sha256").join(layer))
        .arg("-C")
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(untar.success());
    let said = Command::new(rootfs.join("app/app")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&said.stdout).trim(), "hello, matrix");

    // The same source again, built again: every build a hit, every layer from the cache, the
    // same index, and the registry is sent no blob (the tag already names the index).
    let before = registry.requests().len();
    let second = submit("--rebuild").success("image resubmit");
    let rows: Vec<&str> = second.stdout.lines().filter(|line| line.contains("agent-")).collect();
    assert_eq!(rows.len(), 4, "{}", second.stdout);
    assert!(
        rows.iter()
            .filter(|row| !row.starts_with("image index"))
            .all(|row| row.split_whitespace().nth(2) == Some("hit")),
        "all hits:\n{}",
        second.stdout
    );
    assert!(second.stdout.contains(&format!("index {index}")), "the same index: {}", second.stdout);
    assert!(second.stdout.contains("already there, nothing uploaded"), "{}", second.stdout);
    let requests = registry.requests()[before..].to_vec();
    assert!(
        requests
            .iter()
            .all(|(method, path)| !path.contains("/blobs/") && (method == "HEAD" || method == "GET")),
        "nothing uploaded on the resubmit: {requests:?}"
    );
    let jobs = module.jobs(&server);
    assert_eq!(jobs[0]["image"], index.as_str());
    for task in jobs[0]["tasks"].as_array().unwrap().iter().take(2) {
        assert_eq!(task["image"]["layer_cached"], true, "layers came from the layer cache: {task}");
    }

    // Submitted once more without --rebuild: that job is reused, and published alike.
    let before = registry.requests().len();
    let third = submit("--priority=1").success("image reuse");
    assert!(third.stderr.contains("(reused"), "{}", third.stderr);
    assert!(third.stdout.contains(&format!("index {index}")), "the same index: {}", third.stdout);
    let requests = registry.requests()[before..].to_vec();
    assert!(requests.iter().all(|(_, path)| !path.contains("/blobs/uploads")), "{requests:?}");
    assert_eq!(module.jobs(&server).as_array().unwrap().len(), 2, "the reused submit queued a job");
}

/// The counts in `cachectl image`'s push line: blobs uploaded, bytes uploaded (as printed),
/// blobs mounted, manifests put.
fn push_counts(stdout: &str) -> (u64, String, u64, u64) {
    let line = stdout.lines().find(|line| line.starts_with("pushed ")).unwrap_or_else(|| panic!("{stdout}"));
    let (_, counts) = line.split_once(": ").unwrap();
    let number = |word: &str| -> u64 {
        let words: Vec<&str> = counts.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| w.trim_end_matches([',', ';']) == word)
            .unwrap_or_else(|| panic!("{line}"));
        words[at - 1].parse().unwrap_or_else(|_| panic!("{line}"))
    };
    let bytes = counts.split_once('(').and_then(|(_, rest)| rest.split_once(')')).map(|(bytes, _)| bytes);
    (
        number("blobs"),
        bytes.unwrap_or_else(|| panic!("{line}")).to_owned(),
        number("mounted"),
        number("manifests"),
    )
}

#[test]
fn an_image_job_published_to_cached_sends_its_manifests_and_no_blob_and_is_signed() {
    let _serial = serial();
    let registry = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(&["--registry-listen", &registry]);
    let (a, b) = (
        Agent::start(&server, "agent-1", &warm_dir(1), 2),
        Agent::start(&server, "agent-2", &warm_dir(2), 2),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&registry).is_err() {
        assert!(Instant::now() < deadline, "the registry did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let module = Module::new();
    let reference = format!("{registry}/main/app:v1");
    let dir = module.root.path();
    let (key_arg, public_arg) =
        (dir.join("sign.key").display().to_string(), dir.join("sign.pub").display().to_string());
    let openssl = |args: &[&str]| {
        let mut command = Command::new("openssl");
        command.args(args);
        run(command).success("openssl");
    };
    openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &key_arg]);
    openssl(&["pkey", "-pubout", "-in", &key_arg, "-out", &public_arg]);
    let submitted = run(module.cachectl(
        &server,
        &[
            "submit",
            "--targets",
            "linux/amd64,linux/arm64,windows/amd64",
            "--image",
            &reference,
            "--sign-key",
            &key_arg,
            "./cmd/app",
        ],
    ))
    .success(&format!("image submit\n{}\n{}\n{}", a.log(), b.log(), server.log()));
    let index = submitted
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("index "))
        .unwrap_or_else(|| panic!("no index line: {}", submitted.stdout))
        .to_owned();
    assert!(submitted.stdout.contains(&format!("pushed {reference}@{index}")), "{}", submitted.stdout);
    // The agents stored both layers and both configs in the CAS: each is linked, none sent.
    let (uploaded, bytes, mounted, manifests) = push_counts(&submitted.stdout);
    assert_eq!((uploaded, bytes.as_str(), mounted, manifests), (0, "0 B", 4, 3), "{}", submitted.stdout);
    // And the image is pullable from cached at once, by the tag, as the job's index.
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &format!("docker://{reference}")]);
    assert_eq!(sha256(&raw), index);
    let config = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--config",
        "--override-arch",
        "arm64",
        &format!("docker://{reference}"),
    ]);
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["architecture"], "arm64");
    // --sign-key signed that index, as `cachectl sign` would have.
    assert!(
        submitted.stdout.contains(&format!("signed {registry}/main/app@{index}")),
        "{}",
        submitted.stdout
    );
    run(module.cachectl(&server, &["verify", &reference, "--key", &public_arg])).success("cachectl verify");
}
