use proto::Digest;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::transfer;

/// Prints `present` or `missing` for each digest; fails when any is missing.
pub async fn run(client: &Client, digests: &[Digest]) -> Result<()> {
    let missing = transfer::find_missing(client, digests).await?;
    for digest in digests {
        let state = if missing.contains(digest) { "missing" } else { "present" };
        println!("{digest} {state}");
    }
    match missing.len() {
        0 => Ok(()),
        count => Err(CliError::SomeMissing(count)),
    }
}
