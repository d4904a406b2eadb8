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
pub const CHUNK_FLAG_BITS: u64 = 0b111;

#[cfg(feature = "user")]
// SAFETY: plain `repr(C)` integers, no padding, every bit pattern valid.
unsafe impl aya::Pod for CallStats {}
