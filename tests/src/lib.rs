//! Harness for end-to-end tests: the real `cached` and `cachectl` binaries as processes, and
//! the real go command in a sealed environment (temp GOCACHE/GOPATH/HOME, no network).
//!
//! The binaries are found next to the test executable (`target/<profile>/`), because one crate
//! cannot name another's binaries: run `cargo build --workspace --bins` before the tests.

#![forbid(unsafe_code)]

pub mod cgroup;
pub mod postgres;
pub mod registry;
pub mod remote;
pub mod s3;

pub use cgroup::MemoryCgroup;

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Longest any one go command may take before the test fails instead of hanging CI.
pub const GO_DEADLINE: Duration = Duration::from_secs(300);

/// Tokens minted with `cached token new` into `dir`: each (name, scopes) in every namespace.
/// Returns the tokens file for `--tokens-file`, and each token's secret file by name.
pub fn mint_tokens(dir: &Path, tokens: &[(&str, &str)]) -> (String, Vec<(String, PathBuf)>) {
    let mut tables = String::new();
    let mut secrets = Vec::new();
    for (name, scopes) in tokens {
        let secret_file = dir.join(format!("{name}.token"));
        let mut new = Command::new(binary("cached"));
        new.args(["token", "new", "--name", name, "--scopes", scopes, "--namespaces", "*", "--secret-file"])
            .arg(&secret_file);
        tables.push_str(&run(new).success("cached token new").stdout);
        secrets.push(((*name).to_owned(), secret_file));
    }
    let file = dir.join("tokens.toml");
    std::fs::write(&file, tables).expect("tokens file");
    (file.display().to_string(), secrets)
}

/// Bytes no compressor shrinks much, different for every seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Path of a workspace binary built next to this test executable (or this benchmark driver).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>; a driver is in target/<profile>.
    let beside = exe.parent().expect("target dir");
    let dir = if beside.ends_with("deps") { beside.parent().expect("target dir") } else { beside };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before `cargo test`",
        path.display()
    );
    path
}

/// A program scripts/setup builds into the tools directory (`CACHED_TOOLS_DIR`, by default
/// `~/.cache/cached/tools`) at a pinned version.
pub fn tool(name: &str) -> PathBuf {
    let tools = std::env::var_os("CACHED_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/cached/tools")))
        .expect("HOME or CACHED_TOOLS_DIR");
    let path = tools.join("bin").join(name);
    assert!(path.is_file(), "{} is missing: run scripts/setup, which builds it", path.display());
    path
}

/// The go command. These tests need it (CI has it): a missing go is a failure, not a skip.
pub fn go() -> PathBuf {
    let output = Command::new("go").arg("version").output();
    match output {
        Ok(output) if output.status.success() => PathBuf::from("go"),
        _ => panic!("the go command (1.24 or newer) is required for these tests and was not found on PATH"),
    }
}

/// The multi-package Go module the tests build.
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join("gomod")
}

/// Lines of the go command's -x trace that run the compiler.
pub fn compile_actions(trace: &str) -> Vec<&str> {
    trace.lines().filter(|line| line.contains("pkg/tool/") && line.contains("/compile ")).collect()
}

/// A `cached` daemon on 127.0.0.1 with its own data directory; killed on drop.
pub struct Daemon {
    child: Child,
    pub addr: String,
    _data: tempfile::TempDir,
}

impl Daemon {
    pub fn start() -> Self {
        let data = tempfile::tempdir().expect("temp dir");
        Self::start_in(data, &[])
    }

    /// Starts with its data under `data` and extra flags.
    pub fn start_in(data: tempfile::TempDir, flags: &[&str]) -> Self {
        Self::start_with(data, flags, &[])
    }

    /// As `start_in`, with extra environment variables.
    pub fn start_with(data: tempfile::TempDir, flags: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let log = File::create(data.path().join("cached.log")).expect("log file");
        let child = Command::new(binary("cached"))
            .args(["--listen", &addr, "--metrics-listen", "off", "--log-level", "warn"])
            .arg("--data-dir")
            .arg(data.path().join("db"))
            .args(flags)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start cached");
        let daemon = Self { child, addr, _data: data };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.addr).is_err() {
            assert!(Instant::now() < deadline, "cached did not listen on {} within 30s", self.addr);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._data.path().join("cached.log")).unwrap_or_default()
    }

    /// SIGSTOP: connections stay open and nothing answers, as with a hung or overloaded
    /// server. Drop still kills it.
    pub fn pause(&self) {
        let stopped = Command::new("kill").arg("-STOP").arg(self.child.id().to_string()).status();
        assert!(stopped.is_ok_and(|status| status.success()), "kill -STOP cached failed");
    }

    /// Stops it as an operator would (SIGTERM, then its clean shutdown) and hands back its
    /// data directory, for a restart on the same data.
    pub fn stop_keeping_data(mut self) -> tempfile::TempDir {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        std::mem::replace(&mut self._data, tempfile::tempdir().expect("temp dir"))
    }

    /// SIGKILL: no shutdown, no flush, as a crash or an OOM kill would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port for a server a test starts, free now on every address, and handed out once per
/// test process.
///
/// A port the kernel chose (`bind(0)`) and released comes from the ephemeral range, where any
/// outgoing connection, or another test's `bind(0)`, may take it before the server binds it;
/// the server then fails to start and the test talks to whoever holds the port. So ports come
/// from below that range, which neither hands out, from a counter that starts at a place of
/// this process's own.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let below = ephemeral_range_start().saturating_sub(LOWEST);
    if below < 1_000 {
        return TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind").port();
    }
    let start = u32::try_from(u64::from(std::process::id()) * 7919 % u64::from(below)).expect("below a u32");
    for _ in 0..below {
        let port = LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % below;
        let port = u16::try_from(port).expect("ports are below 65536");
        if TcpListener::bind(("0.0.0.0", port)).is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOWEST} and the ephemeral range");
}

/// The lowest port the kernel hands out for `bind(0)` and outgoing connections.
fn ephemeral_range_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A sealed go environment: its own GOCACHE, GOPATH and HOME under one temp dir, no proxy,
/// no toolchain switching, no cgo (no C compiler needed), nothing inherited but PATH.
pub struct GoEnv {
    pub root: tempfile::TempDir,
}

impl Default for GoEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl GoEnv {
    pub fn new() -> Self {
        Self { root: tempfile::tempdir().expect("temp dir") }
    }

    pub fn gocache(&self) -> PathBuf {
        self.root.path().join("gocache")
    }

    /// A `go` command in the fixture module, without GOCACHEPROG.
    pub fn go(&self, args: &[&str]) -> Command {
        let mut command = Command::new(go());
        command.args(args).current_dir(fixture()).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        let root = self.root.path();
        command
            .env("HOME", root.join("home"))
            .env("GOCACHE", self.gocache())
            .env("GOPATH", root.join("gopath"))
            .env("GOMODCACHE", root.join("gopath/pkg/mod"))
            .env("GOENV", "off")
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("GOSUMDB", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOWORK", "off")
            .env("GOTELEMETRY", "off")
            .env("CGO_ENABLED", "0")
            .env("TMPDIR", std::env::temp_dir());
        command
    }

    /// A `go` command whose cache is `cachectl gocacheprog` on `tier`, talking to `server`
    /// (or local only), with the session summary on.
    pub fn go_bridged(&self, args: &[&str], tier: &Path, server: Option<&str>) -> Command {
        let mut command = self.go(args);
        let mut program = format!("{} gocacheprog", binary("cachectl").display());
        match server {
            Some(server) => {
                command.env("CACHED_ADDR", server);
            }
            None => program.push_str(" --local-only"),
        }
        command.env("GOCACHEPROG", program).env("CACHED_GOCACHE_DIR", tier).env("CACHED_SUMMARY", "1");
        command
    }

    /// Empties GOCACHE, as a fresh runner has it.
    pub fn wipe_gocache(&self) {
        wipe(&self.gocache());
    }
}

/// Removes a directory tree if it exists. Go marks module files read-only; GOCACHE has none.
pub fn wipe(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => panic!("removing {}: {err}", dir.display()),
    }
}

/// What a finished command printed.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Panics with everything printed unless the command succeeded.
    pub fn success(self, what: &str) -> Self {
        assert!(self.status.success(), "{what} failed ({}):\n{}\n{}", self.status, self.stdout, self.stderr);
        self
    }
}

/// A started command whose output goes to temp files (no pipe can fill up and block it).
pub struct Running {
    child: Child,
    out: tempfile::NamedTempFile,
    err: tempfile::NamedTempFile,
    started: Instant,
}

impl Running {
    pub fn start(mut command: Command) -> Self {
        let out = tempfile::NamedTempFile::new().expect("temp file");
        let err = tempfile::NamedTempFile::new().expect("temp file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.reopen().expect("reopen"))
            .stderr(err.reopen().expect("reopen"))
            .spawn()
            .expect("spawn");
        Self { child, out, err, started: Instant::now() }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `GO_DEADLINE`, killing the command past it.
    pub fn finish(mut self) -> Finished {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if self.started.elapsed() > GO_DEADLINE {
                let _ = self.child.kill();
                panic!("command still running after {GO_DEADLINE:?}: {}", read(self.err.path()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Finished { status, stdout: read(self.out.path()), stderr: read(self.err.path()) }
    }
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Runs a command to completion (within `GO_DEADLINE`).
pub fn run(command: Command) -> Finished {
    Running::start(command).finish()
}

/// Number of files under `dir`, recursively.
pub fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => count_files(&entry.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// Whether the tests run as root (CI does), so a test that needs it must not skip.
pub fn is_root() -> bool {
    let uid = Command::new("id").arg("-u").output().expect("run id");
    uid.stdout == b"0\n"
}

/// A tmpfs of a fixed size mounted on a temp dir: a disk that really fills up. Unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None (having said why) where mounting is not allowed: it needs root, which CI has.
    pub fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        if !mounted.status.success() {
            assert!(!is_root(), "mount failed as root: {}", String::from_utf8_lossy(&mounted.stderr));
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        Some(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}
