//! put/get through cached over loopback gRPC, the way cachectl does them: client-side zstd,
//! server-side verification, verified download to a file. And GoCache.Put of new entries,
//! one at a time and 64 at once, as the GOCACHEPROG bridge records them: each entry is synced
//! before Put answers, and concurrent Puts share a sync.

use std::path::PathBuf;
use std::time::Duration;

use cached_benches::{EmbeddedServer, build_output_like};
use cached_client::connect::{Client, ConnectOptions};
use cached_client::transfer::{DEFAULT_LEVEL, download_to_file, hash_file, upload_file, upload_files};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use proto::v1;
use sha2::{Digest as _, Sha256};

const SIZES: [(&str, usize); 3] = [("4KiB", 4 << 10), ("1MiB", 1 << 20), ("64MiB", 64 << 20)];

fn transfer(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(EmbeddedServer::start());
    let client =
        runtime.block_on(Client::connect(&server.url(), &ConnectOptions::default())).expect("connect");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut group = c.benchmark_group("loopback");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for (name, size) in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let mut seed = 0u64;
        // Every iteration uploads new content: a put of something already stored is a
        // FindMissing round trip, not a put.
        group.bench_function(format!("put_{name}"), |b| {
            b.iter_batched(
                || {
                    seed += 1;
                    let path = dir.path().join(format!("put-{name}-{seed}"));
                    std::fs::write(&path, build_output_like(size, seed)).expect("write");
                    path
                },
                |path: PathBuf| {
                    runtime
                        .block_on(upload_files(&client, std::slice::from_ref(&path), DEFAULT_LEVEL))
                        .expect("put");
                    std::fs::remove_file(path).ok();
                },
                BatchSize::PerIteration,
            )
        });
        let source = dir.path().join(format!("get-{name}"));
        std::fs::write(&source, build_output_like(size, u64::MAX)).expect("write");
        let digest = hash_file(&source).expect("hash");
        runtime.block_on(upload_file(&client, &source, digest, DEFAULT_LEVEL)).expect("upload");
        let target = dir.path().join(format!("got-{name}"));
        group.bench_function(format!("get_{name}"), |b| {
            b.iter(|| runtime.block_on(download_to_file(&client, digest, &target)).expect("get"))
        });
    }
    group.finish();
    go_put(c, &runtime, &client, dir.path());
}

fn go_put(c: &mut Criterion, runtime: &tokio::runtime::Runtime, client: &Client, dir: &std::path::Path) {
    let body = build_output_like(4 << 10, 7);
    let path = dir.join("go-output");
    std::fs::write(&path, &body).expect("write");
    let digest =
        runtime.block_on(upload_files(client, std::slice::from_ref(&path), DEFAULT_LEVEL)).expect("put")[0];
    let entry = v1::GoEntry {
        output_id: Sha256::digest(&body).to_vec().into(),
        size: digest.size,
        digest: Some(digest.to_wire()),
        time_unix_nanos: 1,
    };
    let mut next_action = 0u64;
    let mut put = move || {
        next_action += 1;
        let mut action_id = next_action.to_be_bytes().to_vec();
        action_id.resize(32, 0);
        let request = v1::GoPutRequest {
            namespace: "bench".into(),
            action_id: action_id.into(),
            entry: Some(entry.clone()),
        };
        let mut go = client.go.clone();
        async move { go.put(request).await.expect("GoCache.Put") }
    };
    let mut group = c.benchmark_group("go_put");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    group.bench_function("one", |b| b.iter(|| runtime.block_on(put())));
    group.throughput(Throughput::Elements(64));
    group.bench_function("64_at_once", |b| {
        b.iter(|| runtime.block_on(futures::future::join_all((0..64).map(|_| put()))))
    });
    group.finish();
}

criterion_group!(benches, transfer);
criterion_main!(benches);
