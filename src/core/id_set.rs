//! A set of `u32` ids stored as disjoint ranges.

use std::collections::BTreeMap;

/// A set of ids kept as ranges, so the ids 1..=1_000_000 cost one map entry. Snapshot ids are
/// handed out in order, so a branch can remember every snapshot it finished in constant memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IdSet {
    /// start -> end (inclusive) of each maximal run of ids in the set.
    ranges: BTreeMap<u32, u32>,
}

impl IdSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: u32) -> bool {
        self.ranges
            .range(..=id)
            .next_back()
            .is_some_and(|(_, &end)| id <= end)
    }

    /// Adds `id`; returns false when it was already there.
    pub fn insert(&mut self, id: u32) -> bool {
        if self.contains(id) {
            return false;
        }
        let joins_left = id
            .checked_sub(1)
            .and_then(|prev| self.ranges.range(..=prev).next_back())
            .filter(|&(_, &end)| end.checked_add(1) == Some(id))
            .map(|(&start, _)| start);
        let right_end = id.checked_add(1).and_then(|next| self.ranges.remove(&next));
        let start = joins_left.unwrap_or(id);
        let end = right_end.unwrap_or(id);
        self.ranges.insert(start, end);
        true
    }

    /// The set's runs, `(first, last)` inclusive, in order (what a store persists).
    pub fn runs_iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.ranges.iter().map(|(&start, &end)| (start, end))
    }

    /// A set made of the runs `(first, last)` (as [`Self::runs_iter`] gave them).
    pub fn from_runs(runs: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut set = Self::new();
        for (start, end) in runs {
            if start <= end {
                set.ranges.insert(start, end);
            }
        }
        set
    }

    /// How many disjoint runs the set holds: its memory footprint.
    pub fn runs(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_collapse_into_one_run() {
        let mut set = IdSet::new();
        for id in 1..=10_000 {
            assert!(set.insert(id));
        }
        assert_eq!(set.runs(), 1);
        assert!(set.contains(1) && set.contains(10_000));
        assert!(!set.contains(0) && !set.contains(10_001));
        assert!(!set.insert(5000));
    }

    #[test]
    fn out_of_order_ids_merge_runs() {
        let mut set = IdSet::new();
        for id in [5, 1, 3, 2, 4, u32::MAX, 0] {
            assert!(set.insert(id));
        }
        assert_eq!(set.runs(), 2);
        for id in 0..=5 {
            assert!(set.contains(id));
        }
        assert!(set.contains(u32::MAX));
        assert!(!set.contains(6));
    }
}
