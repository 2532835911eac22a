//! Workers act within their grant, against a live cached with tokens: a worker is leased only
//! jobs in its token's namespaces; every lease carries a secret that Progress, heartbeats and
//! Complete must present, bound to the token that holds it; an agent identity (token and name)
//! cannot be taken over by a second registration; the per-lease cache credential reaches exactly the job's
//! namespace while the lease is current; jobs and the lease stream are bounded; a huge job
//! timeout cannot panic the scheduler.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec};
use common::{Server, data, header, noise};
use futures::StreamExt;
use proto::Digest;
use proto::v1::cas_client::CasClient;
use proto::v1::go_cache_client::GoCacheClient;
use proto::v1::jobs_client::JobsClient;
use proto::v1::workers_client::WorkersClient;
use proto::v1::{
    self, AgentInfo, Compression, FencingToken, JobState, LeaseRequest, LeaseResponse, TaskState,
    job_event::Kind, lease_request, lease_response,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

const FAST: [(&str, &str); 3] =
    [("heartbeat_interval", "100ms"), ("lease_timeout", "600ms"), ("max_attempts", "3")];

fn secret_of(name: &str) -> String {
    format!("test-secret-of-{name}")
}

fn token(name: &str, scopes: &str, namespaces: &str) -> TokenSpec {
    TokenSpec {
        name: name.to_owned(),
        scopes: Scopes::parse_list(scopes).unwrap(),
        namespaces: NamespacePattern::parse_list(namespaces).unwrap(),
        secret_hash: SecretHash::new(&secret_of(name)).unwrap(),
        rate_limit: None,
        max_priority: None,
    }
}

const AGENT_SCOPES: &str = "worker,read,cas-write,ac-write";

/// The tokens every test here serves: submitters, agents limited to `main/*` and `pr-*`, and
/// two all-namespace agent tokens.
fn tokens() -> Vec<TokenSpec> {
    vec![
        token("submitter", "submit,read,cas-write", "*"),
        token("pr-1-submitter", "submit,read", "pr-1/*"),
        token("pr-2-submitter", "submit,read", "pr-2/*"),
        token("ci-main", "read,cas-write,ac-write", "main/*"),
        token("agent-main", AGENT_SCOPES, "main/*"),
        token("agent-pr", AGENT_SCOPES, "pr-*"),
        token("agent-any", AGENT_SCOPES, "*"),
        token("agent-other", AGENT_SCOPES, "*"),
    ]
}

async fn start(dir: &Path, extra: &[(&str, &str)]) -> Server {
    let path = dir.join("tokens.toml");
    let text: String = tokens().iter().map(|spec| format!("{}\n", spec.to_toml())).collect();
    std::fs::write(&path, text).unwrap();
    let tokens_file = path.display().to_string();
    let mut settings: Vec<(&str, &str)> = FAST.to_vec();
    settings.push(("tokens_file", &tokens_file));
    settings.extend_from_slice(extra);
    Server::start(&dir.join("data"), &settings).await
}

/// cached with the tokens here on a PostgreSQL of its own, which lives as long as the first
/// two values do; `extra` settings on top.
async fn start_in_postgresql(
    extra: &[(&str, &str)],
) -> (cached_e2e::postgres::Postgres, tempfile::TempDir, Server) {
    let db = cached_e2e::postgres::Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let database = common::database_settings(&db);
    let mut settings: Vec<(&str, &str)> = database.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    settings.extend_from_slice(extra);
    let server = start(dir.path(), &settings).await;
    (db, dir, server)
}

#[derive(Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap()
}

fn bearer(secret: &str) -> Bearer {
    Bearer(format!("Bearer {secret}").parse().unwrap())
}

async fn jobs(server: &Server, token: &str) -> JobsClient<Authed> {
    JobsClient::with_interceptor(channel(server).await, bearer(&secret_of(token)))
}

async fn workers(server: &Server, token: &str) -> WorkersClient<Authed> {
    WorkersClient::with_interceptor(channel(server).await, bearer(&secret_of(token)))
}

fn spec(ns: &str, targets: &[&str]) -> v1::JobSpec {
    v1::JobSpec {
        source_root: Some(Digest::of(b"tree").to_wire()),
        targets: targets.iter().map(|t| t.parse::<proto::Platform>().unwrap().to_wire("")).collect(),
        namespace: ns.to_owned(),
        ..Default::default()
    }
}

async fn submit(jobs: &mut JobsClient<Authed>, spec: v1::JobSpec) -> String {
    jobs.submit(v1::SubmitRequest { spec: Some(spec), rebuild: false }).await.unwrap().into_inner().job_id
}

/// A scripted agent speaking `Workers` with a token: registers, then heartbeats when told to.
struct Agent {
    sender: mpsc::Sender<LeaseRequest>,
    replies: tonic::Streaming<LeaseResponse>,
    workers: WorkersClient<Authed>,
}

fn info(id: &str, capacity: u32, instance: &[u8]) -> AgentInfo {
    AgentInfo {
        agent_id: id.to_owned(),
        go_version: "go1.26.8".into(),
        host_goos: "linux".into(),
        host_goarch: "amd64".into(),
        c_compilers: Vec::new(),
        capacity,
        version: "test".into(),
        instance: Bytes::copy_from_slice(instance),
    }
}

impl Agent {
    async fn register(server: &Server, token: &str, info: AgentInfo) -> Result<Self, Status> {
        let mut workers = workers(server, token).await;
        let (sender, receiver) = mpsc::channel(64);
        sender.send(LeaseRequest { kind: Some(lease_request::Kind::Register(info)) }).await.unwrap();
        let mut replies = workers.lease(ReceiverStream::new(receiver)).await?.into_inner();
        match replies.next().await {
            Some(Ok(LeaseResponse { kind: Some(lease_response::Kind::Registered(_)) })) => {}
            Some(Ok(other)) => panic!("expected `registered`, got {other:?}"),
            Some(Err(status)) => return Err(status),
            None => return Err(Status::unknown("the lease stream ended before `registered`")),
        }
        Ok(Self { sender, replies, workers })
    }

    async fn connect(server: &Server, token: &str, id: &str, capacity: u32) -> Self {
        Self::register(server, token, info(id, capacity, id.as_bytes())).await.expect("registered")
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

    /// The next task, passing over the aborts that come before it.
    async fn task_after_aborts(&mut self) -> v1::TaskLease {
        loop {
            match self.next(Duration::from_secs(5)).await {
                Some(lease_response::Kind::Task(task)) => return task,
                Some(lease_response::Kind::Abort(_)) => {}
                other => panic!("expected a task, got {other:?}"),
            }
        }
    }

    async fn heartbeat(&self, running: &[FencingToken]) {
        let heartbeat = v1::Heartbeat { free_slots: 0, running: running.to_vec(), draining: false };
        let _ =
            self.sender.send(LeaseRequest { kind: Some(lease_request::Kind::Heartbeat(heartbeat)) }).await;
    }
}

async fn complete(workers: &mut WorkersClient<Authed>, token: &FencingToken) -> Result<(), Status> {
    let result = v1::TaskResult {
        outputs: vec![v1::OutputFile {
            name: "app".into(),
            digest: Some(Digest::of(b"app").to_wire()),
            executable: true,
        }],
        ..Default::default()
    };
    let request = v1::CompleteRequest {
        token: Some(token.clone()),
        outcome: Some(v1::complete_request::Outcome::Success(result)),
    };
    workers.complete(request).await.map(drop)
}

async fn progress(
    workers: &mut WorkersClient<Authed>,
    token: &FencingToken,
    line: &str,
) -> Result<(), Status> {
    let request =
        v1::ProgressRequest { token: Some(token.clone()), started: true, lines: vec![line.to_owned()] };
    workers.progress(request).await.map(drop)
}

async fn status(jobs: &mut JobsClient<Authed>, job: &str) -> v1::JobStatus {
    let mut events = jobs.watch(v1::WatchRequest { job_id: job.to_owned() }).await.unwrap().into_inner();
    events.next().await.unwrap().unwrap().status.unwrap()
}

/// Waits for the job to finish; returns its final status and every event seen on the way.
async fn finish(jobs: &mut JobsClient<Authed>, job: &str) -> (v1::JobStatus, Vec<v1::JobEvent>) {
    let mut events = jobs.watch(v1::WatchRequest { job_id: job.to_owned() }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("the job finishes")
            .expect("the stream ends with JOB_FINISHED")
            .unwrap();
        seen.push(event.clone());
        if event.kind == Kind::JobFinished as i32 {
            return (event.status.unwrap(), seen);
        }
    }
}

fn denied(result: Result<(), Status>, what: &str) -> Status {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    status
}

#[tokio::test]
async fn a_worker_is_leased_only_jobs_its_token_covers() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let mut jobs = jobs(&server, "submitter").await;
    let mut main = Agent::connect(&server, "agent-main", "main-agent", 4).await;
    let pr_job = submit(&mut jobs, spec("pr-7", &["linux/amd64"])).await;

    // The `main/*` worker has free slots but never sees the `pr-*` job, which waits.
    assert!(main.next(Duration::from_millis(700)).await.is_none(), "a main/* worker got a pr-* job");
    let main_job = submit(&mut jobs, spec("main/linux", &["linux/amd64"])).await;
    let lease = main.task().await;
    assert_eq!(lease.token.as_ref().unwrap().job_id, main_job);
    assert_eq!(status(&mut jobs, &pr_job).await.tasks[0].state, TaskState::Queued as i32);

    // A worker whose token covers `pr-*` gets it.
    let mut pr = Agent::connect(&server, "agent-pr", "pr-agent", 1).await;
    let pr_lease = pr.task().await;
    let pr_token = pr_lease.token.clone().unwrap();
    assert_eq!(pr_token.job_id, pr_job);

    // Progress and Complete check the caller's grant too, even with the lease's secret, and
    // answer as for a job that does not exist: whether another tenant's job does, and in
    // which namespace, is not the caller's to learn.
    let mut main_workers = workers(&server, "agent-main").await;
    let mut made_up = pr_token.clone();
    made_up.job_id = "1a00000000a-000000".into();
    let unknown = progress(&mut main_workers, &made_up, "x").await.expect_err("a made-up job");
    for (what, result) in [
        ("main/* progress on pr-7", progress(&mut main_workers, &pr_token, "x").await),
        ("main/* completes pr-7", complete(&mut main_workers, &pr_token).await),
    ] {
        let status = result.expect_err(what);
        assert_eq!(status.code(), unknown.code(), "{what}: {status:?}");
        assert!(!status.message().contains("pr-7"), "{what}: {}", status.message());
    }
    complete(&mut pr.workers, &pr_token).await.unwrap();
    let (done, _) = finish(&mut jobs, &pr_job).await;
    assert_eq!(done.state, JobState::Succeeded as i32);
    assert_eq!(done.tasks[0].agent, "agent-pr/pr-agent", "the record names the token and the agent");

    // A namespace neither covers waits for an all-namespace worker.
    let job = submit(&mut jobs, spec("team/x", &["linux/amd64"])).await;
    assert!(pr.next(Duration::from_millis(300)).await.is_none(), "a pr-* worker got a team/x job");
    let mut any = Agent::connect(&server, "agent-any", "any-agent", 1).await;
    assert_eq!(any.task().await.token.unwrap().job_id, job);
    server.stop().await;
}

#[tokio::test]
async fn forged_progress_heartbeats_and_completions_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let mut jobs = jobs(&server, "submitter").await;
    let mut holder = Agent::connect(&server, "agent-any", "holder", 1).await;
    let job = submit(&mut jobs, spec("pr-1", &["linux/amd64", "linux/arm64"])).await;
    let lease = holder.task().await;
    let real = lease.token.clone().unwrap();
    assert_eq!(real.secret.len(), 32, "every lease carries a secret");

    // Another worker knows (or guesses) the job, task and attempt, but not the secret.
    let mut attacker = workers(&server, "agent-other").await;
    let no_secret = FencingToken { secret: Bytes::new(), ..real.clone() };
    let wrong_secret = FencingToken { secret: Bytes::from(vec![7u8; 32]), ..real.clone() };
    for forged in [&no_secret, &wrong_secret] {
        let status = denied(progress(&mut attacker, forged, "PWNED").await, "forged progress");
        assert!(status.message().contains("secret"), "{}", status.message());
        denied(complete(&mut attacker, forged).await, "forged completion");
        // Even through the holder's own token.
        denied(complete(&mut holder.workers, forged).await, "forged completion, holder's token");
    }
    // The lease is bound to the token that holds it: the right secret through another token
    // is refused as well.
    denied(complete(&mut attacker, &real).await, "the real secret through another token");
    denied(progress(&mut attacker, &real, "PWNED").await, "progress through another token");

    // Nothing changed: the task is still leased to the holder, not started, attempt 1.
    let now = status(&mut jobs, &job).await;
    let task = &now.tasks[real.task as usize];
    assert_eq!((task.state, task.attempt, task.started_unix_ms), (TaskState::Leased as i32, 1, 0));

    // The real holder completes.
    progress(&mut holder.workers, &real, "compiling").await.unwrap();
    complete(&mut holder.workers, &real).await.unwrap();

    // A heartbeat with a wrong secret does not extend a lease, even from the session that
    // holds it: the holder is told to abort and the lease expires.
    let second = holder.task().await.token.unwrap();
    let forged = FencingToken { secret: Bytes::from(vec![1u8; 32]), ..second.clone() };
    let aborted = async {
        loop {
            holder.heartbeat(std::slice::from_ref(&forged)).await;
            match holder.next(Duration::from_millis(100)).await {
                Some(lease_response::Kind::Abort(token)) => return token,
                Some(other) => panic!("expected an abort, got {other:?}"),
                None => {}
            }
        }
    };
    let abort = tokio::time::timeout(Duration::from_secs(5), aborted).await.expect("an abort");
    assert_eq!(
        (abort.job_id.as_str(), abort.task, abort.attempt),
        (job.as_str(), second.task, second.attempt)
    );
    assert!(abort.secret.is_empty(), "aborts carry no secret");
    let third = holder.task_after_aborts().await.token.unwrap();
    assert_eq!((third.task, third.attempt), (second.task, 2), "the forged heartbeats held nothing");
    assert_ne!(third.secret, second.secret, "each attempt has its own secret");
    complete(&mut holder.workers, &third).await.unwrap();

    let (done, events) = finish(&mut jobs, &job).await;
    assert_eq!(done.state, JobState::Succeeded as i32);
    assert!(events.iter().all(|event| !event.message.contains("PWNED")), "forged progress reached watchers");
    server.stop().await;
}

#[tokio::test]
async fn a_second_registration_cannot_take_over_an_agent_identity() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let mut jobs = jobs(&server, "submitter").await;
    let first_info = info("builder", 1, &[1; 16]);
    let mut first = Agent::register(&server, "agent-any", first_info.clone()).await.unwrap();
    let job = submit(&mut jobs, spec("pr-1", &["linux/amd64"])).await;
    let token = first.task().await.token.unwrap();

    // Another process (another instance) under the same token and name is refused while the
    // first session lives. The same name under another token is another agent: admitted, it
    // takes nothing over.
    let other_process = Agent::register(&server, "agent-any", info("builder", 1, &[2; 16])).await.err();
    let other_process = other_process.expect("registration from another instance is refused");
    assert_eq!(other_process.code(), Code::PermissionDenied, "{other_process:?}");
    assert!(other_process.message().contains("already connected"), "{}", other_process.message());
    let _other_token = Agent::register(&server, "agent-other", first_info.clone()).await.unwrap();

    // The first session keeps its lease: heartbeats hold it past the lease timeout, and it
    // still receives what the server sends it.
    for _ in 0..10 {
        first.heartbeat(std::slice::from_ref(&token)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first.next(Duration::from_millis(50)).await.is_none(), "no abort");
    let now = status(&mut jobs, &job).await;
    assert_eq!((now.tasks[0].state, now.tasks[0].attempt), (TaskState::Leased as i32, 1));

    // The same process reconnecting (same token, same instance) is welcome and carries on.
    let again = Agent::register(&server, "agent-any", first_info).await.expect("a reconnect is accepted");
    again.heartbeat(std::slice::from_ref(&token)).await;
    complete(&mut first.workers, &token).await.unwrap();
    let (done, _) = finish(&mut jobs, &job).await;
    assert_eq!(done.state, JobState::Succeeded as i32);
    server.stop().await;
}

/// An agent is its token and its --name: another team's worker token registering the same
/// name, while the agent is away or not, is another agent. It keeps neither the agent's restart
/// out nor reaches its leases (their heartbeats, aborts and records).
#[tokio::test]
async fn an_agent_name_under_another_token_is_another_agent() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    a_name_under_another_token_is_another_agent(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn an_agent_name_under_another_token_is_another_agent_in_postgresql() {
    let (_db, _dir, server) = start_in_postgresql(&[]).await;
    a_name_under_another_token_is_another_agent(&server).await;
    server.stop().await;
}

/// Submitters take turns within a priority: a tenant that queued several jobs does not keep
/// another tenant's first job waiting behind all of them. The first job of each goes first
/// (oldest first among them), then each one's second, and so on.
async fn submitters_take_turns(server: &Server) {
    let mut flood = jobs(server, "submitter").await;
    let mut other = jobs(server, "pr-1-submitter").await;
    let mut flooded = Vec::new();
    for i in 0..3 {
        let mut spec = spec("main/app", &["linux/amd64"]);
        spec.source_root = Some(Digest::of(format!("flood {i}").as_bytes()).to_wire());
        flooded.push(submit(&mut flood, spec).await);
    }
    let theirs = submit(&mut other, spec("pr-1/app", &["linux/amd64"])).await;
    let mut agent = Agent::connect(server, "agent-any", "turns", 1).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let token = agent.task().await.token.unwrap();
        order.push(token.job_id.clone());
        complete(&mut agent.workers, &token).await.unwrap();
    }
    assert_eq!(order, [flooded[0].clone(), theirs, flooded[1].clone(), flooded[2].clone()]);
}

#[tokio::test]
async fn submitters_take_turns_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    submitters_take_turns(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn submitters_take_turns_in_postgresql() {
    let (_db, _dir, server) = start_in_postgresql(&[]).await;
    submitters_take_turns(&server).await;
    server.stop().await;
}

/// A submitter's jobs keep their order whatever finishes meanwhile: a job submitted after its
/// submitter's earlier ones finished (here, were cancelled) takes its turn after the ones
/// still queued, not before them; and a newcomer's first job waits behind the turn the queue
/// has reached, not ahead of it.
async fn turns_keep_each_submitters_order(server: &Server) {
    let mut flood = jobs(server, "submitter").await;
    let mut other = jobs(server, "pr-1-submitter").await;
    let mut flooded = Vec::new();
    for i in 0..3 {
        flooded.push(submit(&mut flood, numbered_spec("main/app", "flood", i)).await);
    }
    for job_id in &flooded[..2] {
        flood.cancel(v1::CancelRequest { job_id: job_id.clone() }).await.unwrap();
    }
    flooded.push(submit(&mut flood, numbered_spec("main/app", "flood", 3)).await);
    let theirs = submit(&mut other, numbered_spec("pr-1/app", "theirs", 0)).await;
    let mut agent = Agent::connect(server, "agent-any", "turns", 1).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        let token = agent.task().await.token.unwrap();
        order.push(token.job_id.clone());
        complete(&mut agent.workers, &token).await.unwrap();
    }
    assert_eq!(order, [flooded[2].clone(), theirs, flooded[3].clone()]);
}

/// A job no agent takes (a Go version none has) holds no turn back: a newcomer's jobs take
/// turns from the jobs being served, not from that job's, so they do not all go ahead of a
/// submitter that has kept the agents busy.
async fn a_job_no_agent_takes_holds_no_turn_back(server: &Server) {
    let mut stuck = jobs(server, "pr-2-submitter").await;
    let never = v1::JobSpec { go_version: "go1.99.0".into(), ..numbered_spec("pr-2/app", "stuck", 0) };
    submit(&mut stuck, never).await;
    let mut busy = jobs(server, "submitter").await;
    let mut newcomer = jobs(server, "pr-1-submitter").await;
    let mut agent = Agent::connect(server, "agent-any", "turns", 1).await;
    // Each of busy's jobs is submitted while the one before runs.
    let first = submit(&mut busy, numbered_spec("main/app", "busy", 0)).await;
    let mut running = agent.task().await.token.unwrap();
    assert_eq!(running.job_id, first);
    let mut queued = String::new();
    for i in 1..4 {
        queued = submit(&mut busy, numbered_spec("main/app", "busy", i)).await;
        if i < 3 {
            complete(&mut agent.workers, &running).await.unwrap();
            running = agent.task().await.token.unwrap();
            assert_eq!(running.job_id, queued);
        }
    }
    let theirs = [
        submit(&mut newcomer, numbered_spec("pr-1/app", "new", 0)).await,
        submit(&mut newcomer, numbered_spec("pr-1/app", "new", 1)).await,
    ];
    complete(&mut agent.workers, &running).await.unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        let token = agent.task().await.token.unwrap();
        order.push(token.job_id.clone());
        complete(&mut agent.workers, &token).await.unwrap();
    }
    assert_eq!(order, [theirs[0].clone(), queued, theirs[1].clone()]);
}

#[tokio::test]
async fn a_job_no_agent_takes_holds_no_turn_back_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    a_job_no_agent_takes_holds_no_turn_back(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_job_no_agent_takes_holds_no_turn_back_in_postgresql() {
    let (_db, _dir, server) = start_in_postgresql(&[]).await;
    a_job_no_agent_takes_holds_no_turn_back(&server).await;
    server.stop().await;
}

fn numbered_spec(namespace: &str, tree: &str, number: usize) -> v1::JobSpec {
    let mut spec = spec(namespace, &["linux/amd64"]);
    spec.source_root = Some(Digest::of(format!("{tree} {number}").as_bytes()).to_wire());
    spec
}

#[tokio::test]
async fn turns_keep_each_submitters_order_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    turns_keep_each_submitters_order(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn turns_keep_each_submitters_order_in_postgresql() {
    let (_db, _dir, server) = start_in_postgresql(&[]).await;
    turns_keep_each_submitters_order(&server).await;
    server.stop().await;
}

/// Jobs no agent here can take, queued ahead of others (more than one leasing round looks
/// at), must not keep the agents from the jobs after them: another namespace's, and jobs
/// asking a Go version no agent has, which any submitter may queue.
async fn jobs_no_agent_can_take_do_not_hold_the_queue(server: &Server) {
    let mut jobs = jobs(server, "submitter").await;
    for i in 0..40 {
        let mut spec = if i % 2 == 0 {
            spec("pr-9", &["linux/amd64"])
        } else {
            v1::JobSpec { go_version: "go1.99.0".into(), ..spec("main/old", &["linux/amd64"]) }
        };
        spec.source_root = Some(Digest::of(format!("tree {i}").as_bytes()).to_wire());
        submit(&mut jobs, spec).await;
    }
    let buildable = submit(&mut jobs, spec("main/app", &["linux/amd64"])).await;
    let mut agent = Agent::connect(server, "agent-main", "main-agent", 1).await;
    assert_eq!(agent.task().await.token.unwrap().job_id, buildable);
}

#[tokio::test]
async fn jobs_no_agent_can_take_do_not_hold_the_queue_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    jobs_no_agent_can_take_do_not_hold_the_queue(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn jobs_no_agent_can_take_do_not_hold_the_queue_in_postgresql() {
    let (_db, _dir, server) = start_in_postgresql(&[]).await;
    jobs_no_agent_can_take_do_not_hold_the_queue(&server).await;
    server.stop().await;
}

/// Registers until the session the same agent had before is noticed gone; panics with the
/// last refusal after 5s.
async fn register_once_gone(server: &Server, token: &str, info: AgentInfo, who: &str) -> Agent {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Agent::register(server, token, info.clone()).await {
            Ok(agent) => return agent,
            Err(status) if std::time::Instant::now() < deadline => {
                assert_eq!(status.code(), Code::PermissionDenied, "{who}: {status:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{who} was refused: {status:?}"),
        }
    }
}

async fn a_name_under_another_token_is_another_agent(server: &Server) {
    let mut jobs = jobs(server, "submitter").await;

    // The main team's builder-1 builds a job, then goes away (a restart): it holds no lease.
    let mut main = Agent::register(server, "agent-main", info("builder-1", 1, &[1; 16])).await.unwrap();
    let first = submit(&mut jobs, spec("main/app", &["linux/amd64"])).await;
    let lease = main.task().await.token.unwrap();
    complete(&mut main.workers, &lease).await.unwrap();
    finish(&mut jobs, &first).await;
    drop(main);

    // The pr team's token registers builder-1 meanwhile; then the main one comes back under
    // its own name, and both are connected.
    let mut pr = register_once_gone(server, "agent-pr", info("builder-1", 1, &[2; 16]), "agent-pr").await;
    let mut main =
        register_once_gone(server, "agent-main", info("builder-1", 1, &[3; 16]), "the returning agent").await;

    // Each has its own slot: both take a task at once.
    let main_job = submit(&mut jobs, spec("main/app", &["linux/amd64"])).await;
    let pr_job = submit(&mut jobs, spec("pr-1", &["linux/amd64"])).await;
    let main_lease = main.task().await.token.unwrap();
    let pr_lease = pr.task().await.token.unwrap();
    assert_eq!((main_lease.job_id.as_str(), pr_lease.job_id.as_str()), (main_job.as_str(), pr_job.as_str()));

    // The pr agent's heartbeats cannot hold the main agent's lease, even with its secret: it is
    // told to abort it, and the main agent is told nothing. Its own lease is extended.
    pr.heartbeat(&[main_lease.clone(), pr_lease.clone()]).await;
    match pr.next(Duration::from_secs(5)).await {
        Some(lease_response::Kind::Abort(token)) => assert_eq!(token.job_id, main_job),
        other => panic!("the pr agent was not told off the main agent's lease: {other:?}"),
    }
    for _ in 0..8 {
        pr.heartbeat(std::slice::from_ref(&pr_lease)).await;
        main.heartbeat(std::slice::from_ref(&main_lease)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(main.next(Duration::from_millis(50)).await.is_none(), "the main agent was told to abort");
    assert!(pr.next(Duration::from_millis(50)).await.is_none(), "the pr agent was told to abort its own");
    for (job, token) in [(&main_job, &main_lease), (&pr_job, &pr_lease)] {
        let task = &status(&mut jobs, job).await.tasks[0];
        assert_eq!((task.state, task.attempt), (TaskState::Leased as i32, token.attempt), "{task:?}");
    }

    // The main job's cancellation reaches the main agent only.
    jobs.cancel(v1::CancelRequest { job_id: main_job.clone() }).await.unwrap();
    match main.next(Duration::from_secs(5)).await {
        Some(lease_response::Kind::Abort(token)) => assert_eq!(token.job_id, main_job),
        other => panic!("the main agent was not told of the cancellation: {other:?}"),
    }
    complete(&mut pr.workers, &pr_lease).await.unwrap();
    finish(&mut jobs, &pr_job).await;
    assert!(pr.next(Duration::from_millis(300)).await.is_none(), "the pr agent was told of the main job");

    // Records say which agent: its token's name and its own.
    let agents = [&first, &main_job, &pr_job];
    let mut recorded = Vec::new();
    for job in agents {
        recorded.push(status(&mut jobs, job).await.tasks[0].agent.clone());
    }
    assert_eq!(recorded, ["agent-main/builder-1", "agent-main/builder-1", "agent-pr/builder-1"]);
}

/// A lease recorded before agents were keyed by their tokens names the agent bare. Its agent's
/// heartbeats, with the lease's secret, still hold it and record it under the agent's key (so
/// an upgrade costs no running build); another token's agent of that name is told to abort it.
#[tokio::test]
async fn a_lease_recorded_under_the_bare_name_stays_its_agents_in_postgresql() {
    let (db, _dir, server) = start_in_postgresql(&[]).await;
    let mut jobs = jobs(&server, "submitter").await;
    let mut agent = Agent::register(&server, "agent-main", info("builder-1", 1, &[1; 16])).await.unwrap();
    let job = submit(&mut jobs, spec("main/app", &["linux/amd64"])).await;
    let lease = agent.task().await.token.unwrap();

    // As the scheduler recorded leases before: the bare name, in the record and the task row.
    let hex = db.query(&format!("SELECT encode(record, 'hex') FROM jobs WHERE job_id = '{job}'"));
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap()).collect();
    let mut record = cached::scheduler::store::record::decode(&bytes).unwrap();
    assert_eq!(record.tasks[0].agent, "agent-main/builder-1");
    record.tasks[0].agent = "builder-1".into();
    let hex: String =
        cached::scheduler::store::record::encode(&record).iter().map(|b| format!("{b:02x}")).collect();
    db.query(&format!(
        "UPDATE jobs SET record = decode('{hex}', 'hex') WHERE job_id = '{job}'; \
         UPDATE tasks SET agent = 'builder-1' WHERE job_id = '{job}'"
    ));

    let mut other = Agent::register(&server, "agent-other", info("builder-1", 1, &[2; 16])).await.unwrap();
    other.heartbeat(std::slice::from_ref(&lease)).await;
    match other.next(Duration::from_secs(5)).await {
        Some(lease_response::Kind::Abort(token)) => assert_eq!(token.job_id, job),
        other => panic!("another token's builder-1 was not told to abort: {other:?}"),
    }
    for _ in 0..8 {
        agent.heartbeat(std::slice::from_ref(&lease)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agent.next(Duration::from_millis(50)).await.is_none(), "the agent was told to abort its lease");
    let task = &status(&mut jobs, &job).await.tasks[0];
    assert_eq!((task.state, task.attempt), (TaskState::Leased as i32, 1), "{task:?}");
    assert_eq!(task.agent, "agent-main/builder-1");
    assert_eq!(db.query(&format!("SELECT agent FROM tasks WHERE job_id = '{job}'")), "agent-main/builder-1");
    complete(&mut agent.workers, &lease).await.unwrap();
    server.stop().await;
}

async fn go_put(go: &mut GoCacheClient<Authed>, ns: &str, blob: &[u8]) -> Result<(), Status> {
    let entry = common::go_entry(blob);
    let put =
        v1::GoPutRequest { namespace: ns.to_owned(), action_id: vec![3; 32].into(), entry: Some(entry) };
    go.put(put).await.map(drop)
}

async fn go_get(go: &mut GoCacheClient<Authed>, ns: &str) -> Result<bool, Status> {
    let get = v1::GoGetRequest { namespace: ns.to_owned(), action_id: vec![3; 32].into() };
    Ok(go.get(get).await?.into_inner().entry.is_some())
}

async fn cas_write(cas: &mut CasClient<Authed>, blob: &[u8]) -> Result<(), Status> {
    let digest = Digest::of(blob);
    let messages = vec![header(digest, Compression::Identity), data(Bytes::copy_from_slice(blob))];
    cas.write(futures::stream::iter(messages)).await.map(drop)
}

#[tokio::test]
async fn the_cache_token_of_a_lease_reaches_its_namespace_only_while_the_lease_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let mut jobs = jobs(&server, "submitter").await;
    let mut agent = Agent::connect(&server, "agent-any", "a", 2).await;
    let job = submit(&mut jobs, spec("pr-7", &["linux/amd64", "linux/arm64"])).await;
    let (first, second) = (agent.task().await, agent.task().await);
    let credential = first.cache_token.clone();
    assert!(credential.starts_with("cached_"), "a lease carries a cache credential: {credential:?}");
    assert_ne!(credential, second.cache_token, "one per lease");
    let with = |secret: &str| bearer(secret);
    let channel = channel(&server).await;
    let mut go = GoCacheClient::with_interceptor(channel.clone(), with(&credential));
    let mut cas = CasClient::with_interceptor(channel.clone(), with(&credential));

    // The build reads and writes the job's namespace.
    let blob = b"compiled by the lease".to_vec();
    cas_write(&mut cas, &blob).await.expect("cas-write");
    go_put(&mut go, "pr-7", &blob).await.expect("ac-write in the job's namespace");
    assert!(go_get(&mut go, "pr-7").await.expect("read in the job's namespace"));

    // Not `main`, nothing beyond its scopes.
    let mut ci = GoCacheClient::with_interceptor(channel.clone(), bearer(&secret_of("ci-main")));
    go_put(&mut ci, "main/linux", &blob).await.expect("CI writes main");
    let status = denied(go_put(&mut go, "main/linux", &blob).await, "lease credential writes main");
    assert!(status.message().contains("lease:"), "the grant names the lease: {}", status.message());
    denied(go_get(&mut go, "main/linux").await.map(drop), "lease credential reads main");
    denied(go_put(&mut go, "pr-8", &blob).await, "lease credential writes another PR");
    let mut as_jobs = JobsClient::with_interceptor(channel.clone(), with(&credential));
    let err = as_jobs
        .submit(v1::SubmitRequest { spec: Some(spec("pr-7", &["linux/amd64"])), rebuild: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mut as_workers = WorkersClient::with_interceptor(channel.clone(), with(&credential));
    let first_token = first.token.clone().unwrap();
    let err = complete(&mut as_workers, &first_token).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // A tampered credential (another namespace in its claims) is not accepted.
    let parts: Vec<&str> = credential.split('.').collect();
    assert_eq!(parts.len(), 3, "{credential}");
    let claims = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, parts[1]).unwrap(),
    )
    .unwrap();
    assert!(claims.contains("pr-7"), "{claims}");
    let forged_claims = claims.replace("pr-7", "main");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, forged_claims),
        parts[2]
    );
    let mut tampered = GoCacheClient::with_interceptor(channel.clone(), with(&forged));
    let err = go_put(&mut tampered, "main", &blob).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Once the task completes, the credential is dead.
    complete(&mut agent.workers, &first_token).await.unwrap();
    let err = go_get(&mut go, "pr-7").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("lease"), "{}", err.message());
    assert_eq!(cas_write(&mut cas, b"late").await.unwrap_err().code(), Code::Unauthenticated);

    // And once a lease expires (no heartbeats), so is its credential.
    let mut late = GoCacheClient::with_interceptor(channel.clone(), with(&second.cache_token));
    assert!(go_get(&mut late, "pr-7").await.expect("live while the lease is"));
    let expired = async {
        loop {
            if let Err(err) = go_get(&mut late, "pr-7").await {
                return err;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let err = tokio::time::timeout(Duration::from_secs(5), expired).await.expect("the credential expires");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let _ = job;
    server.stop().await;
}

/// A token that may name many namespaces cannot take every open slot by spreading its jobs
/// over them: the others' submissions still get in.
#[tokio::test]
async fn open_jobs_are_capped_per_token_across_its_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let caps =
        [("max_open_jobs_per_namespace", "2"), ("max_open_jobs_per_token", "3"), ("max_open_jobs", "10")];
    let server = start(dir.path(), &caps).await;
    let mut pull_request = jobs(&server, "pr-1-submitter").await;
    let first = submit(&mut pull_request, spec("pr-1/0", &["linux/amd64"])).await;
    submit(&mut pull_request, spec("pr-1/0", &["linux/amd64"])).await;
    submit(&mut pull_request, spec("pr-1/1", &["linux/amd64"])).await;
    let err = pull_request
        .submit(v1::SubmitRequest { spec: Some(spec("pr-1/2", &["linux/amd64"])), rebuild: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_open_jobs_per_token") && err.message().contains("pr-1-submitter"),
        "{}",
        err.message()
    );
    // Another token's jobs are not held back by it.
    let mut main = jobs(&server, "submitter").await;
    submit(&mut main, spec("main", &["linux/amd64"])).await;
    // A finished job no longer counts against its token.
    pull_request.cancel(v1::CancelRequest { job_id: first }).await.unwrap();
    submit(&mut pull_request, spec("pr-1/2", &["linux/amd64"])).await;
    server.stop().await;
}

const CAPS: [(&str, &str); 3] =
    [("max_open_jobs_per_namespace", "2"), ("max_open_jobs_per_token", "3"), ("max_open_jobs", "3")];

#[tokio::test]
async fn open_jobs_are_capped_per_namespace_and_in_total() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &CAPS).await;
    open_jobs_are_capped(&server).await;
    server.stop().await;
}

/// On PostgreSQL a submitter at a cap is refused before the lock all replicas' submissions
/// take, and again under it.
#[tokio::test]
async fn open_jobs_are_capped_per_namespace_and_in_total_in_postgresql() {
    let (_db, _dir, server) = start_in_postgresql(&CAPS).await;
    open_jobs_are_capped(&server).await;
    server.stop().await;
}

async fn open_jobs_are_capped(server: &Server) {
    let mut jobs = jobs(server, "submitter").await;
    let a1 = submit(&mut jobs, spec("pr-1", &["linux/amd64"])).await;
    submit(&mut jobs, spec("pr-1", &["linux/amd64"])).await;
    let err = jobs
        .submit(v1::SubmitRequest { spec: Some(spec("pr-1", &["linux/amd64"])), rebuild: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_open_jobs_per_namespace") && err.message().contains("pr-1"),
        "{}",
        err.message()
    );
    submit(&mut jobs, spec("pr-2", &["linux/amd64"])).await;
    let err = jobs
        .submit(v1::SubmitRequest { spec: Some(spec("pr-3", &["linux/amd64"])), rebuild: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_open_jobs"), "{}", err.message());

    // A finished job no longer counts.
    jobs.cancel(v1::CancelRequest { job_id: a1 }).await.unwrap();
    submit(&mut jobs, spec("pr-3", &["linux/amd64"])).await;

    // Past the cap, a token below its equal share of it still gets in: tokens that filled it
    // between them (jobs no agent will take wait a day) cannot lock the others out.
    let mut other = self::jobs(server, "pr-2-submitter").await;
    submit(&mut other, spec("pr-2/a", &["linux/amd64"])).await;
    let err = other
        .submit(v1::SubmitRequest { spec: Some(spec("pr-2/b", &["linux/amd64"])), rebuild: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max_open_jobs") && err.message().contains("share"), "{}", err.message());
    let err = jobs
        .submit(v1::SubmitRequest { spec: Some(spec("pr-4", &["linux/amd64"])), rebuild: false })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test]
async fn an_agent_that_does_not_read_its_lease_stream_loses_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let mut agent = Agent::connect(&server, "agent-any", "deaf", 1).await;
    // Every lease it does not hold is answered with an abort; it never reads them, so once
    // HTTP/2 flow control stops the stream they wait in cached's queue.
    let bogus: Vec<FencingToken> = (0..25)
        .map(|task| FencingToken { job_id: "x".repeat(64), task, attempt: 1, ..Default::default() })
        .collect();
    for _ in 0..10_000 {
        if agent.sender.send_timeout(heartbeat(&bogus), Duration::from_secs(2)).await.is_err() {
            break;
        }
    }
    // The server gave up on the session: the stream ends (after what was already on the
    // wire) instead of holding an ever longer queue.
    let drained = async {
        loop {
            match agent.replies.next().await {
                Some(Ok(_)) => {}
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    };
    let end = tokio::time::timeout(Duration::from_secs(20), drained).await.expect("the stream ends");
    let status = end.expect("the stream ends saying why");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("did not read its lease stream"), "{}", status.message());
    // Its agent id is free again for the process when it reconnects.
    Agent::register(&server, "agent-any", info("deaf", 1, b"deaf")).await.expect("reconnect");
    server.stop().await;
}

fn heartbeat(running: &[FencingToken]) -> LeaseRequest {
    let heartbeat = v1::Heartbeat { free_slots: 0, running: running.to_vec(), draining: false };
    LeaseRequest { kind: Some(lease_request::Kind::Heartbeat(heartbeat)) }
}

#[tokio::test]
async fn a_heartbeat_listing_more_leases_than_the_agent_can_hold_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let mut agent = Agent::connect(&server, "agent-any", "liar", 1).await;
    let many: Vec<FencingToken> = (0..5000)
        .map(|task| FencingToken { job_id: "nope".into(), task, attempt: 1, ..Default::default() })
        .collect();
    agent.heartbeat(&many).await;
    let end = async {
        loop {
            match agent.replies.next().await {
                Some(Ok(_)) => {}
                Some(Err(status)) => return status,
                None => panic!("the stream ended without saying why"),
            }
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(10), end).await.expect("the session is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("5000"), "{}", status.message());
    server.stop().await;
}

#[tokio::test]
async fn a_huge_job_timeout_neither_panics_the_scheduler_nor_stops_its_sweeper() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]).await;
    let mut jobs = jobs(&server, "submitter").await;
    let mut agent = Agent::connect(&server, "agent-any", "a", 1).await;
    for seconds in [i64::MAX as u64 / 1000, u64::MAX, u64::MAX / 1000] {
        let huge = v1::JobSpec { timeout_seconds: seconds, ..spec("pr-1", &["linux/amd64"]) };
        match jobs.submit(v1::SubmitRequest { spec: Some(huge), rebuild: false }).await {
            // A validation cap at Submit is a clean refusal too.
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{seconds}: {status:?}"),
            Ok(reply) => {
                let job = reply.into_inner().job_id;
                let lease = agent.task().await;
                assert!(lease.deadline_unix_ms > 0, "{seconds}: the deadline saturates");
                complete(&mut agent.workers, lease.token.as_ref().unwrap()).await.unwrap();
                let (done, _) = finish(&mut jobs, &job).await;
                assert_eq!(done.state, JobState::Succeeded as i32, "{seconds}");
            }
        }
    }
    // The sweeper still runs: a lease nobody heartbeats expires and is handed out again.
    let job = submit(&mut jobs, spec("pr-1", &["linux/amd64"])).await;
    let first = agent.task().await.token.unwrap();
    assert!(matches!(agent.next(Duration::from_secs(5)).await, Some(lease_response::Kind::Abort(_))));
    let second = agent.task().await.token.unwrap();
    assert_eq!((second.job_id.as_str(), second.attempt), (job.as_str(), first.attempt + 1));
    server.stop().await;
}

/// `blob`'s Cas.Write messages: a header, then 1 MiB pieces (what the server spools at once).
fn write_messages(blob: &[u8]) -> Vec<v1::WriteRequest> {
    let pieces = blob.chunks(1 << 20).map(|piece| data(Bytes::copy_from_slice(piece)));
    std::iter::once(header(Digest::of(blob), Compression::Identity)).chain(pieces).collect()
}

/// A Cas.Write of an 8 MiB blob under `credential` that sends 3 MiB of it and then waits,
/// held while the returned sender lives.
async fn held_upload(channel: &Channel, credential: &str) -> mpsc::Sender<v1::WriteRequest> {
    let (sender, receiver) = mpsc::channel(8);
    for message in write_messages(&noise(8 << 20, 0)).into_iter().take(4) {
        sender.send(message).await.unwrap();
    }
    let mut cas = CasClient::with_interceptor(channel.clone(), bearer(credential));
    cached::task::spawn("held upload", async move {
        let _ = cas.write(ReceiverStream::new(receiver)).await;
    })
    .detach();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sender
}

/// The leases of one submitter's jobs share one budget of unfinished uploads, as one token's
/// calls do: each lease credential is a token of its own, and with a budget each, whoever runs
/// an agent for its own jobs held the budget once per task (8 leases held 240 MiB against a
/// 32 MiB cap), keeping the disk below its floor for every tenant.
#[tokio::test]
async fn the_leases_of_one_submitter_share_one_budget_of_unfinished_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let settings =
        [("max_upload_bytes_per_token", "4MiB"), ("heartbeat_interval", "1s"), ("lease_timeout", "60s")];
    let server = start(dir.path(), &settings).await;
    let mut jobs = jobs(&server, "submitter").await;
    let mut agent = Agent::connect(&server, "agent-any", "a", 2).await;
    // One submitter's jobs in namespaces of their own: a budget per namespace was one per job.
    submit(&mut jobs, spec("pr-7", &["linux/amd64"])).await;
    submit(&mut jobs, spec("pr-8", &["linux/amd64"])).await;
    let (first, second) = (agent.task().await, agent.task().await);
    let channel = channel(&server).await;
    let held = held_upload(&channel, &first.cache_token).await;
    let mut cas = CasClient::with_interceptor(channel.clone(), bearer(&second.cache_token));
    let refused = cas.write(futures::stream::iter(write_messages(&noise(2 << 20, 1)))).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("the job leases of `submitter`"), "{}", refused.message());
    drop(held);
    server.stop().await;
}
