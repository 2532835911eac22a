//! put/get through cached over loopback gRPC, the way cachectl does them: client-side zstd,
//! server-side verification, verified download to a file.

use std::path::PathBuf;
use std::time::Duration;

use cachectl::client::Client;
use cachectl::transfer::{DEFAULT_LEVEL, download_to_file, hash_file, upload_file, upload_files};
use cached_benches::{EmbeddedServer, build_output_like};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [(&str, usize); 3] = [("4KiB", 4 << 10), ("1MiB", 1 << 20), ("64MiB", 64 << 20)];

fn transfer(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let server = runtime.block_on(EmbeddedServer::start());
    let client = runtime.block_on(Client::connect(&server.url())).expect("connect");
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
}

criterion_group!(benches, transfer);
criterion_main!(benches);
