//! End-to-end benchmark of the GOCACHEPROG bridge against Go's own cache.
//!
//! Workloads: `go build -trimpath -o /dev/null cmd/go` (a few hundred packages from the
//! installed toolchain) and `go vet ./...` of the test fixture module. Variants, each the median
//! of `--runs` runs:
//!   (a) cold: empty GOCACHE, no bridge;
//!   (b) local warm: warm GOCACHE, no bridge;
//!   (c) fresh runner: empty GOCACHE and empty local tier, warm cached, through the bridge;
//!   (d) warm local tier through the bridge.
//! Targets: c/b ≤ 1.3, d/b ≤ 1.1. cached runs embedded in this process on loopback.
//!
//! Build both binaries in one profile, then run, e.g.:
//!   cargo build --release -p cachectl -p cached-benches
//!   target/release/gocacheprog_bench [--runs 3] [--only build|vet] [--cachectl PATH]

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cached_benches::EmbeddedServer;
use cached_benches::report::{cell, ratio};
use cached_benches::workspace::sibling_or;
use clap::Parser as _;

struct Settings {
    runs: usize,
    only: Option<String>,
    cachectl: PathBuf,
}

#[derive(clap::Parser)]
struct Args {
    /// Runs per variant.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Only the workloads whose name contains this (build or vet).
    #[arg(long)]
    only: Option<String>,
    /// cachectl to run [default: the one built next to this binary].
    #[arg(long, env = "CACHECTL")]
    cachectl: Option<PathBuf>,
}

impl Args {
    fn settings(self) -> Result<Settings, String> {
        let cachectl = sibling_or(self.cachectl, "cachectl")?;
        Ok(Settings { runs: self.runs.max(1), only: self.only, cachectl })
    }
}

struct Workload {
    name: &'static str,
    args: Vec<String>,
    dir: PathBuf,
}

/// Medians (and ranges) of one workload's four variants.
struct Row {
    name: &'static str,
    cells: [Vec<Duration>; 4],
    summaries: [String; 2],
}

fn main() {
    let settings = Args::parse().settings().unwrap_or_else(|err| {
        eprintln!("gocacheprog_bench: {err}");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let server = runtime.block_on(EmbeddedServer::start());
    eprintln!("cached (embedded) on {}; {} runs per variant", server.url(), settings.runs);
    let mut rows = Vec::new();
    for workload in workloads() {
        if settings.only.as_deref().is_some_and(|only| !workload.name.contains(only)) {
            continue;
        }
        rows.push(measure(&settings, &server.url(), &workload));
    }
    print_table(&rows);
    drop(server);
}

fn workloads() -> Vec<Workload> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gomod");
    let strings = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect();
    vec![
        Workload {
            name: "go build -trimpath -o /dev/null cmd/go",
            args: strings(&["build", "-trimpath", "-o", "/dev/null", "cmd/go"]),
            dir: std::env::temp_dir(),
        },
        Workload {
            name: "go vet ./... (tests/fixtures/gomod)",
            args: strings(&["vet", "./..."]),
            dir: fixture,
        },
    ]
}

/// A sealed go invocation: its own GOCACHE and HOME, no network, no cgo.
fn go(workload: &Workload, scratch: &Path, gocache: &Path) -> Command {
    let mut command = Command::new("go");
    command.args(&workload.args).current_dir(&workload.dir).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
        .env("HOME", scratch.join("home"))
        .env("GOCACHE", gocache)
        .env("GOPATH", scratch.join("gopath"))
        .env("GOENV", "off")
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("CGO_ENABLED", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

fn bridged(mut command: Command, settings: &Settings, server: &str, tier: &Path, namespace: &str) -> Command {
    command
        .env("GOCACHEPROG", format!("{} gocacheprog", settings.cachectl.display()))
        .env("CACHED_ADDR", server)
        .env("CACHED_GOCACHE_DIR", tier)
        .env("CACHED_NAMESPACE", namespace)
        .env("CACHED_SUMMARY", "1");
    command
}

/// Runs a command, returning its wall time and the bridge's summary line (if any).
fn timed(mut command: Command) -> (Duration, String) {
    let start = Instant::now();
    let output = command.stderr(Stdio::piped()).output().expect("run go");
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "go failed: {stderr}");
    let summary = stderr.lines().find(|l| l.starts_with("cachectl gocacheprog: ")).unwrap_or("").to_owned();
    (elapsed, summary)
}

fn fresh(scratch: &Path, name: &str) -> PathBuf {
    let dir = scratch.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn measure(settings: &Settings, server: &str, workload: &Workload) -> Row {
    let scratch = tempfile::tempdir().expect("temp dir");
    let scratch = scratch.path();
    let namespace = format!("bench-{}-{}", workload.args[0], std::process::id());
    let mut cells: [Vec<Duration>; 4] = Default::default();
    eprintln!("{}:", workload.name);
    for run in 0..settings.runs {
        let gocache = fresh(scratch, "cold");
        cells[0].push(timed(go(workload, scratch, &gocache)).0);
        eprintln!("  (a) cold #{run}: {:?}", cells[0][run]);
    }
    // (b) reuses the last cold GOCACHE, warmed once more so it holds every entry.
    let warm = scratch.join("cold");
    timed(go(workload, scratch, &warm));
    for run in 0..settings.runs {
        cells[1].push(timed(go(workload, scratch, &warm)).0);
        eprintln!("  (b) local warm #{run}: {:?}", cells[1][run]);
    }
    // Fill cached once through the bridge; then every (c) run starts from nothing locally.
    let fill_tier = fresh(scratch, "fill-tier");
    let fill = bridged(
        go(workload, scratch, &fresh(scratch, "fill-cache")),
        settings,
        server,
        &fill_tier,
        &namespace,
    );
    eprintln!("  fill: {:?}", timed(fill).0);
    let mut summaries: [String; 2] = Default::default();
    for run in 0..settings.runs {
        let (tier, gocache) = (fresh(scratch, "tier"), fresh(scratch, "gocache"));
        let (time, summary) =
            timed(bridged(go(workload, scratch, &gocache), settings, server, &tier, &namespace));
        cells[2].push(time);
        summaries[0] = summary;
        eprintln!("  (c) fresh runner #{run}: {time:?}");
    }
    // (d): the local tier the last (c) run filled, a fresh GOCACHE each run.
    let tier = scratch.join("tier");
    for run in 0..settings.runs {
        let gocache = fresh(scratch, "gocache");
        let (time, summary) =
            timed(bridged(go(workload, scratch, &gocache), settings, server, &tier, &namespace));
        cells[3].push(time);
        summaries[1] = summary;
        eprintln!("  (d) warm tier #{run}: {time:?}");
    }
    Row { name: workload.name, cells, summaries }
}

fn print_table(rows: &[Row]) {
    println!("| workload | (a) cold | (b) local warm | (c) fresh runner | (d) warm tier | c/b | c/a | d/b |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        let [a, b, c, d] = &row.cells;
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            row.name,
            cell(a, 2),
            cell(b, 2),
            cell(c, 2),
            cell(d, 2),
            ratio(c, b),
            ratio(c, a),
            ratio(d, b)
        );
    }
    println!();
    for row in rows {
        println!("{}:\n  (c) {}\n  (d) {}", row.name, row.summaries[0], row.summaries[1]);
    }
}
