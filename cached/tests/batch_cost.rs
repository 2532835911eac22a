//! A BatchWrite costs the server what its blobs declare, not what the request weighs: a zstd
//! frame of a few dozen bytes can declare a whole frame of zeros, and every blob is
//! decompressed and hashed before a wrong digest is found. (Alone in its test binary: it
//! measures the process's CPU time.)

mod common;

use bytes::Bytes;
use common::Server;
use proto::frames::FrameEncoder;
use proto::v1::{self, Compression};
use proto::{Digest, FRAME_SIZE};
use tonic::Code;

/// CPU time this process has used, user and system, in clock ticks (1/100 s on Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn blob(digest: Digest, frame: &Bytes) -> v1::batch_write_request::Blob {
    v1::batch_write_request::Blob {
        digest: Some(digest.to_wire()),
        compression: Compression::Zstd as i32,
        data: frame.clone(),
    }
}

#[tokio::test]
async fn a_batch_may_declare_no_more_than_a_message_carries() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("max_message_size", "4MiB")]).await;
    let clients = server.clients().await;
    let zeros = Bytes::from(FrameEncoder::new(1).unwrap().encode(&vec![0; FRAME_SIZE]).unwrap());
    assert!(zeros.len() < 100, "a frame of zeros is tiny: {} bytes", zeros.len());

    // 1,000 frames of zeros under wrong digests: a 100 KB request that declares 1 GiB.
    let wrong = (0..1000u32).map(|i| {
        let mut hash = [0; 32];
        hash[..4].copy_from_slice(&i.to_le_bytes());
        blob(Digest { hash, size: FRAME_SIZE as u64 }, &zeros)
    });
    let before = cpu_ticks();
    let result = clients.cas.clone().batch_write(v1::BatchWriteRequest { blobs: wrong.collect() }).await;
    let spent = cpu_ticks() - before;
    let err = match result {
        Ok(reply) => panic!(
            "a batch declaring 1 GiB was answered blob by blob ({} results) after {spent} ticks of CPU",
            reply.into_inner().results.len()
        ),
        Err(err) => err,
    };
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("max_message_size") && err.message().contains("Cas.Write"),
        "{}",
        err.message()
    );
    // Decompressing and hashing 1 GiB takes most of a second of CPU even optimized.
    assert!(spent < 25, "the refused batch cost {spent} ticks of CPU");

    // A batch within the limit is stored as before.
    let mut encoder = FrameEncoder::new(1).unwrap();
    let blobs: Vec<_> = (1..=3u8)
        .map(|i| {
            let raw = vec![i; FRAME_SIZE];
            blob(Digest::of(&raw), &Bytes::from(encoder.encode(&raw).unwrap()))
        })
        .collect();
    let digests: Vec<Digest> = blobs.iter().map(|b| Digest::from_wire(b.digest.as_ref()).unwrap()).collect();
    let reply = clients.cas.clone().batch_write(v1::BatchWriteRequest { blobs }).await.unwrap().into_inner();
    assert!(reply.results.iter().all(|r| r.status.as_ref().unwrap().code == 0), "{reply:?}");
    for digest in digests {
        assert!(clients.is_stored(digest).await);
    }
    server.stop().await;
}
