//! Sets of sequence numbers kept as runs of consecutive numbers: a lane that matches
//! every event, however far behind, holds one run.

use std::collections::BTreeMap;
use std::ops::Bound;

/// Sequence numbers as runs `[start, end)`, by start; runs never touch or overlap.
#[derive(Debug, Default, Clone)]
pub struct Runs {
    pub runs: BTreeMap<u64, u64>,
    pub len: u64,
}

impl Runs {
    pub fn run_at(&self, x: u64) -> Option<(u64, u64)> {
        self.runs
            .range(..=x)
            .next_back()
            .map(|(&s, &e)| (s, e))
            .filter(|&(_, e)| x < e)
    }

    pub fn contains(&self, x: u64) -> bool {
        self.run_at(x).is_some()
    }

    /// Adds `x`; `false` when it was there already.
    pub fn insert(&mut self, x: u64) -> bool {
        let before = self.runs.range(..=x).next_back().map(|(&s, &e)| (s, e));
        if before.is_some_and(|(_, e)| x < e) {
            return false;
        }
        let after = x
            .checked_add(1)
            .and_then(|n| self.runs.get(&n).map(|&e| (n, e)));
        match (before.filter(|&(_, e)| e == x), after) {
            (Some((s, _)), Some((n, e))) => {
                self.runs.remove(&n);
                self.runs.insert(s, e);
            }
            (Some((s, _)), None) => {
                self.runs.insert(s, x + 1);
            }
            (None, Some((n, e))) => {
                self.runs.remove(&n);
                self.runs.insert(x, e);
            }
            (None, None) => {
                self.runs.insert(x, x + 1);
            }
        }
        self.len += 1;
        true
    }

    /// Adds the run `[start, end)` (a snapshot's runs do not overlap; should damage
    /// make them, the run goes in one number at a time).
    pub fn insert_run(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if self.run_at(start).is_some() || self.runs.range(start..end).next().is_some() {
            for x in start..end {
                self.insert(x);
            }
            return;
        }
        self.runs.insert(start, end);
        self.len += end - start;
    }

    /// Removes `x`; `false` when it was not there.
    pub fn remove(&mut self, x: u64) -> bool {
        let Some((s, e)) = self.run_at(x) else {
            return false;
        };
        if s == x {
            self.runs.remove(&s);
        } else {
            self.runs.insert(s, x);
        }
        if x + 1 < e {
            self.runs.insert(x + 1, e);
        }
        self.len -= 1;
        true
    }

    /// The numbers from `from` on, in order.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = u64> + '_ {
        let first = self.run_at(from).map(|(_, e)| (from, e));
        first
            .into_iter()
            .chain(
                self.runs
                    .range((Bound::Excluded(from), Bound::Unbounded))
                    .map(|(&s, &e)| (s, e)),
            )
            .flat_map(|(s, e)| s..e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_split_and_count() {
        let mut r = Runs::default();
        for x in [5, 7, 6, 1, 2, 9] {
            assert!(r.insert(x));
        }
        assert!(!r.insert(6));
        assert_eq!(r.len, 6);
        assert_eq!(r.runs.len(), 3, "{:?}", r.runs); // 1-2, 5-7, 9
        assert_eq!(r.iter_from(0).collect::<Vec<_>>(), [1, 2, 5, 6, 7, 9]);
        assert_eq!(r.iter_from(6).collect::<Vec<_>>(), [6, 7, 9]);
        assert_eq!(r.iter_from(8).collect::<Vec<_>>(), [9]);
        assert!(r.remove(6));
        assert!(!r.remove(6));
        assert!(!r.remove(8));
        assert_eq!(r.iter_from(0).collect::<Vec<_>>(), [1, 2, 5, 7, 9]);
        assert!(r.remove(1) && r.remove(9) && r.remove(7));
        assert_eq!(r.iter_from(0).collect::<Vec<_>>(), [2, 5]);
        assert_eq!(r.len, 2);
        assert!(r.insert(3) && r.insert(4));
        assert_eq!(r.runs.len(), 1);
        r.insert_run(10, 20);
        assert_eq!(r.len, 14);
        assert_eq!(r.iter_from(18).collect::<Vec<_>>(), [18, 19]);
    }

    #[test]
    fn a_million_routed_entries_of_one_lane_are_one_run() {
        let mut r = Runs::default();
        for x in 1..=1_000_000 {
            r.insert(x);
        }
        assert_eq!((r.len, r.runs.len()), (1_000_000, 1));
    }
}
