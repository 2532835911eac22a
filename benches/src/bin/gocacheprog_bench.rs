//! End-to-end benchmark of the GOCACHEPROG bridge against Go's own cache.
//!
//! Workloads: `go build -trimpath -o /dev/null cmd/go` (a few hundred packages from the
//! installed toolchain) and `go vet ./...` of the test fixture module. Variants, each the median
//! of `--runs` runs:
//!   (a) cold: empty GOCACHE, no bridge;
//!   (b) local warm: warm GOCACHE, no bridge;
//!   (c) fresh runner: empty GOCACHE and empty local tier, warm cached, through the bridge;
//!   (d) warm local tier through the bridge.
//! Targets: c/b ≤ 1.3, d/b ≤ 1.1. cached runs embedded in this process on loopback. The
//! variants take turns, one round of all four at a time, each run starts after the last one's
//! writes reached the disk, and every run that starts from nothing gets directories nobody
//! has used.
//!
//! Build both binaries in one profile, then run, e.g.:
//!   cargo build --release -p cachectl -p cached-benches
//!   target/release/gocacheprog_bench [--runs 5] [--only build|vet] [--cachectl PATH]

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
    #[arg(long, default_value_t = 5)]
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

/// Runs a command, returning its wall time and the bridge's summary line (if any). The
/// writes of the runs before are on disk first: a cold build leaves hundreds of MiB for the
/// kernel to write back, and a run during that write-back took twice as long.
fn timed(mut command: Command) -> (Duration, String) {
    settle();
    let start = Instant::now();
    let output = command.stderr(Stdio::piped()).output().expect("run go");
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "go failed: {stderr}");
    let summary = stderr.lines().find(|l| l.starts_with("cachectl gocacheprog: ")).unwrap_or("").to_owned();
    (elapsed, summary)
}

fn settle() {
    if let Err(err) = Command::new("sync").status() {
        eprintln!("  (sync failed: {err}; the next run may share the disk with write-back)");
    }
}

/// A directory nobody has used: each run that starts from nothing gets its own, and all are
/// removed with the scratch directory at the end. Deleting the last run's files right before
/// the next would measure the file system instead: ext4 without a journal (as on these
/// machines) passes over inodes freed in the last minute when it allocates new ones, which
/// made every file a fresh run created several times slower than on a runner that starts
/// empty.
fn unused(scratch: &Path, name: &str, run: usize) -> PathBuf {
    scratch.join(format!("{name}-{run}"))
}

/// Runs the four variants round by round, (a) (b) (c) (d) in each, so a drift in the
/// machine's speed over the minutes a benchmark takes shifts every variant alike.
fn measure(settings: &Settings, server: &str, workload: &Workload) -> Row {
    let scratch = tempfile::tempdir().expect("temp dir");
    let scratch = scratch.path();
    let namespace = format!("bench-{}-{}", workload.args[0], std::process::id());
    eprintln!("{}:", workload.name);
    // (b)'s GOCACHE, built twice so it holds every entry.
    let warm = scratch.join("warm");
    timed(go(workload, scratch, &warm));
    timed(go(workload, scratch, &warm));
    // Fill cached once through the bridge; then every (c) run starts from nothing locally.
    let fill = bridged(
        go(workload, scratch, &scratch.join("fill-cache")),
        settings,
        server,
        &scratch.join("fill-tier"),
        &namespace,
    );
    eprintln!("  fill: {:?}", timed(fill).0);
    let mut cells: [Vec<Duration>; 4] = Default::default();
    let mut summaries: [String; 2] = Default::default();
    for run in 0..settings.runs {
        let cold = timed(go(workload, scratch, &unused(scratch, "cold", run))).0;
        let local_warm = timed(go(workload, scratch, &warm)).0;
        let tier = unused(scratch, "tier", run);
        let fresh_cache = unused(scratch, "fresh-gocache", run);
        let (fresh, fresh_summary) =
            timed(bridged(go(workload, scratch, &fresh_cache), settings, server, &tier, &namespace));
        // (d): the local tier this round's (c) filled, with a GOCACHE of its own.
        let warm_cache = unused(scratch, "tier-gocache", run);
        let (warm_tier, warm_summary) =
            timed(bridged(go(workload, scratch, &warm_cache), settings, server, &tier, &namespace));
        eprintln!("  #{run}: (a) {cold:.2?}  (b) {local_warm:.2?}  (c) {fresh:.2?}  (d) {warm_tier:.2?}");
        for (cell, time) in cells.iter_mut().zip([cold, local_warm, fresh, warm_tier]) {
            cell.push(time);
        }
        summaries = [fresh_summary, warm_summary];
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
