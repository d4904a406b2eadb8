//! Records exchanged between the eBPF programs and user space. Both sides compile this crate, so a
//! layout change cannot make them disagree.
#![no_std]

/// The array of ring buffers, one per CPU (indexed by CPU number). A record is one or more
/// [`Event`]s, in the order their CPU made them.
pub const EVENTS_MAP: &str = "EVENTS";
/// Per CPU, one [`Staged`]: the events made since its last batch went to the ring.
pub const STAGED_MAP: &str = "STAGED";
/// How many events a CPU gathers before it writes them to its ring as one record (each record
/// costs ~0.16 µs: 16 a batch cost ~10 ns an event, 64 ~2.5).
pub const BATCH_EVENTS: usize = 64;
/// Per CPU: at [`LOST_COUNT`], the events the ring buffer had no room for; at [`LOST_LAST`],
/// when the last of them was (`bpf_ktime_get_ns`).
pub const LOST_MAP: &str = "LOST";
pub const LOST_COUNT: u32 = 0;
pub const LOST_LAST: u32 = 1;

/// Each program of `pagealloc-ebpf` (its function there has [`Program::name`]), by the kind of
/// place it is attached to. User space loads exactly [`Program::ALL`] and plans probes for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Program {
    /// At the return of malloc and calloc (cookie: the [`Call`]).
    AllocReturn,
    /// At an instruction on each of malloc's and calloc's paths to a `ret` where the result is
    /// already final in rax: one trap per call instead of a return probe's two (cookie:
    /// [`result_cookie`]).
    AllocResult,
    /// At the entry of realloc and the memalign family, which may call malloc or free
    /// themselves (cookie: the [`Call`]).
    OuterEntry,
    /// At their return.
    OuterReturn,
    /// At free's entry (its first instruction the kernel emulates).
    FreeEntry,
    /// At the entry and return of the function with which an exiting thread gives its tcache
    /// back: the frees in between are not the program's.
    FlushEntry,
    FlushReturn,
    /// Just after tcache_init's call to `_int_malloc`: a new thread's tcache (the result in
    /// rax), which glibc allocates out of sight of the public functions.
    TcacheAlloc,
    /// Run by user space on a CPU (`BPF_PROG_TEST_RUN`): writes the events the CPU has gathered
    /// to its ring, followed by an [`EventKind::Mark`]. Returns [`DRAIN_BUSY`] (and writes no
    /// mark) if a probe on that CPU was in the middle of an event.
    Drain,
}

/// What a [`Program`] is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// An instruction of the target's (a uprobe).
    Instruction,
    /// A function's return (a uretprobe: the kernel takes the return address where it sits).
    Return,
    /// Nothing: user space runs it (a raw tracepoint program).
    Run,
}

impl Program {
    pub const ALL: [Program; 9] = [
        Program::AllocReturn,
        Program::AllocResult,
        Program::OuterEntry,
        Program::OuterReturn,
        Program::FreeEntry,
        Program::FlushEntry,
        Program::FlushReturn,
        Program::TcacheAlloc,
        Program::Drain,
    ];

    /// Its name in the eBPF object.
    pub const fn name(self) -> &'static str {
        match self {
            Program::AllocReturn => "alloc_return",
            Program::AllocResult => "alloc_result",
            Program::OuterEntry => "outer_entry",
            Program::OuterReturn => "outer_return",
            Program::FreeEntry => "free_entry",
            Program::FlushEntry => "flush_entry",
            Program::FlushReturn => "flush_return",
            Program::TcacheAlloc => "tcache_alloc",
            Program::Drain => "drain",
        }
    }

    pub const fn attach(self) -> Attach {
        match self {
            Program::AllocReturn | Program::OuterReturn | Program::FlushReturn => Attach::Return,
            Program::Drain => Attach::Run,
            Program::AllocResult
            | Program::OuterEntry
            | Program::FreeEntry
            | Program::FlushEntry
            | Program::TcacheAlloc => Attach::Instruction,
        }
    }

    pub const fn is_return(self) -> bool {
        matches!(self.attach(), Attach::Return)
    }
}

/// Where a chunk's header words are, in bytes below its user pointer (glibc's `chunk2mem`
/// offset is `offsetof(malloc_chunk, fd)`). User space sets the programs' global
/// [`CHUNK_WORDS`] to these at load time, from glibc's DWARF layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkWords {
    /// The size word (`mchunk_size`, flags included): 8 on LP64.
    pub size: u64,
    /// `mchunk_prev_size` (for an mmapped chunk, how far memalign moved it up its mapping): 16
    /// on LP64.
    pub prev_size: u64,
}

/// The name of the programs' global [`ChunkWords`].
pub const CHUNK_WORDS: &str = "CHUNK_WORDS";

/// What [`Program::Drain`] returns when a probe on its CPU was in the middle of an event
/// (gathering it, or writing it to the ring itself): ask again.
pub const DRAIN_BUSY: u32 = 1;

/// The attach cookie of an `alloc_result` probe: the [`Call`] in the low byte, and above it how
/// far (bytes) below its value at the function's entry the stack pointer is where the probe sits.
pub const fn result_cookie(call: Call, depth: u64) -> u64 {
    call as u64 | depth << 8
}

/// The [`Call`] of an attach cookie.
pub const fn cookie_call(cookie: u64) -> u8 {
    cookie as u8
}

/// The stack depth of an `alloc_result` cookie (see [`result_cookie`]).
pub const fn cookie_depth(cookie: u64) -> u64 {
    cookie >> 8
}

/// What happened to a chunk.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The chunk was handed to the program.
    Alloc = 1,
    /// The program (or glibc for it) gave the chunk back.
    Free = 2,
    /// Not a chunk's: written by [`Program::Drain`] at its `time`, when no probe of its CPU was
    /// under way. Every event that CPU stamped before it is before it in the CPU's ring, so a
    /// reader that has read it has read them all.
    Mark = 3,
}

impl EventKind {
    pub fn from_u8(value: u8) -> Option<EventKind> {
        Some(match value {
            1 => EventKind::Alloc,
            2 => EventKind::Free,
            3 => EventKind::Mark,
            _ => return None,
        })
    }
}

/// The call that made an event. Attach cookies and [`Event::call`] carry these values.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Malloc = 1,
    Calloc = 2,
    Realloc = 3,
    /// `memalign` and `aligned_alloc` (one function in glibc).
    Memalign = 4,
    Valloc = 5,
    Pvalloc = 6,
    PosixMemalign = 7,
    Free = 8,
    /// A thread's exit giving its tcache back: not a call of the program's.
    Flush = 9,
    /// realloc(p, 0): a free.
    ReallocToZero = 10,
    /// realloc failed: the old chunk, told freed at its entry, is the program's again.
    ReallocFailed = 11,
    /// glibc allocating a new thread's tcache: not a call of the program's.
    TcacheInit = 12,
}

impl Call {
    pub fn from_u8(value: u8) -> Option<Call> {
        Some(match value {
            1 => Call::Malloc,
            2 => Call::Calloc,
            3 => Call::Realloc,
            4 => Call::Memalign,
            5 => Call::Valloc,
            6 => Call::Pvalloc,
            7 => Call::PosixMemalign,
            8 => Call::Free,
            9 => Call::Flush,
            10 => Call::ReallocToZero,
            11 => Call::ReallocFailed,
            12 => Call::TcacheInit,
            _ => return None,
        })
    }
}

/// One allocation or free, as a probe saw it: 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) at the probe.
    pub time: u64,
    /// The pointer the program holds (the chunk's user pointer). For an mmapped chunk that
    /// memalign moved up its mapping, the pointer it would have at the mapping's start.
    pub pointer: u64,
    /// The chunk's size word, flags included, read at the probe (before a free releases it). For
    /// an mmapped chunk, its whole mapping as glibc counts it: the size word plus the chunk's
    /// `prev_size` (the offset memalign moved it by).
    pub size: u64,
    /// The thread.
    pub tid: u32,
    /// An [`EventKind`].
    pub kind: u8,
    /// A [`Call`].
    pub call: u8,
    /// An allocation's sampling: [`SAMPLED_BYTES`], [`SAMPLED_PAGE`], [`STACK_MISSED`] bits.
    pub sampled: u16,
}

/// A CPU's events not yet in its ring. A ring record costs its writer a lock and an atomic
/// exchange or two; a batch of [`BATCH_EVENTS`] pays them once.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Staged {
    /// Non-zero while a program of this CPU writes here (a probe can be preempted, and another
    /// thread's probe run on the CPU meanwhile: it then writes to the ring itself).
    pub busy: u64,
    /// How many probes of this CPU are between the start of an event and its being in the
    /// staging area or committed to the ring (preempted ones included): counted before the
    /// event is stamped, so while it is 0 every event the CPU stamped is in the area or in
    /// the ring, with no reservation of the ring still open.
    pub unwritten: u64,
    /// How many of `events` are gathered.
    pub count: u64,
    pub events: [Event; BATCH_EVENTS],
}

/// What an outer call (realloc, the memalign family) was entered with, per thread, until it
/// returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The stack pointer at entry: calls made from deeper in the stack are the outer call's own.
    pub stack: u64,
    /// realloc: the old pointer; posix_memalign: where the new pointer is stored.
    pub pointer: u64,
    /// realloc: the old chunk's size word.
    pub size: u64,
    /// realloc: the size asked for.
    pub request: u64,
    /// A [`Call`].
    pub call: u64,
}

/// [`Event::sampled`] bits of an allocation the probe sampled: picked by the byte sampler
/// (a Poisson process over allocated bytes, mean [`Sampling::mean_bytes`]).
pub const SAMPLED_BYTES: u16 = 1;
/// ...or because its chunk begins or ends on a page of the pinning set ([`page_sampled`]).
pub const SAMPLED_PAGE: u16 = 2;
/// With [`SAMPLED_BYTES`] or [`SAMPLED_PAGE`]: sampled, but the CPU's stack record was taken
/// (by a probe this one preempted): the event comes without its stack, in a batch.
pub const STACK_MISSED: u16 = 4;

/// The name of the programs' global [`Sampling`].
pub const SAMPLING: &str = "SAMPLING";
/// Per CPU, the bytes left until the byte sampler's next sample (an `i64`).
pub const COUNTDOWN_MAP: &str = "COUNTDOWN";
/// One [`StackRecord`] per CPU (an array indexed by CPU: a per-CPU map's values are at most
/// 32 KiB): where a sampled allocation's record is put together.
pub const SCRATCH_MAP: &str = "SCRATCH";
/// The most of a stack a record carries (samply copies 32,000 bytes, perf 8 KiB by default).
pub const MAX_STACK_BYTES: usize = 32 << 10;
/// How many quantiles of the exponential remainder [`Sampling::remainders`] holds.
pub const REMAINDERS: usize = 256;
/// [`Sampling::page_shift`] when no page is in the pinning set.
pub const NO_PAGES: u64 = 64;

/// What the probes sample, set by user space at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampling {
    /// Mean bytes between byte samples: 0 samples none, 1 every allocation.
    pub mean_bytes: u64,
    /// One page in `1 << page_shift` is in the pinning set ([`NO_PAGES`]: none).
    pub page_shift: u64,
    /// Mixed into the page hash, drawn at random per attach, so that which pages are in the set
    /// has nothing to do with how the program lays out its heap.
    pub page_salt: u64,
    /// log2 of the page size.
    pub page_bits: u64,
    /// Bytes of the stack copied from the stack pointer up (at most [`MAX_STACK_BYTES`]).
    pub stack_bytes: u64,
    /// A gap of the byte sampler is `mean_bytes × (k·ln 2 + r)`: k is geometric (the trailing
    /// zeros of a random word: an exponential's whole number of halvings) and r, the remainder
    /// in [0, ln 2), one of these quantiles of its distribution; fixed point, 16 fractional
    /// bits (the programs have no floating point).
    pub remainders: [u32; REMAINDERS],
}

/// ln 2 with 16 fractional bits.
pub const LN2_Q16: u64 = 45_426;

/// Whether page number `page` is in the pinning set of `salt` with one page in `1 << shift`
/// (shift 0: every page; [`NO_PAGES`]: none). Both sides compute it.
pub const fn page_sampled(page: u64, salt: u64, shift: u64) -> bool {
    if shift == 0 {
        return true;
    }
    if shift >= NO_PAGES {
        return false;
    }
    let mixed = (page ^ salt).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mixed = mixed ^ (mixed >> 29);
    mixed.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> (64 - shift) == 0
}

/// A sampled allocation as its probe writes it to the ring: the event (its `sampled` has
/// [`SAMPLED_BYTES`] or [`SAMPLED_PAGE`]), the registers an unwinder starts from, and the top
/// of the stack. Only `STACK_HEADER + stack_len` bytes of it go to the ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackRecord {
    pub event: Event,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// How many bytes of `stack` were copied (from `sp` up).
    pub stack_len: u64,
    pub stack: [u8; MAX_STACK_BYTES],
}

/// The bytes of a [`StackRecord`] before its stack.
pub const STACK_HEADER: usize = size_of::<Event>() + 4 * size_of::<u64>();

/// glibc's chunk-size flags, kept in the low three bits of the size word.
pub const CHUNK_FLAG_BITS: u64 = PREV_INUSE | IS_MMAPPED | NON_MAIN_ARENA;
/// The chunk before this one is in use (or cached in tcache or a fastbin).
pub const PREV_INUSE: u64 = 1;
/// The chunk was mmapped on its own.
pub const IS_MMAPPED: u64 = 2;
/// The chunk belongs to a thread arena.
pub const NON_MAIN_ARENA: u64 = 4;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `repr(C)` integers, no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Pending {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Staged {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ChunkWords {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Sampling {}
}
