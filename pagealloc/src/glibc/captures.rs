//! The chunks a walk keeps because they can be on a free list, with their first link: the heap
//! itself is not kept after the walk (see [`super::window`]), so [`super::lists`] follows the
//! lists through these.
/// A chunk that can be on a free list, with its first link (fastbin links revealed).
#[derive(Clone, Copy, Debug)]
pub(super) struct Capture {
    pub chunk: u64,
    pub size: u64,
    pub link: u64,
}

/// The captures of one walk, in address order.
#[derive(Default)]
pub(super) struct Captures {
    /// Chunks in use of fastbin size whose link could be one.
    pub fast: Vec<Capture>,
    /// Chunks free in a bin.
    pub bin: Vec<Capture>,
}

impl Captures {
    /// Drops the captures of chunks in `start..end`.
    pub fn forget(&mut self, start: u64, end: u64) {
        for captures in [&mut self.fast, &mut self.bin] {
            let from = captures.partition_point(|c| c.chunk < start);
            let to = captures.partition_point(|c| c.chunk < end);
            captures.drain(from..to);
        }
    }
}

/// Runs of captures (of the parts of the heaps), each in address order, read as one sequence
/// in address order without copying millions of them into one vector.
pub(super) struct Sorted {
    runs: Vec<Vec<Capture>>,
    /// The index of each run's first capture in the whole sequence.
    starts: Vec<usize>,
    pub len: usize,
}

impl Sorted {
    /// The runs must not overlap (they come from disjoint parts of the heaps).
    pub fn new(mut runs: Vec<Vec<Capture>>) -> Sorted {
        runs.retain(|run| !run.is_empty());
        runs.sort_unstable_by_key(|run| run[0].chunk);
        let mut starts = Vec::with_capacity(runs.len());
        let mut len = 0;
        for run in &runs {
            starts.push(len);
            len += run.len();
        }
        Sorted { runs, starts, len }
    }

    pub fn get(&self, index: usize) -> &Capture {
        let run = self.starts.partition_point(|&s| s <= index) - 1;
        &self.runs[run][index - self.starts[run]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Capture> {
        self.runs.iter().flatten()
    }

    /// The captures `range` of the sequence.
    pub fn range(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = &Capture> {
        let run = self
            .starts
            .partition_point(|&s| s <= range.start)
            .saturating_sub(1);
        let skip = range.start - self.starts.get(run).copied().unwrap_or(0);
        self.runs[run.min(self.runs.len())..]
            .iter()
            .flatten()
            .skip(skip)
            .take(range.len())
    }

    /// The number of captures before the first for which `before` is false (they are sorted).
    pub fn partition_point(&self, before: impl Fn(&Capture) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if before(self.get(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}
