//! End-to-end benchmark of the delivery chain: from source to a signed, pullable
//! multi-platform image, through cached (`cachectl submit --image` to two runner agents and
//! cached's own registry, then `cachectl sign`) against the usual pipeline on this machine
//! (four `go build`s, ko-style layering, a push to distribution's registry, a signature).
//!
//! Workload: crane (github.com/google/go-containerregistry/cmd/crane) at a pinned version,
//! fetched through the Go module proxy into the module cache the other drivers share. Targets
//! linux/amd64, linux/arm64, darwin/arm64 and windows/amd64; the two linux ones are imaged.
//!
//! Each round runs three scenarios, the baseline and cached interleaved:
//!   cold       baseline: an empty GOCACHE and a new registry; cached: a new cached and new
//!              agent work directories (every cache empty, the sources uploaded);
//!   unchanged  the same source again, into the same registries;
//!   one-file   one .go file of crane's command package changed (a new init function).
//! Stages, baseline: build (4 `go build -trimpath`, as many at once as there are cores, as
//! ko does), image (`cachectl image --no-cache` into an OCI layout: tar, gzip, documents; no
//! cached involved), push (`skopeo copy --all` to distribution's registry), sign (`cachectl
//! sign`). cached: upload (what `cachectl submit` reports), job (builds, the agents' layering
//! and the index, and the download of the four binaries), publish (from the job's end to
//! submit's exit: the image checked against the job's and pushed to cached's registry), sign.
//! Each scenario's image is then pulled back by skopeo and its signature checked with
//! `cachectl verify` (not timed).
//!
//!   . scripts/setup   # builds distribution-registry
//!   cargo build --release -p cached -p cachectl -p runner-agent -p cached-benches
//!   $CARGO_TARGET_DIR/release/delivery_bench [--runs 3] [--version v0.22.1] [--bin-dir DIR]

#![forbid(unsafe_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cached_benches::cluster::{Cluster, ClusterArgs, GoBench, free_addr, run, wait_listening};
use cached_benches::report::{cell, load, median};
use cached_benches::workspace::{copy_dir, wipe};
use clap::Parser as _;

const MODULE: &str = "github.com/google/go-containerregistry";
/// v0.22.1 needs go 1.25.
const DEFAULT_VERSION: &str = "v0.22.1";
const PACKAGE: &str = "./cmd/crane";
const NAME: &str = "crane";
const MATRIX: [(&str, &str); 4] =
    [("linux", "amd64"), ("linux", "arm64"), ("darwin", "arm64"), ("windows", "amd64")];
/// The file the one-file scenario changes: crane's command package, which main imports.
const EDITED: &str = "cmd/crane/cmd/version.go";
/// The seed pipeline's stages (seconds), for comparison.
const SEED: [(&str, f64); 3] = [("build", 156.7), ("image", 98.2), ("push", 87.6)];
const REGISTRY_TOOL: &str = "distribution-registry";

#[derive(clap::Parser)]
struct Args {
    /// Rounds (each: cold, unchanged, one-file).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The go-containerregistry version whose crane is built.
    #[arg(long, default_value = DEFAULT_VERSION)]
    version: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

struct Settings {
    runs: usize,
    version: String,
    concurrency: u32,
    bin: PathBuf,
}

impl Args {
    fn settings(self) -> Result<Settings, String> {
        let bin = self.cluster.bin()?;
        for tool in [REGISTRY_TOOL, "skopeo", "openssl", "go"] {
            if which(tool).is_none() {
                return Err(format!("{tool} is not on PATH: source scripts/setup first"));
            }
        }
        Ok(Settings {
            runs: self.runs.max(1),
            version: self.version,
            concurrency: self.cluster.concurrency,
            bin,
        })
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|dir| dir.join(tool)).find(|p| p.is_file()))
}

/// The stage times of one pipeline run.
#[derive(Clone, Copy, Default)]
struct Stages {
    upload: Duration,
    build: Duration,
    image: Duration,
    publish: Duration,
    sign: Duration,
}

impl Stages {
    fn total(&self) -> Duration {
        self.upload + self.build + self.image + self.publish + self.sign
    }
}

#[derive(Default)]
struct Scenario {
    baseline: Vec<Stages>,
    cached: Vec<Stages>,
    hits: Vec<String>,
}

const SCENARIOS: [&str; 3] = ["cold", "unchanged", "one-file"];

fn main() {
    let settings = Args::parse().settings().unwrap_or_else(|err| {
        eprintln!("delivery_bench: {err}");
        std::process::exit(2);
    });
    let scratch = tempfile::tempdir().expect("temp dir");
    let bench = GoBench::new(scratch.path(), &settings.bin, settings.concurrency);
    eprintln!(
        "binaries from {}; {} rounds; {} build(s) per agent; load {}",
        settings.bin.display(),
        settings.runs,
        settings.concurrency,
        load()
    );
    let pristine = bench.fetch(&format!("{MODULE}@{}", settings.version), "pristine");
    let packages = bench.package_count(&pristine, PACKAGE);
    let key = bench.signing_key();

    let mut results: Vec<Scenario> = SCENARIOS.iter().map(|_| Scenario::default()).collect();
    for round in 0..settings.runs {
        // Each round starts from pristine sources, empty caches and empty registries.
        let (local, remote) = (bench.scratch.join("local"), bench.scratch.join("remote"));
        for dir in [&local, &remote] {
            wipe(dir);
            copy_dir(&pristine, dir);
        }
        wipe(&bench.local_gocache());
        let cluster = Cluster::start(&bench, &format!("round{round}"), true);
        let registry = Registry::start(&bench, &format!("round{round}"));
        for (scenario, name) in SCENARIOS.iter().enumerate() {
            if *name == "one-file" {
                edit(&local, round);
                edit(&remote, round);
            }
            let tag = format!("r{round}");
            let baseline = bench.baseline(&local, &registry, &tag, &key);
            let (cached, hits) = bench.cached(&cluster, &remote, &tag, &key);
            eprintln!(
                "round {round} {name:<9}  baseline {:6.1?}  cached {:6.1?} ({hits})",
                baseline.total(),
                cached.total()
            );
            results[scenario].baseline.push(baseline);
            results[scenario].cached.push(cached);
            results[scenario].hits.push(hits);
        }
    }
    print_report(&settings, packages, &results);
}

fn print_report(settings: &Settings, packages: usize, results: &[Scenario]) {
    println!(
        "crane ({MODULE} {}, {packages} packages with dependencies), 4 targets, 2 of them imaged; \
         2 agents x {} build(s); this machine has {} CPUs\n",
        settings.version,
        settings.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let seed = |stage: &str| {
        SEED.iter().find(|(name, _)| *name == stage).map_or("-".to_owned(), |(_, secs)| format!("{secs:.1}s"))
    };
    let medians = |runs: &[Stages], stage: fn(&Stages) -> Duration| -> String {
        let times: Vec<Duration> = runs.iter().map(stage).collect();
        if times.iter().all(Duration::is_zero) {
            return "-".to_owned();
        }
        format!("{:.1}s", median(&times).as_secs_f64())
    };
    type Stage = (&'static str, &'static str, fn(&Stages) -> Duration);
    let stages: [Stage; 6] = [
        ("upload", "-", |s| s.upload),
        ("build", "build", |s| s.build),
        ("image", "image", |s| s.image),
        ("push / publish", "push", |s| s.publish),
        ("sign", "-", |s| s.sign),
        ("**total**", "-", Stages::total),
    ];
    println!(
        "| stage | seed pipeline | go build x4 + ko-style + registry: cold / unchanged / one-file | \
         cachectl submit --image + cached registry: cold / unchanged / one-file |"
    );
    println!("| --- | --- | --- | --- |");
    for (label, seed_stage, stage) in stages {
        let cells = |pick: fn(&Scenario) -> &[Stages]| {
            results.iter().map(|scenario| medians(pick(scenario), stage)).collect::<Vec<_>>().join(" / ")
        };
        let seed_cell =
            if label == "**total**" { "7m53s (whole pipeline)".to_owned() } else { seed(seed_stage) };
        println!("| {label} | {seed_cell} | {} | {} |", cells(|s| &s.baseline), cells(|s| &s.cached));
    }
    println!("\n| scenario | baseline total | cached total | cached hits |");
    println!("| --- | --- | --- | --- |");
    for (name, scenario) in SCENARIOS.iter().zip(results) {
        let totals = |runs: &[Stages]| runs.iter().map(Stages::total).collect::<Vec<_>>();
        println!(
            "| {name} | {} | {} | {} |",
            cell(&totals(&scenario.baseline), 1),
            cell(&totals(&scenario.cached), 1),
            scenario.hits.join(", ")
        );
    }
    println!(
        "\nmedians of {} rounds (min–max); cached's job stage includes the agents' layering and the index, and \
         downloading the binaries; load average after: {}",
        settings.runs,
        load()
    );
}

/// The driver's own steps on the shared go environment.
trait DeliveryRuns {
    fn signing_key(&self) -> (PathBuf, PathBuf);
    fn baseline(&self, module: &Path, registry: &Registry, tag: &str, key: &(PathBuf, PathBuf)) -> Stages;
    fn cached(
        &self,
        cluster: &Cluster,
        module: &Path,
        tag: &str,
        key: &(PathBuf, PathBuf),
    ) -> (Stages, String);
    fn sign(&self, module: &Path, reference: &str, key: &(PathBuf, PathBuf)) -> Duration;
}

impl DeliveryRuns for GoBench {
    /// A plain ECDSA P-256 key (cosign's algorithm) and its public half.
    fn signing_key(&self) -> (PathBuf, PathBuf) {
        let (key, public) = (self.scratch.join("sign.key"), self.scratch.join("sign.pub"));
        let mut generate = Command::new("openssl");
        generate
            .args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"])
            .arg(&key);
        run(generate, "openssl genpkey");
        let mut export = Command::new("openssl");
        export.args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(&public);
        run(export, "openssl pkey -pubout");
        (key, public)
    }

    /// The usual pipeline: build, layer, push, sign.
    fn baseline(&self, module: &Path, registry: &Registry, tag: &str, key: &(PathBuf, PathBuf)) -> Stages {
        let dist = self.scratch.join("dist-local");
        let layout = self.scratch.join("layout-local");
        wipe(&dist);
        wipe(&layout);
        let mut stages = Stages::default();

        let started = Instant::now();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        for batch in MATRIX.chunks(cores) {
            std::thread::scope(|scope| {
                for (goos, goarch) in batch {
                    let mut command = self.go(module, &["build", "-trimpath", "-o"]);
                    command
                        .arg(format!("{}/", dist.join(format!("{goos}_{goarch}")).display()))
                        .arg(PACKAGE)
                        .env("GOOS", goos)
                        .env("GOARCH", goarch);
                    scope.spawn(move || run(command, &format!("go build for {goos}/{goarch}")));
                }
            });
        }
        stages.build = started.elapsed();

        let started = Instant::now();
        let mut image = self.cachectl(module, &["--server", "http://127.0.0.1:9", "image", "--no-cache"]);
        image.args(["--name", NAME, "--tag", tag, "--oci-layout"]).arg(&layout);
        for arch in ["amd64", "arm64"] {
            image
                .arg("--platform")
                .arg(format!("linux/{arch}={}", dist.join(format!("linux_{arch}/{NAME}")).display()));
        }
        run(image, "cachectl image (baseline layering)");
        stages.image = started.elapsed();

        let reference = format!("{}/{NAME}:{tag}", registry.addr);
        let started = Instant::now();
        let mut push = Command::new("skopeo");
        push.args(["copy", "--all", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{reference}"));
        run(push, "skopeo copy (baseline push)");
        stages.publish = started.elapsed();

        stages.sign = self.sign(module, &reference, key);
        stages
    }

    /// The chain through cached, one command; the stages, and how many targets were build hits
    /// (or that cached answered with an earlier job).
    fn cached(
        &self,
        cluster: &Cluster,
        module: &Path,
        tag: &str,
        key: &(PathBuf, PathBuf),
    ) -> (Stages, String) {
        let dist = self.scratch.join("dist-remote");
        wipe(&dist);
        let targets = MATRIX.iter().map(|(os, arch)| format!("{os}/{arch}")).collect::<Vec<_>>().join(",");
        let registry = cluster.registry.as_deref().expect("the cluster serves a registry");
        let reference = format!("{registry}/main/{NAME}:{tag}");
        let mut submit = self.cachectl(module, &["--server", &cluster.url, "submit", "--targets", &targets]);
        submit.args(["--image", &reference, "--sign-key"]).arg(&key.0).arg("-o").arg(&dist).arg(PACKAGE);
        let lines = timed_lines(submit, "cachectl submit");
        // The stages end when submit prints: the upload's summary, the job's end (after the
        // binaries are downloaded), the push, and the signature (the exit).
        let at = |prefix: &str| -> Duration {
            lines.iter().find(|(_, line)| line.starts_with(prefix)).map(|(at, _)| *at).unwrap_or_else(|| {
                let text: Vec<&str> = lines.iter().map(|(_, line)| line.as_str()).collect();
                panic!("submit printed no {prefix:?} line:\n{}", text.join("\n"))
            })
        };
        let (uploaded, job, pushed) = (at("uploaded "), at("job "), at("pushed "));
        let signed = lines.last().map_or(pushed, |(at, _)| *at);
        let job = lines
            .iter()
            .rev()
            .find(|(_, line)| line.starts_with("job ") && line.contains(" in "))
            .map_or(job, |(at, _)| *at);
        let hits = lines
            .iter()
            .map(|(_, line)| line)
            .filter(|line| line.contains(" agent-") && !line.starts_with("image index"))
            .filter(|line| line.split_whitespace().nth(2) == Some("hit"))
            .count();
        let reused = lines.iter().any(|(_, line)| line.starts_with("job ") && line.contains("(reused"));
        let hits = if reused { "job reused".to_owned() } else { format!("{hits}/4 hits") };
        let stages = Stages {
            upload: uploaded,
            build: job.saturating_sub(uploaded),
            image: Duration::ZERO,
            publish: pushed.saturating_sub(job),
            sign: signed.saturating_sub(pushed),
        };
        // Pullable from cached, and signed.
        let mut pull = Command::new("skopeo");
        pull.args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{reference}"));
        run(pull, "skopeo inspect (pull from cached)");
        let mut verify = self.cachectl(module, &["verify", &reference, "--key"]);
        verify.arg(&key.1);
        run(verify, "cachectl verify");
        (stages, hits)
    }

    fn sign(&self, module: &Path, reference: &str, key: &(PathBuf, PathBuf)) -> Duration {
        let mut sign = self.cachectl(module, &["sign", reference, "--key"]);
        sign.arg(&key.0);
        let started = Instant::now();
        run(sign, "cachectl sign");
        started.elapsed()
    }
}

/// A cached with its registry, and two runner agents, each with fresh directories; stopped
/// and removed on drop.
/// distribution's registry on loopback with its own storage; stopped and removed on drop.
struct Registry {
    addr: String,
    child: Child,
    dir: PathBuf,
}

impl Registry {
    fn start(bench: &GoBench, name: &str) -> Self {
        let dir = bench.scratch.join(format!("registry-{name}"));
        std::fs::create_dir_all(&dir).expect("registry dir");
        let addr = free_addr();
        let config = dir.join("config.yml");
        let yaml = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n",
            dir.join("storage").display()
        );
        std::fs::write(&config, yaml).expect("registry config");
        let child = Command::new(REGISTRY_TOOL)
            .arg("serve")
            .arg(&config)
            // No tracing exporter to reach.
            .env("OTEL_TRACES_EXPORTER", "none")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("registry.log")).expect("log"))
            .spawn()
            .expect("start distribution-registry");
        wait_listening(&addr, "distribution-registry");
        Self { addr, child, dir }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Appends an init function to the edited file, a different one each round, so the binaries
/// (and so the images) change.
fn edit(module: &Path, round: usize) {
    let path = module.join(EDITED);
    let mut text = std::fs::read_to_string(&path).expect("read the edited file");
    text.push_str(&format!(
        "\nvar deliveryBenchEdit{round} []int\n\nfunc init() {{ deliveryBenchEdit{round} = append(deliveryBenchEdit{round}, {round}) }}\n"
    ));
    std::fs::write(&path, text).expect("write the edited file");
}

/// Runs a command to success; each line it printed (stdout and stderr) with when it came,
/// since the start. The last entry is the exit, as an empty line.
fn timed_lines(mut command: Command, what: &str) -> Vec<(Duration, String)> {
    use std::io::BufRead as _;
    let started = Instant::now();
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect(what);
    let (stdout, stderr) = (child.stdout.take().expect("stdout"), child.stderr.take().expect("stderr"));
    let read = |stream: &mut dyn std::io::Read| {
        std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
            .map(|line| (started.elapsed(), line))
            .collect::<Vec<_>>()
    };
    let (mut lines, status, exited) = std::thread::scope(|scope| {
        let errors = scope.spawn(move || read(&mut { stderr }));
        let mut lines = read(&mut { stdout });
        let status = child.wait().expect(what);
        let exited = started.elapsed();
        lines.extend(errors.join().expect("stderr reader"));
        (lines, status, exited)
    });
    lines.sort_by_key(|(at, _)| *at);
    let text: Vec<&str> = lines.iter().map(|(_, line)| line.as_str()).collect();
    assert!(status.success(), "{what} failed:\n{}", text.join("\n"));
    lines.push((exited, String::new()));
    lines
}
