use std::path::Path;

use proto::Digest;

use cached_client::connect::Client;
use cached_client::error::Result;
use cached_client::transfer;

/// Downloads one blob to `output`, verified before it appears.
pub async fn run(client: &Client, digest: Digest, output: &Path) -> Result<()> {
    transfer::download_to_file(client, digest, output).await
}
