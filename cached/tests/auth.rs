//! Tokens, scopes and namespaces: every RPC × every scope × in and out of the token's
//! namespaces answers exactly as the scopes table of docs/securing.md says; rate limits hold one
//! token back without slowing another; writes to the action cache are audited by token name.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use cached::auth::{NamespacePattern, Scope, Scopes, SecretHash, TokenSpec};
use common::{Server, data, header};
use futures::StreamExt;
use proto::Digest;
use proto::v1::admin_client::AdminClient;
use proto::v1::builds_client::BuildsClient;
use proto::v1::cas_client::CasClient;
use proto::v1::go_cache_client::GoCacheClient;
use proto::v1::jobs_client::JobsClient;
use proto::v1::stats_client::StatsClient;
use proto::v1::workers_client::WorkersClient;
use proto::v1::{self, Compression};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// A caller: the secret it presents (if any) and what it should be allowed.
struct Caller {
    name: &'static str,
    secret: Option<String>,
    /// `None`: not a token the server knows.
    scopes: Option<Scopes>,
}

fn secret_of(name: &str) -> String {
    format!("test-secret-of-{name}")
}

fn spec(name: &str, scopes: &str, namespaces: &str, rate_limit: Option<u32>) -> TokenSpec {
    TokenSpec {
        name: name.to_owned(),
        scopes: Scopes::parse_list(scopes).unwrap(),
        namespaces: NamespacePattern::parse_list(namespaces).unwrap(),
        secret_hash: SecretHash::new(&secret_of(name)).unwrap(),
        rate_limit,
        max_priority: None,
    }
}

fn write_tokens(dir: &Path, specs: &[TokenSpec]) -> String {
    let path = dir.join("tokens.toml");
    let text: String = specs.iter().map(|spec| format!("{}\n", spec.to_toml())).collect();
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn request<T>(message: T, secret: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(secret) = secret {
        request.metadata_mut().insert("authorization", format!("Bearer {secret}").parse().unwrap());
    }
    request
}

#[derive(Clone)]
struct Clients {
    cas: CasClient<Channel>,
    go: GoCacheClient<Channel>,
    stats: StatsClient<Channel>,
    builds: BuildsClient<Channel>,
    jobs: JobsClient<Channel>,
    workers: WorkersClient<Channel>,
    admin: AdminClient<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    reflection: tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient<Channel>,
}

async fn clients(server: &Server) -> Clients {
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    Clients {
        cas: CasClient::new(channel.clone()),
        go: GoCacheClient::new(channel.clone()),
        stats: StatsClient::new(channel.clone()),
        builds: BuildsClient::new(channel.clone()),
        jobs: JobsClient::new(channel.clone()),
        workers: WorkersClient::new(channel.clone()),
        admin: AdminClient::new(channel.clone()),
        health: tonic_health::pb::health_client::HealthClient::new(channel.clone()),
        reflection: tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel),
    }
}

/// A blob and Go entry the setup token stored, so every allowed call can succeed.
struct Fixture {
    blob: Vec<u8>,
    digest: Digest,
    /// A job submitted by the setup token in each namespace, for Watch and Cancel.
    jobs: Vec<(&'static str, String)>,
}

fn job_spec(ns: &str, source: Digest) -> v1::JobSpec {
    v1::JobSpec {
        source_root: Some(source.to_wire()),
        targets: vec![v1::Target { goos: "linux".into(), goarch: "amd64".into(), ..Default::default() }],
        namespace: ns.to_owned(),
        ..Default::default()
    }
}

/// A build target, key and manifest that the server accepts.
fn build_inputs() -> (Option<v1::BuildTarget>, bytes::Bytes, Option<v1::BuildManifest>) {
    let manifest = v1::BuildManifest {
        version: 1,
        components: vec![v1::ManifestComponent {
            name: "env.GOOS".into(),
            hash: blake3::hash(b"linux").as_bytes().to_vec().into(),
            display: "linux".into(),
        }],
    };
    let key = cached::builds::manifest::key(&manifest).to_vec().into();
    let target = v1::BuildTarget {
        module: "example.com/m".into(),
        package: "example.com/m/cmd/app".into(),
        goos: "linux".into(),
        goarch: "amd64".into(),
    };
    (Some(target), key, Some(manifest))
}

/// A call that got past the auth layer and was then refused for what it asked (an unknown
/// lease) counts as allowed.
fn passed_auth(result: Result<(), Status>) -> Result<(), Status> {
    match result {
        Err(status) if status.code() == Code::NotFound => Ok(()),
        other => other,
    }
}

/// The calls that name a job rather than a namespace.
const JOB_CALLS: &[&str] = &["Jobs.Watch", "Jobs.Cancel"];

/// The documented table: what each RPC needs, and whether its namespace is checked.
const RPCS: &[(&str, Option<Scope>, bool)] = &[
    ("Cas.FindMissing", Some(Scope::Read), false),
    ("Cas.Read", Some(Scope::Read), false),
    ("Cas.BatchRead", Some(Scope::Read), false),
    ("Cas.Recheck", Some(Scope::Read), false),
    ("Cas.Write", Some(Scope::CasWrite), false),
    ("Cas.BatchWrite", Some(Scope::CasWrite), false),
    ("GoCache.Get", Some(Scope::Read), true),
    ("GoCache.GetMany", Some(Scope::Read), true),
    ("GoCache.Put", Some(Scope::AcWrite), true),
    ("GoCache.Access", Some(Scope::Read), true),
    ("Stats.Get", Some(Scope::Read), false),
    ("Stats.Report", Some(Scope::Read), true),
    ("Builds.Lookup", Some(Scope::Read), true),
    ("Builds.Record", Some(Scope::AcWrite), true),
    ("Builds.Explain", Some(Scope::Read), true),
    ("Builds.Stats", Some(Scope::Read), true),
    ("Jobs.Submit", Some(Scope::Submit), true),
    ("Jobs.Watch", Some(Scope::Read), true),
    ("Jobs.Cancel", Some(Scope::Submit), true),
    ("Jobs.List", Some(Scope::Read), false),
    ("Workers.Lease", Some(Scope::Worker), false),
    ("Workers.Progress", Some(Scope::Worker), false),
    ("Workers.Complete", Some(Scope::Worker), false),
    // Last: what it purges, the calls above no longer find.
    ("Admin.Purge", Some(Scope::Admin), true),
    ("Health.Check", None, false),
    ("ServerReflection.ServerReflectionInfo", None, false),
];

async fn call(
    clients: &Clients,
    rpc: &str,
    secret: Option<&str>,
    ns: &str,
    fixture: &Fixture,
) -> Result<(), Status> {
    let digest = fixture.digest;
    let Clients {
        mut cas,
        mut go,
        mut stats,
        mut builds,
        mut jobs,
        mut workers,
        mut admin,
        mut health,
        mut reflection,
    } = clients.clone();
    let job_in = |ns: &str| fixture.jobs.iter().find(|(n, _)| *n == ns).map(|(_, id)| id.clone()).unwrap();
    match rpc {
        "Cas.FindMissing" => {
            cas.find_missing(request(v1::FindMissingRequest { digests: vec![digest.to_wire()] }, secret))
                .await?;
        }
        "Cas.Read" => {
            let read = v1::ReadRequest { digest: Some(digest.to_wire()), ..Default::default() };
            let mut stream = cas.read(request(read, secret)).await?.into_inner();
            let mut out = Vec::new();
            while let Some(message) = stream.next().await {
                out.extend_from_slice(&message?.data);
            }
            assert_eq!(out, fixture.blob);
        }
        "Cas.BatchRead" => {
            let batch = v1::BatchReadRequest { digests: vec![digest.to_wire()], accept: 0 };
            let reply = cas.batch_read(request(batch, secret)).await?.into_inner();
            assert_eq!(reply.results[0].status.as_ref().unwrap().code, 0);
        }
        "Cas.Recheck" => {
            let recheck = v1::RecheckRequest { digest: Some(digest.to_wire()) };
            let outcome = cas.recheck(request(recheck, secret)).await?.into_inner().outcome();
            assert_eq!(outcome, v1::recheck_response::Outcome::Sound);
        }
        "Cas.Write" => {
            let messages =
                vec![header(digest, Compression::Identity), data(Bytes::from(fixture.blob.clone()))];
            cas.write(request(futures::stream::iter(messages), secret)).await?;
        }
        "Cas.BatchWrite" => {
            let blob = v1::batch_write_request::Blob {
                digest: Some(digest.to_wire()),
                compression: 0,
                data: Bytes::from(fixture.blob.clone()),
            };
            let reply = cas.batch_write(request(v1::BatchWriteRequest { blobs: vec![blob] }, secret)).await?;
            assert_eq!(reply.into_inner().results[0].status.as_ref().unwrap().code, 0);
        }
        "GoCache.Get" => {
            let get = v1::GoGetRequest { namespace: ns.to_owned(), action_id: vec![1; 32].into() };
            go.get(request(get, secret)).await?;
        }
        "GoCache.GetMany" => {
            let get = v1::GoGetManyRequest { namespace: ns.to_owned(), action_ids: vec![vec![1; 32].into()] };
            go.get_many(request(get, secret)).await?;
        }
        "GoCache.Put" => {
            let entry = common::go_entry(&fixture.blob);
            let put = v1::GoPutRequest {
                namespace: ns.to_owned(),
                action_id: vec![1; 32].into(),
                entry: Some(entry),
            };
            go.put(request(put, secret)).await?;
        }
        "GoCache.Access" => {
            let access = v1::GoAccessRequest { namespace: ns.to_owned() };
            go.access(request(access, secret)).await?;
        }
        "Stats.Get" => {
            stats.get(request(v1::StatsRequest {}, secret)).await?;
        }
        "Stats.Report" => {
            let session = v1::ClientSession { namespace: ns.to_owned(), gets: 1, ..Default::default() };
            stats.report(request(v1::ReportRequest { session: Some(session) }, secret)).await?;
        }
        "Builds.Lookup" => {
            let (target, key, manifest) = build_inputs();
            let lookup = v1::BuildLookupRequest { namespace: ns.to_owned(), target, key, manifest };
            builds.lookup(request(lookup, secret)).await?;
        }
        "Builds.Record" => {
            let (target, key, manifest) = build_inputs();
            let output = v1::BuildOutput { path: "app".into(), digest: Some(digest.to_wire()), mode: 0o755 };
            let record = v1::BuildRecordRequest {
                namespace: ns.to_owned(),
                target,
                key,
                manifest,
                outputs: vec![output],
                build_duration_ms: 1,
            };
            builds.record(request(record, secret)).await?;
        }
        "Builds.Explain" => {
            let explain = v1::BuildExplainRequest { namespace: ns.to_owned(), query: "cmd/app".into() };
            builds.explain(request(explain, secret)).await?;
        }
        "Builds.Stats" => {
            let stats = v1::BuildStatsRequest { namespace: ns.to_owned(), since_seconds: 60, top: 3 };
            builds.stats(request(stats, secret)).await?;
        }
        "Jobs.Submit" => {
            jobs.submit(request(
                v1::SubmitRequest { spec: Some(job_spec(ns, digest)), rebuild: false },
                secret,
            ))
            .await?;
        }
        "Jobs.Watch" => {
            let watch = v1::WatchRequest { job_id: job_in(ns) };
            let mut events = jobs.watch(request(watch, secret)).await?.into_inner();
            events.next().await.expect("a snapshot")?;
        }
        "Jobs.Cancel" => {
            jobs.cancel(request(v1::CancelRequest { job_id: job_in(ns) }, secret)).await?;
        }
        "Jobs.List" => {
            jobs.list(request(v1::ListRequest::default(), secret)).await?;
        }
        "Workers.Lease" => {
            // An agent id of its own each time: a connected id is not for another registration.
            static AGENTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = AGENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let register = v1::LeaseRequest {
                kind: Some(v1::lease_request::Kind::Register(v1::AgentInfo {
                    agent_id: format!("auth-test-{n}"),
                    capacity: 0,
                    ..Default::default()
                })),
            };
            let mut replies =
                workers.lease(request(futures::stream::iter([register]), secret)).await?.into_inner();
            replies.next().await.expect("registered")?;
        }
        "Workers.Progress" => {
            let token = v1::FencingToken { job_id: "none".into(), task: 0, attempt: 1, ..Default::default() };
            let progress = v1::ProgressRequest { token: Some(token), started: true, lines: vec![] };
            passed_auth(workers.progress(request(progress, secret)).await.map(drop))?;
        }
        "Workers.Complete" => {
            let token = v1::FencingToken { job_id: "none".into(), task: 0, attempt: 1, ..Default::default() };
            let failure = v1::TaskFailure { reason: "x".into(), retryable: false };
            let complete = v1::CompleteRequest {
                token: Some(token),
                outcome: Some(v1::complete_request::Outcome::Failure(failure)),
            };
            passed_auth(workers.complete(request(complete, secret)).await.map(drop))?;
        }
        "Admin.Purge" => {
            admin.purge(request(v1::PurgeRequest { namespace: ns.to_owned() }, secret)).await?;
        }
        "Health.Check" => {
            let check = tonic_health::pb::HealthCheckRequest { service: String::new() };
            health.check(request(check, secret)).await?;
        }
        "ServerReflection.ServerReflectionInfo" => {
            use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
            let list = tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut replies = reflection
                .server_reflection_info(request(futures::stream::iter([list]), secret))
                .await?
                .into_inner();
            replies.next().await.expect("a reply")?;
        }
        other => panic!("no call for {other}"),
    }
    Ok(())
}

const IN_NAMESPACE: &str = "team/linux";
const OUT_OF_NAMESPACE: &str = "main";

#[tokio::test]
async fn authorization_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs: Vec<TokenSpec> =
        Scope::ALL.iter().map(|scope| spec(scope.name(), scope.name(), "team/*", Some(0))).collect();
    specs.push(spec("everything-in-team", "read,cas-write,ac-write,worker,submit,admin", "team/*", Some(0)));
    specs.push(spec("setup", "read,cas-write,ac-write,submit", "*", Some(0)));
    let tokens_file = write_tokens(dir.path(), &specs);
    let server = Server::start(&dir.path().join("data"), &[("tokens_file", &tokens_file)]).await;
    let clients = clients(&server).await;

    let blob = common::noise(3000, 7);
    let mut fixture = Fixture { digest: Digest::of(&blob), blob, jobs: Vec::new() };
    call(&clients, "Cas.Write", Some(&secret_of("setup")), "", &fixture).await.expect("setup write");
    for ns in [IN_NAMESPACE, OUT_OF_NAMESPACE] {
        let submit = v1::SubmitRequest { spec: Some(job_spec(ns, fixture.digest)), rebuild: false };
        let reply = clients.jobs.clone().submit(request(submit, Some(&secret_of("setup")))).await;
        fixture.jobs.push((ns, reply.expect("setup submit").into_inner().job_id));
    }

    let mut callers: Vec<Caller> = specs
        .iter()
        .filter(|spec| spec.name != "setup")
        .map(|spec| Caller {
            name: Box::leak(spec.name.clone().into_boxed_str()),
            secret: Some(secret_of(&spec.name)),
            scopes: Some(spec.scopes),
        })
        .collect();
    callers.push(Caller { name: "no token", secret: None, scopes: None });
    callers.push(Caller {
        name: "unknown token",
        secret: Some("cached_not-a-token".to_owned()),
        scopes: None,
    });

    let mut checked = 0;
    for &(rpc, needs, namespaced) in RPCS {
        for caller in &callers {
            for ns in [IN_NAMESPACE, OUT_OF_NAMESPACE] {
                let result = call(&clients, rpc, caller.secret.as_deref(), ns, &fixture).await;
                let context = format!("{rpc} as `{}` in namespace `{ns}`", caller.name);
                match (needs, caller.scopes) {
                    (None, _) => assert!(result.is_ok(), "{context}: open, got {result:?}"),
                    (Some(_), None) => {
                        let status = result.expect_err(&context);
                        assert_eq!(status.code(), Code::Unauthenticated, "{context}: {status:?}");
                        assert!(status.message().contains("token"), "{context}: {}", status.message());
                    }
                    (Some(scope), Some(scopes)) if !scopes.contains(scope) => {
                        let status = result.expect_err(&context);
                        assert_eq!(status.code(), Code::PermissionDenied, "{context}: {status:?}");
                        assert!(
                            status.message().contains(&format!("`{scope}` scope")),
                            "{context}: the missing scope is named: {}",
                            status.message()
                        );
                    }
                    // Another namespace's job is unknown to the caller, as one that never was:
                    // a refusal naming its namespace would say it exists, and where.
                    (Some(_), Some(_)) if JOB_CALLS.contains(&rpc) && ns == OUT_OF_NAMESPACE => {
                        let status = result.expect_err(&context);
                        assert_eq!(status.code(), Code::NotFound, "{context}: {status:?}");
                        assert!(!status.message().contains(ns), "{context}: {}", status.message());
                    }
                    (Some(_), Some(_)) if namespaced && ns == OUT_OF_NAMESPACE => {
                        let status = result.expect_err(&context);
                        assert_eq!(status.code(), Code::PermissionDenied, "{context}: {status:?}");
                        assert!(
                            status.message().contains(&format!("namespace `{ns}`")),
                            "{context}: the namespace is named: {}",
                            status.message()
                        );
                    }
                    (Some(_), Some(_)) => assert!(result.is_ok(), "{context}: allowed, got {result:?}"),
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, RPCS.len() * callers.len() * 2);
    server.stop().await;
}

/// The test's table and the server's table cover every method the server serves, so a new RPC
/// cannot go unchecked.
#[test]
fn every_served_method_is_in_the_scope_table() {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let served: BTreeSet<String> = set
        .file
        .iter()
        .flat_map(|file| {
            let package = file.package().to_owned();
            file.service.iter().flat_map(move |service| {
                let package = package.clone();
                service
                    .method
                    .iter()
                    .map(move |method| format!("/{package}.{}/{}", service.name(), method.name()))
            })
        })
        .collect();
    let table: BTreeSet<String> = cached::auth::scopes::METHODS.iter().map(|m| m.path.to_owned()).collect();
    assert_eq!(served, table, "cached/src/auth/scopes.rs METHODS must list every served method");
    for path in &served {
        let short = cached::stats::api_name(path);
        let documented =
            RPCS.iter().find(|(rpc, ..)| *rpc == short).unwrap_or_else(|| panic!("{short} is not in RPCS"));
        assert_eq!(
            cached::auth::scopes::lookup(path).access,
            cached::auth::scopes::Access::Needs(documented.1.unwrap())
        );
    }
}

#[tokio::test]
async fn a_flooding_token_is_rate_limited_while_another_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [spec("flood", "read", "*", Some(20)), spec("calm", "read", "*", None)];
    let tokens_file = write_tokens(dir.path(), &specs);
    let server =
        Server::start(&dir.path().join("data"), &[("tokens_file", &tokens_file), ("rate_limit", "50")]).await;
    let clients = clients(&server).await;
    let stats = |secret: String| {
        let mut stats = clients.stats.clone();
        async move { stats.get(request(v1::StatsRequest {}, Some(&secret))).await.map(drop) }
    };
    let results = futures::future::join_all((0..100).map(|_| stats(secret_of("flood")))).await;
    let limited: Vec<&Status> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(limited.len() >= 50, "a burst of 20 and a trickle of 20/s pass: {} refused", limited.len());
    for status in &limited {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("`flood`") && status.message().contains("rate_limit"),
            "{status:?}"
        );
    }
    // The other token has its own bucket (the server's rate_limit of 50).
    for _ in 0..10 {
        stats(secret_of("calm")).await.expect("another token is served meanwhile");
    }
    server.stop().await;
}

/// A token of some namespaces sees the counters of those: not the per-API totals, which sum
/// every tenant's traffic (hits and misses, bytes), nor the shared store's, nor the store's
/// (blobs, bytes, evictions, free disk).
#[tokio::test]
async fn stats_show_a_namespace_token_no_other_tenants_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let specs = [
        spec("team-a", "read,cas-write,ac-write", "a", None),
        spec("team-b", "read", "b", None),
        spec("ops", "read", "*", None),
    ];
    let tokens_file = write_tokens(dir.path(), &specs);
    let server = Server::start(&dir.path().join("data"), &[("tokens_file", &tokens_file)]).await;
    let mut clients = clients(&server).await;
    let lookup = v1::GoGetRequest { namespace: "a".into(), action_id: vec![7; 32].into() };
    clients.go.get(request(lookup, Some(&secret_of("team-a")))).await.unwrap();
    let stats_of = |name: &str| {
        let mut stats = clients.stats.clone();
        let secret = secret_of(name);
        async move { stats.get(request(v1::StatsRequest {}, Some(&secret))).await.unwrap().into_inner() }
    };
    let theirs = stats_of("team-b").await;
    assert!(theirs.apis.is_empty(), "team-b sees every tenant's traffic: {:?}", theirs.apis);
    assert!(theirs.namespaces.iter().all(|ns| ns.namespace == "b"), "{:?}", theirs.namespaces);
    assert!(theirs.store.is_none(), "team-b sees the server's stored and evicted totals: {:?}", theirs.store);
    let ops = stats_of("ops").await;
    assert!(ops.apis.iter().any(|api| api.api == "GoCache.Get" && api.misses > 0), "{:?}", ops.apis);
    assert!(ops.store.is_some());
    server.stop().await;
}

#[tokio::test]
async fn action_cache_writes_and_jobs_are_audited_and_secrets_never_logged() {
    let (captured, _guard) = common::logs::capture();

    let dir = tempfile::tempdir().unwrap();
    let specs =
        [spec("ci-main", "read,cas-write,ac-write,submit", "main/*", None), spec("dev", "read", "*", None)];
    let tokens_file = write_tokens(dir.path(), &specs);
    let server = Server::start(&dir.path().join("data"), &[("tokens_file", &tokens_file)]).await;
    let clients = clients(&server).await;
    let blob = b"compiled object".to_vec();
    let fixture = Fixture { digest: Digest::of(&blob), blob, jobs: Vec::new() };
    let ci = secret_of("ci-main");
    call(&clients, "Cas.Write", Some(&ci), "", &fixture).await.unwrap();
    call(&clients, "GoCache.Put", Some(&ci), "main/linux", &fixture).await.unwrap();
    let denied = call(&clients, "GoCache.Put", Some(&secret_of("dev")), "main/linux", &fixture).await;
    assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    let submit = v1::SubmitRequest { spec: Some(job_spec("main/linux", fixture.digest)), rebuild: false };
    let job = clients.jobs.clone().submit(request(submit, Some(&ci))).await.unwrap().into_inner().job_id;
    let cancel = v1::CancelRequest { job_id: job.clone() };
    clients.jobs.clone().cancel(request(cancel, Some(&ci))).await.unwrap();
    server.stop().await;

    let log = captured.text();
    // Jobs run the submitter's source on the agents: who submitted and cancelled is on record.
    let audited = |api: &str| {
        log.lines()
            .find(|line| line.contains(api) && line.contains("audit"))
            .unwrap_or_else(|| panic!("no audit line for {api}:\n{log}"))
            .to_owned()
    };
    let submitted = audited("Jobs.Submit");
    assert!(
        submitted.contains("token=ci-main")
            && submitted.contains(&format!("job={job}"))
            && submitted.contains("queued"),
        "{submitted}"
    );
    let cancelled = audited("Jobs.Cancel");
    assert!(cancelled.contains("token=ci-main") && cancelled.contains("cancelled"), "{cancelled}");
    let put = log.lines().find(|line| line.contains("GoCache.Put") && line.contains("audit")).unwrap_or_else(
        || {
            panic!("no audit line for the put:\n{log}");
        },
    );
    assert!(
        put.contains("token=ci-main") && put.contains("namespace=main/linux") && put.contains("stored"),
        "{put}"
    );
    assert!(
        log.lines().any(|line| line.contains("scope denied") && line.contains("token=dev")),
        "denials are audited too:\n{log}"
    );
    for secret in [ci, secret_of("dev")] {
        assert!(!log.contains(&secret), "a secret reached the log:\n{log}");
    }
}

#[tokio::test]
async fn a_refused_submit_logs_a_bounded_escaped_line() {
    let (captured, _guard) = common::logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let specs =
        [spec("ci-main", "read,submit", "main/*", None), spec("ci-other", "read,submit", "main/*", None)];
    let tokens_file = write_tokens(dir.path(), &specs);
    let server = Server::start(&dir.path().join("data"), &[("tokens_file", &tokens_file)]).await;
    let clients = clients(&server).await;
    // About 1 MiB of package patterns, too many and each with a line of its own.
    let package = format!("./x\nINJECTED audit line {}", "y".repeat(4000));
    let mut job = job_spec("main/linux", Digest::of(b"source"));
    job.packages = vec![package; 300];
    let submit = v1::SubmitRequest { spec: Some(job), rebuild: false };
    // Refused again and again (within a rate limit), the refusals make a line per interval.
    for _ in 0..20 {
        let refused = clients.jobs.clone().submit(request(submit.clone(), Some(&secret_of("ci-main")))).await;
        assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument);
    }
    // Another token from the same address has a line of its own.
    let other = clients.jobs.clone().submit(request(submit.clone(), Some(&secret_of("ci-other")))).await;
    assert_eq!(other.unwrap_err().code(), Code::InvalidArgument);
    server.stop().await;

    let log = captured.text();
    assert!(!log.lines().any(|line| line.starts_with("INJECTED")), "a submitted newline started a log line");
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("Jobs.Submit")).collect();
    assert_eq!(lines.len(), 2, "a line per token for 21 refusals in a few seconds: {lines:#?}");
    assert!(lines[0].len() <= 2 << 10, "a line of {} bytes", lines[0].len());
    assert!(lines[0].contains("refused") && lines[0].contains("more"), "{}", lines[0]);
    assert!(lines[1].contains("ci-other"), "{}", lines[1]);
}

#[tokio::test]
async fn without_tokens_everything_is_open_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = clients(&server).await;
    let blob = b"anonymous".to_vec();
    let mut fixture = Fixture { digest: Digest::of(&blob), blob, jobs: Vec::new() };
    call(&clients, "Cas.Write", None, "", &fixture).await.unwrap();
    let submit = v1::SubmitRequest { spec: Some(job_spec("any/namespace", fixture.digest)), rebuild: false };
    let job = clients.jobs.clone().submit(request(submit, None)).await.unwrap().into_inner().job_id;
    fixture.jobs.push(("any/namespace", job));
    for &(rpc, ..) in RPCS {
        call(&clients, rpc, None, "any/namespace", &fixture)
            .await
            .unwrap_or_else(|err| panic!("{rpc}: {err:?}"));
    }
    server.stop().await;
}
