//! End-to-end benchmark of remote execution: the 4-target matrix (linux/amd64, linux/arm64,
//! darwin/arm64, windows/amd64) of a real program, built by two runner agents through cached
//! with `cachectl submit`, against the same matrix built locally by four sequential
//! `go build`s.
//!
//! Workload: gopls from golang.org/x/tools at a pinned version (a few hundred packages, a dozen
//! module dependencies), fetched through the Go module proxy into a module cache kept under the
//! user's cache directory (shared with gobuild_bench), so only the first run downloads.
//!
//! Scenarios, each the median of `--runs` runs (default 3), local and remote runs interleaved:
//!   cold      remote: a fresh cached and fresh agent work directories (empty caches; the
//!             sources and module files are uploaded); local: an empty GOCACHE;
//!   warm      the same source again (remote: the last cold run's cached and agents; local:
//!             the warm GOCACHE, outputs removed);
//!   one-file  one file of gopls changed, a different change each run.
//! Remote time: `cachectl submit` from start to exit, which includes uploading what cached
//! lacks and downloading the four binaries. Local time: the four `go build -trimpath`s.
//!
//!   export CARGO_TARGET_DIR=...; cargo build --release -p cached -p cachectl -p runner-agent -p cached-benches
//!   $CARGO_TARGET_DIR/release/matrix_bench [--runs 3] [--version v0.21.0] [--concurrency 1] [--bin-dir DIR]

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cached_benches::cluster::{Cluster, ClusterArgs, GoBench, run};
use cached_benches::report::{cell, load, ratio};
use cached_benches::workspace::{copy_dir, wipe};
use clap::Parser as _;

const GOPLS: &str = "golang.org/x/tools/gopls";
/// gopls v0.21.0 needs go 1.25 (v0.22 and later need 1.26.0+ or 1.27): any current Go builds it.
const DEFAULT_VERSION: &str = "v0.21.0";
const MATRIX: [(&str, &str); 4] =
    [("linux", "amd64"), ("linux", "arm64"), ("darwin", "arm64"), ("windows", "amd64")];
/// The file the one-file runs change: a large package in the middle of gopls's graph.
const EDITED: &str = "internal/golang/hover.go";

struct Settings {
    runs: usize,
    version: String,
    /// Builds each agent runs at once.
    concurrency: u32,
    /// Where the release binaries of cached, runner-agent and cachectl are.
    bin: PathBuf,
}

#[derive(clap::Parser)]
struct Args {
    /// Runs per scenario.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The gopls version to build.
    #[arg(long, default_value = DEFAULT_VERSION)]
    version: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

impl Args {
    fn settings(self) -> Result<Settings, String> {
        let bin = self.cluster.bin()?;
        Ok(Settings {
            runs: self.runs.max(1),
            version: self.version,
            concurrency: self.cluster.concurrency,
            bin,
        })
    }
}

fn main() {
    let settings = Args::parse().settings().unwrap_or_else(|err| {
        eprintln!("matrix_bench: {err}");
        std::process::exit(2);
    });
    let scratch = tempfile::tempdir().expect("temp dir");
    let bench = GoBench::new(scratch.path(), &settings.bin, settings.concurrency);
    eprintln!(
        "binaries from {}; {} runs per scenario; {} build(s) per agent; load {}",
        settings.bin.display(),
        settings.runs,
        settings.concurrency,
        load()
    );
    let pristine = bench.fetch(&format!("{GOPLS}@{}", settings.version), "gopls");
    let packages = bench.package_count(&pristine, ".");
    let local = scratch.path().join("local");
    let remote = scratch.path().join("remote");
    copy_dir(&pristine, &local);
    copy_dir(&pristine, &remote);

    let mut results = Results::default();
    let mut cluster = None;
    for run in 0..settings.runs {
        wipe(&bench.local_gocache());
        let time = bench.local_matrix(&local);
        eprintln!("cold  local  #{run}: {time:.1?}");
        results.cold.local.push(time);

        // A new cached and new agents each cold run; the last ones stay for the warm runs.
        drop(cluster.take());
        let fresh = Cluster::start(&bench, &format!("cold{run}"), false);
        let (time, hits) = bench.submit(&fresh, &remote);
        eprintln!("cold  remote #{run}: {time:.1?} ({hits}/4 hits)");
        results.cold.remote.push(time);
        results.cold.hits.push(hits);
        cluster = Some(fresh);
    }
    let cluster = cluster.expect("at least one run");
    for run in 0..settings.runs {
        let time = bench.local_matrix(&local);
        eprintln!("warm  local  #{run}: {time:.1?}");
        results.warm.local.push(time);
        let (time, hits) = bench.submit(&cluster, &remote);
        eprintln!("warm  remote #{run}: {time:.1?} ({hits}/4 hits)");
        results.warm.remote.push(time);
        results.warm.hits.push(hits);
    }
    for run in 0..settings.runs {
        edit(&local, run);
        edit(&remote, run);
        let time = bench.local_matrix(&local);
        eprintln!("edit  local  #{run}: {time:.1?}");
        results.edit.local.push(time);
        let (time, hits) = bench.submit(&cluster, &remote);
        eprintln!("edit  remote #{run}: {time:.1?} ({hits}/4 hits)");
        results.edit.remote.push(time);
        results.edit.hits.push(hits);
    }
    drop(cluster);

    let size: u64 = MATRIX
        .iter()
        .map(|(goos, goarch)| {
            let name = if *goos == "windows" { "gopls.exe" } else { "gopls" };
            std::fs::metadata(bench.remote_dist().join(format!("{goos}_{goarch}")).join(name))
                .map_or(0, |m| m.len())
        })
        .sum();
    println!(
        "gopls {} ({packages} packages with dependencies, {:.0} MiB of binaries per matrix); 2 agents x {} build(s), \
         on this machine ({} CPUs)\n",
        settings.version,
        size as f64 / f64::from(1 << 20),
        settings.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| 4-target matrix | 4 sequential local `go build` | `cachectl submit`, 2 agents | remote/local | remote hits |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (name, scenario) in [
        ("cold (empty caches)", &results.cold),
        ("warm (unchanged source)", &results.warm),
        ("one-file change", &results.edit),
    ] {
        println!(
            "| {name} | {} | {} | {:.2} | {} |",
            cell(&scenario.local, 1),
            cell(&scenario.remote, 1),
            ratio(&scenario.remote, &scenario.local),
            scenario.hits.iter().map(|h| format!("{h}/4")).collect::<Vec<_>>().join(", ")
        );
    }
    println!("\nmedians of {} runs (min–max); load average after: {}", settings.runs, load());
}

#[derive(Default)]
struct Scenario {
    local: Vec<Duration>,
    remote: Vec<Duration>,
    hits: Vec<usize>,
}

#[derive(Default)]
struct Results {
    cold: Scenario,
    warm: Scenario,
    edit: Scenario,
}

/// The drivers' own steps on the shared go environment.
trait MatrixRuns {
    fn remote_dist(&self) -> PathBuf;
    fn local_matrix(&self, module: &Path) -> Duration;
    fn submit(&self, cluster: &Cluster, module: &Path) -> (Duration, usize);
}

impl MatrixRuns for GoBench {
    fn remote_dist(&self) -> PathBuf {
        self.scratch.join("dist-remote")
    }

    /// The four targets, one `go build` after the other, outputs removed first.
    fn local_matrix(&self, module: &Path) -> Duration {
        let out = self.scratch.join("dist-local");
        wipe(&out);
        let started = Instant::now();
        for (goos, goarch) in MATRIX {
            let dir = out.join(format!("{goos}_{goarch}"));
            let mut command = self.go(module, &["build", "-trimpath", "-o"]);
            command.arg(format!("{}/", dir.display())).arg(".").env("GOOS", goos).env("GOARCH", goarch);
            run(command, &format!("go build for {goos}/{goarch}"));
        }
        started.elapsed()
    }

    /// `cachectl submit` of the matrix: its wall time and how many targets were hits.
    fn submit(&self, cluster: &Cluster, module: &Path) -> (Duration, usize) {
        let dist = self.remote_dist();
        wipe(&dist);
        let targets = MATRIX.iter().map(|(os, arch)| format!("{os}/{arch}")).collect::<Vec<_>>().join(",");
        let mut command = Command::new(self.bin.join("cachectl"));
        command
            // --rebuild: this measures the agents building, not cached answering with the last job.
            .args(["--server", &cluster.url, "submit", "--rebuild", "--targets", &targets, "-o"])
            .arg(&dist)
            .arg(".")
            .current_dir(module)
            .env_clear()
            .envs(self.env("off"))
            .stdin(Stdio::null());
        let started = Instant::now();
        let stdout = run(command, "cachectl submit");
        let elapsed = started.elapsed();
        for (goos, goarch) in MATRIX {
            let name = if goos == "windows" { "gopls.exe" } else { "gopls" };
            let path = dist.join(format!("{goos}_{goarch}")).join(name);
            assert!(path.is_file(), "{} was not downloaded:\n{stdout}", path.display());
        }
        let hits = stdout
            .lines()
            .filter(|line| line.contains(" agent-"))
            .filter(|line| line.split_whitespace().nth(2) == Some("hit"))
            .count();
        (elapsed, hits)
    }
}

/// A cached and two runner agents, each with fresh directories; stopped and removed on drop.
/// Appends a new function to the edited file: a different source each run.
fn edit(module: &Path, run: usize) {
    let path = module.join(EDITED);
    let mut text = std::fs::read_to_string(&path).expect("read the edited file");
    text.push_str(&format!("\nfunc matrixBenchEdit{run}() int {{ return {run} }}\n"));
    std::fs::write(&path, text).expect("write the edited file");
}
