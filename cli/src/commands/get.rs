use std::path::Path;

use proto::Digest;

use crate::client::Client;
use crate::error::Result;
use crate::transfer;

/// Downloads one blob to `output`, verified before it appears.
pub async fn run(client: &Client, digest: Digest, output: &Path) -> Result<()> {
    transfer::download_to_file(client, digest, output).await
}
