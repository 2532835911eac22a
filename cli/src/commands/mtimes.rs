use std::path::Path;

use crate::mtimes;
use cached_client::error::Result;

/// Sets the clone's times and says what it did.
pub fn run(dir: &Path) -> Result<()> {
    let restored = mtimes::restore(dir)?;
    let changed = match restored.changed {
        0 => String::new(),
        n => format!("; {n} changed file(s) left as they were"),
    };
    outln!(
        "{} files and {} directories set to the time of their last commit{changed}",
        restored.files,
        restored.dirs
    );
    Ok(())
}
