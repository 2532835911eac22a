//! The scheduler over the wire, with scripted agents speaking `Workers` directly: one task per
//! target, leases and heartbeats, fencing tokens, expiry and requeue up to the attempt cap,
//! matching (Go version, cgo cross compilers, capacity), cancel, and restarts that lose nothing.

mod common;

use std::time::Duration;

use common::Server;
use futures::StreamExt;
use proto::Digest;
use proto::v1::admin_client::AdminClient;
use proto::v1::jobs_client::JobsClient;
use proto::v1::workers_client::WorkersClient;
use proto::v1::{
    self, AgentInfo, CCompiler, FencingToken, JobEvent, JobState, LeaseRequest, LeaseResponse, TaskState,
    job_event::Kind, lease_request, lease_response,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

/// Short timings so expiry takes a fraction of a second.
const FAST: &[(&str, &str)] =
    &[("heartbeat_interval", "100ms"), ("lease_timeout", "400ms"), ("max_attempts", "3")];

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap()
}

fn spec(targets: &[&str], go_version: &str) -> v1::JobSpec {
    v1::JobSpec {
        source_root: Some(Digest::of(b"tree").to_wire()),
        targets: targets.iter().map(|t| t.parse::<proto::Platform>().unwrap().to_wire("")).collect(),
        go_version: go_version.to_owned(),
        ..Default::default()
    }
}

async fn submit(jobs: &mut JobsClient<Channel>, spec: v1::JobSpec) -> String {
    jobs.submit(v1::SubmitRequest { spec: Some(spec), rebuild: false }).await.unwrap().into_inner().job_id
}

/// A scripted agent: registers, then heartbeats only when told to.
struct Agent {
    sender: mpsc::Sender<LeaseRequest>,
    replies: tonic::Streaming<LeaseResponse>,
    workers: WorkersClient<Channel>,
}

impl Agent {
    async fn connect(server: &Server, id: &str, go: &str, capacity: u32, cgo: &[(&str, &str)]) -> Self {
        let mut workers = WorkersClient::new(channel(server).await);
        let (sender, receiver) = mpsc::channel(16);
        let info = AgentInfo {
            agent_id: id.to_owned(),
            go_version: go.to_owned(),
            host_goos: "linux".into(),
            host_goarch: "amd64".into(),
            c_compilers: cgo
                .iter()
                .map(|(platform, cc)| {
                    let (goos, goarch) = platform.split_once('/').unwrap();
                    CCompiler { goos: goos.into(), goarch: goarch.into(), cc: (*cc).into() }
                })
                .collect(),
            capacity,
            version: "test".into(),
            instance: Default::default(),
        };
        sender.send(LeaseRequest { kind: Some(lease_request::Kind::Register(info)) }).await.unwrap();
        let mut replies = workers.lease(ReceiverStream::new(receiver)).await.unwrap().into_inner();
        let first = replies.next().await.unwrap().unwrap();
        assert!(matches!(first.kind, Some(lease_response::Kind::Registered(_))), "{first:?}");
        Self { sender, replies, workers }
    }

    async fn next(&mut self, within: Duration) -> Option<lease_response::Kind> {
        match tokio::time::timeout(within, self.replies.next()).await {
            Ok(Some(Ok(reply))) => reply.kind,
            _ => None,
        }
    }

    async fn task(&mut self) -> v1::TaskLease {
        match self.next(Duration::from_secs(5)).await {
            Some(lease_response::Kind::Task(task)) => task,
            other => panic!("expected a task, got {other:?}"),
        }
    }

    async fn heartbeat(&self, running: &[FencingToken]) {
        let heartbeat = v1::Heartbeat { free_slots: 0, running: running.to_vec(), draining: false };
        self.sender
            .send(LeaseRequest { kind: Some(lease_request::Kind::Heartbeat(heartbeat)) })
            .await
            .unwrap();
    }

    async fn complete(&mut self, token: &FencingToken, name: &str) -> Result<(), tonic::Status> {
        let result = v1::TaskResult {
            outputs: vec![v1::OutputFile {
                name: name.into(),
                digest: Some(Digest::of(name.as_bytes()).to_wire()),
                executable: true,
            }],
            hit: false,
            ..Default::default()
        };
        let request = v1::CompleteRequest {
            token: Some(token.clone()),
            outcome: Some(v1::complete_request::Outcome::Success(result)),
        };
        self.workers.complete(request).await.map(drop)
    }

    async fn fail(
        &mut self,
        token: &FencingToken,
        reason: &str,
        retryable: bool,
    ) -> Result<(), tonic::Status> {
        let failure = v1::TaskFailure { reason: reason.into(), retryable };
        let request = v1::CompleteRequest {
            token: Some(token.clone()),
            outcome: Some(v1::complete_request::Outcome::Failure(failure)),
        };
        self.workers.complete(request).await.map(drop)
    }
}

/// A lease token as aborts carry it: no secret.
fn without_secret(token: &FencingToken) -> FencingToken {
    FencingToken { secret: Default::default(), ..token.clone() }
}

/// Waits for the job to finish and returns its final status and every event seen.
async fn watch_to_end(jobs: &mut JobsClient<Channel>, job_id: &str) -> (v1::JobStatus, Vec<JobEvent>) {
    let mut events = jobs.watch(v1::WatchRequest { job_id: job_id.into() }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("the job finishes")
            .expect("the stream ends with JOB_FINISHED")
            .unwrap();
        let kind = event.kind;
        seen.push(event.clone());
        if kind == Kind::JobFinished as i32 {
            return (event.status.unwrap(), seen);
        }
    }
}

#[tokio::test]
async fn one_task_per_target_spread_over_agents_with_fenced_completion() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut a = Agent::connect(&server, "a", "go1.26.8", 1, &[]).await;
    let mut b = Agent::connect(&server, "b", "go1.26.8", 1, &[]).await;
    let job = submit(&mut jobs, spec(&["linux/amd64", "windows/amd64"], "go1.26.8")).await;

    let (ta, tb) = (a.task().await, b.task().await);
    let (ka, kb) = (ta.token.clone().unwrap(), tb.token.clone().unwrap());
    assert_eq!(ka.job_id, job);
    assert_ne!(ka.task, kb.task, "each agent got its own target");
    assert_eq!((ka.attempt, kb.attempt), (1, 1));
    assert_eq!(ta.spec.unwrap().source_root, Some(Digest::of(b"tree").to_wire()));

    // Every lease carries its own secret; a token for an attempt that was never leased is
    // refused (its secret is that of another attempt).
    assert_eq!((ka.secret.len(), kb.secret.len()), (32, 32));
    assert_ne!(ka.secret, kb.secret);
    let forged = FencingToken { attempt: 2, ..ka.clone() };
    assert_eq!(a.complete(&forged, "x").await.unwrap_err().code(), Code::PermissionDenied);
    // Without tokens (anonymous loopback mode) there is no per-lease cache credential.
    assert!(ta.cache_token.is_empty());

    a.complete(&ka, "app").await.unwrap();
    // Completing twice is a stale completion.
    let again = a.complete(&ka, "app").await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("stale lease"), "{}", again.message());
    b.complete(&kb, "app.exe").await.unwrap();

    let (status, events) = watch_to_end(&mut jobs, &job).await;
    assert_eq!(status.state, JobState::Succeeded as i32);
    assert!(status.tasks.iter().all(|t| t.state == TaskState::Succeeded as i32 && t.result.is_some()));
    assert_eq!(events[0].kind, Kind::Snapshot as i32);
    server.stop().await;
}

#[tokio::test]
async fn expired_leases_requeue_refuse_late_completions_and_fail_after_three_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut silent = Agent::connect(&server, "silent", "", 1, &[]).await;
    let job = submit(&mut jobs, spec(&["linux/arm64"], "")).await;
    let first = silent.task().await.token.unwrap();

    // No heartbeat: the lease expires, the task is requeued with the next attempt, and the
    // server tells the agent to stop.
    match silent.next(Duration::from_secs(3)).await {
        Some(lease_response::Kind::Abort(token)) => assert_eq!(token, without_secret(&first)),
        other => panic!("expected an abort, got {other:?}"),
    }
    let second = silent.task().await.token.unwrap();
    assert_eq!(second.attempt, 2);
    let late = silent.complete(&first, "app").await.unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition, "a zombie's completion is refused");

    // Heartbeats keep a lease alive well past lease_timeout.
    for _ in 0..8 {
        silent.heartbeat(std::slice::from_ref(&second)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status =
        jobs.list(v1::ListRequest { all: true, ..Default::default() }).await.unwrap().into_inner().jobs;
    assert_eq!(status[0].tasks[0].attempt, 2, "heartbeats held the lease");

    // Then silence twice more: attempt 3 expires too and the task fails with the reason.
    let _ = silent.next(Duration::from_secs(3)).await; // abort of attempt 2
    let third = silent.task().await.token.unwrap();
    assert_eq!(third.attempt, 3);
    let (status, _) = watch_to_end(&mut jobs, &job).await;
    assert_eq!(status.state, JobState::Failed as i32);
    let error = &status.tasks[0].error;
    assert!(error.contains("3 attempts") && error.contains("silent") && error.contains("expired"), "{error}");
    server.stop().await;
}

#[tokio::test]
async fn matching_by_go_version_cgo_compiler_and_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("heartbeat_interval", "1s"), ("lease_timeout", "10s")]).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut old_go = Agent::connect(&server, "old", "go1.24.0", 4, &[]).await;
    let mut plain = Agent::connect(&server, "plain", "go1.26.8", 1, &[("linux/amd64", "gcc")]).await;
    let job =
        submit(&mut jobs, spec(&["linux/arm64+cgo", "darwin/arm64", "windows/amd64"], "go1.26.8")).await;

    // `plain` takes one pure-Go target (capacity 1); nobody can build the cgo one yet; the old
    // Go gets nothing.
    let first = plain.task().await;
    assert!(!first.target.as_ref().unwrap().cgo);
    assert!(old_go.next(Duration::from_millis(300)).await.is_none(), "wrong Go version");
    assert!(plain.next(Duration::from_millis(300)).await.is_none(), "capacity 1");

    let mut cross = Agent::connect(
        &server,
        "cross",
        "go1.26.8",
        2,
        &[("linux/amd64", "gcc"), ("linux/arm64", "aarch64-linux-gnu-gcc")],
    )
    .await;
    let mut got = [cross.task().await, cross.task().await];
    got.sort_by_key(|task| task.token.as_ref().unwrap().task);
    assert!(
        got.iter().any(|task| task.target.as_ref().unwrap().cgo),
        "the cgo target went to the cross agent"
    );
    for task in got.iter().chain([&first]) {
        let token = task.token.clone().unwrap();
        let agent = if task.token == first.token { &mut plain } else { &mut cross };
        agent.complete(&token, "app").await.unwrap();
    }
    let (status, _) = watch_to_end(&mut jobs, &job).await;
    assert_eq!(status.state, JobState::Succeeded as i32);
    server.stop().await;
}

#[tokio::test]
async fn build_errors_fail_at_once_and_retryable_failures_requeue() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut agent = Agent::connect(&server, "a", "", 1, &[]).await;
    let job = submit(&mut jobs, spec(&["linux/amd64"], "")).await;
    let first = agent.task().await.token.unwrap();
    agent.fail(&first, "cannot fetch the sources", true).await.unwrap();
    let second = agent.task().await.token.unwrap();
    assert_eq!(second.attempt, 2);
    agent.fail(&second, "./main.go:3:1: syntax error", false).await.unwrap();
    let (status, events) = watch_to_end(&mut jobs, &job).await;
    assert_eq!(status.state, JobState::Failed as i32);
    assert_eq!(status.tasks[0].error, "./main.go:3:1: syntax error");
    assert!(events.iter().any(|e| e.kind == Kind::Snapshot as i32));
    server.stop().await;
}

#[tokio::test]
async fn credentials_in_what_agents_send_are_redacted_before_anyone_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut agent = Agent::connect(&server, "a", "", 1, &[]).await;
    let job = submit(&mut jobs, spec(&["linux/amd64"], "")).await;
    let token = agent.task().await.token.unwrap();
    let lines = vec!["go: downloading via https://ci:hunter2@proxy.corp/".to_owned()];
    let progress = v1::ProgressRequest { token: Some(token.clone()), started: true, lines };
    let mut watch = jobs.watch(v1::WatchRequest { job_id: job.clone() }).await.unwrap().into_inner();
    agent.workers.progress(progress).await.unwrap();
    let log = loop {
        let event = watch.next().await.unwrap().unwrap();
        if event.kind == Kind::Log as i32 {
            break event.message;
        }
    };
    assert_eq!(log, "go: downloading via https://ci:[redacted]@proxy.corp/");
    agent.fail(&token, "exit 1: GITHUB_TOKEN=ghp_secret go build", false).await.unwrap();
    let (status, events) = watch_to_end(&mut jobs, &job).await;
    assert_eq!(status.tasks[0].error, "exit 1: GITHUB_TOKEN=[redacted] go build");
    assert!(events.iter().all(|e| !e.message.contains("ghp_secret")));
    server.stop().await;
}

#[tokio::test]
async fn cancel_aborts_running_tasks_and_drops_queued_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut agent = Agent::connect(&server, "a", "", 1, &[]).await;
    let job = submit(&mut jobs, spec(&["linux/amd64", "linux/arm64"], "")).await;
    let running = agent.task().await.token.unwrap();
    let status =
        jobs.cancel(v1::CancelRequest { job_id: job.clone() }).await.unwrap().into_inner().status.unwrap();
    assert_eq!(status.state, JobState::Cancelled as i32);
    assert!(status.tasks.iter().all(|t| t.state == TaskState::Cancelled as i32));
    match agent.next(Duration::from_secs(2)).await {
        Some(lease_response::Kind::Abort(token)) => assert_eq!(token, without_secret(&running)),
        other => panic!("expected an abort, got {other:?}"),
    }
    assert_eq!(agent.complete(&running, "app").await.unwrap_err().code(), Code::FailedPrecondition);
    assert!(agent.next(Duration::from_millis(300)).await.is_none(), "the queued task was dropped");
    server.stop().await;
}

#[tokio::test]
async fn a_restart_loses_no_task_and_keeps_leases_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let settings = [("heartbeat_interval", "200ms"), ("lease_timeout", "5s")];
    let server = Server::start(dir.path(), &settings).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let job = submit(&mut jobs, spec(&["linux/amd64", "darwin/arm64"], "")).await;
    let mut agent = Agent::connect(&server, "a", "", 1, &[]).await;
    let held = agent.task().await.token.unwrap();
    drop(agent);
    server.stop().await;

    // The second task is still queued and the first still leased to `a`, attempt 1.
    let server = Server::start(dir.path(), &settings).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let listed = jobs.list(v1::ListRequest::default()).await.unwrap().into_inner().jobs;
    assert_eq!(listed.len(), 1);
    let states: Vec<i32> = listed[0].tasks.iter().map(|t| t.state).collect();
    assert!(states.contains(&(TaskState::Leased as i32)) && states.contains(&(TaskState::Queued as i32)));

    // The agent reconnects and goes on heartbeating its lease, whose secret survived the
    // restart; a stale attempt is refused.
    let mut agent = Agent::connect(&server, "a", "", 2, &[]).await;
    agent.heartbeat(std::slice::from_ref(&held)).await;
    let other = agent.task().await.token.unwrap();
    let stale = FencingToken { attempt: 0, ..held.clone() };
    assert_eq!(agent.complete(&stale, "app").await.unwrap_err().code(), Code::PermissionDenied);
    agent.complete(&held, "app").await.unwrap();
    agent.complete(&other, "app").await.unwrap();
    let (status, _) = watch_to_end(&mut jobs, &job).await;
    assert_eq!(status.state, JobState::Succeeded as i32);
    server.stop().await;
}

async fn submit_for_reuse(
    jobs: &mut JobsClient<Channel>,
    spec: v1::JobSpec,
    rebuild: bool,
) -> (String, bool) {
    let answer = jobs.submit(v1::SubmitRequest { spec: Some(spec), rebuild }).await.unwrap().into_inner();
    (answer.job_id, answer.reused)
}

/// Runs the job's only task on `agent`, reporting `output` as its result.
async fn build_one(agent: &mut Agent, jobs: &mut JobsClient<Channel>, job: &str, output: &str) {
    let token = agent.task().await.token.unwrap();
    assert_eq!(token.job_id, job);
    agent.complete(&token, output).await.unwrap();
    let (status, _) = watch_to_end(jobs, job).await;
    assert_eq!(status.state, JobState::Succeeded as i32);
}

#[tokio::test]
async fn a_job_like_a_succeeded_one_whose_results_are_stored_is_answered_with_it_and_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut agent = Agent::connect(&server, "a", "go1.26.8", 1, &[]).await;
    let clients = server.clients().await;
    let stored = b"app";
    clients.write_as(Digest::of(stored), common::frames(stored)).await.unwrap();

    let app = spec(&["linux/amd64"], "go1.26.8");
    let (first, reused) = submit_for_reuse(&mut jobs, app.clone(), false).await;
    assert!(!reused);
    build_one(&mut agent, &mut jobs, &first, "app").await;

    // The same spec, at another priority: the finished job, and no task for any agent.
    let (again, reused) =
        submit_for_reuse(&mut jobs, v1::JobSpec { priority: 5, ..app.clone() }, false).await;
    assert_eq!((again.as_str(), reused), (first.as_str(), true));
    assert!(agent.next(Duration::from_millis(300)).await.is_none(), "a reused job leased a task");

    // Asked to, it builds; another namespace never shares the first one's results.
    let (rebuilt, reused) = submit_for_reuse(&mut jobs, app.clone(), true).await;
    assert!(!reused && rebuilt != first);
    build_one(&mut agent, &mut jobs, &rebuilt, "app").await;
    let elsewhere = v1::JobSpec { namespace: "other-team".into(), ..app.clone() };
    let (other, reused) = submit_for_reuse(&mut jobs, elsewhere, false).await;
    assert!(!reused && other != first && other != rebuilt);
    build_one(&mut agent, &mut jobs, &other, "app").await;

    // A job whose result is not in the CAS (evicted, or never stored) is built again.
    let darwin = spec(&["darwin/arm64"], "go1.26.8");
    let (lost, _) = submit_for_reuse(&mut jobs, darwin.clone(), false).await;
    build_one(&mut agent, &mut jobs, &lost, "not-stored").await;
    let (fresh, reused) = submit_for_reuse(&mut jobs, darwin, false).await;
    assert!(!reused && fresh != lost);
    build_one(&mut agent, &mut jobs, &fresh, "not-stored").await;
    drop(agent);
    server.stop().await;

    // After a restart the kept jobs are reused too (the newest of equal specs).
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (job, reused) = submit_for_reuse(&mut jobs, app.clone(), false).await;
        if reused {
            assert_eq!(job, rebuilt);
            break;
        }
        // Learning the kept jobs runs in the background: an early submission builds.
        assert!(std::time::Instant::now() < deadline, "kept jobs are not reused after a restart");
        jobs.cancel(v1::CancelRequest { job_id: job }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

/// A purge is for entries someone should not have written; jobs built while they were there
/// may hold their effect, so none of the namespace's jobs from before answers a submission.
#[tokio::test]
async fn after_a_purge_no_job_of_the_namespace_from_before_it_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut admin = AdminClient::new(channel(&server).await);
    let mut agent = Agent::connect(&server, "a", "go1.26.8", 1, &[]).await;
    let clients = server.clients().await;
    clients.write_as(Digest::of(b"app"), common::frames(b"app")).await.unwrap();
    let team = |targets: &[&str]| v1::JobSpec { namespace: "team".into(), ..spec(targets, "go1.26.8") };
    let (finished, running, elsewhere) =
        (team(&["linux/amd64"]), team(&["linux/arm64"]), spec(&["linux/amd64"], "go1.26.8"));

    let (before, _) = submit_for_reuse(&mut jobs, finished.clone(), false).await;
    build_one(&mut agent, &mut jobs, &before, "app").await;
    let (other_namespace, _) = submit_for_reuse(&mut jobs, elsewhere.clone(), false).await;
    build_one(&mut agent, &mut jobs, &other_namespace, "app").await;
    // Still building when the purge comes: it may have read the purged entries already.
    let (during, _) = submit_for_reuse(&mut jobs, running.clone(), false).await;
    let token = agent.task().await.token.unwrap();

    let purged = admin.purge(v1::PurgeRequest { namespace: "team".into() }).await.unwrap().into_inner();
    assert_eq!((purged.jobs_revoked, purged.jobs_cancelled), (2, 1));
    // Its lease ended with the purge: the agent is told to stop, and what it built is refused.
    assert!(matches!(agent.next(Duration::from_secs(5)).await, Some(lease_response::Kind::Abort(_))));
    let refused = agent.complete(&token, "app").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    let (ended, _) = watch_to_end(&mut jobs, &during).await;
    assert_eq!(ended.state, JobState::Cancelled as i32);
    assert!(ended.tasks[0].error.contains("namespace was purged while it ran"), "{:?}", ended.tasks[0]);

    let (after, reused) = submit_for_reuse(&mut jobs, finished.clone(), false).await;
    assert!(!reused && after != before, "a job from before the purge was reused");
    build_one(&mut agent, &mut jobs, &after, "app").await;
    let (again, reused) = submit_for_reuse(&mut jobs, running.clone(), false).await;
    assert!(!reused && again != during, "a job running during the purge was reused");
    build_one(&mut agent, &mut jobs, &again, "app").await;
    // Jobs built since, and other namespaces' jobs, are reused as before.
    assert_eq!(submit_for_reuse(&mut jobs, finished.clone(), false).await, (after.clone(), true));
    assert_eq!(submit_for_reuse(&mut jobs, elsewhere, false).await, (other_namespace, true));
    let listed =
        jobs.list(v1::ListRequest { all: true, ..Default::default() }).await.unwrap().into_inner().jobs;
    let revoked =
        |job_id: &str| listed.iter().any(|job| job.job_id == job_id && job.reuse_revoked_unix_ms != 0);
    assert!(
        revoked(&before) && revoked(&during) && !revoked(&after),
        "the jobs list shows which were revoked"
    );
    drop(agent);
    server.stop().await;

    // The revocation outlives a restart: once the kept jobs are learned (the one built after
    // the purge is reused), the one from before still is not.
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while submit_for_reuse(&mut jobs, finished.clone(), false).await != (after.clone(), true) {
        assert!(std::time::Instant::now() < deadline, "kept jobs are not reused after a restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (job, reused) = submit_for_reuse(&mut jobs, running, false).await;
    assert!(!reused || job == again, "a revoked job was reused after a restart");
    server.stop().await;
}

#[tokio::test]
async fn submissions_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut bad = spec(&["linux/amd64"], "");
    bad.build_flags = vec!["-toolexec=/bin/sh".into()];
    let err = jobs.submit(v1::SubmitRequest { spec: Some(bad), rebuild: false }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("-toolexec"), "{}", err.message());
    let mut none = spec(&["linux/amd64"], "");
    none.targets.clear();
    assert_eq!(
        jobs.submit(v1::SubmitRequest { spec: Some(none), rebuild: false }).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let err = jobs.watch(v1::WatchRequest { job_id: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    server.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The descriptor of a blob whose bytes are `what` (in the CAS once the test uploads them).
fn blob(what: &str) -> v1::OciBlob {
    v1::OciBlob {
        media_type: format!("application/vnd.oci.image.{what}.v1+json"),
        digest: format!("sha256:{}", hex(&Sha256::digest(what.as_bytes()))),
        size: what.len() as u64,
        cas: Some(Digest::of(what.as_bytes()).to_wire()),
    }
}

fn imaged(targets: &[&str]) -> v1::JobSpec {
    v1::JobSpec { image: Some(v1::ImageSpec::default()), ..spec(targets, "go1.26.8") }
}

async fn succeed(
    agent: &mut Agent,
    token: &FencingToken,
    result: v1::TaskResult,
) -> Result<(), tonic::Status> {
    let request = v1::CompleteRequest {
        token: Some(token.clone()),
        outcome: Some(v1::complete_request::Outcome::Success(result)),
    };
    agent.workers.complete(request).await.map(drop)
}

#[tokio::test]
async fn an_image_job_ends_with_an_index_task_that_needs_no_build_slot() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut agent = Agent::connect(&server, "a", "go1.26.8", 1, &[]).await;
    let job = submit(&mut jobs, imaged(&["linux/amd64", "darwin/arm64"])).await;
    let other = submit(&mut jobs, spec(&["linux/arm64"], "go1.26.8")).await;
    // Complete checks each image blob against what the CAS holds.
    let clients = server.clients().await;
    for what in ["manifest", "config", "layer", "index"] {
        clients.write(what.as_bytes()).await;
    }

    let image = v1::PlatformImage {
        os: "linux".into(),
        architecture: "amd64".into(),
        manifest: Some(blob("manifest")),
        config: Some(blob("config")),
        layer: Some(blob("layer")),
        ..Default::default()
    };
    for _ in 0..2 {
        let lease = agent.task().await;
        assert_eq!(lease.kind, v1::TaskKind::Build as i32);
        let token = lease.token.unwrap();
        assert_eq!(token.job_id, job);
        let linux = lease.target.unwrap().goos == "linux";
        let result = v1::TaskResult { image: linux.then(|| image.clone()), ..Default::default() };
        agent.heartbeat(std::slice::from_ref(&token)).await;
        succeed(&mut agent, &token, result).await.unwrap();
    }
    // Every build succeeded: the index task comes first, though the agent's only slot goes to
    // the other job's build at the same time.
    let mut leases = [agent.task().await, agent.task().await];
    leases.sort_by_key(|lease| lease.kind);
    let [build, index] = leases;
    assert_eq!(build.token.as_ref().unwrap().job_id, other);
    assert_eq!(index.kind, v1::TaskKind::ImageIndex as i32);
    assert!(index.target.is_none());
    assert_eq!(index.images, std::slice::from_ref(&image), "the linux target's image, and only that");
    let token = index.token.unwrap();
    assert_eq!(token.task, 2, "after the two build tasks");

    // A malformed index is refused; the real one finishes the job with the index digest.
    let bad = v1::TaskResult {
        index: Some(v1::OciBlob { digest: "sha256:nope".into(), ..blob("index") }),
        ..Default::default()
    };
    assert_eq!(succeed(&mut agent, &token, bad).await.unwrap_err().code(), Code::InvalidArgument);
    let done = v1::TaskResult { index: Some(blob("index")), ..Default::default() };
    succeed(&mut agent, &token, done).await.unwrap();
    let (status, events) = watch_to_end(&mut jobs, &job).await;
    assert_eq!(status.state, JobState::Succeeded as i32, "{status:?}");
    assert_eq!(status.image, Some(blob("index")));
    assert_eq!(status.tasks.len(), 3);
    assert_eq!(status.tasks[2].kind, v1::TaskKind::ImageIndex as i32);
    let finished = events.last().unwrap().status.clone().unwrap();
    assert_eq!(finished.image, Some(blob("index")), "the final event carries the index");

    // A linux target that comes back without an image fails the job, with the reason.
    let job = submit(&mut jobs, imaged(&["linux/arm64"])).await;
    agent.complete(build.token.as_ref().unwrap(), "app").await.unwrap();
    let lease = agent.task().await.token.unwrap();
    assert_eq!(lease.job_id, job);
    agent.complete(&lease, "app").await.unwrap();
    let (status, _) = watch_to_end(&mut jobs, &job).await;
    assert_eq!(status.state, JobState::Failed as i32);
    assert!(status.error.contains("without an image"), "{}", status.error);
    assert!(status.image.is_none() && status.tasks.len() == 1);

    // Image specs are checked at submission.
    let err = jobs
        .submit(v1::SubmitRequest { spec: Some(imaged(&["darwin/arm64"])), rebuild: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut based = imaged(&["linux/amd64"]);
    based.image.as_mut().unwrap().base = "cgr.dev/chainguard/static".into();
    let err = jobs.submit(v1::SubmitRequest { spec: Some(based), rebuild: false }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn build_output_from_one_progress_call_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut agent = Agent::connect(&server, "a", "", 1, &[]).await;
    let job = submit(&mut jobs, spec(&["linux/amd64"], "")).await;
    let token = agent.task().await.token.unwrap();
    let mut watch = jobs.watch(v1::WatchRequest { job_id: job.clone() }).await.unwrap().into_inner();
    // One enormous line and thousands of ordinary ones: every watcher would get them all.
    let mut lines = vec!["x".repeat(4 << 20)];
    lines.extend((0..5000).map(|n| format!("./main.go:{n}: something went wrong")));
    let progress = v1::ProgressRequest { token: Some(token.clone()), started: true, lines };
    agent.workers.progress(progress).await.unwrap();
    let log = loop {
        let event = watch.next().await.unwrap().unwrap();
        if event.kind == Kind::Log as i32 {
            break event.message;
        }
    };
    assert!(log.len() <= 65 << 10, "a progress call became a {}-byte event", log.len());
    assert!(log.starts_with(&"x".repeat(4000)) && log.contains("[cut by cached"), "{}", &log[4000..4200]);
    assert!(log.contains("./main.go:0: something went wrong"));
    assert!(log.ends_with("lines and 64 KiB]"), "{}", &log[log.len() - 200..]);
    server.stop().await;
}

/// The value of a sample in the metrics text, if the metric is there.
fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|line| line.strip_prefix(&format!("{name} "))?.parse().ok())
}

#[tokio::test]
async fn metrics_show_the_queue_its_oldest_wait_and_the_connected_agents() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), FAST).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    // A go version no agent has: the two tasks stay queued.
    submit(&mut jobs, spec(&["linux/amd64", "linux/arm64"], "go1.0")).await;
    let _agent = Agent::connect(&server, "a1", "go1.22.0", 1, &[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = server.metrics().await;
        let queued = sample(&metrics, "cached_scheduler_queued_tasks");
        let agents = sample(&metrics, "cached_scheduler_agents");
        let oldest = sample(&metrics, "cached_scheduler_oldest_queued_seconds");
        if queued == Some(2) && agents == Some(1) && oldest.is_some_and(|seconds| seconds >= 1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the queue gauges never caught up:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    server.stop().await;
}

/// A watch lasts as long as its job: a token holds at most `max_watches_per_token` of them.
#[tokio::test]
async fn a_token_holds_at_most_max_watches_per_token_watches() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = FAST.to_vec();
    settings.push(("max_watches_per_token", "2"));
    let server = Server::start(dir.path(), &settings).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let job = submit(&mut jobs, spec(&["linux/amd64"], "")).await;
    let watch = || v1::WatchRequest { job_id: job.clone() };
    let first = jobs.watch(watch()).await.unwrap().into_inner();
    let _second = jobs.watch(watch()).await.unwrap().into_inner();
    let refused = jobs.watch(watch()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max_watches_per_token"), "{}", refused.message());
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    // The slot comes back once the server sees the stream go.
    while jobs.watch(watch()).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "a closed watch kept its slot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}
