use std::fmt;
use std::str::FromStr;

use crate::v1;

/// BLAKE3-256 of a blob's uncompressed bytes, plus their length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    pub hash: [u8; 32],
    pub size: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form <64 hex digits>/<size in bytes>")]
    Malformed(String),
    #[error("digest hash must be 32 bytes, got {0}")]
    HashLength(usize),
    #[error("digest is missing")]
    Missing,
}

impl Digest {
    /// The digest of the empty blob.
    pub fn empty() -> Self {
        Self::of(&[])
    }

    pub fn of(bytes: &[u8]) -> Self {
        Self { hash: *blake3::hash(bytes).as_bytes(), size: bytes.len() as u64 }
    }

    pub fn from_hasher(hasher: &blake3::Hasher, size: u64) -> Self {
        Self { hash: *hasher.finalize().as_bytes(), size }
    }

    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.hash).to_hex().to_string()
    }

    pub fn to_wire(self) -> v1::Digest {
        v1::Digest { hash: self.hash.to_vec().into(), size_bytes: self.size }
    }

    pub fn from_wire(wire: Option<&v1::Digest>) -> Result<Self, DigestError> {
        let wire = wire.ok_or(DigestError::Missing)?;
        let hash: [u8; 32] =
            wire.hash.as_ref().try_into().map_err(|_| DigestError::HashLength(wire.hash.len()))?;
        Ok(Self { hash, size: wire.size_bytes })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hex(), self.size)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || DigestError::Malformed(text.to_owned());
        let (hex, size) = text.split_once('/').ok_or_else(malformed)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        let hash = blake3::Hash::from_hex(hex).map_err(|_| malformed())?;
        let size = size.parse::<u64>().map_err(|_| malformed())?;
        Ok(Self { hash: *hash.as_bytes(), size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let digest = Digest::of(b"hello");
        let text = digest.to_string();
        assert_eq!(text.len(), 64 + 2);
        assert!(text.ends_with("/5"));
        assert_eq!(text.parse::<Digest>(), Ok(digest));
    }

    #[test]
    fn malformed_text_is_refused() {
        for bad in
            ["", "abc/1", &format!("{}/x", "0".repeat(64)), &"0".repeat(64), &format!("{}/1", "g".repeat(64))]
        {
            assert!(matches!(bad.parse::<Digest>(), Err(DigestError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn wire_form_checks_hash_length() {
        let wire = v1::Digest { hash: vec![0; 31].into(), size_bytes: 1 };
        assert_eq!(Digest::from_wire(Some(&wire)), Err(DigestError::HashLength(31)));
        assert_eq!(Digest::from_wire(None), Err(DigestError::Missing));
        let digest = Digest::of(b"x");
        assert_eq!(Digest::from_wire(Some(&digest.to_wire())), Ok(digest));
    }
}
