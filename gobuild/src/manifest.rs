//! The build manifest: named build inputs, each hashed on its own, and the build key over them
//! (docs/build-keys.md, encoding version 2). cached computes the same key to check it
//! (`cached/src/builds/manifest.rs`); both pin the documented test vector.

use std::collections::BTreeMap;

use proto::v1;

/// Version of the canonical encoding, and of the rules that say what each component means: a
/// change to either is a new version, so no record made under older rules can answer a lookup.
pub const MANIFEST_VERSION: u32 = 2;
const KEY_DOMAIN: &[u8] = b"cached build key v2\n";
/// Display values longer than this are cut (the hash still covers the whole value).
const MAX_DISPLAY: usize = 200;

/// One build input: its name, the BLAKE3 of its canonical value, and a readable form (empty
/// when the value must not be shown, or is a file's contents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub hash: [u8; 32],
    pub display: String,
}

/// Components by name; the order of the canonical encoding is the order of the names' bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    components: BTreeMap<String, Component>,
}

impl Manifest {
    /// A component whose value is shown in explanations.
    pub fn shown(&mut self, name: impl Into<String>, value: &str) {
        self.summarized(name, value, value);
    }

    /// A component whose value is hashed and shown as `display`, a readable summary of it.
    pub fn summarized(&mut self, name: impl Into<String>, value: &str, display: &str) {
        self.insert(name.into(), *blake3::hash(value.as_bytes()).as_bytes(), display.to_owned());
    }

    /// A component whose value is hashed but never shown (flags that may carry secrets).
    pub fn hidden(&mut self, name: impl Into<String>, value: &str) {
        self.insert(name.into(), *blake3::hash(value.as_bytes()).as_bytes(), String::new());
    }

    /// A component whose hash the caller computed (file contents). A name given twice with
    /// other contents keys both, in order: names come from the tenant's tree (`file.<path>`),
    /// and a later input must never hide an earlier one from the key.
    /// A display past [`MAX_DISPLAY`] is cut (cached refuses long ones; the key is the hashes).
    pub fn insert(&mut self, name: String, hash: [u8; 32], mut display: String) {
        proto::text::cut_marked(&mut display, MAX_DISPLAY);
        let hash = match self.components.get(&name) {
            Some(earlier) if earlier.hash != hash => {
                let mut both = blake3::Hasher::new();
                both.update(&earlier.hash).update(&hash);
                *both.finalize().as_bytes()
            }
            _ => hash,
        };
        self.components.insert(name.clone(), Component { name, hash, display });
    }

    pub fn get(&self, name: &str) -> Option<&Component> {
        self.components.get(name)
    }

    pub fn len(&self) -> usize {
        self.components.len()
    }

    pub fn is_empty(&self) -> bool {
        self.components.is_empty()
    }

    pub fn components(&self) -> impl Iterator<Item = &Component> {
        self.components.values()
    }

    /// BLAKE3 over the domain line, then per component in name order: name, NUL, 32-byte hash.
    pub fn key(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(KEY_DOMAIN);
        for component in self.components.values() {
            hasher.update(component.name.as_bytes());
            hasher.update(&[0]);
            hasher.update(&component.hash);
        }
        *hasher.finalize().as_bytes()
    }

    pub fn to_wire(&self) -> v1::BuildManifest {
        v1::BuildManifest {
            version: MANIFEST_VERSION,
            components: self
                .components
                .values()
                .map(|c| v1::ManifestComponent {
                    name: c.name.clone(),
                    hash: c.hash.to_vec().into(),
                    display: c.display.clone(),
                })
                .collect(),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of docs/build-keys.md; cached/src/builds/manifest.rs pins it too.
    #[test]
    fn key_matches_the_documented_vector() {
        let mut manifest = Manifest::default();
        manifest.shown("env.GOOS", "linux");
        manifest.insert("file.main.go".into(), *blake3::hash(b"package main\n").as_bytes(), String::new());
        manifest.shown("env.GOARCH", "amd64");
        assert_eq!(hex(&manifest.key()), "1dc2f2bfcbc87916c727c442b0c49b5c77648b56aa24ab324d913e2ed97554a5");
        let wire = manifest.to_wire();
        let names: Vec<&str> = wire.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["env.GOARCH", "env.GOOS", "file.main.go"]);
    }

    #[test]
    fn hidden_values_stay_hidden_and_long_ones_are_cut() {
        let mut manifest = Manifest::default();
        manifest.hidden("flag.ldflags", "-X main.token=s3cret");
        manifest.shown("flag.tags", &"x".repeat(500));
        assert_eq!(manifest.get("flag.ldflags").unwrap().display, "");
        assert!(manifest.get("flag.tags").unwrap().display.chars().count() <= MAX_DISPLAY + 1);
        let mut other = manifest.clone();
        other.hidden("flag.ldflags", "-X main.token=other");
        assert_ne!(manifest.key(), other.key());
    }

    #[test]
    fn a_name_given_twice_keys_both_contents() {
        let file = |contents: &[u8]| {
            let mut manifest = Manifest::default();
            manifest.insert("file.a.go".into(), *blake3::hash(contents).as_bytes(), String::new());
            manifest
        };
        let (honest, hostile) = (file(b"honest"), file(b"hostile"));
        let mut both = honest.clone();
        both.insert("file.a.go".into(), *blake3::hash(b"hostile").as_bytes(), String::new());
        assert_ne!(both.key(), hostile.key(), "the later file hid the earlier one");
        assert_ne!(both.key(), honest.key());
        let mut again = honest.clone();
        again.insert("file.a.go".into(), *blake3::hash(b"honest").as_bytes(), String::new());
        assert_eq!(again.key(), honest.key(), "the same input twice is one input");
    }
}
