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
    /// Events the ring buffer had no room for.
    pub lost: u64,
    /// Walks taken because the events could not be trusted.
    pub resyncs: u64,
    /// Events the state said could not have happened.
    pub contradictions: u64,
    /// Walks taken to check the state.
    pub reconciles: u64,
    /// The last reconcile's difference between the state and a fresh walk.
    pub reconcile_mismatch: Option<Mismatch>,
}

/// How far the state was from a fresh walk, in live chunks and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mismatch {
    pub chunks: u64,
    pub bytes: u64,
}
