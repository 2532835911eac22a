//! One layer per binary: a deterministic tar (parent directories first, fixed owner, modes and
//! mtime, no user or group names) compressed with a pinned encoder, so the same binary and
//! options give the same layer digest on any machine.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::Path;

use miniz_oxide::deflate::core::CompressorOxide;
use miniz_oxide::{DataFormat, MZFlush, MZStatus};

use super::digest::{Blake3Reader, HashingWriter, Sha256};
use super::error::{OciError, Result};
use super::manifest::{MEDIA_LAYER_GZIP, MEDIA_LAYER_ZSTD};

/// gzip level: 1, as ko (Go's BestSpeed). Binaries barely shrink further at higher levels.
pub const GZIP_LEVEL: u8 = 1;
/// The exact encoder behind gzip layers; part of every layer cache key. `miniz_oxide` is
/// pinned to this version in Cargo.toml, because its output bytes define our layer digests.
const GZIP_ENCODER: &str = "miniz_oxide 0.9.1";
pub const ZSTD_LEVEL: i32 = 3;
/// Input is fed to the deflate encoder in blocks of this size whatever the writes above it,
/// so the output never depends on how the tar writer happens to split its writes.
const DEFLATE_BLOCK: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Gzip => MEDIA_LAYER_GZIP,
            Self::Zstd => MEDIA_LAYER_ZSTD,
        }
    }

    /// Everything that determines the compressed bytes: codec, implementation, version, level.
    pub fn encoder_id(self) -> String {
        match self {
            Self::Gzip => {
                format!("gzip {GZIP_ENCODER} level {GZIP_LEVEL} mtime 0 xfl 4 os 255 block {DEFLATE_BLOCK}")
            }
            Self::Zstd => format!(
                "zstd {} level {ZSTD_LEVEL} checksum off single-threaded",
                zstd::zstd_safe::version_string()
            ),
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = OciError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            other => Err(OciError::Usage(format!("compression {other:?}: expected gzip or zstd"))),
        }
    }
}

/// Where and how the binary lands in the layer. All of it is part of the layer cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerOptions {
    /// Absolute path of the binary in the image, like `/app/hello`.
    pub path: String,
    pub uid: u64,
    pub gid: u64,
    /// Permission bits of the binary; parent directories get 0755.
    pub mode: u32,
    /// mtime of every entry, seconds since the epoch (SOURCE_DATE_EPOCH or 0).
    pub mtime: u64,
    pub compression: Compression,
}

impl LayerOptions {
    /// Checks the path: absolute, normal components, short enough for a ustar header.
    pub fn validate(&self) -> Result<()> {
        let usage = |reason: &str| OciError::Usage(format!("image path {:?}: {reason}", self.path));
        let relative = self.path.strip_prefix('/').ok_or_else(|| usage("must be absolute"))?;
        if relative.is_empty() || relative.ends_with('/') {
            return Err(usage("must name a file"));
        }
        for part in relative.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.starts_with(".wh.") {
                return Err(usage("components must be non-empty names, not . or .. or .wh. whiteouts"));
            }
            if part.bytes().any(|b| b.is_ascii_control()) {
                return Err(usage("control characters are not allowed"));
            }
        }
        if split_ustar_name(relative).is_none() {
            return Err(usage("too long for a ustar header (at most 100 bytes per name, 255 in all)"));
        }
        if self.mode > 0o7777 {
            return Err(usage("mode must be at most 07777"));
        }
        Ok(())
    }

    /// The tar entries: each parent directory (with a trailing slash), then the file.
    fn entries(&self) -> Vec<(String, bool)> {
        let relative = self.path.trim_start_matches('/');
        let parts: Vec<&str> = relative.split('/').collect();
        let mut entries: Vec<(String, bool)> =
            (1..parts.len()).map(|n| (format!("{}/", parts[..n].join("/")), true)).collect();
        entries.push((relative.to_owned(), false));
        entries
    }
}

/// A finished layer: what the manifest and config need, plus the CAS identity of its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub media_type: String,
    /// SHA-256 of the compressed bytes (the blob digest in manifests).
    pub digest: Sha256,
    pub size: u64,
    /// SHA-256 of the uncompressed tar (the config's rootfs.diff_ids).
    pub diff_id: Sha256,
    /// BLAKE3 digest of the compressed bytes, their key in the CAS.
    pub cas: proto::Digest,
}

/// Writes the layer holding `binary` to `out`. `expected` is the binary's BLAKE3 digest as
/// hashed earlier (the cache key); a file that changed since is an error, not a wrong layer.
pub fn write_layer(
    binary: &Path,
    expected: proto::Digest,
    options: &LayerOptions,
    out: impl Write,
) -> Result<Layer> {
    options.validate()?;
    let file = File::open(binary).map_err(OciError::file(binary))?;
    let size = file.metadata().map_err(OciError::file(binary))?.len();
    let mut reader = Blake3Reader::new(BufReader::with_capacity(1 << 20, file));

    let encoder =
        Encoder::new(HashingWriter::with_blake3(out), options.compression).map_err(OciError::file(binary))?;
    let mut tar = tar::Builder::new(HashingWriter::new(encoder));
    let io_error = OciError::file(binary);
    let mut write = || -> io::Result<()> {
        for (name, is_dir) in options.entries() {
            let mut header = tar::Header::new_ustar();
            set_name(&mut header, &name)?;
            header.set_uid(options.uid);
            header.set_gid(options.gid);
            header.set_mtime(options.mtime);
            if is_dir {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                header.set_cksum();
                tar.append(&header, io::empty())?;
            } else {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(options.mode);
                header.set_size(size);
                header.set_cksum();
                tar.append(&header, io::Read::take(&mut reader, size))?;
            }
        }
        Ok(())
    };
    write().map_err(io_error)?;
    let actual = reader.digest();
    if actual != expected {
        return Err(OciError::Usage(format!(
            "{} changed while it was being imaged (was {expected}, now {actual}); run again",
            binary.display()
        )));
    }
    let (encoder, diff_id, _, _) = tar.into_inner().map_err(OciError::file(binary))?.finish();
    let compressed = encoder.finish().map_err(OciError::file(binary))?;
    let (mut out, digest, cas, size) = compressed.finish();
    out.flush().map_err(OciError::file(binary))?;
    Ok(Layer {
        media_type: options.compression.media_type().to_owned(),
        digest,
        size,
        diff_id,
        cas: cas.unwrap_or_else(proto::Digest::empty),
    })
}

/// Puts `name` in the ustar name field, or splits it across prefix and name.
fn set_name(header: &mut tar::Header, name: &str) -> io::Result<()> {
    let ustar = header.as_ustar_mut().ok_or_else(|| io::Error::other("not a ustar header"))?;
    let (prefix, rest) = split_ustar_name(name).ok_or_else(|| io::Error::other("name too long"))?;
    ustar.prefix[..prefix.len()].copy_from_slice(prefix.as_bytes());
    ustar.name[..rest.len()].copy_from_slice(rest.as_bytes());
    Ok(())
}

fn split_ustar_name(name: &str) -> Option<(&str, &str)> {
    if name.len() <= 100 {
        return Some(("", name));
    }
    // Split at a slash so that the prefix fits in 155 bytes and the rest in 100.
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    name.char_indices()
        .filter(|&(i, c)| c == '/' && i < trimmed.len() && i <= 155 && name.len() - i - 1 <= 100)
        .map(|(i, _)| (&name[..i], &name[i + 1..]))
        .next()
}

fn zstd_encoder<W: Write>(out: W) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    encoder.include_checksum(false)?;
    Ok(encoder)
}

/// The layer's compressor, whichever codec the options name.
pub(crate) enum Encoder<W: Write> {
    Gzip(GzipWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub(crate) fn new(out: W, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::Gzip => Self::Gzip(GzipWriter::new(out)),
            Compression::Zstd => Self::Zstd(zstd_encoder(out)?),
        })
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Self::Gzip(gzip) => gzip.finish(),
            Self::Zstd(zstd) => zstd.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Gzip(gzip) => gzip.write(buf),
            Self::Zstd(zstd) => zstd.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// gzip (RFC 1952) around miniz_oxide's raw deflate, with a fixed header: no name, mtime 0,
/// XFL 4 (fastest) and OS 255 (unknown), as Go's compress/gzip writes at BestSpeed.
pub struct GzipWriter<W: Write> {
    inner: W,
    compressor: Box<CompressorOxide>,
    crc: crc32fast::Hasher,
    length: u64,
    header_written: bool,
    block: Vec<u8>,
    output: Vec<u8>,
}

const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

impl<W: Write> GzipWriter<W> {
    pub fn new(inner: W) -> Self {
        let mut compressor = Box::<CompressorOxide>::default();
        compressor.set_format_and_level(DataFormat::Raw, GZIP_LEVEL);
        Self {
            inner,
            compressor,
            crc: crc32fast::Hasher::new(),
            length: 0,
            header_written: false,
            block: Vec::with_capacity(DEFLATE_BLOCK),
            output: vec![0; 2 * DEFLATE_BLOCK],
        }
    }

    /// Compresses the pending block; with `Finish`, also ends the deflate stream.
    fn deflate_block(&mut self, flush: MZFlush) -> io::Result<()> {
        if !self.header_written {
            self.inner.write_all(&GZIP_HEADER)?;
            self.header_written = true;
        }
        self.crc.update(&self.block);
        self.length += self.block.len() as u64;
        let mut input = &self.block[..];
        loop {
            let result =
                miniz_oxide::deflate::stream::deflate(&mut self.compressor, input, &mut self.output, flush);
            self.inner.write_all(&self.output[..result.bytes_written])?;
            input = &input[result.bytes_consumed..];
            let output_full = result.bytes_written == self.output.len();
            match (result.status, flush) {
                (Ok(MZStatus::StreamEnd), _) => break,
                (Ok(_), MZFlush::Finish) => {}
                (Ok(_), _) if input.is_empty() && !output_full => break,
                (Ok(_), _) => {}
                // No progress possible without more input: everything given was taken.
                (Err(miniz_oxide::MZError::Buf), MZFlush::None) if input.is_empty() => break,
                (Err(err), _) => return Err(io::Error::other(format!("deflate failed: {err:?}"))),
            }
        }
        self.block.clear();
        Ok(())
    }

    /// Ends the stream: the last block, then the CRC-32 and length trailer.
    pub fn finish(mut self) -> io::Result<W> {
        self.deflate_block(MZFlush::Finish)?;
        self.inner.write_all(&self.crc.clone().finalize().to_le_bytes())?;
        // ISIZE is the length modulo 2^32 (RFC 1952).
        self.inner.write_all(&((self.length & 0xffff_ffff) as u32).to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = buf.len().min(DEFLATE_BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..take]);
        if self.block.len() == DEFLATE_BLOCK {
            self.deflate_block(MZFlush::None)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Read;
    use std::path::PathBuf;

    use super::*;

    fn options(compression: Compression) -> LayerOptions {
        LayerOptions { path: "/app/hello".into(), uid: 0, gid: 0, mode: 0o755, mtime: 0, compression }
    }

    /// A binary-like file: 3 MiB of mixed compressible and incompressible bytes.
    fn sample(dir: &Path) -> (PathBuf, proto::Digest) {
        let mut data = Vec::with_capacity(3 << 20);
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        while data.len() < 3 << 20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state.is_multiple_of(3) {
                data.extend_from_slice(&state.to_le_bytes());
            } else {
                data.extend_from_slice(b"\x00\x00\x48\x89\xe5\x90");
            }
        }
        let path = dir.join("hello");
        std::fs::write(&path, &data).unwrap();
        (path, proto::Digest::of(&data))
    }

    pub(crate) fn gunzip(bytes: &[u8]) -> Vec<u8> {
        assert_eq!(&bytes[..10], &GZIP_HEADER, "fixed gzip header");
        let body = &bytes[10..bytes.len() - 8];
        let raw = miniz_oxide::inflate::decompress_to_vec(body).expect("valid deflate");
        let trailer = &bytes[bytes.len() - 8..];
        assert_eq!(u32::from_le_bytes(trailer[..4].try_into().unwrap()), crc32fast::hash(&raw));
        assert_eq!(u32::from_le_bytes(trailer[4..].try_into().unwrap()) as usize, raw.len());
        raw
    }

    fn entries(tar_bytes: &[u8]) -> Vec<(String, u32, u64, u64, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                let name = String::from_utf8(header.path_bytes().to_vec()).unwrap();
                assert!(header.username_bytes().is_some_and(<[u8]>::is_empty));
                (
                    name,
                    header.mode().unwrap(),
                    header.uid().unwrap(),
                    header.gid().unwrap(),
                    header.mtime().unwrap(),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn gzip_layer_is_a_deterministic_tar_with_parent_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (binary, digest) = sample(dir.path());
        let mut first = Vec::new();
        let layer = write_layer(&binary, digest, &options(Compression::Gzip), &mut first).unwrap();
        let mut second = Vec::new();
        assert_eq!(write_layer(&binary, digest, &options(Compression::Gzip), &mut second).unwrap(), layer);
        assert_eq!(first, second);
        assert_eq!(layer.digest, Sha256::of(&first));
        assert_eq!(layer.size, first.len() as u64);
        assert_eq!(layer.cas, proto::Digest::of(&first));
        assert_eq!(layer.media_type, MEDIA_LAYER_GZIP);

        let tar_bytes = gunzip(&first);
        assert_eq!(layer.diff_id, Sha256::of(&tar_bytes));
        let entries = entries(&tar_bytes);
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].0.as_str(), entries[0].1, entries[0].4), ("app/", 0o755, 0));
        assert_eq!(
            (entries[1].0.as_str(), entries[1].1, entries[1].2, entries[1].3),
            ("app/hello", 0o755, 0, 0)
        );
        assert_eq!(entries[1].5, std::fs::read(&binary).unwrap());
    }

    /// Pins the encoder: if this digest changes, every image digest we ever produced changes
    /// with it. Bump the layer cache key version and say so in the changelog if that is meant.
    #[test]
    fn gzip_layer_digest_is_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let (binary, digest) = sample(dir.path());
        let layer = write_layer(&binary, digest, &options(Compression::Gzip), std::io::sink()).unwrap();
        assert_eq!(layer.diff_id.to_string(), GOLDEN_DIFF_ID);
        assert_eq!(layer.digest.to_string(), GOLDEN_GZIP_DIGEST);
    }

    const GOLDEN_DIFF_ID: &str = "sha256:ef90b5666299c4d6251cec09cb5ad5a6190b6ca451f51622a0af7b5ec6aec995";
    const GOLDEN_GZIP_DIGEST: &str =
        "sha256:77b72b53ef57ff3c8fb706a52ded94095d22b51af3ab71f77d61b79511ee121b";

    #[test]
    fn zstd_layers_and_options_change_bytes_but_not_content() {
        let dir = tempfile::tempdir().unwrap();
        let (binary, digest) = sample(dir.path());
        let gzip = write_layer(&binary, digest, &options(Compression::Gzip), std::io::sink()).unwrap();
        let mut bytes = Vec::new();
        let zstd = write_layer(&binary, digest, &options(Compression::Zstd), &mut bytes).unwrap();
        assert_eq!(zstd.media_type, MEDIA_LAYER_ZSTD);
        assert_eq!(zstd.diff_id, gzip.diff_id, "same tar under both codecs");
        assert_ne!(zstd.digest, gzip.digest);
        let tar_bytes = zstd::stream::decode_all(&bytes[..]).unwrap();
        assert_eq!(Sha256::of(&tar_bytes), zstd.diff_id);

        let owned = LayerOptions {
            path: "/usr/local/bin/hello".into(),
            uid: 65532,
            gid: 65532,
            mode: 0o555,
            mtime: 1_700_000_000,
            ..options(Compression::Gzip)
        };
        let mut bytes = Vec::new();
        let layer = write_layer(&binary, digest, &owned, &mut bytes).unwrap();
        let names: Vec<(String, u32, u64, u64)> =
            entries(&gunzip(&bytes)).into_iter().map(|e| (e.0, e.1, e.2, e.4)).collect();
        assert_eq!(
            names,
            [
                ("usr/".into(), 0o755, 65532, 1_700_000_000),
                ("usr/local/".into(), 0o755, 65532, 1_700_000_000),
                ("usr/local/bin/".into(), 0o755, 65532, 1_700_000_000),
                ("usr/local/bin/hello".into(), 0o555, 65532, 1_700_000_000),
            ]
        );
        assert_ne!(layer.diff_id, gzip.diff_id);
    }

    #[test]
    fn a_binary_that_changed_since_hashing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (binary, _) = sample(dir.path());
        let err =
            write_layer(&binary, proto::Digest::of(b"else"), &options(Compression::Gzip), std::io::sink())
                .unwrap_err()
                .to_string();
        assert!(err.contains("changed while it was being imaged"), "{err}");
    }

    #[test]
    fn empty_and_tiny_inputs_make_valid_gzip() {
        for data in [&b""[..], b"x"] {
            let mut out = Vec::new();
            let mut writer = GzipWriter::new(&mut out);
            writer.write_all(data).unwrap();
            writer.finish().unwrap();
            assert_eq!(gunzip(&out), data);
        }
    }

    #[test]
    fn image_paths_are_checked() {
        for bad in ["app/hello", "/", "/app/", "/app/../x", "/app/.wh.x", "/a//b"] {
            let options = LayerOptions { path: bad.into(), ..options(Compression::Gzip) };
            assert!(options.validate().is_err(), "{bad}");
        }
        let long = format!("/{}/{}", "d".repeat(150), "f".repeat(99));
        LayerOptions { path: long, ..options(Compression::Gzip) }.validate().unwrap();
        let too_long = format!("/{}", "f".repeat(101));
        assert!(LayerOptions { path: too_long, ..options(Compression::Gzip) }.validate().is_err());
    }
}
