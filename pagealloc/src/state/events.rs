//! What live mode's events did, counted since it started.

/// What the events did since live mode started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Allocation calls that returned memory (malloc, calloc, realloc, the memalign family).
    pub allocs: u64,
    /// Frees of a chunk (free, and realloc to 0 bytes).
    pub frees: u64,
    pub allocated_bytes: u64,
    pub freed_bytes: u64,
    /// Events lost: the ring buffer had no room for them, or they could not be read in their
    /// place (stranded on a CPU taken offline, or late).
    pub lost: u64,
    /// Walks taken because the events could not be trusted.
    pub resyncs: u64,
    /// Events the state said could not have happened.
    pub contradictions: u64,
    /// Walks taken to check the state.
    pub reconciles: u64,
    /// The last reconcile's difference between the state and a fresh walk.
    pub reconcile_mismatch: Option<Mismatch>,
    /// Allocations by chunk size: `[i]` counts chunks of at most [`SIZE_BOUNDS`]`[i]` bytes
    /// (and more than the bound before); the last, the chunks above every bound.
    pub allocation_sizes: [u64; SIZE_BOUNDS.len() + 1],
}

/// The upper bounds of the allocation size classes, in bytes: malloc's smallest chunk, then by
/// fours up to the default mmap threshold's range and beyond.
pub const SIZE_BOUNDS: [u64; 10] = [
    32,
    128,
    512,
    2 << 10,
    8 << 10,
    32 << 10,
    128 << 10,
    512 << 10,
    2 << 20,
    32 << 20,
];

impl Counts {
    /// Counts one allocation of a chunk of `bytes`.
    pub fn allocated(&mut self, bytes: u64) {
        self.allocs += 1;
        self.allocated_bytes += bytes;
        let class = SIZE_BOUNDS.partition_point(|&bound| bound < bytes);
        self.allocation_sizes[class] += 1;
    }

    /// These counts followed by `later`'s (counted from zero since): the sums, and the later
    /// reconcile's mismatch if it had one.
    pub fn then(&self, later: &Counts) -> Counts {
        let mut sizes = self.allocation_sizes;
        for (sum, more) in sizes.iter_mut().zip(later.allocation_sizes) {
            *sum += more;
        }
        Counts {
            allocs: self.allocs + later.allocs,
            frees: self.frees + later.frees,
            allocated_bytes: self.allocated_bytes + later.allocated_bytes,
            freed_bytes: self.freed_bytes + later.freed_bytes,
            lost: self.lost + later.lost,
            resyncs: self.resyncs + later.resyncs,
            contradictions: self.contradictions + later.contradictions,
            reconciles: self.reconciles + later.reconciles,
            reconcile_mismatch: later.reconcile_mismatch.or(self.reconcile_mismatch),
            allocation_sizes: sizes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Counts, SIZE_BOUNDS};

    #[test]
    fn allocations_fall_in_the_first_class_that_holds_them() {
        let mut counts = Counts::default();
        for bytes in [32, 33, 128, 129, 32 << 20, (32 << 20) + 16] {
            counts.allocated(bytes);
        }
        let mut expected = [0u64; SIZE_BOUNDS.len() + 1];
        expected[0] = 1;
        expected[1] = 2;
        expected[2] = 1;
        expected[SIZE_BOUNDS.len() - 1] = 1;
        expected[SIZE_BOUNDS.len()] = 1;
        assert_eq!(counts.allocation_sizes, expected);
        assert_eq!(counts.allocs, 6);
        let twice = counts.then(&counts);
        assert_eq!(twice.allocs, 12);
        assert_eq!(twice.allocation_sizes[1], 4);
    }
}

/// How far the state was from a fresh walk, in live chunks and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mismatch {
    pub chunks: u64,
    pub bytes: u64,
}
