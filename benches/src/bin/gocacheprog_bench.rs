//! End-to-end benchmark of the GOCACHEPROG bridge against Go's own cache.
//!
//! Workloads: `go build -trimpath -o /dev/null cmd/go` (a few hundred packages from the
//! installed toolchain), `go vet ./...` of the test fixture module, and Hugo (from the module
//! proxy, pinned): `go build` and `go test ./common/... ./parser/...`. Variants, each the median
//! of `--runs` runs:
//!   (b) local warm: warm GOCACHE, no bridge;
//!   (c) fresh runner: empty GOCACHE and empty local tier, warm cached, through the bridge;
//!   (c′) the same, with `cachectl warm` started when the job starts and the checkout modelled
//!        as `--checkout` seconds before the go command (only the go command is timed);
//!   (d) warm local tier through the bridge.
//! Targets: c/b ≤ 1.3 for builds (≤ 2.0 for the tests), c′/b ≤ 1.1, d/b ≤ 1.05. Next to the wall
//! times: CPU seconds of cachectl (from its summaries) and of cached (which runs embedded in this
//! process on loopback). The variants take turns, one
//! round of all four at a time, each run starts after the last one's writes reached the disk,
//! and every run that starts from nothing gets directories nobody has used.
//!
//! Build both binaries in one profile, then run, e.g.:
//!   cargo build --release -p cachectl -p cached-benches
//!   target/release/gocacheprog_bench [--runs 5] [--only hugo] [--cachectl PATH]

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cached_benches::EmbeddedServer;
use cached_benches::cpu::CpuTimes;
use cached_benches::report::{cell, ratio};
use cached_benches::workspace::{gomodcache, proxy, sibling_or};
use clap::Parser as _;

/// The Hugo release the earlier hand measurements used (docs/benchmarks.md).
const HUGO: &str = "github.com/gohugoio/hugo@v0.150.0";

struct Settings {
    runs: usize,
    only: Option<String>,
    cachectl: PathBuf,
    checkout: Duration,
}

#[derive(clap::Parser)]
struct Args {
    /// Runs per variant.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only the workloads whose name contains this (cmd/go, vet, hugo, test).
    #[arg(long)]
    only: Option<String>,
    /// cachectl to run [default: the one built next to this binary].
    #[arg(long, env = "CACHECTL")]
    cachectl: Option<PathBuf>,
    /// Seconds between `cachectl warm` and the go command in (c′): the checkout and toolchain
    /// set-up of a CI job.
    #[arg(long, default_value_t = 10)]
    checkout: u64,
}

impl Args {
    fn settings(self) -> Result<Settings, String> {
        let cachectl = sibling_or(self.cachectl, "cachectl")?;
        let checkout = Duration::from_secs(self.checkout);
        Ok(Settings { runs: self.runs.max(1), only: self.only, cachectl, checkout })
    }
}

struct Workload {
    name: String,
    args: Vec<String>,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

const VARIANTS: [&str; 4] =
    ["(b) local warm", "(c) fresh runner", "(c′) fresh, warm at job start", "(d) warm tier"];

/// One run: its wall time and who spent the CPU.
struct Sample {
    wall: Duration,
    cachectl_cpu: f64,
    cached_cpu: f64,
    summary: String,
}

/// One workload's samples, by variant.
struct Row {
    name: String,
    fill: Duration,
    samples: [Vec<Sample>; 4],
}

fn main() {
    let settings = Args::parse().settings().unwrap_or_else(|err| {
        eprintln!("gocacheprog_bench: {err}");
        std::process::exit(2);
    });
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let server = runtime.block_on(EmbeddedServer::start());
    eprintln!("cached (embedded) on {}; {} runs per variant", server.url(), settings.runs);
    let rows: Vec<Row> = workloads(settings.only.as_deref())
        .iter()
        .enumerate()
        .map(|(index, workload)| measure(&settings, &server.url(), workload, index))
        .collect();
    print_tables(&rows);
    drop(server);
}

fn workloads(only: Option<&str>) -> Vec<Workload> {
    let strings = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let wanted = |name: &str| only.is_none_or(|only| name.contains(only));
    let mut list = Vec::new();
    let cmd_go = "go build -trimpath -o /dev/null cmd/go";
    if wanted(cmd_go) {
        let args = strings(&["build", "-trimpath", "-o", "/dev/null", "cmd/go"]);
        list.push(Workload { name: cmd_go.to_owned(), args, dir: std::env::temp_dir(), env: Vec::new() });
    }
    let vet = "go vet ./... (tests/fixtures/gomod)";
    if wanted(vet) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gomod");
        list.push(Workload { name: vet.to_owned(), args: strings(&["vet", "./..."]), dir, env: Vec::new() });
    }
    let hugo_build = format!("Hugo go build -trimpath -o /dev/null . ({HUGO})");
    let hugo_test = format!("Hugo go test ./common/... ./parser/... ({HUGO})");
    if wanted(&hugo_build) || wanted(&hugo_test) {
        let (dir, env) = hugo();
        if wanted(&hugo_build) {
            let args = strings(&["build", "-trimpath", "-o", "/dev/null", "."]);
            list.push(Workload { name: hugo_build, args, dir: dir.clone(), env: env.clone() });
        }
        if wanted(&hugo_test) {
            let args = strings(&["test", "./common/...", "./parser/..."]);
            list.push(Workload { name: hugo_test, args, dir, env });
        }
    }
    list
}

/// Hugo's source and its dependencies in the benchmarks' module cache (downloaded once), and
/// the environment that points the go command there.
fn hugo() -> (PathBuf, Vec<(String, String)>) {
    let modcache = gomodcache();
    let env = vec![("GOMODCACHE".to_owned(), modcache.display().to_string())];
    let download = |dir: &Path, args: &[&str]| {
        let output = Command::new("go")
            .args(args)
            .current_dir(dir)
            .envs(env.iter().cloned())
            .env("GOFLAGS", "-modcacherw")
            .env("GOPROXY", proxy())
            .stderr(Stdio::inherit())
            .output()
            .expect("run go mod download");
        assert!(output.status.success(), "go {args:?} failed");
        output.stdout
    };
    let json = download(&std::env::temp_dir(), &["mod", "download", "-json", HUGO]);
    let dir = String::from_utf8_lossy(&json)
        .lines()
        .find_map(|line| line.trim().strip_prefix("\"Dir\": \"")?.strip_suffix("\",").map(PathBuf::from))
        .expect("go mod download names Hugo's directory");
    download(&dir, &["mod", "download"]);
    (dir, env)
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
        .envs(workload.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// Where the bridge and `cachectl warm` find cached, their local tier and namespace.
struct Bridge<'a> {
    settings: &'a Settings,
    server: &'a str,
    namespace: String,
}

impl Bridge<'_> {
    fn env(&self, command: &mut Command, tier: &Path) {
        command
            .env("CACHED_ADDR", self.server)
            .env("CACHED_GOCACHE_DIR", tier)
            .env("CACHED_NAMESPACE", &self.namespace)
            .env("CACHED_SUMMARY", "1");
    }

    fn bridged(&self, mut command: Command, tier: &Path) -> Command {
        command.env("GOCACHEPROG", format!("{} gocacheprog", self.settings.cachectl.display()));
        self.env(&mut command, tier);
        command
    }

    /// `cachectl warm` for the workload's go command line, as the first step of a CI job.
    fn warm(&self, workload: &Workload, scratch: &Path, tier: &Path, log: &Path) -> Child {
        let go = go(workload, scratch, &scratch.join("unused-gocache"));
        let mut command = Command::new(&self.settings.cachectl);
        command.arg("warm");
        // A go command outside any module (cmd/go) keys by an empty module path.
        if !workload.dir.join("go.mod").exists() {
            command.args(["--module", ""]);
        }
        command.arg("--").arg("go").args(&workload.args).current_dir(&workload.dir).env_clear();
        command.envs(go.get_envs().filter_map(|(key, value)| Some((key, value?))));
        self.env(&mut command, tier);
        let log = std::fs::File::create(log).expect("warm log");
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("start cachectl warm")
    }
}

/// Runs a command to its end: its wall time, and the CPU of each party. The writes of the runs
/// before are on disk first: a cold build leaves hundreds of MiB for the kernel to write back,
/// and a run during that write-back took twice as long.
fn run(mut command: Command) -> Sample {
    settle();
    let cpu = CpuTimes::now();
    let start = Instant::now();
    let output = command.stderr(Stdio::piped()).output().expect("run go");
    let wall = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "go failed: {stderr}");
    sample(wall, CpuTimes::now().since(cpu), &stderr)
}

/// (c′): `cachectl warm` starts, the checkout takes its time, then the go command runs; only
/// the go command is timed, but the CPU of all of it is counted.
fn run_after_warm(
    bridge: &Bridge,
    workload: &Workload,
    scratch: &Path,
    name: &str,
    run_index: usize,
) -> Sample {
    let tier = unused(scratch, &format!("{name}-tier"), run_index);
    let log = unused(scratch, &format!("{name}-warm.log"), run_index);
    settle();
    let cpu = CpuTimes::now();
    let mut warm = bridge.warm(workload, scratch, &tier, &log);
    std::thread::sleep(bridge.settings.checkout);
    let gocache = unused(scratch, &format!("{name}-gocache"), run_index);
    let start = Instant::now();
    let output = bridge
        .bridged(go(workload, scratch, &gocache), &tier)
        .stderr(Stdio::piped())
        .output()
        .expect("run go");
    let wall = start.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "go failed: {stderr}");
    let warmed = warm.wait().expect("wait for cachectl warm");
    let warm_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(warmed.success(), "cachectl warm failed: {warm_log}");
    sample(wall, CpuTimes::now().since(cpu), &format!("{warm_log}\n{stderr}"))
}

fn sample(wall: Duration, cpu: CpuTimes, stderr: &str) -> Sample {
    let summaries: Vec<&str> = stderr.lines().filter(|l| l.starts_with("cachectl ")).collect();
    // Summed from zero: an empty f64 sum is -0.0.
    let cachectl_cpu = summaries.iter().filter_map(|line| cpu_seconds(line)).fold(0.0, |sum, cpu| sum + cpu);
    Sample { wall, cachectl_cpu, cached_cpu: cpu.own, summary: summaries.join("\n    ") }
}

/// The `0.71s CPU` of a cachectl summary line.
fn cpu_seconds(summary: &str) -> Option<f64> {
    let before = &summary[..summary.find("s CPU")?];
    before.rsplit([' ', ';']).next()?.parse().ok()
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

/// Runs the variants round by round, (b) (c) (c′) (d) in each, so a drift in the machine's
/// speed over the minutes a benchmark takes shifts every variant alike.
fn measure(settings: &Settings, server: &str, workload: &Workload, index: usize) -> Row {
    let scratch = tempfile::tempdir().expect("temp dir");
    let scratch = scratch.path();
    let namespace = format!("bench-{index}-{}", std::process::id());
    let bridge = Bridge { settings, server, namespace };
    eprintln!("{}:", workload.name);
    // (b)'s GOCACHE, run twice so it holds every entry (and every test result).
    let warm = scratch.join("warm");
    run(go(workload, scratch, &warm));
    run(go(workload, scratch, &warm));
    // Fill cached once through the bridge (which also writes the session list); then every
    // fresh run starts from nothing locally.
    let fill =
        run(bridge.bridged(go(workload, scratch, &scratch.join("fill-cache")), &scratch.join("fill-tier")));
    eprintln!("  fill: {:.2?}", fill.wall);
    let mut samples: [Vec<Sample>; 4] = Default::default();
    for index in 0..settings.runs {
        let local_warm = run(go(workload, scratch, &warm));
        let tier = unused(scratch, "tier", index);
        let fresh =
            run(bridge.bridged(go(workload, scratch, &unused(scratch, "fresh-gocache", index)), &tier));
        let warmed = run_after_warm(&bridge, workload, scratch, "warmed", index);
        // (d): the local tier this round's (c) filled, with a GOCACHE of its own.
        let warm_tier =
            run(bridge.bridged(go(workload, scratch, &unused(scratch, "tier-gocache", index)), &tier));
        let walls = [&local_warm, &fresh, &warmed, &warm_tier].map(|s| format!("{:.2?}", s.wall));
        eprintln!("  #{index}: (b) {}  (c) {}  (c′) {}  (d) {}", walls[0], walls[1], walls[2], walls[3]);
        for (cell, sample) in samples.iter_mut().zip([local_warm, fresh, warmed, warm_tier]) {
            cell.push(sample);
        }
    }
    Row { name: workload.name.clone(), fill: fill.wall, samples }
}

fn walls(samples: &[Sample]) -> Vec<Duration> {
    samples.iter().map(|s| s.wall).collect()
}

fn median_of(samples: &[Sample], field: impl Fn(&Sample) -> f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(field).collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn print_tables(rows: &[Row]) {
    println!(
        "| workload | (b) local warm | (c) fresh runner | (c′) warm at job start | (d) warm tier | c/b | c′/b | d/b |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for row in rows {
        let [b, c, c2, d] = row.samples.each_ref().map(|samples| walls(samples));
        let cells = [&b, &c, &c2, &d].map(|times| cell(times, 2));
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |",
            row.name,
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            ratio(&c, &b),
            ratio(&c2, &b),
            ratio(&d, &b)
        );
    }
    println!("\nCPU seconds (medians): cachectl (bridge and warm), cached");
    println!("\n| workload | variant | cachectl | cached | fill through the bridge |");
    println!("| --- | --- | --- | --- | --- |");
    for row in rows {
        for (variant, samples) in VARIANTS.iter().zip(&row.samples) {
            let cpu = |field: fn(&Sample) -> f64| format!("{:.2}", median_of(samples, field));
            let fill = format!("{:.1}s", row.fill.as_secs_f64());
            let (cachectl, cached) = (cpu(|s| s.cachectl_cpu), cpu(|s| s.cached_cpu));
            println!("| {} | {variant} | {cachectl} | {cached} | {fill} |", row.name);
        }
    }
    println!();
    for row in rows {
        for (variant, samples) in VARIANTS.iter().zip(&row.samples).skip(1) {
            let last = samples.last().map_or("", |s| s.summary.as_str());
            println!("{} {variant}:\n    {last}", row.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_read_from_cachectl_summaries() {
        let line =
            "cachectl gocacheprog: 953 gets (0 local hits); 0.10s waiting on cached at http://x; 0.71s CPU";
        assert_eq!(cpu_seconds(line), Some(0.71));
        assert_eq!(cpu_seconds("cachectl gocacheprog: 3 gets"), None);
    }
}
