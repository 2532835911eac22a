//! SHA-256 digests, the identity of every OCI blob (`sha256:<64 hex>`), and writers that
//! compute them while bytes stream past.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256 as Hasher};

use super::error::OciError;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Hasher::digest(bytes).into())
    }

    pub fn from_hasher(hasher: Hasher) -> Self {
        Self(hasher.finalize().into())
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Sha256 {
    type Err = OciError;

    fn from_str(text: &str) -> Result<Self, OciError> {
        let invalid = |reason: &str| OciError::Invalid(format!("digest {text:?}: {reason}"));
        let (algorithm, hex) =
            text.split_once(':').ok_or_else(|| invalid("expected sha256:<64 hex digits>"))?;
        if algorithm != "sha256" {
            return Err(invalid("only sha256 digests are supported"));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(invalid("expected 64 lowercase hex digits after sha256:"));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| invalid("not hex"))?;
        }
        Ok(Self(bytes))
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Passes writes through, hashing and counting them.
pub struct HashingWriter<W> {
    inner: W,
    sha256: Hasher,
    blake3: Option<blake3::Hasher>,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, sha256: Hasher::new(), blake3: None, written: 0 }
    }

    /// Also computes the BLAKE3 digest (the CAS identity) of the bytes.
    pub fn with_blake3(inner: W) -> Self {
        Self { blake3: Some(blake3::Hasher::new()), ..Self::new(inner) }
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn finish(self) -> (W, Sha256, Option<proto::Digest>, u64) {
        let blake3 = self.blake3.map(|hasher| proto::Digest::from_hasher(&hasher, self.written));
        (self.inner, Sha256::from_hasher(self.sha256), blake3, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha256.update(&buf[..n]);
        if let Some(hasher) = &mut self.blake3 {
            hasher.update(&buf[..n]);
        }
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes reads through, computing their BLAKE3 digest (to check a file did not change
/// between hashing and layering).
pub struct Blake3Reader<R> {
    inner: R,
    hasher: blake3::Hasher,
    read: u64,
}

impl<R: Read> Blake3Reader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: blake3::Hasher::new(), read: 0 }
    }

    pub fn digest(&self) -> proto::Digest {
        proto::Digest::from_hasher(&self.hasher, self.read)
    }
}

impl<R: Read> Read for Blake3Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// SHA-256 of a whole file.
pub fn sha256_file(path: &std::path::Path) -> io::Result<(Sha256, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = HashingWriter::new(io::sink());
    io::copy(&mut file, &mut hasher)?;
    let (_, digest, _, size) = hasher.finish();
    Ok((digest, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_and_print() {
        let digest = Sha256::of(b"");
        let text = digest.to_string();
        assert_eq!(text, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(text.parse::<Sha256>().unwrap(), digest);
        assert!("sha512:abc".parse::<Sha256>().unwrap_err().to_string().contains("only sha256"));
        assert!("sha256:ABC".parse::<Sha256>().is_err());
        assert!("e3b0c442".parse::<Sha256>().is_err());
    }
}
