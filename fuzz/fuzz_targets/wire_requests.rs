//! Malformed protobufs: every request message cached decodes, and the checks the handlers run
//! on what decoded (digests, Go IDs, namespaces). Never a panic or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1;
use proto::{ActionId, Digest};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 7 {
        0 => {
            if let Ok(request) = v1::WriteRequest::decode(body)
                && let Some(v1::write_request::Kind::Header(header)) = request.kind
            {
                let _ = Digest::from_wire(header.digest.as_ref());
            }
        }
        1 => {
            if let Ok(request) = v1::FindMissingRequest::decode(body) {
                for digest in &request.digests {
                    let _ = Digest::from_wire(Some(digest));
                }
            }
        }
        2 => {
            if let Ok(request) = v1::BatchWriteRequest::decode(body) {
                for blob in &request.blobs {
                    let _ = Digest::from_wire(blob.digest.as_ref());
                }
            }
        }
        3 => {
            if let Ok(request) = v1::ReadRequest::decode(body) {
                let _ = Digest::from_wire(request.digest.as_ref());
            }
        }
        4 => {
            if let Ok(request) = v1::GoPutRequest::decode(body) {
                let _ = cached::gocache::namespace(&request.namespace);
                let _ = ActionId::try_from(request.action_id.as_ref());
                if let Some(entry) = request.entry {
                    let _ = Digest::from_wire(entry.digest.as_ref());
                }
            }
        }
        5 => {
            if let Ok(request) = v1::GoGetManyRequest::decode(body) {
                let _ = cached::gocache::namespace(&request.namespace);
                for id in &request.action_ids {
                    let _ = ActionId::try_from(id.as_ref());
                }
            }
        }
        _ => {
            let _ = v1::BatchReadRequest::decode(body);
            let _ = v1::GoGetRequest::decode(body);
        }
    }
});
