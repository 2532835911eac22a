//! What one `submit` or `worker` token can make the scheduler hold or send, on both backends
//! (RocksDB, PostgreSQL):
//! - Jobs.List of many jobs with large specs: a reply stops at 1 MiB and says where to go on,
//!   so it never passes `max_message_size` (which tonic refused only after encoding it all),
//!   and paging with `before` lists every job once.
//! - Build output from an agent that ignores its own 8 MiB log cap: cached keeps about 8 MiB
//!   of each attempt's log, then one line saying the rest was dropped, and nothing more (in
//!   PostgreSQL every line was a `job_events` row); the task's completion is accepted as ever.

use std::time::Duration;

use cached_e2e::Daemon;
use cached_e2e::postgres::Postgres;
use proto::Digest;
use proto::v1::job_event::Kind;
use proto::v1::workers_client::WorkersClient;
use proto::v1::{self, jobs_client::JobsClient};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// Jobs of about 60 KiB each: together past the smallest `max_message_size` (2 MiB).
const JOBS: usize = 48;

#[tokio::test]
async fn listing_many_large_jobs_pages_within_the_message_size_on_rocksdb() {
    listing_many_large_jobs(&[]).await;
}

#[tokio::test]
async fn listing_many_large_jobs_pages_within_the_message_size_on_postgresql() {
    let db = Postgres::start();
    listing_many_large_jobs(&db.flags()).await;
}

fn start(backend: &[String], flags: &[&str]) -> Daemon {
    let mut all: Vec<&str> = flags.to_vec();
    all.extend(backend.iter().map(String::as_str));
    Daemon::start_in(tempfile::tempdir().unwrap(), &all)
}

/// A linux job whose image labels make its spec about 60 KiB (a spec is at most 64 KiB).
fn large_spec(n: usize) -> v1::JobSpec {
    let labels = (0..15).map(|i| (format!("label-{i}"), format!("{n}-{}", "x".repeat(4000)))).collect();
    v1::JobSpec {
        source_root: Some(Digest::of(b"tree").to_wire()),
        targets: vec!["linux/amd64".parse::<proto::Platform>().unwrap().to_wire("")],
        go_version: "go1.26.8".into(),
        image: Some(v1::ImageSpec { labels, ..v1::ImageSpec::default() }),
        ..v1::JobSpec::default()
    }
}

async fn list(jobs: &mut JobsClient<Channel>, before: &str) -> Result<v1::ListResponse, tonic::Status> {
    let request = v1::ListRequest { limit: 1000, all: true, before: before.to_owned() };
    Ok(jobs.list(request).await?.into_inner())
}

async fn listing_many_large_jobs(backend: &[String]) {
    let daemon = start(backend, &["--max-message-size", "2MiB"]);
    let mut jobs = JobsClient::connect(daemon.url()).await.unwrap().max_decoding_message_size(64 << 20);
    let mut submitted = Vec::new();
    for n in 0..JOBS {
        let request = v1::SubmitRequest { spec: Some(large_spec(n)), rebuild: false };
        submitted.push(jobs.submit(request).await.unwrap().into_inner().job_id);
    }
    let (mut listed, mut before, mut replies) = (Vec::new(), String::new(), 0);
    loop {
        let reply = list(&mut jobs, &before).await.unwrap_or_else(|status| panic!("List failed: {status:?}"));
        replies += 1;
        let bytes = prost::Message::encoded_len(&reply);
        assert!(bytes <= 1 << 20, "a reply of {bytes} bytes");
        listed.extend(reply.jobs.into_iter().map(|job| {
            assert!(job.spec.is_some_and(|spec| spec.image.is_some()), "jobs are listed whole");
            job.job_id
        }));
        if reply.next.is_empty() {
            break;
        }
        before = reply.next;
    }
    submitted.reverse();
    assert_eq!(listed, submitted, "every job once, newest first");
    assert!(replies > 2, "{JOBS} jobs of 60 KiB take more than two 1 MiB replies, not {replies}");
}

/// What cached keeps of one attempt's log (`cached::scheduler::logcap`): 8 MiB and 64 KiB.
const LOG_CAP: usize = (8 << 20) + (64 << 10);
/// One Progress call of a flooding agent: what a call may carry (64 KiB), and 150 of them.
const LINES_PER_CALL: usize = 15;
const LINE: usize = 4000;
const CALLS: usize = 150;

#[tokio::test]
async fn an_attempt_logging_past_the_cap_is_cut_once_and_still_completes_on_rocksdb() {
    let daemon = start(&[], &[]);
    let (logs, job) = flood_the_log(&daemon).await;
    check_cut_log(&logs, &job);
}

#[tokio::test]
async fn an_attempt_logging_past_the_cap_is_cut_once_and_still_completes_on_postgresql() {
    let db = Postgres::start();
    let daemon = start(&db.flags(), &[]);
    let (logs, job) = flood_the_log(&daemon).await;
    check_cut_log(&logs, &job);
    let stored: usize = db.query("SELECT coalesce(sum(length(event)), 0) FROM job_events").parse().unwrap();
    assert!(stored < LOG_CAP + (64 << 10), "job_events holds {stored} bytes");
}

/// A finished job's events (its build logs above all) are deleted from PostgreSQL once
/// watchers have had them: ten lease timeouts after it finished (here 1 s each). Before, the
/// last 1000 finished jobs kept every line, up to 8 MiB per task attempt.
#[tokio::test]
async fn a_finished_jobs_log_leaves_the_database_on_postgresql() {
    let db = Postgres::start();
    let daemon = start(&db.flags(), &["--lease-timeout", "1s", "--heartbeat-interval", "300ms"]);
    let (logs, job) = flood_the_log(&daemon).await;
    check_cut_log(&logs, &job);
    let events = |job: &str| -> usize {
        db.query(&format!("SELECT count(*) FROM job_events WHERE job_id = '{job}'")).parse().unwrap()
    };
    assert!(events(&job.job_id) > 0, "events are kept while watchers may read them");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while events(&job.job_id) > 0 {
        assert!(std::time::Instant::now() < deadline, "the finished job's events were not deleted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The job itself stays, and a watch of it ends at once with its state.
    let mut jobs = JobsClient::connect(daemon.url()).await.unwrap();
    let mut watch = jobs.watch(v1::WatchRequest { job_id: job.job_id.clone() }).await.unwrap().into_inner();
    let mut last = None;
    while let Some(event) = watch.message().await.unwrap() {
        last = Some(event.kind);
    }
    assert_eq!(last, Some(Kind::JobFinished as i32));
}

/// Watches of jobs on PostgreSQL are fed by one reader per replica: 200 open watches of a
/// queued job cost the database about what one does. Before, every watch asked for its own
/// job's events every 200 ms (and every change woke them all): a token holding its 1024
/// watches sent about 5000 queries a second.
#[tokio::test]
async fn open_watches_share_one_reader_on_postgresql() {
    let db = Postgres::start();
    let daemon = start(&db.flags(), &[]);
    let mut jobs = JobsClient::connect(daemon.url()).await.unwrap();
    let request = v1::SubmitRequest { spec: Some(small_spec()), rebuild: false };
    let job_id = jobs.submit(request).await.unwrap().into_inner().job_id;
    let mut watches = Vec::new();
    for _ in 0..200 {
        let mut stream = jobs.watch(v1::WatchRequest { job_id: job_id.clone() }).await.unwrap().into_inner();
        stream.message().await.unwrap().expect("the snapshot");
        watches.push(stream);
    }
    // A busy backend reports its statistics to pg_stat_database every second, an idle one
    // within 10 s: the window may still count some of the starts (two queries each).
    let commits = || -> u64 {
        db.query("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            .parse()
            .unwrap()
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = commits();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let queries = commits() - before;
    drop(watches);
    eprintln!("{queries} transactions in 6 s while 200 watches were open");
    // The replica's own work (sweeps, one reader) and late reports of the starts: well under a
    // thousand. One query per watch and poll would be 6,000.
    assert!(queries < 2500, "{queries} transactions in 6 s while 200 watches were open");
}

fn small_spec() -> v1::JobSpec {
    v1::JobSpec {
        source_root: Some(Digest::of(b"tree").to_wire()),
        targets: vec!["linux/amd64".parse::<proto::Platform>().unwrap().to_wire("")],
        go_version: "go1.26.8".into(),
        ..v1::JobSpec::default()
    }
}

/// Submits a job, leases its task as an agent, sends [`CALLS`] calls of output and completes
/// the task; the Log events a watcher saw, and the job as it finished.
async fn flood_the_log(daemon: &Daemon) -> (Vec<String>, v1::JobStatus) {
    let mut jobs = JobsClient::connect(daemon.url()).await.unwrap();
    let request = v1::SubmitRequest { spec: Some(small_spec()), rebuild: false };
    let job_id = jobs.submit(request).await.unwrap().into_inner().job_id;
    let mut events = jobs.watch(v1::WatchRequest { job_id }).await.unwrap().into_inner();
    let watcher = cached_client::task::spawn_guarded("watch", async move {
        let mut logs = Vec::new();
        while let Some(event) = events.message().await.unwrap() {
            match Kind::try_from(event.kind) {
                Ok(Kind::Log) => logs.push(event.message),
                Ok(Kind::JobFinished) => return (logs, event.status.unwrap()),
                _ => {}
            }
        }
        panic!("the watch ended before the job did");
    });
    let (session, token) = lease(daemon).await;
    let mut workers = WorkersClient::connect(daemon.url()).await.unwrap();
    let line = "x".repeat(LINE);
    for call in 0..CALLS {
        // An agent heartbeats while it works: on a loaded machine the flood may outlast a
        // 1 s lease timeout.
        let heartbeat = v1::Heartbeat { running: vec![token.clone()], ..v1::Heartbeat::default() };
        let beat = v1::LeaseRequest { kind: Some(v1::lease_request::Kind::Heartbeat(heartbeat)) };
        session.send(beat).await.expect("the lease stream is open");
        let lines = vec![line.clone(); LINES_PER_CALL];
        let request = v1::ProgressRequest { token: Some(token.clone()), started: call == 0, lines };
        workers
            .progress(request)
            .await
            .unwrap_or_else(|status| panic!("Progress {call} refused: {status:?}"));
    }
    let success = v1::complete_request::Outcome::Success(v1::TaskResult::default());
    let request = v1::CompleteRequest { token: Some(token), outcome: Some(success) };
    workers.complete(request).await.unwrap_or_else(|status| panic!("Complete refused: {status:?}"));
    tokio::time::timeout(Duration::from_secs(30), watcher).await.expect("the job finishes").unwrap()
}

/// Registers an agent and waits for its task: the open stream (the session) and the lease.
async fn lease(daemon: &Daemon) -> (mpsc::Sender<v1::LeaseRequest>, v1::FencingToken) {
    let (sender, receiver) = mpsc::channel(4);
    let register = v1::AgentInfo {
        agent_id: "flood".to_owned(),
        go_version: "go1.26.8".into(),
        host_goos: "linux".into(),
        host_goarch: "amd64".into(),
        capacity: 1,
        ..v1::AgentInfo::default()
    };
    sender.send(v1::LeaseRequest { kind: Some(v1::lease_request::Kind::Register(register)) }).await.unwrap();
    let mut workers = WorkersClient::connect(daemon.url()).await.unwrap();
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let mut replies = workers.lease(stream).await.unwrap().into_inner();
    loop {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.message()).await;
        match reply.expect("a task within 10 s").unwrap().and_then(|reply| reply.kind) {
            Some(v1::lease_response::Kind::Task(lease)) => return (sender, lease.token.unwrap()),
            Some(_) => {}
            None => panic!("the lease stream ended"),
        }
    }
}

/// About the cap of output, then one note, then nothing; and the job succeeded regardless.
fn check_cut_log(logs: &[String], job: &v1::JobStatus) {
    assert_eq!(job.state, v1::JobState::Succeeded as i32, "{:?}", job.tasks);
    let bytes: usize = logs.iter().map(|log| log.len() + 1).sum();
    assert!(bytes <= LOG_CAP + 1024, "watchers got {bytes} bytes of log");
    assert!(bytes > LOG_CAP - (64 << 10), "an honest amount of output is kept: {bytes} bytes");
    let notes: Vec<&String> = logs.iter().filter(|log| log.contains("the rest is dropped")).collect();
    assert_eq!(notes.len(), 1, "one note that the log was cut, not {}", notes.len());
    assert!(logs.last().unwrap().ends_with("the rest is dropped]"), "the note ends the log");
}
