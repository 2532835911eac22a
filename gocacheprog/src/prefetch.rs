//! Prefetch of the `stdout` subkey. For every compile hit the go command makes two lookups in a
//! row: the action, then `Subkey(action, "stdout")` (`showStdout` in cmd/go's buildid.go). With
//! only GOMAXPROCS builders waiting on lookups, each remote round trip is on the build's
//! critical path; starting the second lookup together with the first halves them.

use std::collections::HashMap;
use std::sync::Mutex;

use proto::ActionId;
use sha2::{Digest as _, Sha256};

/// Bound on remembered prefetches; past it the memory is cleared (prefetch is only a hint).
const MAX_REMEMBERED: usize = 1 << 16;

/// cmd/go's `cache.Subkey`: SHA-256("subkey:" || parent || desc).
pub fn subkey(parent: &ActionId, desc: &str) -> ActionId {
    let mut hash = Sha256::new();
    hash.update(b"subkey:");
    hash.update(parent.0);
    hash.update(desc.as_bytes());
    ActionId(hash.finalize().into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Found,
    Missing,
    /// Its answer was used; kept so the subkey is not prefetched itself.
    Used,
}

/// The subkeys prefetched this session and what became of them.
#[derive(Default)]
pub struct Prefetches {
    states: Mutex<HashMap<ActionId, State>>,
}

impl Prefetches {
    /// The subkey to prefetch for a remote lookup of `action_id` (`stdout`, as the cache keys
    /// it), if any: not for a subkey itself (nobody asks for a subkey's subkey) and not twice.
    pub fn start(&self, action_id: &ActionId, stdout: ActionId) -> Option<ActionId> {
        let mut states = self.states.lock().unwrap_or_else(|poison| poison.into_inner());
        if states.contains_key(action_id) {
            return None;
        }
        if states.len() >= MAX_REMEMBERED {
            states.clear();
        }
        states.entry(stdout).or_insert(State::Pending);
        Some(stdout)
    }

    pub fn finished(&self, action_id: &ActionId, found: bool) {
        let mut states = self.states.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(state @ State::Pending) = states.get_mut(action_id) {
            *state = if found { State::Found } else { State::Missing };
        }
    }

    /// What the prefetch of `action_id` found, if one ran; asking consumes the answer.
    pub fn take(&self, action_id: &ActionId) -> Option<State> {
        let mut states = self.states.lock().unwrap_or_else(|poison| poison.into_inner());
        let state = states.get_mut(action_id)?;
        let seen = *state;
        if matches!(seen, State::Found | State::Missing) {
            *state = State::Used;
        }
        Some(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subkey_matches_cmd_go() {
        // sha256sum of "subkey:", 32 zero bytes, "stdout": cache.Subkey(ActionID{}, "stdout").
        let expected = "09faffe22b4d61ac89ebe94e1e8f3e2d2c67ae653cc00b87d9a1fee1584f20f4";
        assert_eq!(subkey(&ActionId([0; 32]), "stdout").to_string(), expected);
    }

    #[test]
    fn subkeys_are_not_prefetched_again() {
        let prefetches = Prefetches::default();
        let action = ActionId([1; 32]);
        let stdout = prefetches.start(&action, subkey(&action, "stdout")).unwrap();
        assert_eq!(prefetches.start(&stdout, subkey(&stdout, "stdout")), None);
        assert_eq!(prefetches.take(&stdout), Some(State::Pending));
        prefetches.finished(&stdout, false);
        assert_eq!(prefetches.take(&stdout), Some(State::Missing));
        assert_eq!(prefetches.take(&stdout), Some(State::Used));
        assert_eq!(prefetches.take(&ActionId([9; 32])), None);
    }
}
