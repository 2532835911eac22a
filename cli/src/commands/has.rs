use proto::Digest;

use cached_client::connect::Client;
use cached_client::error::{ClientError, Result};
use cached_client::transfer;

/// Prints `present` or `missing` for each digest; fails when any is missing.
pub async fn run(client: &Client, digests: &[Digest]) -> Result<()> {
    let missing = transfer::find_missing(client, digests).await?;
    for digest in digests {
        let state = if missing.contains(digest) { "missing" } else { "present" };
        outln!("{digest} {state}");
    }
    match missing.len() {
        0 => Ok(()),
        count => Err(ClientError::SomeMissing(count)),
    }
}
