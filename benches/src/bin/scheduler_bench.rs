//! The scheduler under a burst (issue 19): 200 small jobs submitted at once, 4 runner agents,
//! jobs and leases in PostgreSQL (two cached replicas on one database) against the embedded
//! RocksDB backend (one cached), alternating which goes first in each run.
//!
//! A job is the one-package module of the tests for linux/amd64. Agents build it once per
//! replica while the cluster is primed; after that each build is a whole-build hit, so what is
//! measured is submitting, leasing, heartbeats and completions, not the compiler.
//!
//! Per backend, the median over `--runs` of: jobs per second (first submit to last job
//! finished) and the p50 and p99 time from a job's submission to its task's start (the lease
//! plus the agent's first report, `started_unix_ms`).
//!   cargo build --release --workspace --bins
//!   $CARGO_TARGET_DIR/release/scheduler_bench [--runs 3]

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use cached_benches::report::{load, median};
use cached_client::connect::ConnectOptions;
use cached_client::remote_exec::RemoteExec;
use cached_e2e::Daemon;
use cached_e2e::postgres::Postgres;
use cached_e2e::remote::{Agent, TinyModule};
use clap::Parser as _;
use proto::v1::{JobSpec, JobState, JobStatus, ListRequest, SubmitRequest};

/// Leases long enough that a loaded two-core machine never expires one (no agent dies here),
/// and room for the whole burst in the open-job caps.
const SERVER_FLAGS: &[&str] = &[
    "--heartbeat-interval",
    "1s",
    "--lease-timeout",
    "10s",
    "--max-open-jobs-per-namespace",
    "10000",
    "--max-open-jobs",
    "10000",
];

#[derive(clap::Parser)]
struct Args {
    /// Runs per backend.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Jobs submitted at once in each run.
    #[arg(long, default_value_t = 200)]
    jobs: usize,
    /// Runner agents.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Tasks each agent builds at once.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
}

#[derive(Clone, Copy, PartialEq)]
enum Backend {
    RocksDb,
    Postgres,
}

/// One run of one backend.
struct Burst {
    wall: Duration,
    /// Submission to start, one per job, sorted.
    to_start: Vec<Duration>,
}

impl Burst {
    fn jobs_per_second(&self) -> f64 {
        self.to_start.len() as f64 / self.wall.as_secs_f64()
    }

    fn percentile(&self, share: f64) -> Duration {
        let rank = ((self.to_start.len() as f64 * share).ceil() as usize).clamp(1, self.to_start.len());
        self.to_start[rank - 1]
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    eprintln!(
        "scheduler_bench: {} jobs, {} agents × {}, {} runs per backend; load {}",
        args.jobs,
        args.agents,
        args.concurrency,
        args.runs,
        load()
    );
    let (mut rocks, mut postgres) = (Vec::new(), Vec::new());
    for run in 0..args.runs.max(1) {
        let order = if run % 2 == 0 {
            [Backend::RocksDb, Backend::Postgres]
        } else {
            [Backend::Postgres, Backend::RocksDb]
        };
        for backend in order {
            let burst = burst(&runtime, backend, &args);
            eprintln!(
                "  run {run} {}: {:.1} jobs/s, p99 {:?}",
                name(backend),
                burst.jobs_per_second(),
                burst.percentile(0.99)
            );
            match backend {
                Backend::RocksDb => rocks.push(burst),
                Backend::Postgres => postgres.push(burst),
            }
        }
    }
    println!("| backend | jobs per second | submit → start p50 | p99 |");
    println!("| --- | --- | --- | --- |");
    row(Backend::RocksDb, &rocks);
    row(Backend::Postgres, &postgres);
    println!("\nload after: {}", load());
}

fn name(backend: Backend) -> &'static str {
    match backend {
        Backend::RocksDb => "RocksDB, one cached",
        Backend::Postgres => "PostgreSQL, two replicas",
    }
}

fn row(backend: Backend, bursts: &[Burst]) {
    let mut rates: Vec<f64> = bursts.iter().map(Burst::jobs_per_second).collect();
    rates.sort_by(f64::total_cmp);
    let p50: Vec<Duration> = bursts.iter().map(|burst| burst.percentile(0.5)).collect();
    let p99: Vec<Duration> = bursts.iter().map(|burst| burst.percentile(0.99)).collect();
    println!(
        "| {} | {:.1} ({:.1}–{:.1}) | {:.2}s | {:.2}s |",
        name(backend),
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1],
        median(&p50).as_secs_f64(),
        median(&p99).as_secs_f64()
    );
}

/// Starts the backend's servers and the agents, primes them, then times one burst.
fn burst(runtime: &tokio::runtime::Runtime, backend: Backend, args: &Args) -> Burst {
    let database = (backend == Backend::Postgres).then(Postgres::start);
    let servers: Vec<Daemon> = match &database {
        None => vec![server(&[])],
        Some(db) => (0..2).map(|_| server(&db.flags())).collect(),
    };
    let urls: Vec<String> = servers.iter().map(Daemon::url).collect();
    let _agents: Vec<Agent> = (0..args.agents)
        .map(|index| Agent::start(&rotated(&urls, index), &format!("agent-{index}"), args.concurrency))
        .collect();
    let tiny = TinyModule::new();
    // Each replica keeps its own blobs here: the module's tree and its build go into each.
    let primers: Vec<String> = urls.iter().map(|url| tiny.submit(url)).collect();
    tiny.wait_finished(&urls[0], &primers, Duration::from_secs(300));
    runtime.block_on(async {
        let remotes = connect_all(&urls).await;
        let spec = spec_of(&remotes[0], &primers[0]).await;
        let started = Instant::now();
        let ids = match submit_all(&remotes, &spec, args.jobs).await {
            Ok(ids) => ids,
            Err(status) => {
                let logs: Vec<String> = servers.iter().map(Daemon::log).collect();
                panic!("submit: {status:?}\nserver logs:\n{}", logs.join("\n---\n"))
            }
        };
        let jobs = wait_finished(&remotes[0], &ids).await;
        let wall = started.elapsed();
        let mut to_start: Vec<Duration> = jobs.iter().map(submit_to_start).collect();
        to_start.sort();
        Burst { wall, to_start }
    })
}

fn server(extra: &[String]) -> Daemon {
    let mut flags: Vec<&str> = SERVER_FLAGS.to_vec();
    flags.extend(extra.iter().map(String::as_str));
    Daemon::start_in(tempfile::tempdir().expect("data dir"), &flags)
}

/// The replicas as a comma list, starting at a different one for each agent.
fn rotated(urls: &[String], start: usize) -> String {
    let mut order = urls.to_vec();
    order.rotate_left(start % urls.len());
    order.join(",")
}

async fn connect_all(urls: &[String]) -> Vec<RemoteExec> {
    let mut remotes = Vec::new();
    for url in urls {
        remotes.push(RemoteExec::connect(url, &ConnectOptions::default()).await.expect("connect"));
    }
    remotes
}

async fn list(remote: &RemoteExec) -> Vec<JobStatus> {
    let request = ListRequest { limit: 100_000, all: true, ..ListRequest::default() };
    remote.jobs.clone().list(request).await.expect("list jobs").into_inner().jobs
}

/// The spec `cachectl submit` made for the primer, to submit again without the CLI's cost.
async fn spec_of(remote: &RemoteExec, job_id: &str) -> JobSpec {
    list(remote)
        .await
        .into_iter()
        .find(|job| job.job_id == job_id)
        .and_then(|job| job.spec)
        .expect("the primer's spec")
}

/// Submits `count` copies of `spec` at once, spread over the replicas; their ids.
async fn submit_all(
    remotes: &[RemoteExec],
    spec: &JobSpec,
    count: usize,
) -> Result<Vec<String>, tonic::Status> {
    let submits = (0..count).map(|index| {
        let mut jobs = remotes[index % remotes.len()].jobs.clone();
        // Copies of one spec: reusing the first finished job would measure no scheduling.
        let request = SubmitRequest { spec: Some(spec.clone()), rebuild: true };
        async move { Ok(jobs.submit(request).await?.into_inner().job_id) }
    });
    futures::future::try_join_all(submits).await
}

/// Polls until every job in `ids` finished; they must all have succeeded.
async fn wait_finished(remote: &RemoteExec, ids: &[String]) -> Vec<JobStatus> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let jobs: Vec<JobStatus> =
            list(remote).await.into_iter().filter(|job| ids.contains(&job.job_id)).collect();
        let done = jobs.iter().filter(|job| job.state() > JobState::Running).count();
        if jobs.len() == ids.len() && done == ids.len() {
            let failed: Vec<_> = jobs.iter().filter(|job| job.state() != JobState::Succeeded).collect();
            assert!(failed.is_empty(), "jobs that did not succeed: {failed:?}");
            return jobs;
        }
        assert!(Instant::now() < deadline, "{done} of {} jobs finished in 10 minutes", ids.len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn submit_to_start(job: &JobStatus) -> Duration {
    let started = job.tasks.iter().map(|task| task.started_unix_ms).max().unwrap_or_default();
    Duration::from_millis(u64::try_from(started - job.submitted_unix_ms).unwrap_or_default())
}
