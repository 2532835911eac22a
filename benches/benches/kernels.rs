//! The kernels a hit and a put are bound by: BLAKE3 hashing, zstd compression and
//! decompression of 1 MiB frames (perf.md gives the machine's limits to compare against), and
//! the SHA-256 the server takes of every upload beside BLAKE3 (Go's OutputID).

use cached_benches::build_output_like;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use proto::FRAME_SIZE;
use proto::frames::{FrameDecoder, FrameEncoder};

fn kernels(c: &mut Criterion) {
    let frame = build_output_like(FRAME_SIZE, 1);
    let mut group = c.benchmark_group("kernels");
    group.throughput(Throughput::Bytes(FRAME_SIZE as u64));
    group.bench_function("blake3_1MiB", |b| b.iter(|| blake3::hash(&frame)));
    group.bench_function("sha256_1MiB", |b| b.iter(|| <sha2::Sha256 as sha2::Digest>::digest(&frame)));
    for level in [1, 3] {
        let mut encoder = FrameEncoder::new(level).expect("encoder");
        group.bench_function(format!("zstd{level}_compress_1MiB"), |b| b.iter(|| encoder.encode(&frame)));
    }
    let compressed = FrameEncoder::new(3).expect("encoder").encode(&frame).expect("compress");
    println!("zstd-3 ratio on build-output-like data: {:.2}", frame.len() as f64 / compressed.len() as f64);
    group.bench_function("zstd_decompress_verify_1MiB", |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::new(FRAME_SIZE as u64, 0).expect("decoder");
            let raw = decoder.decode(&compressed).expect("decode");
            blake3::hash(raw)
        })
    });
    group.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
