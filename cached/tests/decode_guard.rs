//! A request of many tiny elements (an empty list item is 2 bytes on the wire and a whole
//! struct once decoded) is refused before it is decoded, so a `read` token cannot make the
//! server allocate many times what it sent. Runs the real binary, whose peak resident memory
//! (VmHWM) is the measure.

mod common;

use bytes::Bytes;
use common::process::Daemon;
use proto::v1;
use tonic::transport::Channel;

/// `BuildLookupRequest` on the wire, its manifest given as bytes: the test need not hold the
/// millions of components it sends.
#[derive(Clone, PartialEq, prost::Message)]
struct RawLookup {
    #[prost(bytes = "bytes", tag = "4")]
    manifest: Bytes,
}

/// A manifest of `count` empty components (field 2, length 0).
fn empty_components(count: usize) -> Bytes {
    Bytes::from([0x12u8, 0x00].repeat(count))
}

async fn lookup(channel: Channel, manifest: Bytes) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawLookup, v1::BuildLookupResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/cached.v1.Builds/Lookup");
    grpc.unary(tonic::Request::new(RawLookup { manifest }), path, codec).await.unwrap_err()
}

#[tokio::test]
async fn a_request_of_tiny_elements_is_refused_before_it_is_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path(), &[], &[("MALLOC_ARENA_MAX", "1")]);
    let channel = daemon.channel().await;
    let before = daemon.peak_rss();
    // Three at once, each just under max_message_size (16 MiB): 7.5 million components each.
    let manifest = empty_components(7_500_000);
    let refusals = futures::future::join_all((0..3).map(|_| lookup(channel.clone(), manifest.clone()))).await;
    for refused in refusals {
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains("elements"), "{}", refused.message());
    }
    let growth = daemon.peak_rss().saturating_sub(before);
    eprintln!("peak RSS grew by {} MiB", growth >> 20);
    // The requests' own bytes (3 x 15 MiB) and buffers; decoded, they were over 1 GiB.
    assert!(growth < 160 << 20, "peak RSS grew by {} MiB", growth >> 20);
}
