//! Action IDs moved into a key space of their own (`--action-salt`). The go command's action
//! ID for a package hashes only the files `go list` names for it; a package whose C sources
//! or assembly include a file from elsewhere (`-I${SRCDIR}/include`, `.incbin`) gets the same
//! action ID whatever that file holds, so the cache would answer with an object built from an
//! older version of it. The CI wrapper, which finds and hashes those files, passes a salt made
//! of their contents: while they stay the same, every entry is found again; when one changes,
//! every action misses, as `go build -a` would make them, but only then.

use std::sync::Arc;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::protocol::Hit;
use crate::server::{BodySink, Cache, Local};
use proto::{ActionId, OutputId};

/// A salt as the wrapper passes it: 64 hex digits.
pub fn parse(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let wrong = || {
        format!(
            "the action salt {text:?} is not 64 hex digits; cachectl go build passes it, leave \
             CACHED_ACTION_SALT unset otherwise"
        )
    };
    if text.len() != 64 {
        return Err(wrong());
    }
    let mut salt = [0u8; 32];
    for (byte, pair) in salt.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| wrong())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| wrong())?;
    }
    Ok(salt)
}

/// `inner` with every action ID replaced by its salted one.
pub struct Salted {
    inner: Arc<dyn Cache>,
    salt: [u8; 32],
}

impl Salted {
    pub fn new(inner: Arc<dyn Cache>, salt: [u8; 32]) -> Self {
        Self { inner, salt }
    }

    fn salted(&self, action_id: &ActionId) -> ActionId {
        let mut hasher = Sha256::new();
        hasher.update(b"cachectl gocacheprog action salt\0");
        hasher.update(self.salt);
        hasher.update(action_id.0);
        ActionId(hasher.finalize().into())
    }
}

impl Cache for Salted {
    fn get_local(&self, action_id: &ActionId) -> Local {
        self.inner.get_local(&self.salted(action_id))
    }

    fn get_remote(self: Arc<Self>, action_id: ActionId) -> BoxFuture<'static, Option<Hit>> {
        Arc::clone(&self.inner).get_remote(self.salted(&action_id))
    }

    fn begin_put(
        &self,
        action_id: ActionId,
        output_id: OutputId,
        size: u64,
    ) -> Result<Box<dyn BodySink>, String> {
        self.inner.begin_put(self.salted(&action_id), output_id, size)
    }

    fn close(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Arc::clone(&self.inner).close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Remembers the action IDs it is asked for.
    #[derive(Default)]
    struct Seen(Mutex<Vec<ActionId>>);

    impl Cache for Seen {
        fn get_local(&self, action_id: &ActionId) -> Local {
            self.0.lock().unwrap().push(*action_id);
            Local::Miss
        }
        fn get_remote(self: Arc<Self>, _: ActionId) -> BoxFuture<'static, Option<Hit>> {
            Box::pin(async { None })
        }
        fn begin_put(&self, action_id: ActionId, _: OutputId, _: u64) -> Result<Box<dyn BodySink>, String> {
            self.0.lock().unwrap().push(action_id);
            Err("not stored".into())
        }
        fn close(self: Arc<Self>) -> BoxFuture<'static, ()> {
            Box::pin(async {})
        }
    }

    #[test]
    fn one_salt_keeps_ids_apart_from_another_and_from_none() {
        let seen = Arc::new(Seen::default());
        let action = ActionId([7; 32]);
        for salt in [[1u8; 32], [1u8; 32], [2u8; 32]] {
            let salted = Salted::new(seen.clone(), salt);
            let _ = salted.get_local(&action);
            let _ = salted.begin_put(action, OutputId([0; 32]), 0);
        }
        let ids = seen.0.lock().unwrap().clone();
        assert_eq!(ids[0], ids[1], "a get and a put of one action under one salt meet");
        assert_eq!(ids[0], ids[2], "the same salt gives the same ID again");
        assert_ne!(ids[0], ids[4], "another salt, another ID");
        assert!(ids.iter().all(|id| *id != action), "never the unsalted ID");
    }

    #[test]
    fn a_salt_is_64_hex_digits() {
        assert_eq!(parse(&"ab".repeat(32)).unwrap(), [0xab; 32]);
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(parse(bad).unwrap_err().contains("not 64 hex digits"), "{bad:?}");
        }
    }
}
