//! How the whole-build cache lays out its RocksDB keys and values: NUL-terminated fields
//! (namespace, module, package, GOOS/GOARCH) so prefixes select a namespace, package or target,
//! big-endian times so keys sort by age, and values prefixed with their encoding version.

use prost::Message;
use proto::v1;

use crate::error::{Error, Result};

const VALUE_VERSION: u8 = 1;

pub(super) fn encode<M: Message>(message: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.encoded_len() + 1);
    out.push(VALUE_VERSION);
    message.encode(&mut out).expect("a Vec grows as needed");
    out
}

pub(super) fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, rest)) => {
            M::decode(rest).map_err(|err| Error::Corrupt(format!("{what} record: {err}")))
        }
        _ => Err(Error::Corrupt(format!("{what} record of unknown version"))),
    }
}

/// `field` then a NUL, for key prefixes. Fields are checked to hold no control characters.
fn push_field(key: &mut Vec<u8>, field: &str) {
    key.extend_from_slice(field.as_bytes());
    key.push(0);
}

pub(super) fn entry_key(namespace: &str, key: &[u8; 32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(namespace.len() + 33);
    push_field(&mut out, namespace);
    out.extend_from_slice(key);
    out
}

pub(super) fn package_prefix(namespace: &str, target: &v1::BuildTarget) -> Vec<u8> {
    let mut out = Vec::new();
    push_field(&mut out, namespace);
    push_field(&mut out, &target.module);
    push_field(&mut out, &target.package);
    out
}

pub(super) fn target_prefix(namespace: &str, target: &v1::BuildTarget) -> Vec<u8> {
    let mut out = package_prefix(namespace, target);
    push_field(&mut out, &format!("{}/{}", target.goos, target.goarch));
    out
}

pub(super) fn event_prefix(namespace: &str) -> Vec<u8> {
    let mut out = Vec::new();
    push_field(&mut out, namespace);
    out
}

/// A short name of a target within its namespace, ending event keys so pruning can count
/// events per target without decoding them.
pub(super) fn target_hash(target: Option<&v1::BuildTarget>) -> u64 {
    let hash = target_digest(target);
    u64::from_be_bytes(hash[..8].try_into().expect("8 of 32 bytes"))
}

/// The BLAKE3 of a target's fields: what names a target where its fields (up to 16 KiB) would
/// cost too much to keep.
pub(super) fn target_digest(target: Option<&v1::BuildTarget>) -> [u8; 32] {
    let empty = v1::BuildTarget::default();
    let target = target.unwrap_or(&empty);
    let mut fields = Vec::new();
    for field in [&target.module, &target.package, &target.goos, &target.goarch] {
        push_field(&mut fields, field);
    }
    *blake3::hash(&fields).as_bytes()
}

/// The key just past every key that starts with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// An index value's key and time: the last 40 bytes of its index key.
pub(super) fn index_tail(index_key: &[u8]) -> Option<(i64, [u8; 32])> {
    let tail = index_key.len().checked_sub(40).map(|start| &index_key[start..])?;
    let time = i64::from_be_bytes(tail[..8].try_into().ok()?);
    let key = tail[8..].try_into().ok()?;
    Some((time, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_bound_exactly_the_keys_with_the_prefix() {
        assert_eq!(prefix_end(b"ns\0"), b"ns\x01".to_vec());
        assert_eq!(prefix_end(&[1, 2, 255]), vec![1, 3]);
        assert_eq!(prefix_end(&[255, 255]), vec![255, 255, 255]);
        let target = v1::BuildTarget {
            module: "example.com/m".into(),
            package: "./cmd/app".into(),
            goos: "linux".into(),
            goarch: "amd64".into(),
        };
        let package = package_prefix("ci", &target);
        let key = target_prefix("ci", &target);
        assert!(key.starts_with(&package) && key.as_slice() < prefix_end(&package).as_slice());
        // Fields end in NUL, so one namespace is never a prefix of another's keys.
        assert!(!entry_key("ci2", &[0; 32]).starts_with(&event_prefix("ci")));
    }

    #[test]
    fn index_tails_give_back_the_time_and_key() {
        let mut index_key = target_prefix("ci", &v1::BuildTarget::default());
        index_key.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        index_key.extend_from_slice(&[7; 32]);
        assert_eq!(index_tail(&index_key), Some((1_700_000_000_000, [7; 32])));
        assert_eq!(index_tail(&[0; 39]), None);
    }

    #[test]
    fn values_of_another_version_are_refused() {
        let target = v1::BuildTarget { goos: "linux".into(), ..Default::default() };
        let bytes = encode(&target);
        assert_eq!(decode::<v1::BuildTarget>(&bytes, "target").unwrap(), target);
        let mut other = bytes.clone();
        other[0] = VALUE_VERSION + 1;
        assert!(decode::<v1::BuildTarget>(&other, "target").is_err());
    }
}
