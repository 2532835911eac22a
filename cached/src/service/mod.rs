//! Thin tonic handlers: decode the request, call the domain module, encode the answer. Errors
//! become statuses in `crate::error`, nowhere else.

mod admin;
mod builds;
mod cas;
mod gocache;
mod jobs;
mod stats;

pub use admin::AdminService;
pub use builds::BuildsService;
pub use cas::CasService;
pub use gocache::GoCacheService;
pub use jobs::{JobsService, WorkersService};
pub use stats::StatsService;

use proto::Digest;
use proto::v1::Compression;

use crate::cas::Encoding;
use crate::error::{Error, Result};

fn digests(wire: &[proto::v1::Digest]) -> Result<Vec<Digest>> {
    wire.iter().map(|digest| Ok(Digest::from_wire(Some(digest))?)).collect()
}

fn encoding(wire: i32) -> Result<Encoding> {
    match Compression::try_from(wire) {
        Ok(Compression::Identity) => Ok(Encoding::Identity),
        Ok(Compression::Zstd) => Ok(Encoding::Zstd),
        Err(_) => Err(Error::invalid(format!(
            "unknown compression {wire}; use COMPRESSION_IDENTITY (0) or COMPRESSION_ZSTD (1)"
        ))),
    }
}

fn compression(encoding: Encoding) -> i32 {
    match encoding {
        Encoding::Identity => Compression::Identity as i32,
        Encoding::Zstd => Compression::Zstd as i32,
    }
}

fn item_status(result: Result<()>) -> proto::v1::ItemStatus {
    match result {
        Ok(()) => proto::v1::ItemStatus { code: 0, message: String::new() },
        Err(err) => {
            let status = tonic::Status::from(err);
            proto::v1::ItemStatus { code: status.code() as i32, message: status.message().to_owned() }
        }
    }
}
