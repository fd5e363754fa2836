//! Sorted sets of disjoint half-open `u64` ranges. Ingest plans in runs of
//! blocks, never in per-block sets, so a 1 TiB disk with a few changes is a
//! few runs, not millions of entries.

use std::ops::Range;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    runs: Vec<Range<u64>>,
}

impl RangeSet {
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    pub fn single(r: Range<u64>) -> RangeSet {
        RangeSet::from_ranges([r])
    }

    /// Normalises any ranges: drops empty ones, sorts, merges overlapping
    /// and touching ones.
    pub fn from_ranges(ranges: impl IntoIterator<Item = Range<u64>>) -> RangeSet {
        let mut v: Vec<Range<u64>> = ranges.into_iter().filter(|r| r.start < r.end).collect();
        v.sort_by_key(|r| r.start);
        let mut runs: Vec<Range<u64>> = Vec::with_capacity(v.len());
        for r in v {
            match runs.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => runs.push(r),
            }
        }
        RangeSet { runs }
    }

    pub fn runs(&self) -> &[Range<u64>] {
        &self.runs
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Total length covered.
    pub fn len(&self) -> u64 {
        self.runs.iter().map(|r| r.end - r.start).sum()
    }

    /// The `n`th covered value (from 0), if there are more than `n`.
    pub fn nth(&self, mut n: u64) -> Option<u64> {
        for r in &self.runs {
            let len = r.end - r.start;
            if n < len {
                return Some(r.start + n);
            }
            n -= len;
        }
        None
    }

    pub fn union(&self, other: &RangeSet) -> RangeSet {
        RangeSet::from_ranges(self.runs.iter().chain(other.runs.iter()).cloned())
    }

    pub fn intersect(&self, other: &RangeSet) -> RangeSet {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.runs.len() && j < other.runs.len() {
            let (a, b) = (&self.runs[i], &other.runs[j]);
            let start = a.start.max(b.start);
            let end = a.end.min(b.end);
            if start < end {
                out.push(start..end);
            }
            if a.end < b.end { i += 1 } else { j += 1 }
        }
        RangeSet { runs: out }
    }

    pub fn subtract(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        let mut j = 0;
        for a in &self.runs {
            let mut start = a.start;
            while j < other.runs.len() && other.runs[j].end <= start {
                j += 1;
            }
            let mut k = j;
            while k < other.runs.len() && other.runs[k].start < a.end {
                let b = &other.runs[k];
                if b.start > start {
                    out.push(start..b.start);
                }
                start = start.max(b.end);
                k += 1;
            }
            if start < a.end {
                out.push(start..a.end);
            }
        }
        RangeSet { runs: out }
    }

    /// Byte ranges rounded out to the blocks they touch, as block numbers.
    pub fn to_blocks(&self, block_size: u64) -> RangeSet {
        RangeSet::from_ranges(
            self.runs.iter().map(|r| r.start / block_size..r.end.div_ceil(block_size)),
        )
    }

    /// Block numbers as the byte ranges of those blocks.
    pub fn to_bytes(&self, block_size: u64) -> RangeSet {
        RangeSet::from_ranges(self.runs.iter().map(|r| r.start * block_size..r.end * block_size))
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // expected run lists read best as literals
mod tests {
    use super::*;

    fn rs(v: &[(u64, u64)]) -> RangeSet {
        RangeSet::from_ranges(v.iter().map(|&(a, b)| a..b))
    }

    /// Reference model: the set of covered points below `n`.
    fn points(s: &RangeSet, n: u64) -> Vec<bool> {
        (0..n).map(|x| s.runs().iter().any(|r| r.contains(&x))).collect()
    }

    #[test]
    fn normalises() {
        assert_eq!(rs(&[(5, 7), (0, 2), (2, 3), (6, 9), (4, 4)]).runs(), &[0..3, 5..9]);
        assert_eq!(rs(&[(5, 7), (0, 2), (2, 3), (6, 9)]).len(), 7);
        assert!(rs(&[(3, 3)]).is_empty());
    }

    #[test]
    fn set_algebra_matches_a_pointwise_model() {
        // Deterministic pseudo-random sets over a small universe.
        let mut x: u64 = 12345;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..500 {
            let mut mk = || {
                let n = next() % 6;
                RangeSet::from_ranges((0..n).map(|_| {
                    let a = next() % 40;
                    a..a + next() % 10
                }))
            };
            let (a, b) = (mk(), mk());
            let (pa, pb) = (points(&a, 64), points(&b, 64));
            let u = points(&a.union(&b), 64);
            let i = points(&a.intersect(&b), 64);
            let d = points(&a.subtract(&b), 64);
            for k in 0..64 {
                assert_eq!(u[k], pa[k] || pb[k], "union {a:?} {b:?} at {k}");
                assert_eq!(i[k], pa[k] && pb[k], "intersect {a:?} {b:?} at {k}");
                assert_eq!(d[k], pa[k] && !pb[k], "subtract {a:?} {b:?} at {k}");
            }
            // Results stay normalised.
            for s in [a.union(&b), a.intersect(&b), a.subtract(&b)] {
                assert_eq!(RangeSet::from_ranges(s.runs().iter().cloned()), s);
            }
        }
    }

    #[test]
    fn rounds_bytes_out_to_blocks() {
        let b = rs(&[(0, 1), (4095, 4097), (10000, 10001)]).to_blocks(4096);
        assert_eq!(b.runs(), &[0..3]);
        let b = rs(&[(8192, 12288)]).to_blocks(4096);
        assert_eq!(b.runs(), &[2..3]);
        let b = rs(&[(65536 * 3 + 1, 65536 * 3 + 2)]).to_blocks(65536);
        assert_eq!(b.runs(), &[3..4]);
    }

    #[test]
    fn blocks_to_bytes_and_back() {
        let blocks = rs(&[(0, 2), (5, 6)]);
        let bytes = blocks.to_bytes(4096);
        assert_eq!(bytes.runs(), &[0..8192, 20480..24576]);
        assert_eq!(bytes.to_blocks(4096), blocks);
    }

    #[test]
    fn nth_counts_covered_values_in_order() {
        let s = rs(&[(0, 3), (10, 14), (20, 21)]);
        let all: Vec<u64> = s.runs().iter().flat_map(|r| r.clone()).collect();
        assert_eq!(all, [0, 1, 2, 10, 11, 12, 13, 20]);
        for (n, v) in all.iter().enumerate() {
            assert_eq!(s.nth(n as u64), Some(*v), "value {n}");
        }
        assert_eq!(s.nth(8), None);
        assert_eq!(RangeSet::new().nth(0), None);
    }
}
