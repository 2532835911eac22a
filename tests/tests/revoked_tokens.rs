//! Revoking a runner agent's token (SIGHUP) ends what it holds open: its lease stream, and the
//! leases it holds with their cache credentials (and a revoked reader's job watch ends too). Before, calls were only checked when admitted:
//! the stream and its heartbeats lived on, so the agent kept leasing tasks, each with write
//! access to the job's namespace. Run against both scheduler backends (RocksDB, PostgreSQL).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cached_e2e::postgres::Postgres;
use cached_e2e::{Daemon, binary, run};
use proto::Digest;
use proto::v1::{self, lease_response::Kind};
use tokio::sync::mpsc;
use tonic::Code;

#[tokio::test]
async fn a_revoked_agent_token_ends_its_lease_stream_and_leases_on_rocksdb() {
    revoked_agent_token(&[]).await;
}

#[tokio::test]
async fn a_revoked_agent_token_ends_its_lease_stream_and_leases_on_postgresql() {
    let db = Postgres::start();
    revoked_agent_token(&db.flags()).await;
}

async fn revoked_agent_token(backend: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    let tokens = [("agent-a", "worker"), ("agent-b", "worker"), ("ci", "submit,read"), ("ops", "read")];
    let tables: Vec<String> = tokens.iter().map(|(name, scopes)| token(dir.path(), name, scopes)).collect();
    std::fs::write(&file, tables.join("\n")).unwrap();
    let mut flags = vec!["--tokens-file".to_owned(), file.display().to_string()];
    flags.extend_from_slice(backend);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &flags);
    let secret = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.secret"))).unwrap();

    let (_a_sender, mut a) = lease_stream(&daemon, &secret("agent-a"), "a").await;
    // Agent a holds a lease, and its build the lease's cache credential; ci watches the job.
    let job_id = submit_as(&daemon, &secret("ci")).await;
    let mut jobs = v1::jobs_client::JobsClient::connect(daemon.url()).await.unwrap();
    let watch = authorized(v1::WatchRequest { job_id: job_id.clone() }, &secret("ci"));
    let mut watching = jobs.watch(watch).await.unwrap().into_inner();
    let credential = match next_on(&mut a, Duration::from_secs(10)).await {
        Some(Ok(Some(v1::LeaseResponse { kind: Some(Kind::Task(lease)) }))) => lease.cache_token,
        other => panic!("agent a got no task: {other:?}"),
    };
    assert_eq!(call_with(&daemon, &credential).await, Code::Ok);
    let (_b_sender, mut b) = lease_stream(&daemon, &secret("agent-b"), "b").await;
    let (_c_sender, mut c) = lease_stream(&daemon, &secret("agent-b"), "c").await;

    // agent-a and ci revoked, agent-b and ops left as they were.
    std::fs::write(&file, [tables[1].as_str(), tables[3].as_str()].join("\n")).unwrap();
    hang_up(&daemon);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watching.message().await {
                Ok(Some(_)) => {}
                other => return other,
            }
        }
    });
    match ended.await {
        Ok(Err(status)) => assert_eq!(status.code(), Code::Unauthenticated, "{status:?}"),
        other => panic!("the revoked token's job watch went on: {other:?}"),
    }
    match next_on(&mut a, Duration::from_secs(10)).await {
        Some(Err(status)) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            assert!(status.message().contains("agent-a"), "{status:?}");
        }
        other => panic!("the revoked token's lease stream went on: {other:?}"),
    }
    // Its lease ended with it (lease_timeout is 30s: this is not the expiry), and its task is
    // leased again to an agent whose token is unchanged.
    until_code(&daemon, &credential, Code::Unauthenticated).await;
    match next_task(&mut b, &mut c).await {
        Some(lease) => assert_eq!(lease.token.unwrap().attempt, 2),
        None => panic!("the expelled agent's task was not leased again"),
    }
    // The job says why its task ran again: not an expiry.
    let listed = jobs
        .list(authorized(v1::ListRequest { all: true, ..Default::default() }, &secret("ops")))
        .await
        .unwrap();
    let job = listed.into_inner().jobs.into_iter().find(|job| job.job_id == job_id).unwrap();
    let error = &job.tasks[0].error;
    assert!(error.contains("agent agent-a/a was expelled"), "{error}");

    // agent-b narrowed to `read`: both its streams end.
    std::fs::write(&file, with_scopes(&tables[1], "read")).unwrap();
    hang_up(&daemon);
    for stream in [&mut b, &mut c] {
        // A task requeued from the other stream may come first.
        loop {
            match next_on(stream, Duration::from_secs(10)).await {
                Some(Ok(Some(v1::LeaseResponse { kind: Some(Kind::Task(_)) }))) => {}
                Some(Err(status)) => {
                    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
                    break;
                }
                other => panic!("a stream whose token lost the worker scope went on: {other:?}"),
            }
        }
    }
}

/// A `[[tokens]]` table from `cached token new`; the secret goes to `<dir>/<name>.secret`.
fn token(dir: &Path, name: &str, scopes: &str) -> String {
    let mut command = Command::new(binary("cached"));
    command.args(["token", "new", "--name", name, "--scopes", scopes, "--secret-file"]);
    command.arg(dir.join(format!("{name}.secret")));
    run(command).success("cached token new").stdout
}

/// The same token (the same secret) with other scopes.
fn with_scopes(table: &str, scopes: &str) -> String {
    let line = |line: &str| {
        if line.starts_with("scopes") { format!("scopes = [{scopes:?}]") } else { line.to_owned() }
    };
    table.lines().map(line).collect::<Vec<_>>().join("\n")
}

fn hang_up(daemon: &Daemon) {
    let status = Command::new("kill").args(["-HUP", &daemon.pid().to_string()]).status().unwrap();
    assert!(status.success());
}

fn authorized<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {}", secret.trim()).parse().unwrap());
    request
}

/// A Lease stream with `secret` as an agent registering as `agent_id`, past its registration.
async fn lease_stream(
    daemon: &Daemon,
    secret: &str,
    agent_id: &str,
) -> (mpsc::Sender<v1::LeaseRequest>, tonic::Streaming<v1::LeaseResponse>) {
    let (sender, receiver) = mpsc::channel(4);
    let register = v1::AgentInfo {
        agent_id: agent_id.to_owned(),
        go_version: "go1.26.8".into(),
        host_goos: "linux".into(),
        host_goarch: "amd64".into(),
        capacity: 1,
        ..v1::AgentInfo::default()
    };
    sender.send(v1::LeaseRequest { kind: Some(v1::lease_request::Kind::Register(register)) }).await.unwrap();
    let request = authorized(tokio_stream::wrappers::ReceiverStream::new(receiver), secret);
    let mut workers = v1::workers_client::WorkersClient::connect(daemon.url()).await.unwrap();
    let mut replies = workers.lease(request).await.unwrap().into_inner();
    let registered = replies.message().await.unwrap().and_then(|reply| reply.kind);
    assert!(matches!(registered, Some(Kind::Registered(_))), "{registered:?}");
    (sender, replies)
}

/// Submits a one-target job with `secret`; its id.
async fn submit_as(daemon: &Daemon, secret: &str) -> String {
    let spec = v1::JobSpec {
        source_root: Some(Digest::of(b"tree").to_wire()),
        targets: vec!["linux/amd64".parse::<proto::Platform>().unwrap().to_wire("")],
        go_version: "go1.26.8".into(),
        ..v1::JobSpec::default()
    };
    let mut jobs = v1::jobs_client::JobsClient::connect(daemon.url()).await.unwrap();
    let request = authorized(v1::SubmitRequest { spec: Some(spec), rebuild: false }, secret);
    jobs.submit(request).await.unwrap().into_inner().job_id
}

/// What the stream does next within `within`: `None` if it stays open and quiet.
async fn next_on(
    replies: &mut tonic::Streaming<v1::LeaseResponse>,
    within: Duration,
) -> Option<Result<Option<v1::LeaseResponse>, tonic::Status>> {
    tokio::time::timeout(within, replies.message()).await.ok()
}

/// The next task either stream is given within 10 s.
async fn next_task(
    one: &mut tonic::Streaming<v1::LeaseResponse>,
    other: &mut tonic::Streaming<v1::LeaseResponse>,
) -> Option<v1::TaskLease> {
    let task = |reply: Result<Option<v1::LeaseResponse>, tonic::Status>| match reply {
        Ok(Some(v1::LeaseResponse { kind: Some(Kind::Task(lease)) })) => Some(lease),
        other => panic!("expected a task: {other:?}"),
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            reply = one.message() => task(reply),
            reply = other.message() => task(reply),
        }
    })
    .await
    .ok()
    .flatten()
}

/// What a CAS call presenting `secret` gets: OK, or the refusal's code.
async fn call_with(daemon: &Daemon, secret: &str) -> Code {
    let mut cas = v1::cas_client::CasClient::connect(daemon.url()).await.unwrap();
    match cas.find_missing(authorized(v1::FindMissingRequest { digests: Vec::new() }, secret)).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Polls until calls with `secret` get `code`.
async fn until_code(daemon: &Daemon, secret: &str, code: Code) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while call_with(daemon, secret).await != code {
        assert!(Instant::now() < deadline, "calls with the credential never got {code:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
