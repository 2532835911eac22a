//! Shares of a bounded resource per token: how much of it each token holds now, against a cap
//! per token. A token's rate limit bounds how fast its calls come, not how much they hold;
//! these bound that (streams, request bytes in flight, unfinished uploads on disk). And the
//! fair level records are cut down to by tenant and namespace when a bound is passed
//! ([`fair_excess`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

pub struct PerToken {
    cap: u64,
    held: Mutex<HashMap<String, u64>>,
}

impl PerToken {
    pub fn new(cap: u64) -> Self {
        Self { cap, held: Mutex::default() }
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Takes `amount` more for `token`, or, when that would pass the cap, takes nothing and
    /// says how much the token holds.
    pub fn take(&self, token: &str, amount: u64) -> Result<(), u64> {
        let mut held = self.lock();
        let used = held.entry(token.to_owned()).or_default();
        if used.saturating_add(amount) > self.cap {
            let used = *used;
            if used == 0 {
                held.remove(token);
            }
            return Err(used);
        }
        *used += amount;
        Ok(())
    }

    /// [`PerToken::take`] from a server-wide pool of `pool` that every token draws on. With
    /// per-token caps alone a few tokens held the whole pool, and every other tenant was
    /// refused until they let go. So a token growing what it holds must leave room for one
    /// token more, `pool / (holders + 2)`, which only a token holding none may take from:
    /// below that, tokens take up to their cap as before.
    pub fn take_from_pool(&self, token: &str, amount: u64, pool: u64) -> Result<(), u64> {
        let mut held = self.lock();
        let used = held.get(token).copied().unwrap_or(0);
        let holders = held.len() as u64 + u64::from(used == 0);
        let free = pool.saturating_sub(held.values().sum());
        let room_for_one_more = pool / (holders + 2);
        if used.saturating_add(amount) > self.cap
            || (used > 0 && free.saturating_sub(amount) < room_for_one_more)
        {
            return Err(used);
        }
        *held.entry(token.to_owned()).or_default() += amount;
        Ok(())
    }

    pub fn give_back(&self, token: &str, amount: u64) {
        let mut held = self.lock();
        if let Some(used) = held.get_mut(token) {
            *used = used.saturating_sub(amount);
            if *used == 0 {
                held.remove(token);
            }
        }
    }

    /// Whether no token holds anything.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The highest level such that holders of `bytes`, each cut down to it, hold `target` or less
/// in all: what is above it goes, and a holder below it keeps everything. Records past a
/// bound go this way by namespace, so a namespace's flood costs that namespace first.
pub fn fair_level(bytes: impl Iterator<Item = u64>, target: u64) -> u64 {
    let mut bytes: Vec<u64> = bytes.collect();
    bytes.sort_unstable();
    let mut below = 0u64;
    for (at, &held) in bytes.iter().enumerate() {
        let above = (bytes.len() - at) as u64;
        if below.saturating_add(held.saturating_mul(above)) > target {
            return target.saturating_sub(below) / above;
        }
        below += held;
    }
    bytes.last().copied().unwrap_or(0)
}

/// What each holder above its fair share must give up for all of them to hold `target` or
/// less: a namespace's excess over its level, the level set among tenants first (a namespace's
/// first path segment: `pr-1` for `pr-1/a` and `pr-1/b`), then among the namespaces of each
/// tenant over its share. A token may write only the namespaces of its patterns, and a pull
/// request's pattern (`pr-1234/*`) names as many namespaces as it likes: by namespace alone it
/// could spread a flood over thousands and cut `main` down to a thousandth.
pub fn fair_excess<'a>(held: impl Iterator<Item = (&'a str, u64)>, target: u64) -> HashMap<String, u64> {
    let mut tenants: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
    for (namespace, bytes) in held {
        tenants.entry(tenant_of(namespace)).or_default().push((namespace, bytes));
    }
    let total = |namespaces: &[(&str, u64)]| namespaces.iter().map(|(_, bytes)| bytes).sum::<u64>();
    let tenant_level = fair_level(tenants.values().map(|namespaces| total(namespaces)), target);
    let mut excess = HashMap::new();
    for namespaces in tenants.values().filter(|namespaces| total(namespaces) > tenant_level) {
        let level = fair_level(namespaces.iter().map(|(_, bytes)| *bytes), tenant_level);
        for (namespace, bytes) in namespaces.iter().filter(|(_, bytes)| *bytes > level) {
            excess.insert((*namespace).to_owned(), bytes - level);
        }
    }
    excess
}

/// The tenant a namespace is part of: its first path segment.
pub fn tenant_of(namespace: &str) -> &str {
    namespace.split_once('/').map_or(namespace, |(tenant, _)| tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fair_level_cuts_only_the_holders_above_it() {
        assert_eq!(fair_level([100, 1200].into_iter(), 1170), 1070);
        assert_eq!(fair_level([300, 300, 300].into_iter(), 600), 200);
        assert_eq!(fair_level([10, 20].into_iter(), 100), 20, "nothing to cut");
        assert_eq!(fair_level(std::iter::empty(), 100), 0);
    }

    #[test]
    fn a_tenant_spreading_over_namespaces_is_cut_as_one() {
        let mut held = vec![("main", 800)];
        let flood: Vec<String> = (0..500).map(|i| format!("pr-1/ns{i}")).collect();
        held.extend(flood.iter().map(|namespace| (namespace.as_str(), 2)));
        let excess = fair_excess(held.iter().map(|(namespace, bytes)| (*namespace, *bytes)), 1000);
        // main keeps half; the flood's 1000 come down to 500 over its 500 namespaces.
        assert_eq!(excess.get("main"), Some(&300));
        assert_eq!(excess.get("pr-1/ns0"), Some(&1));
        let cut: u64 = excess.values().sum();
        assert_eq!(cut, 800, "1800 held, 1000 kept");
        // Within a tenant, its namespaces share as namespaces do.
        let excess = fair_excess([("main/a", 100), ("main/b", 1200)].into_iter(), 1170);
        assert_eq!((excess.get("main/a"), excess.get("main/b")), (None, Some(&130)));
        assert!(fair_excess([("main", 10), ("pr-1/a", 20)].into_iter(), 100).is_empty(), "nothing to cut");
    }

    #[test]
    fn each_token_holds_up_to_its_cap_and_gets_it_back() {
        let shares = PerToken::new(100);
        shares.take("ci", 60).unwrap();
        assert_eq!(shares.take("ci", 41), Err(60));
        shares.take("dev", 100).expect("another token has its own");
        shares.give_back("ci", 60);
        shares.take("ci", 100).expect("it came back");
        shares.give_back("ci", 100);
        shares.give_back("dev", 100);
        assert!(shares.is_empty());
    }

    #[test]
    fn tokens_drawing_on_a_pool_leave_room_for_one_more() {
        let pool = PerToken::new(128);
        let take_all =
            |token: &str| (0..256).take_while(|_| pool.take_from_pool(token, 1, 256).is_ok()).count();
        // Alone, a token takes its cap; it would leave a third of the pool to whoever comes.
        assert_eq!(take_all("pr-1"), 128);
        // A second grows until a quarter of the pool is left.
        assert_eq!(take_all("pr-2"), 64);
        // A token at its cap, or growing into the room left, is refused saying what it holds.
        assert_eq!(pool.take_from_pool("pr-1", 1, 256), Err(128));
        assert_eq!(pool.take_from_pool("pr-2", 1, 256), Err(64));
        // Below the room left, a token takes up to its cap however many others hold some.
        let busy = PerToken::new(128);
        for n in 0..6 {
            busy.take_from_pool(&format!("lease:{n}"), 2, 256).unwrap();
        }
        assert_eq!((0..256).take_while(|_| busy.take_from_pool("fleet", 1, 256).is_ok()).count(), 128);
        // However many come, the pool is never all held: one that holds nothing finds room.
        let mut held = 128 + 64;
        for n in 3..12 {
            let took = take_all(&format!("pr-{n}"));
            assert!(took >= 1);
            held += took;
        }
        assert!(held < 256, "{held} of 256 held");
    }
}
