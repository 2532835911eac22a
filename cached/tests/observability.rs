//! Stats and /metrics reflect the traffic just sent.

mod common;

use common::{Server, noise};
use proto::v1::Compression;

#[tokio::test]
async fn stats_and_metrics_count_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]).await;
    let clients = server.clients().await;
    let blob = noise(100_000, 1);
    let digest = clients.write(&blob).await;
    clients.read(digest, 0, 0, Compression::Identity).await.unwrap();
    clients.read(proto::Digest::of(b"absent"), 0, 0, Compression::Zstd).await.unwrap_err();

    let stats = clients.stats().await;
    let store = stats.store.unwrap();
    assert_eq!((store.blobs, store.raw_bytes), (1, 100_000));
    let api =
        |name: &str| stats.apis.iter().find(|a| a.api == name).unwrap_or_else(|| panic!("{name}")).clone();
    assert_eq!(api("Cas.Write").bytes_in, 100_000);
    let read = api("Cas.Read");
    assert_eq!((read.requests, read.errors, read.hits, read.misses), (2, 1, 1, 1));
    assert_eq!(read.bytes_out, 100_000);

    let metrics = server.metrics().await;
    for line in [
        "cached_grpc_requests_total{method=\"Cas.Read\",code=\"NotFound\"} 1",
        "cached_grpc_requests_total{method=\"Cas.Read\",code=\"Ok\"} 1",
        "cached_hits_total{api=\"Cas.Read\"} 1",
        "cached_bytes_in_total{api=\"Cas.Write\"} 100000",
        "cached_stored_raw_bytes 100000",
        "cached_grpc_request_duration_seconds_count{method=\"Cas.Write\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("cached_min_free_bytes 1073741824"), "{metrics}");
    let free = metrics.lines().find_map(|line| line.strip_prefix("cached_disk_free_bytes "));
    assert!(free.and_then(|free| free.parse::<u64>().ok()).is_some_and(|free| free > 0), "{metrics}");
    server.stop().await;
}

/// A tokens file with `ci` (every scope, every namespace) and `pr` (read in `pr-*`); the
/// secret of each is `secret-of-<name>`.
fn tokens_file(dir: &std::path::Path) -> String {
    use cached::auth::{NamespacePattern, Scopes, SecretHash, TokenSpec};
    let spec = |name: &str, scopes: &str, namespaces: &str| TokenSpec {
        name: name.to_owned(),
        scopes: Scopes::parse_list(scopes).unwrap(),
        namespaces: NamespacePattern::parse_list(namespaces).unwrap(),
        secret_hash: SecretHash::new(&format!("secret-of-{name}")).unwrap(),
        rate_limit: None,
        max_priority: None,
    };
    let specs = [spec("ci", "read,cas-write,ac-write,admin", "*"), spec("pr", "read", "pr-*")];
    let path = dir.join("tokens.toml");
    std::fs::write(&path, specs.iter().map(|s| format!("{}\n", s.to_toml())).collect::<String>()).unwrap();
    path.display().to_string()
}

fn as_token<T>(message: T, name: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer secret-of-{name}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

async fn channel(server: &Server) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn calls_to_made_up_paths_without_a_token_leave_metrics_small() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let server = Server::start(&dir.path().join("data"), &[("tokens_file", tokens.as_str())]).await;
    let mut grpc = tonic::client::Grpc::new(channel(&server).await);
    let before = server.metrics().await.len();
    for i in 0..3000 {
        grpc.ready().await.unwrap();
        let path = format!("/cached.v1.Cas/Made-Up-{i}").parse().unwrap();
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let err = grpc.unary(tonic::Request::new(()), path, codec).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    }
    let metrics = server.metrics().await;
    let growth = metrics.len().saturating_sub(before);
    assert!(growth < 16 << 10, "/metrics grew by {growth} bytes over 3000 made-up paths:\n{metrics}");
    assert!(!metrics.contains("Made-Up"), "a caller's path became a label");
    assert!(
        metrics.contains("cached_grpc_requests_total{method=\"other\",code=\"Unauthenticated\"} 3000"),
        "refused calls are still counted, under one label:\n{metrics}"
    );
    server.stop().await;
}

/// The distinct values of `label` in the metrics text.
fn label_values(metrics: &str, label: &str) -> std::collections::BTreeSet<String> {
    let marker = format!("{label}=\"");
    metrics
        .lines()
        .filter_map(|line| line.split_once(&marker))
        .filter_map(|(_, rest)| rest.split_once('"').map(|(value, _)| value.to_owned()))
        .collect()
}

#[tokio::test]
async fn namespaces_a_caller_invents_do_not_grow_metrics_or_stats() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let server = Server::start(&dir.path().join("data"), &[("tokens_file", tokens.as_str())]).await;
    let channel = channel(&server).await;
    let mut go = proto::v1::go_cache_client::GoCacheClient::new(channel.clone());
    let mut stats = proto::v1::stats_client::StatsClient::new(channel.clone());
    let mut builds = proto::v1::builds_client::BuildsClient::new(channel);
    let manifest = proto::v1::BuildManifest { version: 1, components: Vec::new() };
    let key: bytes::Bytes = cached::builds::manifest::key(&manifest).to_vec().into();
    for i in 0..400 {
        let namespace = format!("pr-{i}");
        let get = proto::v1::GoGetRequest { namespace: namespace.clone(), action_id: vec![7; 32].into() };
        go.get(as_token(get, "pr")).await.unwrap();
        let session =
            proto::v1::ClientSession { namespace: namespace.clone(), gets: 1, ..Default::default() };
        stats.report(as_token(proto::v1::ReportRequest { session: Some(session) }, "pr")).await.unwrap();
        let target = proto::v1::BuildTarget {
            module: "m".into(),
            package: "m/cmd".into(),
            goos: "linux".into(),
            goarch: "amd64".into(),
        };
        let lookup = proto::v1::BuildLookupRequest {
            namespace,
            target: Some(target),
            key: key.clone(),
            manifest: Some(manifest.clone()),
        };
        builds.lookup(as_token(lookup, "pr")).await.unwrap();
    }
    let metrics = server.metrics().await;
    let namespaces = label_values(&metrics, "namespace");
    assert!(namespaces.len() <= 257, "{} namespace label values", namespaces.len());
    let response = stats.get(as_token(proto::v1::StatsRequest {}, "ci")).await.unwrap().into_inner();
    assert!(response.namespaces.len() <= 257, "Stats.Get lists {} namespaces", response.namespaces.len());
    let counted: u64 = response.namespaces.iter().map(|n| n.go_misses).sum();
    assert_eq!(counted, 400, "every lookup is still counted, the late ones together");
    server.stop().await;
}

#[tokio::test]
async fn stats_get_shows_a_token_only_its_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path());
    let server = Server::start(&dir.path().join("data"), &[("tokens_file", tokens.as_str())]).await;
    let channel = channel(&server).await;
    let mut go = proto::v1::go_cache_client::GoCacheClient::new(channel.clone());
    let mut stats = proto::v1::stats_client::StatsClient::new(channel);
    for (namespace, token) in [("main", "ci"), ("pr-7", "pr")] {
        let get = proto::v1::GoGetRequest { namespace: namespace.to_owned(), action_id: vec![7; 32].into() };
        go.get(as_token(get, token)).await.unwrap();
    }
    let seen = |response: proto::v1::StatsResponse| -> Vec<String> {
        response.namespaces.into_iter().map(|n| n.namespace).collect()
    };
    let pr = stats.get(as_token(proto::v1::StatsRequest {}, "pr")).await.unwrap().into_inner();
    assert_eq!(seen(pr), ["pr-7"]);
    let ci = stats.get(as_token(proto::v1::StatsRequest {}, "ci")).await.unwrap().into_inner();
    assert_eq!(seen(ci), ["main", "pr-7"]);
    server.stop().await;
}
