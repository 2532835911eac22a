use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use proto::Digest;

use cached_client::connect::Client;
use cached_client::error::Result;
use cached_client::transfer::{self, TransferCompression};

/// Downloads in flight at once for many digests: enough to hide a round trip per blob
/// behind the others' transfers, few enough that their buffers stay small.
const PARALLEL_DOWNLOADS: usize = 8;

/// Where downloads land: one named file, or a directory of files named by their digests'
/// hex.
pub enum Destination {
    File(PathBuf),
    Dir(PathBuf),
}

impl Destination {
    fn path(&self, digest: &Digest) -> PathBuf {
        match self {
            Self::File(path) => path.clone(),
            Self::Dir(dir) => dir.join(digest.hex()),
        }
    }
}

/// Downloads every blob, each verified before it appears.
pub async fn run(
    client: &Client,
    digests: &[Digest],
    destination: &Destination,
    compression: TransferCompression,
) -> Result<()> {
    futures::stream::iter(digests)
        .map(|digest| download(client, *digest, destination.path(digest), compression))
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .try_collect()
        .await
}

async fn download(
    client: &Client,
    digest: Digest,
    path: PathBuf,
    compression: TransferCompression,
) -> Result<()> {
    transfer::download_to_file_as(client, digest, Path::new(&path), compression).await
}
