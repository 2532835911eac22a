//! A directory's tree as one layer (`cachectl image --layer DIR`), placed at `/`: a root
//! filesystem or a toolchain next to the binary. Deterministic as the binary's layer: entries
//! sorted by name bytes, permission bits kept, a fixed owner and mtime, no user or group names.
//! Symlinks stay symlinks and are never followed, so nothing outside the directory is read,
//! even if the tree changes while it is walked: every directory is opened beneath the root
//! with no link on the way (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`), every entry
//! through its directory's handle, and a file must be the one that was listed once open.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

use super::digest::HashingWriter;
use super::error::{OciError, Result};
use super::layer::{Compression, Encoder, Layer};

/// What, beyond the tree itself, defines the layer's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeOptions {
    pub uid: u64,
    pub gid: u64,
    /// mtime of every entry, seconds since the epoch (SOURCE_DATE_EPOCH or 0).
    pub mtime: u64,
    pub compression: Compression,
}

/// Writes the layer holding everything under `root` (not `root` itself: `/` keeps the mode
/// the base or the runtime gives it) to `out`.
pub fn write_tree_layer(root: &Path, options: &TreeOptions, out: impl Write) -> Result<Layer> {
    let metadata = std::fs::metadata(root).map_err(OciError::file(root))?;
    if !metadata.is_dir() {
        return Err(OciError::Usage(format!("--layer {}: not a directory", root.display())));
    }
    let root_dir =
        rustix::fs::open(root, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|err| OciError::file(root)(err.into()))?;
    let walk = Walk { root, root_dir, options };
    let encoder =
        Encoder::new(HashingWriter::with_blake3(out), options.compression).map_err(OciError::file(root))?;
    let mut tar = tar::Builder::new(HashingWriter::new(encoder));
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        walk.append_children(&mut tar, &relative, &mut pending)?;
    }
    let (encoder, diff_id, _, _) = tar.into_inner().map_err(OciError::file(root))?.finish();
    let compressed = encoder.finish().map_err(OciError::file(root))?;
    let (mut out, digest, cas, size) = compressed.finish();
    out.flush().map_err(OciError::file(root))?;
    Ok(Layer {
        media_type: options.compression.media_type().to_owned(),
        digest,
        size,
        diff_id,
        cas: cas.unwrap_or_else(proto::Digest::empty),
    })
}

/// One walk of a tree: its root, open, and what the entries are written with.
struct Walk<'a> {
    root: &'a Path,
    root_dir: OwnedFd,
    options: &'a TreeOptions,
}

/// An entry as it was listed.
struct Listed {
    kind: FileType,
    mode: u32,
    size: u64,
    identity: (u64, u64),
}

impl Walk<'_> {
    fn refused(&self, relative: &Path) -> impl FnOnce(rustix::io::Errno) -> OciError + '_ {
        let path = self.root.join(relative);
        move |err| OciError::file(path)(err.into())
    }

    /// Appends the entries of the directory at `relative` in name order. Subdirectories are
    /// pushed on `pending`, to be walked after: each directory's entries come as one sorted
    /// run, after its own entry.
    fn append_children<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        relative: &Path,
        pending: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let beneath = if relative.as_os_str().is_empty() { Path::new(".") } else { relative };
        let dir = rustix::fs::openat2(
            &self.root_dir,
            beneath,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .map_err(self.refused(relative))?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir).map_err(self.refused(relative))? {
            let name = entry.map_err(self.refused(relative))?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(name);
            }
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let inside = relative.join(std::ffi::OsStr::from_bytes(&name));
            if name.starts_with(b".wh.") {
                return Err(OciError::Usage(format!(
                    "--layer: {} would be read as an OCI whiteout",
                    inside.display()
                )));
            }
            let stat = rustix::fs::statat(&dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(self.refused(&inside))?;
            let listed = Listed {
                kind: FileType::from_raw_mode(stat.st_mode),
                mode: stat.st_mode & 0o7777,
                size: stat.st_size as u64,
                identity: (stat.st_dev, stat.st_ino),
            };
            self.append_entry(tar, &dir, &name, &inside, &listed)?;
            if listed.kind == FileType::Directory {
                subdirs.push(inside);
            }
        }
        pending.extend(subdirs.into_iter().rev());
        Ok(())
    }

    fn append_entry<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        dir: &OwnedFd,
        name: &[u8],
        inside: &Path,
        listed: &Listed,
    ) -> Result<()> {
        let mut header = tar::Header::new_ustar();
        header.set_uid(self.options.uid);
        header.set_gid(self.options.gid);
        header.set_mtime(self.options.mtime);
        header.set_mode(listed.mode);
        let written = match listed.kind {
            FileType::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, inside, io::empty())
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new()).map_err(self.refused(inside))?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, inside, std::ffi::OsStr::from_bytes(target.as_bytes()))
            }
            FileType::RegularFile => {
                let file = self.open_listed(dir, name, inside, listed)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(listed.size);
                // A file that shrank since it was listed fails the append rather than padding it.
                tar.append_data(&mut header, inside, io::Read::take(BufReader::new(file), listed.size))
            }
            _ => {
                return Err(OciError::Usage(format!(
                    "--layer: {} is not a file, directory or symlink",
                    self.root.join(inside).display()
                )));
            }
        };
        written.map_err(OciError::file(self.root.join(inside)))
    }

    /// The file listed as `name` in `dir`: not through a link, not waiting on a FIFO, and the
    /// same file once open, so one swapped in since it was listed is refused.
    fn open_listed(&self, dir: &OwnedFd, name: &[u8], inside: &Path, listed: &Listed) -> Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(self.refused(inside))?;
        let opened = rustix::fs::fstat(&fd).map_err(self.refused(inside))?;
        if FileType::from_raw_mode(opened.st_mode) != FileType::RegularFile
            || (opened.st_dev, opened.st_ino) != listed.identity
        {
            return Err(OciError::Usage(format!(
                "--layer: {} changed while the tree was read; nothing was written",
                self.root.join(inside).display()
            )));
        }
        Ok(File::from(fd))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::digest::Sha256;

    fn options() -> TreeOptions {
        TreeOptions { uid: 0, gid: 0, mtime: 1_700_000_000, compression: Compression::Gzip }
    }

    /// A small root filesystem: nested files, a sticky /tmp, an absolute and a relative
    /// symlink, and a symlinked directory pointing out of the tree.
    fn rootfs(root: &Path, outside: &Path) {
        std::fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir(root.join("tmp")).unwrap();
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(root.join("etc/passwd"), "nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n")
            .unwrap();
        std::fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), "certs").unwrap();
        std::fs::write(root.join("usr/lib/libc.so.6"), vec![7u8; 100_000]).unwrap();
        std::fs::set_permissions(root.join("usr/lib/libc.so.6"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("/etc/ssl/certs/ca-certificates.crt", root.join("etc/ssl/cert.pem"))
            .unwrap();
        std::fs::write(outside.join("secret"), "outside the tree").unwrap();
        std::os::unix::fs::symlink(outside, root.join("escape")).unwrap();
    }

    /// (name, type, mode, uid, mtime, link target, contents) of every entry, in order.
    type Entry = (String, tar::EntryType, u32, u64, u64, Option<String>, Vec<u8>);

    fn entries(layer_bytes: &[u8]) -> Vec<Entry> {
        let tar_bytes = crate::layer::tests::gunzip(layer_bytes);
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                let link = entry.link_name().unwrap().map(|l| l.display().to_string());
                let name = entry.path().unwrap().display().to_string();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                assert!(header.username_bytes().is_some_and(<[u8]>::is_empty));
                let (mode, uid, mtime) =
                    (header.mode().unwrap(), header.uid().unwrap(), header.mtime().unwrap());
                (name, header.entry_type(), mode, uid, mtime, link, data)
            })
            .collect()
    }

    #[test]
    fn the_same_tree_anywhere_gives_the_same_layer() {
        let outside = tempfile::tempdir().unwrap();
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        rootfs(one.path(), outside.path());
        rootfs(two.path(), outside.path());
        // Different inode order and times must not matter either.
        std::fs::write(two.path().join("etc/passwd"), "nonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n")
            .unwrap();
        let mut first = Vec::new();
        let layer = write_tree_layer(one.path(), &options(), &mut first).unwrap();
        let mut second = Vec::new();
        assert_eq!(write_tree_layer(two.path(), &options(), &mut second).unwrap(), layer);
        assert_eq!(first, second);
        assert_eq!(layer.digest, Sha256::of(&first));
        assert_eq!(layer.diff_id, Sha256::of(&crate::layer::tests::gunzip(&first)));

        let zstd = write_tree_layer(
            one.path(),
            &TreeOptions { compression: Compression::Zstd, ..options() },
            std::io::sink(),
        )
        .unwrap();
        assert_eq!(zstd.diff_id, layer.diff_id, "same tar under both codecs");
        let owned =
            write_tree_layer(one.path(), &TreeOptions { uid: 65532, ..options() }, std::io::sink()).unwrap();
        assert_ne!(owned.diff_id, layer.diff_id);
        std::fs::write(two.path().join("etc/passwd"), "root:x:0:0::/root:/sbin/nologin\n").unwrap();
        let changed = write_tree_layer(two.path(), &options(), std::io::sink()).unwrap();
        assert_ne!(changed.diff_id, layer.diff_id);
    }

    #[test]
    fn entries_are_sorted_with_modes_kept_and_symlinks_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        rootfs(root.path(), outside.path());
        let mut bytes = Vec::new();
        write_tree_layer(root.path(), &options(), &mut bytes).unwrap();
        let entries = entries(&bytes);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "escape",
                "etc",
                "lib",
                "tmp",
                "usr",
                "etc/passwd",
                "etc/ssl",
                "etc/ssl/cert.pem",
                "etc/ssl/certs",
                "etc/ssl/certs/ca-certificates.crt",
                "usr/lib",
                "usr/lib/libc.so.6",
            ]
        );
        let find = |name: &str| entries.iter().find(|e| e.0 == name).unwrap();
        assert_eq!(find("tmp").1, tar::EntryType::Directory);
        assert_eq!(find("tmp").2, 0o1777);
        let escape = find("escape");
        assert_eq!(escape.1, tar::EntryType::Symlink);
        assert_eq!(escape.5.as_deref(), Some(outside.path().to_str().unwrap()));
        assert_eq!(find("lib").5.as_deref(), Some("usr/lib"));
        assert_eq!(find("etc/ssl/cert.pem").5.as_deref(), Some("/etc/ssl/certs/ca-certificates.crt"));
        let libc = find("usr/lib/libc.so.6");
        assert_eq!((libc.1, libc.2, libc.3, libc.4), (tar::EntryType::Regular, 0o755, 0, 1_700_000_000));
        assert_eq!(libc.6, vec![7u8; 100_000]);
        assert!(
            !entries.iter().any(|e| e.6.windows(16).any(|w| w == b"outside the tree")),
            "nothing outside the tree is read"
        );
    }

    #[test]
    fn long_names_and_link_targets_survive() {
        let root = tempfile::tempdir().unwrap();
        let deep = format!("usr/local/go/{}/{}", "d".repeat(90), "e".repeat(90));
        std::fs::create_dir_all(root.path().join(&deep)).unwrap();
        let file = format!("{deep}/{}.go", "f".repeat(120));
        std::fs::write(root.path().join(&file), "package f").unwrap();
        let target = format!("/{}", "t".repeat(150));
        std::os::unix::fs::symlink(&target, root.path().join("link")).unwrap();
        let mut bytes = Vec::new();
        write_tree_layer(root.path(), &options(), &mut bytes).unwrap();
        let entries = entries(&bytes);
        assert!(entries.iter().any(|e| e.0 == file && e.6 == b"package f"), "{file}");
        assert!(entries.iter().any(|e| e.0 == "link" && e.5.as_deref() == Some(target.as_str())));
    }

    #[test]
    fn whiteouts_special_files_and_non_directories_are_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(".wh.etc"), "").unwrap();
        let err = write_tree_layer(root.path(), &options(), std::io::sink()).unwrap_err().to_string();
        assert!(err.contains("whiteout"), "{err}");

        let root = tempfile::tempdir().unwrap();
        let fifo = root.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::RUSR, 0)
            .unwrap();
        let err = write_tree_layer(root.path(), &options(), std::io::sink()).unwrap_err().to_string();
        assert!(err.contains("not a file, directory or symlink"), "{err}");

        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = write_tree_layer(&file, &options(), std::io::sink()).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    /// The tree changing while it is walked never makes the walk read outside it: a directory
    /// swapped for a link to elsewhere is not entered, a file swapped since it was listed is
    /// refused once open.
    #[test]
    fn a_tree_changed_while_it_is_walked_is_refused_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "outside the tree").unwrap();
        let walk = Walk {
            root: root.path(),
            root_dir: rustix::fs::open(root.path(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty())
                .unwrap(),
            options: &options(),
        };
        // Listed as a directory, then made a link before it is walked.
        std::os::unix::fs::symlink(outside.path(), root.path().join("sub")).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let err = walk.append_children(&mut tar, Path::new("sub"), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("sub"), "{err}");

        // Listed as one file, another one there when it is opened.
        std::fs::write(root.path().join("file"), "listed").unwrap();
        let dir = rustix::fs::open(root.path(), OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        let stat = rustix::fs::statat(&dir, "file", AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let listed = Listed {
            kind: FileType::RegularFile,
            mode: 0o644,
            size: stat.st_size as u64,
            identity: (stat.st_dev, stat.st_ino),
        };
        std::fs::write(root.path().join("swapped"), "swapped in").unwrap();
        std::fs::rename(root.path().join("swapped"), root.path().join("file")).unwrap();
        let err = walk.open_listed(&dir, b"file", Path::new("file"), &listed).unwrap_err().to_string();
        assert!(err.contains("changed while the tree was read"), "{err}");
    }
}
