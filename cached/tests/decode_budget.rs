//! A stream upload of zstd frames costs the server the bytes they decode to, and a frame of a
//! few dozen bytes decodes to a whole MiB of zeros: a token may make the server decompress
//! only so much more than it sends (max_decode_rate). (Alone in its test binary: it measures
//! the process's CPU time.)

mod common;

use bytes::Bytes;
use common::tokens::{as_token, tokens_file};
use common::{Server, data, header};
use proto::frames::FrameEncoder;
use proto::v1::cas_client::CasClient;
use proto::v1::{self, Compression};
use proto::{Digest, FRAME_SIZE};
use tonic::Code;
use tonic::transport::Channel;

/// CPU time this process has used, user and system, in clock ticks (1/100 s on Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn zeros_frame() -> Bytes {
    Bytes::from(FrameEncoder::new(1).unwrap().encode(&vec![0; FRAME_SIZE]).unwrap())
}

/// A GiB of zeros as 1,024 frames of a few dozen bytes each, under a digest that is wrong, so
/// nothing but the decoding and hashing of every frame could tell.
fn zero_bomb() -> Vec<v1::WriteRequest> {
    let declared = Digest { hash: [7; 32], size: 1 << 30 };
    let frame = zeros_frame();
    let mut messages = vec![header(declared, Compression::Zstd)];
    messages.extend((0..1024).map(|_| data(frame.clone())));
    messages
}

/// Uploads `raw` as the token named `token`, as zstd frames or uncompressed.
async fn write(cas: &CasClient<Channel>, token: &str, raw: &[u8], compression: Compression) -> Digest {
    let digest = Digest::of(raw);
    let pieces = match compression {
        Compression::Zstd => common::frames(raw),
        _ => raw.chunks(FRAME_SIZE).map(Bytes::copy_from_slice).collect(),
    };
    let mut messages = vec![header(digest, compression)];
    messages.extend(pieces.into_iter().map(data));
    cas.clone().write(as_token(futures::stream::iter(messages), token)).await.expect("upload");
    digest
}

#[tokio::test]
async fn a_zero_bomb_upload_is_refused_before_it_is_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &["pr", "main"], "read,cas-write");
    // A bucket of 16 MiB per token, refilled at 1 MiB a second.
    let settings = [("tokens_file", tokens.as_str()), ("max_decode_rate", "1MiB")];
    let server = Server::start(&dir.path().join("data"), &settings).await;
    let cas = server.clients().await.cas;
    assert!(zeros_frame().len() < 100, "a frame of zeros is tiny: {} bytes", zeros_frame().len());

    let before = cpu_ticks();
    let result = cas.clone().write(as_token(futures::stream::iter(zero_bomb()), "pr")).await;
    let spent = cpu_ticks() - before;
    let err = match result {
        Ok(reply) => panic!("the zero bomb was stored: {reply:?}"),
        Err(err) => err,
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "after {spent} ticks of CPU: {err:?}");
    assert!(err.message().contains("max_decode_rate") && err.message().contains("`pr`"), "{err:?}");
    let wait: u64 = err.metadata().get(proto::RETRY_AFTER_MS).unwrap().to_str().unwrap().parse().unwrap();
    assert!(wait > 0, "the refusal says when the budget is paid back: {err:?}");
    // Decompressing and hashing the GiB took about 90 ticks here; 17 MiB takes a few.
    assert!(spent < 30, "the refused upload cost {spent} ticks of CPU");

    // The token's budget is spent: compressed work is refused, whatever the call...
    let zeros = Digest::of(&vec![0; FRAME_SIZE]);
    let small = || v1::BatchWriteRequest {
        blobs: vec![v1::batch_write_request::Blob {
            digest: Some(zeros.to_wire()),
            compression: Compression::Zstd as i32,
            data: zeros_frame(),
        }],
    };
    let err = cas.clone().batch_write(as_token(small(), "pr")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let stored = write(&cas, "pr", &common::noise(3 * FRAME_SIZE, 1), Compression::Zstd).await;
    let recheck = v1::RecheckRequest { digest: Some(stored.to_wire()) };
    let err = cas.clone().recheck(as_token(recheck, "pr")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "a recheck decodes a whole blob: {err:?}");

    // ...but bytes that decode to no more than was sent cost nothing: incompressible frames
    // (the write above) and uncompressed uploads still go through.
    write(&cas, "pr", &common::noise(5 * FRAME_SIZE, 2), Compression::Identity).await;
    // Another tenant has a budget of its own.
    let reply = cas.clone().batch_write(as_token(small(), "main")).await.unwrap().into_inner();
    assert_eq!(reply.results[0].status.as_ref().unwrap().code, 0, "{reply:?}");
    server.stop().await;
}
