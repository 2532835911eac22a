//! What clients send cached stores and shows others, so credentials in it are redacted on
//! arrival: a failed task's reason and a successful one's explanation (from an agent), and the
//! displayed values of a build manifest that miss explanations quote. Checked over the wire
//! and in the files of the data directory.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Server;
use futures::StreamExt;
use proto::Digest;
use proto::v1::builds_client::BuildsClient;
use proto::v1::jobs_client::JobsClient;
use proto::v1::workers_client::WorkersClient;
use proto::v1::{self, AgentInfo, LeaseRequest, lease_request, lease_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyZWRhY3Rpb24ifQ.U2lnbmF0dXJlT2ZUaGVUZXN0";
/// Every secret the test plants; none may be seen or stored.
const SECRETS: &[&str] =
    &["Alpha7Secret", "Bravo7Secret", JWT, "Charlie7Secret", "Delta7Secret", "Echo7Secret"];

async fn channel(server: &Server) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap()
}

/// A scripted runner agent, registered and leasing.
struct Agent {
    _sender: mpsc::Sender<LeaseRequest>,
    replies: tonic::Streaming<v1::LeaseResponse>,
}

impl Agent {
    async fn connect(server: &Server) -> Self {
        let mut workers = WorkersClient::new(channel(server).await);
        let (sender, receiver) = mpsc::channel(4);
        let info = AgentInfo {
            agent_id: "agent".into(),
            host_goos: "linux".into(),
            host_goarch: "amd64".into(),
            capacity: 1,
            ..Default::default()
        };
        sender.send(LeaseRequest { kind: Some(lease_request::Kind::Register(info)) }).await.unwrap();
        let replies = workers.lease(ReceiverStream::new(receiver)).await.unwrap().into_inner();
        Self { _sender: sender, replies }
    }

    /// Submits a one-target job and leases its task: (job, fencing token).
    async fn job(&mut self, jobs: &mut JobsClient<Channel>) -> (String, v1::FencingToken) {
        let spec = v1::JobSpec {
            source_root: Some(Digest::of(b"tree").to_wire()),
            targets: vec!["linux/amd64".parse::<proto::Platform>().unwrap().to_wire("")],
            ..Default::default()
        };
        let job = jobs
            .submit(v1::SubmitRequest { spec: Some(spec), rebuild: false })
            .await
            .unwrap()
            .into_inner()
            .job_id;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.replies.next()).await;
            if let Some(lease_response::Kind::Task(task)) = next.unwrap().unwrap().unwrap().kind {
                return (job, task.token.unwrap());
            }
        }
    }
}

async fn job_status(jobs: &mut JobsClient<Channel>, job: &str) -> v1::JobStatus {
    let mut events = jobs.watch(v1::WatchRequest { job_id: job.into() }).await.unwrap().into_inner();
    loop {
        let event =
            tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap().unwrap();
        if event.kind == v1::job_event::Kind::JobFinished as i32 {
            return event.status.unwrap();
        }
    }
}

/// Every file under `dir` that holds `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|window| window == needle.as_bytes())
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test]
async fn credentials_from_agents_and_manifests_are_stored_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("heartbeat_interval", "1s"), ("lease_timeout", "10s")]).await;
    let mut jobs = JobsClient::new(channel(&server).await);
    let mut workers = WorkersClient::new(channel(&server).await);

    let mut agent = Agent::connect(&server).await;
    let (failed_job, token) = agent.job(&mut jobs).await;
    let reason = format!(
        "exit 1: AUTHORIZATION: BEARER {} password: {} id_token {JWT}, x-api-key: {}",
        SECRETS[0], SECRETS[1], SECRETS[3]
    );
    let failure = v1::TaskFailure { reason, retryable: false };
    let outcome = Some(v1::complete_request::Outcome::Failure(failure));
    workers.complete(v1::CompleteRequest { token: Some(token), outcome }).await.unwrap();
    let status = job_status(&mut jobs, &failed_job).await;
    let error = &status.tasks[0].error;
    assert!(error.starts_with("exit 1: AUTHORIZATION: BEARER [redacted] password: [redacted]"), "{error}");

    let (built_job, token) = agent.job(&mut jobs).await;
    let explanation = format!("GOFLAGS changed; GOPROXY=https://ci:{}@proxy.corp", SECRETS[4]);
    let result = v1::TaskResult { explanation, ..Default::default() };
    let outcome = Some(v1::complete_request::Outcome::Success(result));
    workers.complete(v1::CompleteRequest { token: Some(token), outcome }).await.unwrap();
    let status = job_status(&mut jobs, &built_job).await;
    let explanation = &status.tasks[0].result.as_ref().unwrap().explanation;
    assert_eq!(explanation, "GOFLAGS changed; GOPROXY=https://ci:[redacted]@proxy.corp");

    // A manifest shows a proxy URL with a password; a later miss quotes it.
    let mut builds = BuildsClient::new(channel(&server).await);
    let component = |value: &str| v1::ManifestComponent {
        name: "env.GOPROXY".into(),
        hash: blake3::hash(value.as_bytes()).as_bytes().to_vec().into(),
        display: format!("https://ci:{}@{value}", SECRETS[5]),
    };
    let manifest = |value: &str| v1::BuildManifest { version: 1, components: vec![component(value)] };
    let target = v1::BuildTarget {
        module: "m".into(),
        package: "m".into(),
        goos: "linux".into(),
        goarch: "amd64".into(),
    };
    let key = |m: &v1::BuildManifest| -> bytes::Bytes { cached::builds::manifest::key(m).to_vec().into() };
    let output = server.clients().await.write(b"binary").await;
    let first = manifest("proxy-a");
    let record = v1::BuildRecordRequest {
        namespace: String::new(),
        target: Some(target.clone()),
        key: key(&first),
        manifest: Some(first),
        outputs: vec![v1::BuildOutput { path: "m".into(), digest: Some(output.to_wire()), mode: 0o755 }],
        build_duration_ms: 1,
    };
    builds.record(record).await.unwrap();
    let second = manifest("proxy-b");
    let lookup = v1::BuildLookupRequest {
        namespace: String::new(),
        target: Some(target),
        key: key(&second),
        manifest: Some(second),
    };
    let miss = builds.lookup(lookup).await.unwrap().into_inner().explanation.unwrap();
    assert_eq!(miss.changes[0].before, "https://ci:[redacted]@proxy-a");
    assert_eq!(miss.changes[0].after, "https://ci:[redacted]@proxy-b");

    let listed = jobs.list(v1::ListRequest { limit: 10, all: true, ..Default::default() }).await.unwrap();
    let text = format!("{:?}", listed.into_inner());
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} is listed: {text}");
        let stored = files_holding(dir.path(), secret);
        assert!(stored.is_empty(), "{secret} is stored in {stored:?}");
    }
    server.stop().await;
}
