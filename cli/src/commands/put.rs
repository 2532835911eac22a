use std::path::PathBuf;

use cached_client::connect::Client;
use cached_client::error::{ClientError, Result};
use cached_client::transfer;

/// Checks every file is a readable regular file, before anything is sent.
pub fn check(files: &[PathBuf]) -> Result<()> {
    for file in files {
        let metadata = std::fs::metadata(file).map_err(ClientError::file(file))?;
        if !metadata.is_file() {
            return Err(ClientError::Usage(format!("{} is not a regular file", file.display())));
        }
    }
    Ok(())
}

/// Uploads the files the server lacks; prints one `<hex>/<size>` per file, in order.
pub async fn run(client: &Client, files: &[PathBuf], level: i32) -> Result<()> {
    for digest in transfer::upload_files(client, files, level).await? {
        outln!("{digest}");
    }
    Ok(())
}
