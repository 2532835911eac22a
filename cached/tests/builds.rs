//! The Builds service on the wire: keys checked against manifests, hits only while the outputs
//! are stored, misses compared with the nearest earlier build, the event log behind Explain and
//! Stats (kept across a restart), and the counters on /metrics.

mod common;

use std::time::Duration;

use common::{Server, noise};
use proto::Digest;
use proto::v1::builds_client::BuildsClient;
use proto::v1::{self};
use tonic::Code;
use tonic::transport::Channel;

async fn builds(server: &Server) -> BuildsClient<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    BuildsClient::new(channel)
}

fn component(name: &str, value: &str, display: &str) -> v1::ManifestComponent {
    v1::ManifestComponent {
        name: name.to_owned(),
        hash: blake3::hash(value.as_bytes()).as_bytes().to_vec().into(),
        display: display.to_owned(),
    }
}

/// A manifest of a build for `goos` with one source file of `source`, plus `extra`.
fn manifest(goos: &str, source: &str, extra: &[v1::ManifestComponent]) -> v1::BuildManifest {
    let mut components = vec![
        component("env.GOARCH", "amd64", "amd64"),
        component("env.GOOS", goos, goos),
        component("file.cmd/app/main.go", source, ""),
        component("flag.tags", "", ""),
        component("go.version", "go1.26.8", "go1.26.8"),
    ];
    components.extend_from_slice(extra);
    components.sort_by(|a, b| a.name.cmp(&b.name));
    v1::BuildManifest { version: 1, components }
}

fn target(goos: &str) -> v1::BuildTarget {
    v1::BuildTarget {
        module: "example.com/m".into(),
        package: "example.com/m/cmd/app".into(),
        goos: goos.into(),
        goarch: "amd64".into(),
    }
}

fn key(manifest: &v1::BuildManifest) -> bytes::Bytes {
    cached::builds::manifest::key(manifest).to_vec().into()
}

async fn lookup(
    client: &mut BuildsClient<Channel>,
    goos: &str,
    manifest: &v1::BuildManifest,
) -> v1::BuildLookupResponse {
    let request = v1::BuildLookupRequest {
        namespace: String::new(),
        target: Some(target(goos)),
        key: key(manifest),
        manifest: Some(manifest.clone()),
    };
    client.lookup(request).await.expect("lookup").into_inner()
}

fn record_request(goos: &str, manifest: &v1::BuildManifest, digest: Digest) -> v1::BuildRecordRequest {
    v1::BuildRecordRequest {
        namespace: String::new(),
        target: Some(target(goos)),
        key: key(manifest),
        manifest: Some(manifest.clone()),
        outputs: vec![v1::BuildOutput {
            path: "example.com/m/cmd/app".into(),
            digest: Some(digest.to_wire()),
            mode: 0o755,
        }],
        build_duration_ms: 1500,
    }
}

#[tokio::test]
async fn hits_misses_explanations_and_stats_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let mut client = builds(&server).await;

    let base = manifest("linux", "v1", &[]);
    let first = lookup(&mut client, "linux", &base).await;
    assert!(!first.hit);
    let explanation = first.explanation.unwrap();
    assert_eq!(explanation.basis, "first_build");
    assert_eq!(explanation.causes, ["first build"]);

    // Recording needs the outputs in the CAS first.
    let binary = noise(300_000, 1);
    let digest = Digest::of(&binary);
    let refused = client.record(record_request("linux", &base, digest)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    clients.write(&binary).await;
    client.record(record_request("linux", &base, digest)).await.unwrap();

    let hit = lookup(&mut client, "linux", &base).await;
    assert!(hit.hit);
    assert_eq!(hit.build_duration_ms, 1500);
    assert_eq!(Digest::from_wire(hit.outputs[0].digest.as_ref()).unwrap(), digest);

    // A changed source file and a tag: compared with the same target.
    let changed = manifest("linux", "v2", &[]);
    let mut tagged = changed.clone();
    tagged.components.retain(|c| c.name != "flag.tags");
    tagged.components.push(component("flag.tags", "netgo", "netgo"));
    tagged.components.sort_by(|a, b| a.name.cmp(&b.name));
    let miss = lookup(&mut client, "linux", &tagged).await.explanation.unwrap();
    assert_eq!(miss.basis, "same_target");
    assert_eq!(miss.causes, ["source files", "build tags"]);
    let names: Vec<&str> = miss.changes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["file.cmd/app/main.go", "flag.tags"]);
    assert_eq!((miss.changes[1].before.as_str(), miss.changes[1].after.as_str()), ("", "netgo"));

    // Another platform, never built: compared with the same package on linux.
    let windows = manifest("windows", "v1", &[]);
    let miss = lookup(&mut client, "windows", &windows).await.explanation.unwrap();
    assert_eq!(miss.basis, "same_package");
    assert_eq!(miss.causes, ["GOOS"]);
    assert_eq!(miss.nearest_target.unwrap().goos, "linux");

    // A key that is not the manifest's, or a manifest out of order, is refused.
    let mut request = v1::BuildLookupRequest {
        namespace: String::new(),
        target: Some(target("linux")),
        key: vec![0; 32].into(),
        manifest: Some(base.clone()),
    };
    assert_eq!(client.lookup(request.clone()).await.unwrap_err().code(), Code::InvalidArgument);
    let mut unsorted = base.clone();
    unsorted.components.reverse();
    request.key = key(&unsorted);
    request.manifest = Some(unsorted);
    assert_eq!(client.lookup(request).await.unwrap_err().code(), Code::InvalidArgument);

    let explain = |query: &str| v1::BuildExplainRequest { namespace: String::new(), query: query.into() };
    let found = client.explain(explain("cmd/app windows/amd64")).await.unwrap().into_inner();
    assert!(found.found);
    assert_eq!(found.event.unwrap().explanation.unwrap().causes, ["GOOS"]);
    let by_key = cached::builds::hex(&key(&tagged))[..10].to_owned();
    let found = client.explain(explain(&by_key)).await.unwrap().into_inner();
    assert_eq!(found.event.unwrap().explanation.unwrap().causes, ["source files", "build tags"]);
    assert!(!client.explain(explain("cmd/other")).await.unwrap().into_inner().found);

    let metrics = server.metrics().await;
    for line in [
        "cached_build_lookups_total{namespace=\"default\",result=\"hit\"} 1",
        "cached_build_lookups_total{namespace=\"default\",result=\"miss\"} 3",
        "cached_build_miss_causes_total{namespace=\"default\",cause=\"GOOS\"} 1",
        "cached_build_records_total{namespace=\"default\"} 1",
        "cached_build_time_saved_seconds_total{namespace=\"default\"} 1.5",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    server.stop().await;
    let server = Server::start(dir.path(), &[]).await;
    let mut client = builds(&server).await;
    assert!(lookup(&mut client, "linux", &base).await.hit, "entries survive a restart");
    let stats = v1::BuildStatsRequest { namespace: String::new(), since_seconds: 3600, top: 0 };
    let stats = client.stats(stats).await.unwrap().into_inner();
    let ns = &stats.namespaces[0];
    assert_eq!((ns.namespace.as_str(), ns.lookups, ns.hits, ns.misses, ns.records), ("default", 5, 2, 3, 1));
    assert_eq!(ns.time_saved_ms, 3000);
    assert_eq!(ns.bytes_served, 600_000);
    let causes: Vec<(&str, u64)> = ns.top_miss_causes.iter().map(|c| (c.cause.as_str(), c.count)).collect();
    assert_eq!(causes, [("GOOS", 1), ("build tags", 1), ("first build", 1), ("source files", 1)]);
    assert_eq!(ns.top_missed_targets[0].count, 2);
    assert_eq!(ns.top_missed_targets[0].target.as_ref().unwrap().goos, "linux");
    server.stop().await;
}

#[tokio::test]
async fn an_entry_whose_output_was_evicted_is_a_miss_and_goes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("max_size", "4MiB")]).await;
    let clients = server.clients().await;
    let mut client = builds(&server).await;
    let binary = noise(256 << 10, 7);
    let digest = clients.write(&binary).await;
    let built = manifest("linux", "v1", &[]);
    client.record(record_request("linux", &built, digest)).await.unwrap();
    assert!(lookup(&mut client, "linux", &built).await.hit);

    // Newer blobs push the binary out of the budget.
    for seed in 100..124 {
        clients.write(&noise(256 << 10, seed)).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(!clients.is_stored(digest).await, "the binary was evicted");
    let miss = lookup(&mut client, "linux", &built).await;
    assert!(!miss.hit, "never a dangling hit");
    let explanation = miss.explanation.unwrap();
    assert_eq!(explanation.basis, "evicted");
    assert_eq!(explanation.causes, ["outputs evicted"]);
    // The entry is gone: uploading the binary again does not revive it without a record.
    clients.write(&binary).await;
    assert!(!lookup(&mut client, "linux", &built).await.hit);
    assert!(server.metrics().await.contains("cached_build_entries_dropped_total 1"));
    server.stop().await;
}

/// A miss lookup in `namespace` of a first build, as a `read` token `pr` (secret `pr-secret`).
fn first_build_lookup(namespace: &str) -> tonic::Request<v1::BuildLookupRequest> {
    let built = manifest("linux", namespace, &[]);
    let mut request = tonic::Request::new(v1::BuildLookupRequest {
        namespace: namespace.to_owned(),
        target: Some(target("linux")),
        key: key(&built),
        manifest: Some(built),
    });
    request.metadata_mut().insert("authorization", "Bearer pr-secret".parse().unwrap());
    request
}

/// Lookups in the event log of every namespace `pr` may read.
async fn logged_lookups(client: &mut BuildsClient<Channel>) -> u64 {
    let mut request =
        tonic::Request::new(v1::BuildStatsRequest { namespace: String::new(), since_seconds: 0, top: 1 });
    request.metadata_mut().insert("authorization", "Bearer pr-secret".parse().unwrap());
    let stats = client.stats(request).await.unwrap().into_inner();
    stats.namespaces.iter().map(|ns| ns.lookups).sum()
}

fn read_token_file(dir: &std::path::Path) -> String {
    use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec};
    let spec = TokenSpec {
        name: "pr".to_owned(),
        scopes: Scopes::parse_list("read").unwrap(),
        namespaces: NamespacePattern::parse_list("pr-*").unwrap(),
        secret_hash: SecretHash::new("pr-secret").unwrap(),
        rate_limit: None,
        max_priority: None,
    };
    let path = dir.join("tokens.toml");
    std::fs::write(&path, spec.to_toml()).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn lookups_with_a_read_token_keep_the_event_log_within_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = read_token_file(dir.path());
    let settings = [("tokens_file", tokens.as_str()), ("max_build_history", "64KiB")];
    let server = Server::start(&dir.path().join("data"), &settings).await;
    let mut client = builds(&server).await;
    // Every lookup misses and is logged, each in a namespace of its own.
    for i in 0..2000 {
        let miss = client.lookup(first_build_lookup(&format!("pr-{i}"))).await.unwrap().into_inner();
        assert!(!miss.hit);
    }
    let logged = logged_lookups(&mut client).await;
    // A logged first-build miss takes about 200 bytes; the log is pruned a little past its size.
    assert!(logged > 100 && logged < 500, "{logged} of 2000 lookups are in a 64KiB log");
    server.stop().await;
}

#[tokio::test]
async fn a_miss_with_a_huge_explanation_is_stored_cut_to_size() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let mut client = builds(&server).await;
    let long = |i: usize, value: &str| {
        let name = format!("file.{i:04}.{}", "n".repeat(2000));
        component(&name, value, &format!("{value}{}", "d".repeat(1000)))
    };
    let before = manifest("linux", "v1", &(0..600).map(|i| long(i, "a")).collect::<Vec<_>>());
    let after = manifest("linux", "v1", &(0..600).map(|i| long(i, "b")).collect::<Vec<_>>());
    let digest = clients.write(&noise(1000, 3)).await;
    client.record(record_request("linux", &before, digest)).await.unwrap();
    let miss = lookup(&mut client, "linux", &after).await.explanation.unwrap();
    assert_eq!(miss.changes.len(), 600, "the caller still hears every change");

    let query =
        v1::BuildExplainRequest { namespace: String::new(), query: cached::builds::hex(&key(&after)) };
    let stored = client.explain(query).await.unwrap().into_inner().event.unwrap();
    let size = prost::Message::encoded_len(&stored);
    assert!(size <= cached::builds::MAX_EVENT_BYTES, "the stored miss takes {size} bytes");
    let explanation = stored.explanation.unwrap();
    assert_eq!(explanation.changes.len() as u32 + explanation.changes_omitted, 600);
    server.stop().await;
}

#[tokio::test]
async fn below_the_free_space_floor_lookups_log_nothing() {
    let Some(disk) = cached_e2e::Tmpfs::mount(192 << 20) else { return };
    let dir = tempfile::tempdir().unwrap();
    let tokens = read_token_file(dir.path());
    // No housekeeping round after the first: below the floor one would flush and compact, and
    // what RocksDB gives back (its preallocated logs) could lift the disk above it mid-test.
    let settings =
        [("tokens_file", tokens.as_str()), ("min_free_space", "64MiB"), ("maintenance_interval", "1h")];
    let server = Server::start(&disk.path().join("data"), &settings).await;
    let mut client = builds(&server).await;
    client.lookup(first_build_lookup("pr-1")).await.unwrap();
    assert_eq!(logged_lookups(&mut client).await, 1);

    // Someone else fills the disk to 16 MiB free: below the floor. It is topped up before each
    // lookup: RocksDB may give space back meanwhile (a flush deletes its preallocated log).
    let free = || -> usize {
        let df = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(disk.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&df.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    };
    let mut fillers = 0;
    let mut fill = || {
        while free() > 24 << 20 {
            let filler = disk.path().join(format!("filler{fillers}"));
            std::fs::write(&filler, vec![0u8; free() - (16 << 20)]).unwrap();
            fillers += 1;
        }
    };
    for i in 0..20 {
        fill();
        client.lookup(first_build_lookup(&format!("pr-{i}"))).await.expect("lookups are still answered");
    }
    assert_eq!(logged_lookups(&mut client).await, 1, "nothing was logged below the floor");

    for filler in 0..fillers {
        std::fs::remove_file(disk.path().join(format!("filler{filler}"))).unwrap();
    }
    client.lookup(first_build_lookup("pr-1")).await.unwrap();
    assert_eq!(logged_lookups(&mut client).await, 2);
    server.stop().await;
}

/// A value of /metrics.
async fn metric(server: &Server, name: &str) -> u64 {
    let text = server.metrics().await;
    let line = text
        .lines()
        .find(|line| line.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A recorded build is not a blob: eviction takes its outputs, never its entry or manifest,
/// and the builds kept per target do not bound the targets, which a namespace's writer names
/// as it likes. Records once piled up until the disk met its floor; now the oldest are
/// forgotten beyond `max_build_records`, and the newest are still hits.
async fn a_flood_of_recorded_builds_forgets_the_oldest_and_keeps_the_newest(settings: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let mut all = vec![("max_build_records", "64KiB")];
    all.extend_from_slice(settings);
    let server = Server::start(dir.path(), &all).await;
    let mut client = builds(&server).await;
    let binary = noise(1000, 5);
    let digest = server.clients().await.write(&binary).await;
    let padding = [component("pad", "", &"x".repeat(1000))];
    let platform = |n: u32| format!("os{n}");
    const FLOOD: u32 = 200;
    for n in 0..FLOOD {
        // Builds recorded in one millisecond are forgotten in any order: the first and the
        // last have their own.
        if n == 1 || n == FLOOD - 1 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let built = manifest(&platform(n), "v1", &padding);
        client.record(record_request(&platform(n), &built, digest)).await.expect("record");
    }
    let oldest = manifest(&platform(0), "v1", &padding);
    assert!(!lookup(&mut client, &platform(0), &oldest).await.hit, "the oldest build is still recorded");
    let newest = manifest(&platform(FLOOD - 1), "v1", &padding);
    assert!(lookup(&mut client, &platform(FLOOD - 1), &newest).await.hit, "the newest build was forgotten");
    let bytes = metric(&server, "cached_build_record_bytes").await;
    assert!(bytes <= 64 << 10, "recorded builds take {bytes} bytes, with max_build_records 64KiB");
    assert!(metric(&server, "cached_build_records_forgotten_total").await > 100);
    server.stop().await;
}

#[tokio::test]
async fn a_flood_of_recorded_builds_forgets_the_oldest_in_rocksdb() {
    a_flood_of_recorded_builds_forgets_the_oldest_and_keeps_the_newest(&[]).await;
}

#[tokio::test]
async fn a_flood_of_recorded_builds_forgets_the_oldest_in_postgresql() {
    let db = cached_e2e::postgres::Postgres::start();
    let (url, password) = (db.url(), db.password_file().display().to_string());
    let settings = [("database_url", url.as_str()), ("database_password_file", password.as_str())];
    a_flood_of_recorded_builds_forgets_the_oldest_and_keeps_the_newest(&settings).await;
}

/// Below the free-space floor nothing is recorded, as no Go entry is stored.
#[tokio::test]
async fn below_the_free_space_floor_no_build_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let binary = noise(1000, 6);
    let digest = server.clients().await.write(&binary).await;
    server.stop().await;

    // A floor no disk here has above it.
    let server = Server::start(dir.path(), &[("min_free_space", "1PiB")]).await;
    let mut client = builds(&server).await;
    let built = manifest("linux", "v1", &[]);
    let err = client.record(record_request("linux", &built, digest)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("min_free_space"), "{}", err.message());
    assert!(!lookup(&mut client, "linux", &built).await.hit);
    server.stop().await;
}
