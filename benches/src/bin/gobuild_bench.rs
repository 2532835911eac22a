//! End-to-end benchmark of the whole-build cache (`cachectl go build`) against Go's own warm
//! build.
//!
//! Workload: gopls from golang.org/x/tools at a pinned version (a few hundred packages, a dozen
//! module dependencies), fetched through the Go module proxy into a module cache kept under the
//! user's cache directory, so only the first run downloads. Measured, each the median of
//! `--runs` runs (at least 5):
//!   (a) plain `go build -o out/gopls .` with a warm GOCACHE and the output removed, so go
//!       checks every action and links;
//!   (b) `cachectl go build -o out/gopls .` that hits (cached embedded in this process);
//!   (c) the key derivation alone (`go env` + `go list -deps` + hashing), in process.
//! Target: b/a ≤ 0.5.
//!
//!   cargo build --release -p cachectl -p cached-benches
//!   target/release/gobuild_bench [--runs 5] [--version v0.21.0] [--cachectl PATH]

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cached_benches::EmbeddedServer;
use cached_benches::report::{cell, load, ratio};
use cached_benches::workspace::{copy_dir, gomodcache, proxy, sealed_go_env, sibling_or};
use cached_gobuild::exec::Processes;
use cached_gobuild::flags;
use cached_gobuild::inputs::{self, GoCall};
use clap::Parser as _;

const GOPLS: &str = "golang.org/x/tools/gopls";
const DEFAULT_VERSION: &str = "v0.21.0";

struct Settings {
    runs: usize,
    version: String,
    cachectl: PathBuf,
}

#[derive(clap::Parser)]
struct Args {
    /// Runs per variant (at least 5).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The gopls version to build.
    #[arg(long, default_value = DEFAULT_VERSION)]
    version: String,
    /// cachectl to run [default: the one built next to this binary].
    #[arg(long, env = "CACHECTL")]
    cachectl: Option<PathBuf>,
}

impl Args {
    fn settings(self) -> Result<Settings, String> {
        let cachectl = sibling_or(self.cachectl, "cachectl")?;
        Ok(Settings { runs: self.runs.max(5), version: self.version, cachectl })
    }
}

fn main() {
    let settings = Args::parse().settings().unwrap_or_else(|err| {
        eprintln!("gobuild_bench: {err}");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let server = runtime.block_on(EmbeddedServer::start());
    let scratch = tempfile::tempdir().expect("temp dir");
    let bench = Bench::new(scratch.path(), &settings);
    eprintln!("cached (embedded) on {}; {} runs per variant; load {}", server.url(), settings.runs, load());

    let module = bench.fetch(&settings.version);
    let output = module.join("out/gopls");
    let cold = timed(bench.go(&module, &["build", "-o", "out/gopls", "."]));
    eprintln!("cold go build (fills GOCACHE): {cold:?}");
    let mut plain = Vec::new();
    for run in 0..settings.runs {
        remove(&output);
        plain.push(timed(bench.go(&module, &["build", "-o", "out/gopls", "."])));
        eprintln!("  (a) plain warm go build #{run}: {:?}", plain[run]);
    }
    let size = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);

    remove(&output);
    let miss = bench.wrapper(&module, &server.url());
    eprintln!("wrapper miss (builds through the bridge, uploads, records): {:?}", miss.0);
    assert!(miss.1.contains("cache miss"), "expected a miss: {}", miss.1);
    let mut hits = Vec::new();
    for run in 0..settings.runs {
        remove(&output);
        let (time, stderr) = bench.wrapper(&module, &server.url());
        assert!(stderr.contains("cache hit"), "expected a hit: {stderr}");
        assert!(output.is_file(), "the hit restored no binary");
        hits.push(time);
        eprintln!("  (b) wrapper hit #{run}: {time:?}");
    }

    let mut derivations = Vec::new();
    let mut inputs_seen = (0, 0);
    for run in 0..settings.runs {
        let (time, files, modules) = runtime.block_on(bench.derive(&module));
        derivations.push(time);
        inputs_seen = (files, modules);
        eprintln!("  (c) key derivation #{run}: {time:?}");
    }
    drop(server);

    println!(
        "| workload | (a) plain warm go build | (b) wrapper hit | b/a | (c) key derivation | c/a | cold go build | wrapper miss |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| gopls {} ({} files hashed, {} modules by go.sum, {:.1} MiB binary) | {} | {} | {:.2} | {} | {:.2} | {:.2}s | {:.2}s |",
        settings.version,
        inputs_seen.0,
        inputs_seen.1,
        size as f64 / f64::from(1 << 20),
        cell(&plain, 3),
        cell(&hits, 3),
        ratio(&hits, &plain),
        cell(&derivations, 3),
        ratio(&derivations, &plain),
        cold.as_secs_f64(),
        miss.0.as_secs_f64()
    );
    println!("\nmedians of {} runs (min–max); load average after: {}", settings.runs, load());
}

/// The go environment of every run: a module cache that persists across benchmark runs (the
/// download happens once), a GOCACHE, tier and HOME of this run, no cgo.
struct Bench {
    scratch: PathBuf,
    gomodcache: PathBuf,
    cachectl: PathBuf,
}

impl Bench {
    fn new(scratch: &Path, settings: &Settings) -> Self {
        Self { scratch: scratch.to_owned(), gomodcache: gomodcache(), cachectl: settings.cachectl.clone() }
    }

    fn env(&self) -> Vec<(String, String)> {
        sealed_go_env(&self.scratch, &self.gomodcache, &self.scratch.join("gocache"), &proxy())
    }

    fn command(&self, program: &Path, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command.args(args).current_dir(dir).env_clear().envs(self.env()).stdin(Stdio::null());
        command
    }

    fn go(&self, dir: &Path, args: &[&str]) -> Command {
        self.command(Path::new("go"), dir, args)
    }

    /// Downloads gopls (once) and copies it out of the module cache as the main module.
    fn fetch(&self, version: &str) -> PathBuf {
        let spec = format!("{GOPLS}@{version}");
        let output =
            self.go(&self.scratch, &["mod", "download", "-json", &spec]).output().expect("go mod download");
        assert!(
            output.status.success(),
            "go mod download {spec}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let info: serde_like::Info = serde_like::parse(&output.stdout);
        let module = self.scratch.join("gopls");
        copy_dir(Path::new(&info.dir), &module);
        let started = Instant::now();
        let downloaded = self.go(&module, &["mod", "download"]).status().expect("go mod download");
        assert!(downloaded.success(), "downloading gopls's dependencies failed");
        eprintln!(
            "gopls {version} and its dependencies ready in {:?} (module cache {})",
            started.elapsed(),
            self.gomodcache.display()
        );
        module
    }

    /// `cachectl go build -o out/gopls .`: its time and stderr.
    fn wrapper(&self, module: &Path, server: &str) -> (Duration, String) {
        let mut command = self.command(&self.cachectl, module, &["go", "build", "-o", "out/gopls", "."]);
        command
            .env("CACHED_ADDR", server)
            .env("CACHED_GOCACHE_DIR", self.scratch.join("tier"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let output = command.output().expect("cachectl go build");
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "cachectl go build failed: {stderr}");
        (elapsed, stderr)
    }

    /// The key derivation alone, through the library: time, files hashed, modules by go.sum.
    async fn derive(&self, module: &Path) -> (Duration, usize, usize) {
        let args = vec!["-o".to_owned(), "out/gopls".to_owned(), ".".to_owned()];
        let started = Instant::now();
        let line = flags::parse_command_line(&args).expect("flags");
        let command_line = flags::effective("", &line).expect("flags");
        let env = self.env();
        let exec = Processes::default();
        let call = GoCall { exec: &exec, go: Path::new("go"), dir: module, env: &env };
        let (go_env, packages) = call.read(&command_line, &line.packages).await.expect("go env and go list");
        let goflags = go_env.get("GOFLAGS").cloned().unwrap_or_default();
        let flags = flags::effective(&goflags, &line).expect("flags");
        let derived = inputs::derive(&call, &flags, &go_env, &packages, None).await.expect("derive");
        let _key = derived.manifest.key();
        (started.elapsed(), derived.files, derived.modules)
    }
}

/// The two fields of `go mod download -json` this needs, without a JSON dependency.
mod serde_like {
    pub(crate) struct Info {
        pub(crate) dir: String,
    }

    pub(crate) fn parse(json: &[u8]) -> Info {
        let text = String::from_utf8_lossy(json);
        let dir = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("\"Dir\": \""))
            .and_then(|rest| rest.strip_suffix("\","))
            .expect("a Dir in go mod download -json")
            .to_owned();
        Info { dir }
    }
}

fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn timed(mut command: Command) -> Duration {
    let started = Instant::now();
    let output = command.stdout(Stdio::null()).stderr(Stdio::piped()).output().expect("run");
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    started.elapsed()
}
