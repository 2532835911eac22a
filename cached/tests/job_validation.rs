//! What a job may ask of the agents, against a live cached with tokens: a `submit` token in
//! `pr-*` (an untrusted tenant) cannot get a job queued whose flags or environment would run
//! programs, read or write files on the agents, or whose deadline is beyond the server's cap;
//! Submit answers INVALID_ARGUMENT naming what was refused. An agent cannot report an output
//! name that would escape the submitter's output directory on Windows, nor image blobs that are
//! not in the CAS as it says, nor an image or index from a task that has none to give.

mod common;

use std::path::Path;
use std::time::Duration;

use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec};
use common::Server;
use futures::StreamExt;
use proto::Digest;
use proto::v1::cas_client::CasClient;
use proto::v1::jobs_client::JobsClient;
use proto::v1::workers_client::WorkersClient;
use proto::v1::{self, AgentInfo, EnvVar, LeaseRequest, lease_request, lease_response};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

const TENANT: &str = "tenant-submit-secret";
const AGENT: &str = "agent-worker-secret";
const RELEASE: &str = "release-submit-secret";
const EVERYWHERE: &str = "everywhere-submit-secret";
const LISTER: &str = "lister-read-secret";

fn token(name: &str, secret: &str, scopes: &str, namespaces: &str) -> TokenSpec {
    TokenSpec {
        name: name.to_owned(),
        scopes: Scopes::parse_list(scopes).unwrap(),
        namespaces: NamespacePattern::parse_list(namespaces).unwrap(),
        secret_hash: SecretHash::new(secret).unwrap(),
        rate_limit: None,
        max_priority: None,
    }
}

/// cached with an untrusted tenant's token and an agent's.
async fn start(dir: &Path) -> Server {
    start_with(dir, &[]).await
}

/// As `start`, with more settings.
async fn start_with(dir: &Path, settings: &[(&str, &str)]) -> Server {
    let tokens = [
        token("tenant", TENANT, "read,submit", "pr-*"),
        token("agent", AGENT, "read,cas-write,ac-write,worker", "*"),
        TokenSpec { max_priority: Some(10), ..token("release", RELEASE, "read,submit", "pr-*") },
        token("everywhere", EVERYWHERE, "read,submit", "*"),
        token("lister", LISTER, "read", "pr_a/*,pr-1"),
    ];
    let path = dir.join("tokens.toml");
    std::fs::write(&path, tokens.iter().map(|t| format!("{}\n", t.to_toml())).collect::<String>()).unwrap();
    let mut all = vec![("tokens_file", path.to_str().unwrap())];
    all.extend_from_slice(settings);
    Server::start(&dir.join("data"), &all).await
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
    let server = start_with(dir.path(), &settings).await;
    (db, dir, server)
}

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap()
}

fn authorized<T>(message: T, secret: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

fn spec() -> v1::JobSpec {
    v1::JobSpec {
        source_root: Some(Digest::of(b"tree").to_wire()),
        targets: vec!["linux/amd64".parse::<proto::Platform>().unwrap().to_wire("")],
        namespace: "pr-42".into(),
        ..Default::default()
    }
}

fn with_flag(flag: &str) -> v1::JobSpec {
    v1::JobSpec { build_flags: vec!["-trimpath".into(), flag.into()], ..spec() }
}

fn with_env(name: &str, value: &str) -> v1::JobSpec {
    v1::JobSpec { env: vec![EnvVar { name: name.into(), value: value.into() }], ..spec() }
}

async fn submit(jobs: &mut JobsClient<Channel>, spec: v1::JobSpec) -> Result<String, tonic::Status> {
    let request = authorized(v1::SubmitRequest { spec: Some(spec), rebuild: false }, TENANT);
    Ok(jobs.submit(request).await?.into_inner().job_id)
}

#[tokio::test]
async fn submit_accepts_what_a_job_may_well_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let fine = v1::JobSpec {
        build_flags: vec![
            "-trimpath".into(),
            "-ldflags=-s -w -X 'main.version=1.2 beta' -buildid=".into(),
            "-gcflags=all=-N -l".into(),
            "-tags=netgo,osusergo".into(),
        ],
        env: vec![
            EnvVar { name: "CGO_CFLAGS".into(), value: "-O2 -g -DNDEBUG".into() },
            EnvVar { name: "CGO_LDFLAGS".into(), value: "-static -lm -Wl,--as-needed".into() },
            EnvVar { name: "GOFLAGS".into(), value: "-buildvcs=false '-ldflags=-s -w'".into() },
        ],
        timeout_seconds: 3600,
        priority: -10,
        ..spec()
    };
    submit(&mut jobs, fine).await.expect("a reasonable job is queued");
    server.stop().await;
}

/// Queued tasks run highest priority first: a tenant free to pick any priority would take
/// every agent ahead of the others. Tokens ask 0 at most unless an operator allows more.
#[tokio::test]
async fn a_token_submits_at_most_its_max_priority() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let refused = submit(&mut jobs, v1::JobSpec { priority: 1, ..spec() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("at priority 0 at most") && refused.message().contains("max_priority")
    );
    for priority in [0, -1000] {
        submit(&mut jobs, v1::JobSpec { priority, ..spec() }).await.expect("at or below the default");
    }
    let as_release = |priority| {
        let spec = v1::JobSpec { priority, source_root: Some(Digest::of(b"release").to_wire()), ..spec() };
        authorized(v1::SubmitRequest { spec: Some(spec), rebuild: false }, RELEASE)
    };
    jobs.submit(as_release(10)).await.expect("the release token may ask 10");
    let refused = jobs.submit(as_release(11)).await.unwrap_err();
    assert!(refused.message().contains("at priority 10 at most"), "{refused:?}");
    server.stop().await;
}

#[tokio::test]
async fn submit_refuses_values_that_run_programs_or_touch_files_on_agents() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let attacks = [
        (with_flag("-ldflags=-extld=./x"), "-extld runs a program of the job's choosing on the agent"),
        (with_flag("-ldflags=all=-s -extld ./tools/ld"), "-extld runs a program"),
        (
            with_flag("-ldflags=-linkmode=external -extldflags=-fuse-ld=./ld"),
            "-extldflags passes flags to the C linker",
        ),
        (with_flag("-ldflags=-X @/var/lib/agent/token"), "starts with @"),
        (with_flag("-gcflags=-cpuprofile=/tmp/x"), "-cpuprofile writes a file"),
        (with_flag("-gcflags=all=-importcfg=/etc/passwd"), "-importcfg reads files"),
        (with_flag("-asmflags=-I=/root"), "-I reads files"),
        (with_flag("-buildmode=plugin"), "-buildmode may be default, exe, pie only"),
        (with_env("GOFLAGS", "'-ldflags=-extld=./x'"), "-extld runs a program"),
        (
            with_env("CGO_LDFLAGS", "-fplugin=./evil.so"),
            "\"-fplugin=./evil.so\" is not among the flags Go allows",
        ),
        (with_env("CGO_LDFLAGS", "-wrapper ./evil,-c"), "\"-wrapper\" is not among the flags Go allows"),
        (with_env("CGO_LDFLAGS", "-Wl,-plugin=./evil.so"), "\"-Wl,-plugin=./evil.so\" is not among"),
        (with_env("CGO_CFLAGS", "@./flags.txt"), "read more flags from that file"),
        (with_env("CGO_CFLAGS", "-O2 -B ./bin"), "\"-B\" is not among the flags Go allows"),
        (with_env("CGO_LDFLAGS_ALLOW", ".*"), "CGO_LDFLAGS_ALLOW widens Go's safe-flag rules"),
        (v1::JobSpec { timeout_seconds: u64::MAX, ..spec() }, "above the server's max_job_timeout (1day)"),
        (v1::JobSpec { priority: i32::MAX, ..spec() }, "priority 2147483647 is out of range"),
        (v1::JobSpec { packages: vec!["./cmd\n-toolexec=x".into()], ..spec() }, "control character"),
        (
            // Past year 9999 no image config can say when the image was made: every agent's
            // image step would fail on it.
            v1::JobSpec {
                image: Some(v1::ImageSpec { epoch: 253_402_300_800, ..Default::default() }),
                ..spec()
            },
            "after 9999-12-31T23:59:59Z",
        ),
    ];
    // Every attack is tried, so a failure lists all that got through.
    let mut wrong = Vec::new();
    for (attack, says) in &attacks {
        match submit(&mut jobs, attack.clone()).await {
            Ok(job) => wrong.push(format!("queued as {job}, where Submit should say {says:?}")),
            Err(status) if status.code() != Code::InvalidArgument || !status.message().contains(says) => {
                wrong.push(format!("{status:?}, wanted INVALID_ARGUMENT saying {says:?}"))
            }
            Err(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} attacks were not refused as they should be:\n{}",
        wrong.len(),
        attacks.len(),
        wrong.join("\n")
    );
    let listed = JobsClient::new(channel(&server).await)
        .list(authorized(v1::ListRequest { all: true, ..Default::default() }, TENANT))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "nothing was queued");
    server.stop().await;
}

/// A linux/amd64 agent registered over a Workers stream: its replies, and what sends to it.
async fn register_agent(
    server: &Server,
) -> (tonic::Streaming<v1::LeaseResponse>, mpsc::Sender<LeaseRequest>) {
    let (sender, receiver) = mpsc::channel(4);
    let info = AgentInfo {
        agent_id: "agent-1".into(),
        go_version: "go1.26.8".into(),
        host_goos: "linux".into(),
        host_goarch: "amd64".into(),
        capacity: 1,
        version: "test".into(),
        ..Default::default()
    };
    sender.send(LeaseRequest { kind: Some(lease_request::Kind::Register(info)) }).await.unwrap();
    let mut workers = WorkersClient::new(channel(server).await);
    let replies = workers.lease(authorized(ReceiverStream::new(receiver), AGENT)).await.unwrap().into_inner();
    (replies, sender)
}

/// An agent that leases the job's one task over the Workers stream.
async fn lease_one(server: &Server) -> (v1::TaskLease, mpsc::Sender<LeaseRequest>) {
    let (mut replies, sender) = register_agent(server).await;
    loop {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("a task within 10s")
            .expect("the stream stays open")
            .unwrap();
        if let Some(lease_response::Kind::Task(task)) = reply.kind {
            // The stream must outlive the lease: keep it in a task of its own.
            cached::task::spawn("lease stream", async move { while replies.next().await.is_some() {} })
                .detach();
            return (task, sender);
        }
    }
}

#[tokio::test]
async fn complete_refuses_output_names_that_are_not_portable_repeated_or_too_many() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    submit(&mut jobs, spec()).await.unwrap();
    let (task, _sender) = lease_one(&server).await;
    let mut workers = WorkersClient::new(channel(&server).await);
    let complete = |name: &str| {
        let result = v1::TaskResult {
            outputs: vec![v1::OutputFile {
                name: name.into(),
                digest: Some(Digest::of(b"binary").to_wire()),
                executable: true,
            }],
            ..Default::default()
        };
        let outcome = v1::complete_request::Outcome::Success(result);
        authorized(v1::CompleteRequest { token: task.token.clone(), outcome: Some(outcome) }, AGENT)
    };
    for name in ["..\\..\\evil.exe", "app:stream", "CON", "aux.exe", "app.", &"a".repeat(256)] {
        let status = workers.complete(complete(name)).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
    }
    // Every submitter downloads every output into one directory: one name twice would
    // overwrite the other, and thousands would fill the submitter's disk.
    let outputs = |names: Vec<String>| {
        let outputs = names
            .into_iter()
            .map(|name| v1::OutputFile {
                name,
                digest: Some(Digest::of(b"binary").to_wire()),
                executable: true,
            })
            .collect();
        let outcome =
            v1::complete_request::Outcome::Success(v1::TaskResult { outputs, ..Default::default() });
        authorized(v1::CompleteRequest { token: task.token.clone(), outcome: Some(outcome) }, AGENT)
    };
    let twice = workers.complete(outputs(vec!["app".into(), "app".into()])).await.unwrap_err();
    assert!(twice.code() == Code::InvalidArgument && twice.message().contains("twice"), "{twice:?}");
    let many = workers.complete(outputs((0..1025).map(|n| format!("app{n}")).collect())).await.unwrap_err();
    assert!(many.code() == Code::InvalidArgument && many.message().contains("at most 1024"), "{many:?}");
    workers.complete(complete("app.exe")).await.expect("a plain name is accepted");
    server.stop().await;
}

/// The descriptor of `bytes` as an agent reports it.
fn oci(media_type: &str, bytes: &[u8]) -> v1::OciBlob {
    let sha256: String = Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect();
    v1::OciBlob {
        media_type: media_type.into(),
        digest: format!("sha256:{sha256}"),
        size: bytes.len() as u64,
        cas: Some(Digest::of(bytes).to_wire()),
    }
}

async fn upload(server: &Server, blobs: &[&[u8]]) {
    let blobs = blobs
        .iter()
        .map(|bytes| v1::batch_write_request::Blob {
            digest: Some(Digest::of(bytes).to_wire()),
            compression: v1::Compression::Identity as i32,
            data: bytes.to_vec().into(),
        })
        .collect();
    let mut cas = CasClient::new(channel(server).await);
    let written = cas.batch_write(authorized(v1::BatchWriteRequest { blobs }, AGENT)).await.unwrap();
    for result in written.into_inner().results {
        assert_eq!(result.status.unwrap_or_default().code, 0, "uploaded");
    }
}

/// Agent leases as they come, over one Workers stream.
async fn lease_stream(server: &Server) -> (mpsc::Receiver<v1::TaskLease>, mpsc::Sender<LeaseRequest>) {
    let (mut replies, sender) = register_agent(server).await;
    let (leases, leased) = mpsc::channel(4);
    cached::task::spawn("lease stream", async move {
        while let Some(Ok(reply)) = replies.next().await {
            if let Some(lease_response::Kind::Task(task)) = reply.kind {
                let _ = leases.send(task).await;
            }
        }
    })
    .detach();
    (leased, sender)
}

async fn next_lease(leases: &mut mpsc::Receiver<v1::TaskLease>) -> v1::TaskLease {
    tokio::time::timeout(Duration::from_secs(10), leases.recv())
        .await
        .expect("a task within 10s")
        .expect("the stream stays open")
}

/// Completes `task` with `result` as the agent holding it; the refusal, if any.
async fn complete_with(
    server: &Server,
    task: &v1::TaskLease,
    result: v1::TaskResult,
) -> Result<(), tonic::Status> {
    let outcome = v1::complete_request::Outcome::Success(result);
    let request =
        authorized(v1::CompleteRequest { token: task.token.clone(), outcome: Some(outcome) }, AGENT);
    WorkersClient::new(channel(server).await).complete(request).await.map(|_| ())
}

/// Why a completion of `task` with `result` was not refused with `code` saying `says`.
async fn refusal(
    server: &Server,
    task: &v1::TaskLease,
    result: v1::TaskResult,
    code: Code,
    says: &str,
) -> Option<String> {
    match complete_with(server, task, result).await {
        Ok(()) => Some(format!("accepted, where Complete should say {says:?}")),
        Err(status) if status.code() != code || !status.message().contains(says) => {
            Some(format!("{status:?}, wanted {code:?} saying {says:?}"))
        }
        Err(_) => None,
    }
}

/// An image job's build task and index task, each completed first with what an agent must not
/// report (the refusals of each are collected, so a failure lists all that got through), then rightly.
async fn image_blobs_must_be_what_the_cas_holds(server: &Server) {
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let mut jobs = JobsClient::new(channel(server).await);
    let image_job = v1::JobSpec { image: Some(v1::ImageSpec::default()), ..spec() };
    let job = submit(&mut jobs, image_job).await.unwrap();
    let (mut leases, _sender) = lease_stream(server).await;
    let build = next_lease(&mut leases).await;
    assert_eq!(build.kind, v1::TaskKind::Build as i32);
    upload(server, &[b"manifest", b"config", b"layer", b"index"]).await;
    let image = v1::PlatformImage {
        os: "linux".into(),
        architecture: "amd64".into(),
        manifest: Some(oci(MANIFEST, b"manifest")),
        config: Some(oci("application/vnd.oci.image.config.v1+json", b"config")),
        layer: Some(oci("application/vnd.oci.image.layer.v1.tar+gzip", b"layer")),
        ..Default::default()
    };
    let with_image = |image: v1::PlatformImage| v1::TaskResult { image: Some(image), ..Default::default() };
    let index = oci("application/vnd.oci.image.index.v1+json", b"index");
    let mut wrong = Vec::new();
    let never_stored = v1::PlatformImage {
        layer: Some(oci("application/vnd.oci.image.layer.v1.tar+gzip", b"other layer")),
        ..image.clone()
    };
    wrong.extend(
        refusal(server, &build, with_image(never_stored), Code::FailedPrecondition, "is not in the CAS")
            .await,
    );
    let other_bytes = v1::OciBlob { digest: oci(MANIFEST, b"evil").digest, ..oci(MANIFEST, b"manifest") };
    let mislabelled = v1::PlatformImage { manifest: Some(other_bytes), ..image.clone() };
    wrong.extend(
        refusal(server, &build, with_image(mislabelled), Code::InvalidArgument, "bytes in the CAS").await,
    );
    let arm = v1::PlatformImage { architecture: "arm64".into(), ..image.clone() };
    wrong.extend(
        refusal(server, &build, with_image(arm), Code::InvalidArgument, "the task builds linux/amd64").await,
    );
    let both = v1::TaskResult { index: Some(index.clone()), ..with_image(image.clone()) };
    wrong.extend(refusal(server, &build, both, Code::InvalidArgument, "not an image index").await);
    let unrefused = |wrong: &[String]| {
        format!("{} completions were not refused as they should be:\n{}", wrong.len(), wrong.join("\n"))
    };
    assert!(wrong.is_empty(), "{}", unrefused(&wrong));
    complete_with(server, &build, with_image(image.clone())).await.expect("the build task's own image");

    let last = next_lease(&mut leases).await;
    assert_eq!(last.kind, v1::TaskKind::ImageIndex as i32);
    assert_eq!(last.images, std::slice::from_ref(&image), "the index task gets the build task's image");
    wrong.extend(
        refusal(server, &last, with_image(image.clone()), Code::InvalidArgument, "not a platform image")
            .await,
    );
    let missing = oci("application/vnd.oci.image.index.v1+json", b"no such index");
    let unstored = v1::TaskResult { index: Some(missing), ..Default::default() };
    wrong.extend(refusal(server, &last, unstored, Code::FailedPrecondition, "is not in the CAS").await);
    assert!(wrong.is_empty(), "{}", unrefused(&wrong));
    let done = v1::TaskResult { index: Some(index.clone()), ..Default::default() };
    complete_with(server, &last, done).await.expect("the index task's index");
    let status = jobs.watch(authorized(v1::WatchRequest { job_id: job.clone() }, TENANT)).await.unwrap();
    let first = status.into_inner().next().await.unwrap().unwrap();
    let job = first.status.expect("a snapshot first");
    assert_eq!(job.state, v1::JobState::Succeeded as i32, "{job:?}");
    assert_eq!(job.image, Some(index));
}

/// A list shows the jobs of the caller's namespaces only, which a backend asks its store for
/// (PostgreSQL: in the query, so a list costs what the caller may see); a prefix's `_` is a
/// character, not a wildcard.
async fn a_list_shows_the_callers_namespaces_only(server: &Server) {
    let mut jobs = JobsClient::new(channel(server).await);
    let mut mine = Vec::new();
    for (n, namespace) in ["pr-1", "pr-2", "pr_a/x", "prba/x", "pr_a", "pr-1"].into_iter().enumerate() {
        let spec = v1::JobSpec {
            namespace: namespace.into(),
            source_root: Some(Digest::of(format!("tree {n}").as_bytes()).to_wire()),
            ..spec()
        };
        let request = authorized(v1::SubmitRequest { spec: Some(spec), rebuild: false }, EVERYWHERE);
        let job = jobs.submit(request).await.unwrap().into_inner().job_id;
        if matches!(namespace, "pr-1" | "pr_a/x") {
            mine.push(job);
        }
    }
    mine.reverse();
    let listed = jobs
        .list(authorized(v1::ListRequest { all: true, ..Default::default() }, LISTER))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = listed.jobs.into_iter().map(|job| job.job_id).collect();
    assert_eq!(ids, mine, "newest first, of pr-1 and pr_a/* only");
}

#[tokio::test]
async fn a_list_shows_the_callers_namespaces_only_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    a_list_shows_the_callers_namespaces_only(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_list_shows_the_callers_namespaces_only_in_postgresql() {
    let (_db, _dir, server) = start_in_postgresql(&[]).await;
    a_list_shows_the_callers_namespaces_only(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn complete_refuses_image_blobs_the_cas_does_not_hold_as_reported() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    image_blobs_must_be_what_the_cas_holds(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn complete_refuses_image_blobs_the_cas_does_not_hold_as_reported_in_postgresql() {
    let (_db, _dir, server) = start_in_postgresql(&[]).await;
    image_blobs_must_be_what_the_cas_holds(&server).await;
    server.stop().await;
}
