//! Action IDs moved into a key space of their own (`--action-salt`). The go command's action
//! ID for a package hashes only the files `go list` names for it; a package whose C sources
//! or assembly include a file from elsewhere (`-I${SRCDIR}/include`, `.incbin`) gets the same
//! action ID whatever that file holds, so the cache would answer with an object built from an
//! older version of it. The CI wrapper, which finds and hashes those files, passes a salt made
//! of their contents: while they stay the same, every entry is found again; when one changes,
//! every action misses, as `go build -a` would make them, but only then. The tiers key every
//! lookup and put under it, the prefetched `stdout` subkeys included.

use proto::ActionId;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Salt([u8; 32]);

impl Salt {
    /// The ID `action_id` is kept under.
    pub fn apply(&self, action_id: &ActionId) -> ActionId {
        let mut hasher = Sha256::new();
        hasher.update(b"cachectl gocacheprog action salt\0");
        hasher.update(self.0);
        hasher.update(action_id.0);
        ActionId(hasher.finalize().into())
    }
}

/// A salt as the wrapper passes it: 64 hex digits.
pub fn parse(text: &str) -> Result<Salt, String> {
    let text = text.trim();
    let wrong = || {
        format!(
            "the action salt {text:?} is not 64 hex digits; cachectl go build passes it, leave \
             CACHED_ACTION_SALT unset otherwise"
        )
    };
    crate::disk::parse_hex32(text).map(Salt).ok_or_else(wrong)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_salt_keeps_ids_apart_from_another_and_from_none() {
        let action = ActionId([7; 32]);
        let (one, two) = (Salt([1; 32]), Salt([2; 32]));
        assert_eq!(one.apply(&action), one.apply(&action), "the same salt gives the same ID again");
        assert_ne!(one.apply(&action), two.apply(&action), "another salt, another ID");
        assert_ne!(one.apply(&action), action, "never the unsalted ID");
    }

    #[test]
    fn a_salt_is_64_hex_digits() {
        assert_eq!(parse(&"ab".repeat(32)).unwrap(), Salt([0xab; 32]));
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33), &"+a".repeat(32)] {
            assert!(parse(bad).unwrap_err().contains("not 64 hex digits"), "{bad:?}");
        }
    }
}
