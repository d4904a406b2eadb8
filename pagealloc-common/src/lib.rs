//! Records exchanged between the eBPF programs and user space. Both sides compile this crate, so a
//! layout change cannot make them disagree.
#![no_std]

/// Name of the per-CPU array that counts successful `malloc` calls.
pub const MALLOC_STATS_MAP: &str = "MALLOC_STATS";
/// Name of the uretprobe program on `malloc`.
pub const MALLOC_RETURN_PROGRAM: &str = "malloc_return";

/// Per-CPU tally of `malloc` returns. User space sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Calls that returned a non-null pointer.
    pub calls: u64,
    /// Sum of the chunk sizes (as glibc accounts them: the size word at `ptr - 8`, flags masked).
    pub chunk_bytes: u64,
    /// Calls that returned NULL.
    pub failures: u64,
}

impl CallStats {
    pub fn add(&mut self, other: &CallStats) {
        self.calls += other.calls;
        self.chunk_bytes += other.chunk_bytes;
        self.failures += other.failures;
    }
}

/// glibc's chunk-size flags, kept in the low three bits of the size word.
pub const CHUNK_FLAG_BITS: u64 = PREV_INUSE | IS_MMAPPED | NON_MAIN_ARENA;
/// The chunk before this one is in use (or cached in tcache or a fastbin).
pub const PREV_INUSE: u64 = 1;
/// The chunk was mmapped on its own.
pub const IS_MMAPPED: u64 = 2;
/// The chunk belongs to a thread arena.
pub const NON_MAIN_ARENA: u64 = 4;

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` integers, no padding, every bit pattern valid.
unsafe impl aya::Pod for CallStats {}
