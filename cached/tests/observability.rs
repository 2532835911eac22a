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
