//! End-to-end benchmark of the shared tier (issue 18): replicas on one S3-compatible bucket
//! (versitygw on loopback, as in the tests) against one machine, in the same run.
//!
//! - Blobs: `put` and `get` of one 1 GiB blob and of 2,000 × 64 KiB blobs, on one machine and
//!   through replicas: put through A (write-through), get through B with an empty local tier
//!   (fall-through: every blob comes from the bucket), get through B again (local hits).
//! - A fresh runner (empty GOCACHE and bridge tier) building the fixture module through the
//!   bridge, warmed before: through the single node, and through a new replica B whose local
//!   tier is empty (warmed through A).
//!
//! Every variant is the median of `--runs` runs. Build the binaries in one profile, then run:
//!   cargo build --release --workspace --bins && scripts/setup   # versitygw
//!   target/release/replicas_bench [--runs 3]

#![forbid(unsafe_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cached_benches::build_output_like;
use cached_benches::report::{cell, load, median, ratio};
use cached_benches::workspace::sealed_go_env;
use cached_client::connect::{Client, ConnectOptions};
use cached_e2e::s3::S3Server;
use cached_e2e::{Daemon, binary};
use clap::Parser as _;
use futures::{StreamExt as _, TryStreamExt as _};
use proto::Digest;

const SMALL_BLOBS: usize = 2_000;
const SMALL_SIZE: usize = 64 << 10;
const BIG_SIZE: usize = 1 << 30;
/// Blobs per BatchWrite (6.4 MiB, under the message limit) and requests in flight.
const BATCH: usize = 100;
const IN_FLIGHT: usize = 16;

#[derive(clap::Parser)]
struct Args {
    /// Runs per variant.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// The times of one workload's variants, one per run.
#[derive(Default)]
struct Times {
    single_put: Vec<Duration>,
    single_get: Vec<Duration>,
    shared_put: Vec<Duration>,
    bucket_get: Vec<Duration>,
    local_get: Vec<Duration>,
}

fn main() {
    let runs = Args::parse().runs.max(1);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let s3 = S3Server::start();
    let scratch = tempfile::tempdir().expect("temp dir");
    eprintln!("replicas_bench: {runs} runs per variant; load {}", load());

    let mut small = Times::default();
    let mut big = Times::default();
    for run in 0..runs {
        let blobs = small_blobs(run);
        small_round(&runtime, &s3, &blobs, &mut small);
        let file = scratch.path().join(format!("big-{run}"));
        let data = build_output_like(BIG_SIZE, 1_000 + run as u64);
        std::fs::write(&file, &data).expect("write the 1 GiB blob");
        big_round(&runtime, &s3, &file, Digest::of(&data), &mut big);
        std::fs::remove_file(&file).expect("remove the 1 GiB blob");
        eprintln!("  blobs #{run} done");
    }
    let builds = fresh_runners(&s3, scratch.path(), runs);

    println!(
        "| blobs | one machine: put | get | replicas: put through A | get through B (from the bucket) | get through B (local) | put time A/one | get time bucket/one |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    row("2,000 × 64 KiB", &small, (SMALL_BLOBS * SMALL_SIZE) as f64);
    row("1 GiB", &big, BIG_SIZE as f64);
    println!();
    println!("| fresh runner, `go build -trimpath ./...` of tests/fixtures/gomod | time |");
    println!("| --- | --- |");
    println!("| through one machine (warm) | {} |", cell(&builds[0], 2));
    println!("| through replica B, empty local tier (warmed through A) | {} |", cell(&builds[1], 2));
    println!("| B / one machine | {:.2} |", ratio(&builds[1], &builds[0]));
    println!("\nload after: {}", load());
}

fn row(name: &str, times: &Times, bytes: f64) {
    let rate =
        |times: &[Duration]| format!("{:.0} MiB/s", bytes / (1 << 20) as f64 / median(times).as_secs_f64());
    println!(
        "| {name} | {} | {} | {} | {} | {} | {:.2} | {:.2} |",
        rate(&times.single_put),
        rate(&times.single_get),
        rate(&times.shared_put),
        rate(&times.bucket_get),
        rate(&times.local_get),
        ratio(&times.shared_put, &times.single_put),
        ratio(&times.bucket_get, &times.single_get),
    );
}

fn small_blobs(run: usize) -> Vec<(Digest, Bytes)> {
    (0..SMALL_BLOBS)
        .map(|index| {
            let data = Bytes::from(build_output_like(SMALL_SIZE, (run * SMALL_BLOBS + index) as u64));
            (Digest::of(&data), data)
        })
        .collect()
}

async fn connect(daemon: &Daemon) -> Client {
    Client::connect(&daemon.url(), &ConnectOptions::default()).await.expect("connect")
}

async fn timed<F: std::future::Future<Output = ()>>(work: F) -> Duration {
    let start = Instant::now();
    work.await;
    start.elapsed()
}

async fn put_small(client: &Client, blobs: &[(Digest, Bytes)]) {
    futures::stream::iter(blobs.chunks(BATCH))
        .map(|batch| cached_client::transfer::batch_write(client, batch.to_vec(), 1))
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .expect("batch write");
}

async fn get_small(client: &Client, blobs: &[(Digest, Bytes)]) {
    futures::stream::iter(blobs)
        .map(|(digest, data)| async move {
            let read = cached_client::tree::read_blob(client, *digest).await.expect("read");
            assert!(read == data[..], "another blob came back");
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
}

fn small_round(
    runtime: &tokio::runtime::Runtime,
    s3: &S3Server,
    blobs: &[(Digest, Bytes)],
    times: &mut Times,
) {
    let (single, a, b) = (Daemon::start(), s3.replica(), s3.replica());
    runtime.block_on(async {
        let (single, a, b) = (connect(&single).await, connect(&a).await, connect(&b).await);
        times.single_put.push(timed(put_small(&single, blobs)).await);
        times.single_get.push(timed(get_small(&single, blobs)).await);
        times.shared_put.push(timed(put_small(&a, blobs)).await);
        times.bucket_get.push(timed(get_small(&b, blobs)).await);
        times.local_get.push(timed(get_small(&b, blobs)).await);
    });
}

fn big_round(
    runtime: &tokio::runtime::Runtime,
    s3: &S3Server,
    file: &Path,
    digest: Digest,
    times: &mut Times,
) {
    let (single, a, b) = (Daemon::start(), s3.replica(), s3.replica());
    let out = file.with_extension("out");
    runtime.block_on(async {
        let (single, a, b) = (connect(&single).await, connect(&a).await, connect(&b).await);
        let put = |client: Client| {
            let file = file.to_owned();
            async move { cached_client::transfer::upload_file(&client, &file, digest, 1).await.expect("put") }
        };
        let get = |client: Client| {
            let out = out.clone();
            async move { cached_client::transfer::download_to_file(&client, digest, &out).await.expect("get") }
        };
        times.single_put.push(timed(put(single.clone())).await);
        times.single_get.push(timed(get(single)).await);
        times.shared_put.push(timed(put(a)).await);
        times.bucket_get.push(timed(get(b.clone())).await);
        times.local_get.push(timed(get(b)).await);
    });
    let _ = std::fs::remove_file(out);
}

/// Fresh-runner builds: [through the single node, through a new replica B].
fn fresh_runners(s3: &S3Server, scratch: &Path, runs: usize) -> [Vec<Duration>; 2] {
    let single = Daemon::start();
    let a = s3.replica();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gomod");
    let build = |daemon: &Daemon, name: &str| -> Duration {
        let dir = scratch.join(name);
        let mut command = Command::new("go");
        command
            .args(["build", "-trimpath", "-o", "/dev/null", "./..."])
            .current_dir(&fixture)
            .env_clear()
            .envs(sealed_go_env(&dir, &dir.join("gomodcache"), &dir.join("gocache"), "off"))
            .env("GOCACHEPROG", format!("{} gocacheprog", binary("cachectl").display()))
            .env("CACHED_ADDR", daemon.url())
            .env("CACHED_GOCACHE_DIR", dir.join("tier"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let _ = Command::new("sync").status();
        let start = Instant::now();
        let output = command.output().expect("run go");
        assert!(output.status.success(), "go failed: {}", String::from_utf8_lossy(&output.stderr));
        start.elapsed()
    };
    build(&single, "warm-single");
    build(&a, "warm-a");
    let mut times: [Vec<Duration>; 2] = Default::default();
    for run in 0..runs {
        times[0].push(build(&single, &format!("single-{run}")));
        let b = s3.replica();
        times[1].push(build(&b, &format!("replica-{run}")));
        eprintln!(
            "  fresh runner #{run}: one machine {:.2?}, replica B {:.2?}",
            times[0][run], times[1][run]
        );
    }
    times
}
