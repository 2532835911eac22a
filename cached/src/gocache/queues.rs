//! The books of the Go entries' order rows, by namespace: each namespace's rows are numbered in
//! the order they were put, and those counted are its front (the first not yet taken) to its
//! next number. Past the bound, [`Queues::cuts`] says how many of whose oldest rows go: the
//! namespaces holding the most, cut down to their fair share by tenant, then namespace
//! ([`fair_excess`]).

use std::collections::{BTreeSet, HashMap};

use crate::shares::fair_excess;

#[derive(Debug, Default)]
pub(super) struct Queues {
    by_namespace: HashMap<String, Queue>,
    /// The rows counted, all namespaces together.
    counted: u64,
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    /// The number the next put gets.
    next: u64,
    /// Every row before it has been taken.
    front: u64,
    /// Puts given a number whose write has not landed: forgetting stops before the first, so
    /// no row lands behind the front.
    in_flight: BTreeSet<u64>,
}

impl Queue {
    fn counted(&self) -> u64 {
        self.next - self.front
    }

    fn horizon(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

/// The oldest rows of one namespace to take: up to `want` counted, from `front`, none at or
/// past `horizon`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Cut {
    pub(super) namespace: String,
    pub(super) front: u64,
    pub(super) horizon: u64,
    pub(super) want: u64,
}

impl Queues {
    /// The books of rows found on disk: a namespace's first and last row.
    pub(super) fn found(&mut self, namespace: String, first: u64, last: u64) {
        let queue = Queue { next: last + 1, front: first, in_flight: BTreeSet::new() };
        self.counted += queue.counted();
        self.by_namespace.insert(namespace, queue);
    }

    /// Numbers a row of `namespace`; with `landing`, the row counts as in flight until
    /// [`Queues::landed`].
    pub(super) fn number(&mut self, namespace: &str, landing: bool) -> u64 {
        let queue = match self.by_namespace.get_mut(namespace) {
            Some(queue) => queue,
            None => self.by_namespace.entry(namespace.to_owned()).or_default(),
        };
        let number = queue.next;
        queue.next += 1;
        if landing {
            queue.in_flight.insert(number);
        }
        self.counted += 1;
        number
    }

    pub(super) fn landed(&mut self, namespace: &str, number: u64) {
        if let Some(queue) = self.by_namespace.get_mut(namespace) {
            queue.in_flight.remove(&number);
        }
        self.drop_if_empty(namespace);
    }

    pub(super) fn counted(&self) -> u64 {
        self.counted
    }

    /// Moves `namespace`'s front to `to` (never back); how many rows stopped counting.
    pub(super) fn advance(&mut self, namespace: &str, to: u64) -> u64 {
        let Some(queue) = self.by_namespace.get_mut(namespace) else { return 0 };
        let to = to.min(queue.horizon());
        let advanced = to.saturating_sub(queue.front);
        queue.front += advanced;
        self.counted -= advanced;
        self.drop_if_empty(namespace);
        advanced
    }

    /// Where forgetting all of `namespace` that has landed would move its front.
    pub(super) fn horizon(&self, namespace: &str) -> Option<u64> {
        self.by_namespace.get(namespace).map(Queue::horizon)
    }

    /// What to take for the count to come down by up to `budget` toward `max`: the oldest rows
    /// of the namespaces above their fair share, largest excess first.
    pub(super) fn cuts(&self, max: u64, budget: u64) -> Vec<Cut> {
        let over = self.counted.saturating_sub(max).min(budget);
        if over == 0 {
            return Vec::new();
        }
        let counts = self.by_namespace.iter().map(|(namespace, queue)| (namespace.as_str(), queue.counted()));
        let excess = fair_excess(counts, self.counted - over);
        let mut cuts: Vec<Cut> = excess
            .into_iter()
            .filter_map(|(namespace, want)| {
                let queue = self.by_namespace.get(&namespace)?;
                Some(Cut { front: queue.front, horizon: queue.horizon(), want, namespace })
            })
            .collect();
        cuts.sort_unstable_by(|a, b| b.want.cmp(&a.want).then_with(|| a.namespace.cmp(&b.namespace)));
        // The level is rounded down: what it cuts may pass `over` by a row a namespace.
        let mut left = over;
        for cut in &mut cuts {
            cut.want = cut.want.min(left);
            left -= cut.want;
        }
        cuts.retain(|cut| cut.want > 0);
        cuts
    }

    fn drop_if_empty(&mut self, namespace: &str) {
        if self
            .by_namespace
            .get(namespace)
            .is_some_and(|queue| queue.counted() == 0 && queue.in_flight.is_empty())
        {
            self.by_namespace.remove(namespace);
        }
    }

    #[cfg(test)]
    pub(super) fn namespace_counted(&self, namespace: &str) -> u64 {
        self.by_namespace.get(namespace).map_or(0, Queue::counted)
    }

    #[cfg(test)]
    pub(super) fn hold_in_flight(&mut self, namespace: &str, number: u64) {
        self.by_namespace.get_mut(namespace).expect("a namespace with rows").in_flight.insert(number);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(counts: &[(&str, u64)]) -> Queues {
        let mut queues = Queues::default();
        for (namespace, count) in counts {
            for _ in 0..*count {
                queues.number(namespace, false);
            }
        }
        queues
    }

    #[test]
    fn the_namespaces_holding_the_most_are_cut_to_one_level() {
        let queues = with(&[("main", 30), ("pr-1", 500), ("pr-2", 90)]);
        let cuts = queues.cuts(100, u64::MAX);
        let wants: Vec<(&str, u64)> = cuts.iter().map(|cut| (cut.namespace.as_str(), cut.want)).collect();
        assert_eq!(wants, [("pr-1", 465), ("pr-2", 55)], "main, below the level, keeps all");
        assert_eq!(cuts.iter().map(|cut| cut.want).sum::<u64>(), 520);
    }

    #[test]
    fn a_budget_takes_the_largest_excess_first() {
        let queues = with(&[("a", 10), ("b", 50)]);
        let cuts = queues.cuts(20, 5);
        assert_eq!(cuts, [Cut { namespace: "b".into(), front: 0, horizon: 50, want: 5 }]);
        assert!(queues.cuts(60, u64::MAX).is_empty(), "within the bound");
    }

    #[test]
    fn fronts_stop_at_a_put_still_landing_and_empty_books_go() {
        let mut queues = Queues::default();
        for landing in [false, true, false] {
            queues.number("ns", landing);
        }
        assert_eq!(queues.advance("ns", 3), 1, "the put numbered 1 is still landing");
        assert_eq!(queues.counted(), 2);
        queues.landed("ns", 1);
        assert_eq!(queues.advance("ns", 3), 2);
        assert_eq!(queues.counted(), 0);
        assert!(queues.by_namespace.is_empty());
    }
}
