//! What the unit tests of several modules share.

use std::path::Path;

/// Writes `files` (path, contents) under `dir`, making directories as needed.
pub(crate) fn write(dir: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
}
