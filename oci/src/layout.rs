//! OCI image layout directories: `oci-layout`, `index.json` and `blobs/sha256/<hex>`. Blobs
//! are written atomically (temp file, then rename) and only ever under their own digest.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::digest::{Sha256, sha256_file};
use super::error::{OciError, Result};
use super::manifest::{self, ANNOTATION_REF_NAME, Descriptor, Index};

const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_VERSION: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    /// Opens the layout at `root`, creating it (and `blobs/sha256`) when absent.
    pub fn create(root: &Path) -> Result<Self> {
        let blobs = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(OciError::file(&blobs))?;
        let marker = root.join(LAYOUT_FILE);
        if !marker.exists() {
            write_atomic(&marker, LAYOUT_VERSION)?;
        }
        Ok(Self { root: root.to_owned() })
    }

    /// Opens an existing layout.
    pub fn open(root: &Path) -> Result<Self> {
        let marker = root.join(LAYOUT_FILE);
        let text = std::fs::read(&marker).map_err(|err| {
            OciError::Usage(format!(
                "{} is not an OCI image layout (reading {LAYOUT_FILE}: {err})",
                root.display()
            ))
        })?;
        let version: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|err| OciError::Invalid(format!("{}: not JSON: {err}", marker.display())))?;
        if version["imageLayoutVersion"] != "1.0.0" {
            return Err(OciError::Invalid(format!(
                "{}: unsupported layout version {}",
                marker.display(),
                version
            )));
        }
        Ok(Self { root: root.to_owned() })
    }

    pub fn blob_path(&self, digest: &Sha256) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    /// True when the blob is present with the expected size (its name is its digest, and
    /// every blob we write was verified before it got that name).
    pub fn has_blob(&self, digest: &Sha256, size: u64) -> bool {
        std::fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Stores `bytes` as a blob; returns its descriptor.
    pub fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let descriptor = Descriptor::of(media_type, bytes);
        if !self.has_blob(&descriptor.digest, descriptor.size) {
            write_atomic(&self.blob_path(&descriptor.digest), bytes)?;
        }
        Ok(descriptor)
    }

    /// Moves (or copies, across file systems) a verified file in as the blob `digest`.
    pub fn import(&self, source: &Path, digest: &Sha256, size: u64) -> Result<PathBuf> {
        let dest = self.blob_path(digest);
        if self.has_blob(digest, size) {
            return Ok(dest);
        }
        set_readable(source)?;
        if std::fs::rename(source, &dest).is_err() {
            let temp = temp_beside(&dest)?;
            std::fs::copy(source, temp.path()).map_err(OciError::file(source))?;
            publish(temp, &dest)?;
        }
        Ok(dest)
    }

    /// Copies a blob from another layout, verifying it on the way.
    pub fn copy_from(&self, other: &Layout, digest: &Sha256, size: u64) -> Result<()> {
        if self.has_blob(digest, size) {
            return Ok(());
        }
        let source = other.blob_path(digest);
        let temp = temp_beside(&self.blob_path(digest))?;
        std::fs::copy(&source, temp.path()).map_err(OciError::file(&source))?;
        let (actual, actual_size) = sha256_file(temp.path()).map_err(OciError::file(temp.path()))?;
        if actual != *digest || actual_size != size {
            return Err(OciError::Invalid(format!(
                "{}: content does not match its digest",
                source.display()
            )));
        }
        publish(temp, &self.blob_path(digest))
    }

    /// Reads a (small) blob and checks it against its digest.
    pub fn read_blob(&self, digest: &Sha256) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(OciError::file(&path))?;
        if Sha256::of(&bytes) != *digest {
            return Err(OciError::Invalid(format!("{}: content does not match its digest", path.display())));
        }
        Ok(bytes)
    }

    pub fn index(&self) -> Result<Index> {
        let path = self.root.join("index.json");
        match std::fs::read(&path) {
            Ok(bytes) => manifest::parse(&bytes, &path.display().to_string()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Index::new(Vec::new(), None)),
            Err(err) => Err(OciError::file(&path)(err)),
        }
    }

    /// Points `name` at `descriptor` in `index.json`, keeping every other entry.
    pub fn set_ref(&self, name: &str, descriptor: &Descriptor) -> Result<()> {
        let mut index = self.index()?;
        index.manifests.retain(|entry| entry.annotation(ANNOTATION_REF_NAME) != Some(name));
        let mut entry = descriptor.clone();
        entry.platform = None;
        entry.annotations = Some([(ANNOTATION_REF_NAME.to_owned(), name.to_owned())].into());
        index.manifests.push(entry);
        let mut bytes = manifest::to_json(&index);
        bytes.push(b'\n');
        write_atomic(&self.root.join("index.json"), &bytes)
    }

    /// The index.json entry for `name`, or the only entry when `name` is `None`.
    pub fn resolve(&self, name: Option<&str>) -> Result<Descriptor> {
        let index = self.index()?;
        let root = self.root.display();
        match name {
            Some(name) => index
                .manifests
                .iter()
                .find(|entry| entry.annotation(ANNOTATION_REF_NAME) == Some(name))
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<&str> =
                        index.manifests.iter().filter_map(|e| e.annotation(ANNOTATION_REF_NAME)).collect();
                    OciError::Usage(format!(
                        "layout {root} has no image {name:?} (it has: {})",
                        names.join(", ")
                    ))
                }),
            None => match index.manifests.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(OciError::Usage(format!("layout {root} holds no image"))),
                _ => Err(OciError::Usage(format!(
                    "layout {root} holds several images; name one as oci:DIR:NAME"
                ))),
            },
        }
    }
}

fn temp_beside(dest: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = dest.parent().unwrap_or_else(|| Path::new("."));
    tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(OciError::file(dir))
}

pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut temp = temp_beside(dest)?;
    temp.write_all(bytes).map_err(OciError::file(dest))?;
    publish(temp, dest)
}

/// Gives a finished temp file its final name, readable by all like any other file we write
/// (temp files start out private).
pub fn publish(temp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    set_readable(temp.path())?;
    temp.persist(dest).map_err(|err| OciError::file(dest)(err.error))?;
    Ok(())
}

fn set_readable(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(OciError::file(path))?;
    }
    Ok(())
}
