//! Large and many blobs through `cachectl put/get`, against bazel-remote's HTTP CAS driven
//! with curl, as its users drive it (`PUT`/`GET /cas/<sha256>`).
//!
//! Workloads: one blob of `--size-mib` MiB (default 1 GiB) that compresses like linked Go
//! binaries (a real Go binary tiled, random bytes sprinkled so no tile repeats), and
//! `--small-count` blobs of 64 KiB (default 2,000) like package archives. Each round starts
//! both servers on empty directories and runs, taking turns, cached's then bazel-remote's put
//! and get of each workload; every number is the median of `--runs` rounds (min–max), with the
//! CPU seconds of the client (cachectl or curl) and of the server. cached runs embedded in this
//! process, so its CPU is this process's; bazel-remote's is read from /proc.
//!
//! Many small blobs: `cachectl put` takes them all in one process; curl gets one process with
//! every transfer in a config file (`-K`, one reused connection); `cachectl get` takes every
//! digest in one call with `--output-dir`.
//!
//! Also printed, for scale: this machine's single-core zstd decode and BLAKE3 speed on the
//! large blob's frames, in process.
//!
//! Build and run (bazel-remote from scripts/setup):
//!   cargo build --release -p cachectl -p cached-benches
//!   target/release/blobs_bench [--runs 5] [--size-mib 1024] [--small-count 2000]
//!     [--transfer-compression auto|zstd|none] [--bazel-remote PATH] [--cachectl PATH]

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cached_benches::EmbeddedServer;
use cached_benches::cpu::CpuTimes;
use cached_benches::report::{cell, load, median, ratio};
use cached_benches::workspace::sibling_or;
use clap::Parser as _;
use sha2::Digest as _;

const SMALL_SIZE: usize = 64 << 10;

#[derive(clap::Parser)]
struct Args {
    /// Rounds; every variant runs once per round.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Size of the large blob in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: usize,
    /// Number of 64 KiB blobs.
    #[arg(long, default_value_t = 2000)]
    small_count: usize,
    /// Passed to `cachectl get` (auto, zstd or none).
    #[arg(long, default_value = "zstd")]
    transfer_compression: String,
    /// cachectl to run [default: the one built next to this binary].
    #[arg(long, env = "CACHECTL")]
    cachectl: Option<PathBuf>,
    /// bazel-remote to run [default: bazel-remote on PATH, as scripts/setup installs it].
    #[arg(long, env = "BAZEL_REMOTE", default_value = "bazel-remote")]
    bazel_remote: PathBuf,
}

struct Settings {
    runs: usize,
    cachectl: PathBuf,
    bazel_remote: PathBuf,
    transfer_compression: String,
}

/// A blob set on disk: the files, their cached digests and their SHA-256 (bazel-remote's key).
struct Blobs {
    files: Vec<PathBuf>,
    digests: Vec<String>,
    sha256: Vec<String>,
    bytes: u64,
}

/// Wall and CPU seconds of one step.
#[derive(Default, Clone, Copy)]
struct Sample {
    wall: Duration,
    client_cpu: Duration,
    server_cpu: Duration,
}

/// One step's samples over every round.
#[derive(Default)]
struct Series(Vec<Sample>);

impl Series {
    fn walls(&self) -> Vec<Duration> {
        self.0.iter().map(|s| s.wall).collect()
    }
    fn median_of(&self, pick: impl Fn(&Sample) -> Duration) -> Duration {
        median(&self.0.iter().map(pick).collect::<Vec<_>>())
    }
}

fn main() {
    let args = Args::parse();
    let settings = Settings {
        runs: args.runs.max(1),
        cachectl: sibling_or(args.cachectl, "cachectl").unwrap_or_else(|err| fail(&err)),
        bazel_remote: find_program(&args.bazel_remote).unwrap_or_else(|| {
            fail("bazel-remote not found: run `. scripts/setup` (it builds bazel-remote) or pass --bazel-remote")
        }),
        transfer_compression: args.transfer_compression,
    };
    let scratch = tempfile::tempdir().expect("temp dir");
    let scratch = scratch.path();
    eprintln!("preparing data in {}", scratch.display());
    let large = large_blob(scratch, args.size_mib << 20);
    let small = small_blobs(scratch, args.small_count);
    let (decode_speed, hash_speed) = local_speeds(&large.files[0]);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut results: Vec<(String, Series, Series)> = Vec::new();
    let steps = ["put large", "get large", "put small", "get small"];
    for name in steps {
        results.push((name.to_owned(), Series::default(), Series::default()));
    }
    for round in 0..settings.runs {
        let server = runtime.block_on(EmbeddedServer::start());
        let bazel = BazelRemote::start(&settings.bazel_remote, &scratch.join(format!("bazel-{round}")));
        let cached = Cached { settings: &settings, url: server.url() };
        let out = scratch.join(format!("out-{round}"));
        for (index, (blobs, kind)) in [(&large, "large"), (&small, "small")].into_iter().enumerate() {
            let put = cached.put(blobs);
            let bazel_put = bazel.put(blobs, scratch);
            let get = cached.get(blobs, &out.join(format!("cached-{kind}")));
            let bazel_get = bazel.get(blobs, scratch, &out.join(format!("bazel-{kind}")));
            eprintln!(
                "  #{round} {kind}: put {:.2?} vs {:.2?}, get {:.2?} vs {:.2?}",
                put.wall, bazel_put.wall, get.wall, bazel_get.wall
            );
            results[index * 2].1.0.push(put);
            results[index * 2].2.0.push(bazel_put);
            results[index * 2 + 1].1.0.push(get);
            results[index * 2 + 1].2.0.push(bazel_get);
        }
        drop(bazel);
        drop(server);
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_dir_all(scratch.join(format!("bazel-{round}")));
    }
    print_table(&results, &large, &small, &settings, decode_speed, hash_speed);
}

fn fail(message: &str) -> ! {
    eprintln!("blobs_bench: {message}");
    std::process::exit(2);
}

fn find_program(given: &Path) -> Option<PathBuf> {
    if given.components().count() > 1 {
        return given.is_file().then(|| given.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(given)).find(|p| p.is_file())
}

/// Tiles a real Go binary (the go command's compiler) to `len` bytes, overwriting 16 random
/// bytes in every 4 KiB so that no tile repeats: it compresses like linked Go binaries
/// (about 1.8x) and no frame is a copy of another.
fn large_blob(scratch: &Path, len: usize) -> Blobs {
    let seed_binary = go_binary();
    let mut rng = XorShift(0x5EED_1234_ABCD_0001);
    let path = scratch.join("large.bin");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create large blob"));
    let mut written = 0;
    while written < len {
        let mut tile = seed_binary.clone();
        for page in tile.chunks_mut(4096) {
            for _ in 0..16 {
                let at = (rng.next() as usize) % page.len();
                page[at] = rng.next() as u8;
            }
        }
        let take = tile.len().min(len - written);
        file.write_all(&tile[..take]).expect("write large blob");
        written += take;
    }
    file.flush().expect("flush large blob");
    drop(file);
    blobs(vec![path])
}

fn go_binary() -> Vec<u8> {
    let output = Command::new("go").args(["env", "GOTOOLDIR"]).output().expect("run go env");
    let dir = String::from_utf8(output.stdout).expect("GOTOOLDIR is UTF-8");
    std::fs::read(Path::new(dir.trim()).join("compile")).expect("read the Go compiler binary")
}

/// `count` blobs of 64 KiB that compress like Go package archives.
fn small_blobs(scratch: &Path, count: usize) -> Blobs {
    let dir = scratch.join("small");
    std::fs::create_dir_all(&dir).expect("create small dir");
    let files = (0..count)
        .map(|i| {
            let path = dir.join(format!("{i:05}.a"));
            std::fs::write(&path, cached_benches::build_output_like(SMALL_SIZE, i as u64 + 1))
                .expect("write");
            path
        })
        .collect();
    blobs(files)
}

fn blobs(files: Vec<PathBuf>) -> Blobs {
    let mut digests = Vec::new();
    let mut sha256 = Vec::new();
    let mut bytes = 0;
    for file in &files {
        let data = std::fs::read(file).expect("read blob");
        bytes += data.len() as u64;
        digests.push(format!("{}/{}", blake3::hash(&data).to_hex(), data.len()));
        sha256.push(hex(&sha2::Sha256::digest(&data)));
    }
    Blobs { files, digests, sha256, bytes }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Single-core zstd decode (level-3 frames, reused buffer) and BLAKE3 speeds in MiB/s, on
/// the large blob: the ceilings a verified download on one core cannot beat.
fn local_speeds(path: &Path) -> (f64, f64) {
    let data = std::fs::read(path).expect("read large blob");
    let mut compressor = zstd::bulk::Compressor::new(3).expect("zstd");
    let frames: Vec<Vec<u8>> =
        data.chunks(proto::FRAME_SIZE).map(|raw| compressor.compress(raw).expect("compress")).collect();
    let mut decompressor = zstd::bulk::Decompressor::new().expect("zstd");
    let mut buffer = vec![0u8; proto::FRAME_SIZE];
    let start = Instant::now();
    for frame in &frames {
        decompressor.decompress_to_buffer(frame, &mut buffer).expect("decompress");
    }
    let decode = start.elapsed();
    let start = Instant::now();
    let mut hasher = blake3::Hasher::new();
    for raw in data.chunks(proto::FRAME_SIZE) {
        hasher.update(raw);
    }
    std::hint::black_box(hasher.finalize());
    let hash = start.elapsed();
    let mib = data.len() as f64 / f64::from(1 << 20);
    (mib / decode.as_secs_f64(), mib / hash.as_secs_f64())
}

/// CPU time of a process from /proc: its own threads, or the children it has waited for.
fn cpu_of(pid: &str, children: bool) -> Duration {
    let times = CpuTimes::of(pid);
    Duration::from_secs_f64(if children { times.children } else { times.own })
}

/// Runs `command` to completion; its CPU, and the server's (read by `server_cpu`) over it.
fn timed(mut command: Command, server_cpu: impl Fn() -> Duration) -> Sample {
    settle();
    let children_before = cpu_of("self", true);
    let server_before = server_cpu();
    let start = Instant::now();
    let output = command.stdout(Stdio::null()).stderr(Stdio::piped()).output().expect("run client");
    let wall = start.elapsed();
    assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    Sample {
        wall,
        client_cpu: cpu_of("self", true) - children_before,
        server_cpu: server_cpu() - server_before,
    }
}

/// Lets the writes of the step before reach the disk, so no step pays for another's.
fn settle() {
    if let Err(err) = Command::new("sync").status() {
        eprintln!("  (sync failed: {err})");
    }
}

struct Cached<'a> {
    settings: &'a Settings,
    url: String,
}

impl Cached<'_> {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.settings.cachectl);
        command.env("CACHED_ADDR", &self.url);
        command
    }

    fn put(&self, blobs: &Blobs) -> Sample {
        let mut command = self.command();
        command.arg("put").args(&blobs.files);
        timed(command, || cpu_of("self", false))
    }

    fn get(&self, blobs: &Blobs, out: &Path) -> Sample {
        std::fs::create_dir_all(out).expect("create output dir");
        let mut command = self.command();
        command.arg("get").arg("--transfer-compression").arg(&self.settings.transfer_compression);
        if let [digest] = blobs.digests.as_slice() {
            command.arg(digest).arg("-o").arg(out.join("blob"));
        } else {
            command.arg("--output-dir").arg(out).args(&blobs.digests);
        }
        let sample = timed(command, || cpu_of("self", false));
        check_outputs(
            blobs,
            out,
            |i| blobs.digests[i].split('/').next().unwrap_or_default().to_owned(),
            true,
        );
        sample
    }
}

/// Checks a download landed whole: sizes always, and the large blob's bytes once a round.
fn check_outputs(blobs: &Blobs, out: &Path, name: impl Fn(usize) -> String, single_named_blob: bool) {
    for (i, file) in blobs.files.iter().enumerate() {
        let landed =
            if blobs.files.len() == 1 && single_named_blob { out.join("blob") } else { out.join(name(i)) };
        let expected = std::fs::metadata(file).expect("source").len();
        let actual = std::fs::metadata(&landed).map(|m| m.len()).unwrap_or(u64::MAX);
        assert_eq!(actual, expected, "{} did not land whole", landed.display());
    }
}

struct BazelRemote {
    child: Child,
    url: String,
}

impl BazelRemote {
    fn start(program: &Path, dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let child = Command::new(program)
            .arg("--dir")
            .arg(dir)
            .args(["--max_size", "64", "--http_address", &format!("127.0.0.1:{port}")])
            .args(["--grpc_address", "none", "--access_log_level", "none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bazel-remote");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "bazel-remote did not listen on {url}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, url }
    }

    fn cpu(&self) -> Duration {
        cpu_of(&self.child.id().to_string(), false)
    }

    /// One curl for every blob, its transfers in a config file: one process, one connection.
    fn curl(&self, scratch: &Path, name: &str, transfers: impl Iterator<Item = String>) -> Command {
        let config = scratch.join(format!("{name}.curl"));
        // `next` separates transfers; one after the last would start an empty one.
        let text = transfers.collect::<Vec<_>>().join("next\n");
        std::fs::write(&config, text).expect("write curl config");
        let mut command = Command::new("curl");
        command.args(["--silent", "--show-error", "--fail", "--config"]).arg(config);
        command
    }

    fn put(&self, blobs: &Blobs, scratch: &Path) -> Sample {
        let transfers = blobs.files.iter().zip(&blobs.sha256).map(|(file, sha)| {
            format!("url = \"{}/cas/{sha}\"\nupload-file = \"{}\"\n", self.url, file.display())
        });
        let command = self.curl(scratch, "put", transfers);
        timed(command, || self.cpu())
    }

    fn get(&self, blobs: &Blobs, scratch: &Path, out: &Path) -> Sample {
        std::fs::create_dir_all(out).expect("create output dir");
        let transfers = blobs.sha256.iter().map(|sha| {
            format!("url = \"{}/cas/{sha}\"\noutput = \"{}\"\n", self.url, out.join(sha).display())
        });
        let command = self.curl(scratch, "get", transfers);
        let sample = timed(command, || self.cpu());
        check_outputs(blobs, out, |i| blobs.sha256[i].clone(), false);
        sample
    }
}

impl Drop for BazelRemote {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn print_table(
    results: &[(String, Series, Series)],
    large: &Blobs,
    small: &Blobs,
    settings: &Settings,
    decode_speed: f64,
    hash_speed: f64,
) {
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    println!(
        "large: 1 × {:.0} MiB; small: {} × 64 KiB; {} rounds; cachectl get --transfer-compression {}; load {}",
        mib(large.bytes),
        small.files.len(),
        settings.runs,
        settings.transfer_compression,
        load()
    );
    println!(
        "this machine, 1 core, in process: zstd decode {decode_speed:.0} MiB/s, BLAKE3 {hash_speed:.0} MiB/s\n"
    );
    println!(
        "| step | cachectl + cached | curl + bazel-remote | bazel-remote / cached | cached MiB/s | bazel-remote MiB/s | CPU s cachectl / cached | CPU s curl / bazel-remote |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, ours, theirs) in results {
        let bytes = if name.ends_with("large") { large.bytes } else { small.bytes };
        let speed = |series: &Series| mib(bytes) / median(&series.walls()).as_secs_f64();
        let cpu = |series: &Series| {
            format!(
                "{:.2} / {:.2}",
                series.median_of(|s| s.client_cpu).as_secs_f64(),
                series.median_of(|s| s.server_cpu).as_secs_f64()
            )
        };
        println!(
            "| {name} | {} | {} | {:.2} | {:.0} | {:.0} | {} | {} |",
            cell(&ours.walls(), 3),
            cell(&theirs.walls(), 3),
            ratio(&theirs.walls(), &ours.walls()),
            speed(ours),
            speed(theirs),
            cpu(ours),
            cpu(theirs)
        );
    }
}
