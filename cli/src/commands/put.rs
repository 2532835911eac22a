use std::path::PathBuf;

use crate::client::Client;
use crate::error::{CliError, Result};
use crate::transfer;

/// Uploads the files the server lacks; prints one `<hex>/<size>` per file, in order.
pub async fn run(client: &Client, files: &[PathBuf], level: i32) -> Result<()> {
    for file in files {
        let metadata = std::fs::metadata(file).map_err(CliError::file(file))?;
        if !metadata.is_file() {
            return Err(CliError::Usage(format!("{} is not a regular file", file.display())));
        }
    }
    for digest in transfer::upload_files(client, files, level).await? {
        println!("{digest}");
    }
    Ok(())
}
