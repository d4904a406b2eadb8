//! The arena walker on synthetic heaps.
//!
//! [`Synthetic`] lays out glibc's structures in an [`ImageMemory`] at the offsets of this
//! machine's glibc (read from its debug info: nothing here is hard-coded), so the walker's
//! figures can be compared with what was laid out. The fuzz suites then corrupt such images in
//! thousands of deterministic ways (xorshift64* with fixed seeds: a failure names its suite and
//! case, which reproduce) and check that the walker returns in bounded time, that its figures
//! count every heap byte exactly once, and that it reports what it cannot make sense of.
//!
//! Every suite runs case by case in a child process (this test binary, re-executed) under an
//! address-space limit, so that a walker that hangs or exhausts memory fails its case instead
//! of the test run or the machine. One case reruns alone with
//! `PAGEALLOC_WALKER_SUITE=suite:case:case+1 cargo test -p pagealloc glibc::tests::suite_worker
//! -- --ignored --exact --nocapture`; `PAGEALLOC_WALKER_SHOW=n` lists n failures of each kind.
//!
//! The `regression_*` tests are one corruption each that the walker mishandled: a hang, a panic,
//! bytes counted twice, or a silent wrong answer.
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, Once, OnceLock, mpsc};
use std::time::{Duration, Instant};

use super::layout::{Offsets, default_heap_max_size};
use super::walker::{Split, Target, walk};
use crate::debuginfo::{self, DebugOptions};
use crate::proc::memory::{ImageMemory, Memory};
use crate::state::heap::{CHUNK_START, ChunkState, GRANULE, HeapFigures, HeapMap, MmappedChunk};
use crate::state::pages::Mapping;

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

use super::walker::{FLAG_BITS, IS_MMAPPED, PREV_INUSE};
/// The third chunk size flag (the walker has no use for it).
const NON_MAIN_ARENA: u64 = 4;

// The synthetic process. Everything but the main heap lies below it, so that a corrupted `top`
// pointing up cannot land in another region (`regression_top_on_a_tcache_link` tests that case).
const LIBC_DATA: u64 = 0x1100_0000_0000;
const LIBC_DATA_LEN: u64 = 0x2000;
const MAIN_ARENA: u64 = LIBC_DATA + 0x40;
const MP: u64 = LIBC_DATA + 0x1000;
const TCACHE_KEY: u64 = LIBC_DATA + 0x1800;
const TCACHE_KEY_VALUE: u64 = 0x6a09_e667_f3bc_c908;
const MAIN_HEAP: u64 = 0x5555_0000_0000;
/// A second arena's heap: HEAP_MAX_SIZE-aligned, as glibc maps them.
const ARENA2_HEAP: u64 = 0x1000_0000_0000;
const MMAP_CHUNK: u64 = 0x1200_0000_0000;
const HEAP_LEN: u64 = 0x10000;
const MMAP_LEN: u64 = 0x2000;

/// A case's walks must take less than this.
const CASE_BUDGET: Duration = Duration::from_secs(1);

// --- This machine's glibc ----------------------------------------------------------------------

/// This machine's glibc malloc: the walker's offsets and the few layout facts the builder needs
/// besides them.
struct Glibc {
    o: Offsets,
    /// request2size(sizeof(tcache_perthread_struct)): the first chunk of an arena's heap.
    tcache_struct_chunk: u64,
    /// Offset of `tcache_entry.next` from the user pointer.
    tcache_next: u64,
    mp_size: u64,
    /// The bits of the word at `mp_.n_mmaps` that are `n_mmaps` (an int).
    n_mmaps_mask: u64,
    heap_info_mprotect_size: Option<u64>,
    heap_info_pagesize: Option<u64>,
    heap_max: u64,
    page: u64,
}

fn glibc() -> &'static Glibc {
    static GLIBC: OnceLock<Glibc> = OnceLock::new();
    GLIBC.get_or_init(|| {
        let options = DebugOptions {
            use_cache: false,
            debuginfod_urls: Some(Vec::new()),
            ..Default::default()
        };
        let layout = debuginfo::load(Path::new(LIBC), &options)
            .expect("this machine's glibc debug info (libc6-dbg)")
            .layout;
        let o = Offsets::new(&layout).expect("the walker's offsets for this glibc");
        assert!(
            o.safe_linking && o.tcache_key.is_some() && o.state_fastbin_count > 0,
            "these tests lay out glibc 2.34+ heaps (safe-linking, tcache key, fastbins)"
        );
        let request2size =
            |n: u64| ((n + o.size_sz + o.alignment - 1) & !(o.alignment - 1)).max(o.min_size);
        let tcache_struct = layout.tcache_perthread_struct.as_ref().expect("tcache");
        let n_mmaps = layout.malloc_par.field("n_mmaps").expect("mp_.n_mmaps");
        let g = Glibc {
            tcache_struct_chunk: request2size(tcache_struct.size),
            tcache_next: layout
                .tcache_entry
                .as_ref()
                .and_then(|e| e.offset("next").ok())
                .expect("tcache_entry.next"),
            mp_size: layout.malloc_par.size,
            n_mmaps_mask: u64::MAX >> (64 - 8 * n_mmaps.size.min(8)),
            heap_info_mprotect_size: layout.heap_info.offset("mprotect_size").ok(),
            heap_info_pagesize: layout.heap_info.offset("pagesize").ok(),
            heap_max: default_heap_max_size(o.size_sz),
            page: ImageMemory::default().page_size(),
            o,
        };
        assert!(MAIN_ARENA + g.o.state_size <= MP && MP + g.mp_size <= TCACHE_KEY);
        assert!(ARENA2_HEAP.is_multiple_of(g.heap_max));
        g
    })
}

/// glibc's fastbin_index, smallbin_index and bin_at.
fn fastbin_index(size: u64) -> usize {
    (size / glibc().o.alignment - 2) as usize
}

fn smallbin_index(size: u64) -> u64 {
    size / glibc().o.alignment
}

fn bin_at(state: u64, bin: u64) -> u64 {
    let o = &glibc().o;
    state + o.state_bins + (bin - 1) * 2 * o.size_sz - o.chunk_fd
}

/// Safe-linking: the link stored at `position` is `(position >> 12) ^ pointer`.
fn protect(position: u64, pointer: u64) -> u64 {
    (position >> 12) ^ pointer
}

/// The first chunk at or after `addr` whose user pointer is aligned.
fn first_chunk_at(addr: u64) -> u64 {
    let o = &glibc().o;
    (addr + 2 * o.size_sz).next_multiple_of(o.alignment) - 2 * o.size_sz
}

// --- Small helpers -----------------------------------------------------------------------------

/// xorshift64*: small, fast and deterministic, so that every case reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // splitmix64 of the seed: nearby seeds give unrelated streams (and never the state 0).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn word(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.word() % n.max(1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        for piece in bytes.chunks_mut(8) {
            let word = self.word().to_ne_bytes();
            piece.copy_from_slice(&word[..piece.len()]);
        }
    }
}

fn peek(memory: &ImageMemory, addr: u64) -> Option<u64> {
    memory.read_u64(addr).ok()
}

fn poke_bytes(memory: &mut ImageMemory, addr: u64, bytes: &[u8]) {
    let (base, region) = memory
        .regions
        .iter_mut()
        .find(|(base, region)| {
            addr >= *base && addr + bytes.len() as u64 <= base + region.len() as u64
        })
        .unwrap_or_else(|| panic!("test bug: a write at {addr:#x} outside the image"));
    let offset = (addr - *base) as usize;
    region[offset..offset + bytes.len()].copy_from_slice(bytes);
}

fn poke(memory: &mut ImageMemory, addr: u64, value: u64) {
    poke_bytes(memory, addr, &value.to_ne_bytes());
}

fn put_word(bytes: &mut [u8], offset: u64, value: u64) {
    let offset = offset as usize;
    bytes[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

/// Whole pages `malloc_trim` could release from a free chunk: it keeps the malloc_chunk struct.
fn trimmable(addr: u64, end: u64) -> u64 {
    let g = glibc();
    let first = (addr + g.o.chunk_struct_size).next_multiple_of(g.page);
    (end.saturating_sub(first) / g.page) * g.page
}

/// `Err(format!(...))` unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

// --- The builder -------------------------------------------------------------------------------

/// What a laid-out chunk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Live,
    Tcache,
    Fastbin,
    /// Free in bin number n (1: unsorted).
    Bin(u64),
    Top,
}

impl Kind {
    fn state(self) -> ChunkState {
        match self {
            Kind::Live => ChunkState::Live,
            Kind::Tcache => ChunkState::Tcache,
            Kind::Fastbin => ChunkState::Fastbin,
            Kind::Bin(_) => ChunkState::Bin,
            Kind::Top => ChunkState::Top,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Chunk {
    addr: u64,
    size: u64,
    kind: Kind,
}

/// One step of a heap program: a chunk of this size, in this state.
#[derive(Clone, Copy, Debug)]
enum Op {
    Live(u64),
    Fast(u64),
    Tcache(u64),
    Small(u64),
    Unsorted(u64),
}

impl Op {
    fn size(self) -> u64 {
        match self {
            Op::Live(s) | Op::Fast(s) | Op::Tcache(s) | Op::Small(s) | Op::Unsorted(s) => s,
        }
    }
}

/// A bit of everything: fastbin and tcache lists of two, small bins, a page-spanning chunk, a
/// free chunk with whole pages (trimmable), top with whole pages.
const MAIN_PROGRAM: &[Op] = &[
    Op::Live(0x20),
    Op::Live(0x30),
    Op::Fast(0x20),
    Op::Live(0x40),
    Op::Fast(0x20),
    Op::Fast(0x30),
    Op::Tcache(0x50),
    Op::Live(0x20),
    Op::Tcache(0x50),
    Op::Small(0x100),
    Op::Live(0x1010),
    Op::Small(0x100),
    Op::Unsorted(0x3000),
    Op::Live(0x90),
    Op::Tcache(0x20),
    Op::Fast(0x80),
    Op::Live(0x400),
    Op::Small(0x30),
    Op::Live(0x2200),
];

const ARENA2_PROGRAM: &[Op] = &[
    Op::Live(0x30),
    Op::Fast(0x40),
    Op::Tcache(0x30),
    Op::Unsorted(0x500),
    Op::Live(0x200),
    Op::Small(0x40),
    Op::Fast(0x40),
    Op::Live(0x1800),
];

/// A random program of about `budget` bytes.
fn random_program(rng: &mut Rng, budget: u64) -> Vec<Op> {
    let o = &glibc().o;
    let mut ops = Vec::new();
    let mut total = 0;
    while total < budget {
        let small = o.min_size + o.alignment * rng.below(24);
        let any = if rng.percent(10) {
            o.min_size + o.alignment * rng.below(0x300)
        } else {
            small
        };
        let fast = o.min_size + o.alignment * rng.below(7);
        let op = match rng.below(10) {
            0..=3 => Op::Live(any),
            4 => Op::Fast(fast),
            5 | 6 => Op::Tcache(small),
            7 | 8 => Op::Small(small.min(0x3f0)),
            _ => Op::Unsorted(any),
        };
        total += op.size() + o.min_size;
        ops.push(op);
    }
    ops
}

/// Lays out one arena's heap, chunk after chunk, then its lists and its malloc_state.
struct ArenaBuilder {
    state: u64,
    start: u64,
    end: u64,
    first: u64,
    non_main: bool,
    bytes: Vec<u8>,
    cursor: u64,
    chunks: Vec<Chunk>,
    rng: Rng,
}

impl ArenaBuilder {
    fn new(state: u64, start: u64, len: u64, first: u64, non_main: bool, seed: u64) -> Self {
        ArenaBuilder {
            state,
            start,
            end: start + len,
            first,
            non_main,
            bytes: vec![0; len as usize],
            cursor: first,
            chunks: Vec::new(),
            rng: Rng::new(seed),
        }
    }

    fn write(&mut self, addr: u64, value: u64) {
        put_word(&mut self.bytes, addr - self.start, value);
    }

    /// Runs `op` if it leaves a page for top.
    fn op(&mut self, op: Op) {
        let min = glibc().o.min_size;
        if self.cursor + op.size() + min + glibc().page > self.end {
            return;
        }
        match op {
            Op::Live(s) => self.put(s, Kind::Live),
            Op::Fast(s) => self.put(s, Kind::Fastbin),
            Op::Tcache(s) => self.put(s, Kind::Tcache),
            // Free neighbours coalesce: a chunk in a bin is followed by one in use.
            Op::Small(s) => {
                self.put(s, Kind::Bin(smallbin_index(s)));
                self.put(min, Kind::Live);
            }
            Op::Unsorted(s) => {
                self.put(s, Kind::Bin(1));
                self.put(min, Kind::Live);
            }
        }
    }

    /// Lays out the next chunk (its list links are written by `finish`).
    fn put(&mut self, size: u64, kind: Kind) {
        let o = &glibc().o;
        let p = self.cursor;
        let after_free = match self.chunks.last() {
            Some(
                prev @ Chunk {
                    kind: Kind::Bin(_), ..
                },
            ) => {
                let prev_size = prev.size;
                self.write(p, prev_size); // the free chunk's footer
                true
            }
            _ => false,
        };
        let flags = if after_free { 0 } else { PREV_INUSE }
            | if self.non_main { NON_MAIN_ARENA } else { 0 };
        self.write(p + o.chunk_size, size | flags);
        // What programs leave in chunks: zeros or arbitrary bytes (fresh top is zeros).
        if kind != Kind::Top && self.rng.percent(50) {
            let from = (p + 2 * o.size_sz - self.start) as usize;
            let to = (p + size - self.start) as usize;
            let mut data = vec![0; to - from];
            self.rng.fill(&mut data);
            self.bytes[from..to].copy_from_slice(&data);
        }
        self.chunks.push(Chunk {
            addr: p,
            size,
            kind,
        });
        self.cursor += size;
    }

    fn finish(mut self) -> ArenaTruth {
        let g = glibc();
        let o = &g.o;
        let top = self.cursor;
        self.put(self.end - top, Kind::Top);

        // Fastbins and tcache bins are LIFO: the chunk freed last (here, the highest) first.
        let mut fastbins = vec![Vec::new(); o.state_fastbin_count as usize];
        let mut tcache: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut bins: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for c in self.chunks.iter().rev() {
            match c.kind {
                Kind::Fastbin => fastbins[fastbin_index(c.size)].push(c.addr),
                Kind::Tcache => tcache.entry(c.size).or_default().push(c.addr),
                Kind::Bin(bin) => bins.entry(bin).or_default().push(c.addr),
                _ => {}
            }
        }
        for list in &fastbins {
            for (k, &c) in list.iter().enumerate() {
                let next = list.get(k + 1).copied().unwrap_or(0);
                self.write(c + o.chunk_fd, protect(c + o.chunk_fd, next));
            }
        }
        let user = |c: u64| c + 2 * o.size_sz;
        for list in tcache.values() {
            for (k, &c) in list.iter().enumerate() {
                let next = list.get(k + 1).map_or(0, |&n| user(n) + g.tcache_next);
                let at = user(c) + g.tcache_next;
                self.write(at, protect(at, next));
                self.write(user(c) + o.tcache_key.unwrap(), TCACHE_KEY_VALUE);
            }
        }
        for (&bin, list) in &bins {
            let head = bin_at(self.state, bin);
            for (k, &c) in list.iter().enumerate() {
                let fd = list.get(k + 1).copied().unwrap_or(head);
                let bk = if k == 0 { head } else { list[k - 1] };
                self.write(c + o.chunk_fd, fd);
                self.write(c + o.chunk_bk, bk);
            }
        }

        let mut state = vec![0u8; o.state_size as usize];
        for (i, list) in fastbins.iter().enumerate() {
            let head = list.first().copied().unwrap_or(0);
            put_word(&mut state, o.state_fastbins + i as u64 * o.size_sz, head);
        }
        put_word(&mut state, o.state_top, top);
        for bin in 1..=o.state_bin_count / 2 {
            let head = bin_at(self.state, bin);
            let (fd, bk) = bins
                .get(&bin)
                .map_or((head, head), |l| (l[0], *l.last().unwrap()));
            let at = o.state_bins + (bin - 1) * 2 * o.size_sz;
            put_word(&mut state, at, fd);
            put_word(&mut state, at + o.size_sz, bk);
        }
        put_word(&mut state, o.state_system_mem, self.end - self.start);

        let mut truth = ArenaTruth {
            state: self.state,
            start: self.start,
            end: self.end,
            first: self.first,
            top,
            chunks: self.chunks,
            fastbins,
            bins,
            figures: HeapFigures::default(),
            bytes: self.bytes,
            state_bytes: state,
        };
        truth.figures = truth.expected_figures();
        truth
    }
}

/// What a builder laid out for one arena.
struct ArenaTruth {
    state: u64,
    start: u64,
    end: u64,
    first: u64,
    top: u64,
    /// In address order, top last.
    chunks: Vec<Chunk>,
    /// Per fastbinsY index, head first.
    fastbins: Vec<Vec<u64>>,
    /// Per bin number, in fd order.
    bins: BTreeMap<u64, Vec<u64>>,
    figures: HeapFigures,
    bytes: Vec<u8>,
    state_bytes: Vec<u8>,
}

impl ArenaTruth {
    /// The figures a walker must find on the intact, fully resident heap.
    fn expected_figures(&self) -> HeapFigures {
        let o = &glibc().o;
        let mut f = HeapFigures {
            system_bytes: self.end - self.start,
            overhead_bytes: self.first - self.start,
            ..HeapFigures::default()
        };
        for c in &self.chunks {
            let (chunks, bytes) = match c.kind {
                Kind::Live => (&mut f.live_chunks, &mut f.live_bytes),
                Kind::Tcache => (&mut f.tcache_chunks, &mut f.tcache_bytes),
                Kind::Fastbin => (&mut f.fastbin_chunks, &mut f.fastbin_bytes),
                Kind::Bin(_) => (&mut f.bin_chunks, &mut f.bin_bytes),
                Kind::Top => (&mut 0, &mut f.top_bytes),
            };
            *chunks += 1;
            *bytes += c.size;
            if c.kind != Kind::Live {
                f.free_resident_bytes += c.size - 2 * o.size_sz;
            }
            if !matches!(c.kind, Kind::Live | Kind::Tcache) {
                f.trimmable_bytes += trimmable(c.addr, c.addr + c.size);
            }
            if matches!(c.kind, Kind::Fastbin | Kind::Bin(_)) {
                f.largest_free_bytes = f.largest_free_bytes.max(c.size);
            }
        }
        f.finish();
        f
    }

    /// Chunk starts and the heap's end: where a chunk may end.
    fn boundaries(&self) -> BTreeSet<u64> {
        self.chunks
            .iter()
            .map(|c| c.addr)
            .chain([self.end])
            .collect()
    }

    /// Whether the walk counts a chunk in use at `addr` (what a fastbin may point to).
    fn in_use_at(&self, addr: u64) -> bool {
        self.chunks
            .iter()
            .any(|c| c.addr == addr && matches!(c.kind, Kind::Live | Kind::Fastbin))
    }
}

/// Which synthetic heap: the builder's seed and what it holds.
#[derive(Clone, Copy, Debug)]
struct Spec {
    seed: u64,
    arena2: bool,
    mmapped: bool,
    /// Random programs instead of the fixed ones.
    random: bool,
}

impl Spec {
    /// The layouts the suites cycle through.
    fn nth(n: usize) -> Spec {
        Spec {
            seed: n as u64 / 8,
            arena2: n.is_multiple_of(2),
            mmapped: n % 4 < 2,
            random: n % 8 >= 4,
        }
    }
}

/// A word the walker depends on: what a corruption changed is told by these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Size { arena: usize, chunk: usize },
    Top(usize),
    Next(usize),
    FastbinHead { arena: usize, index: usize },
    BinFd { arena: usize, bin: u64 },
    BinBk { arena: usize, bin: u64 },
    FastFd { arena: usize, chunk: usize },
    ChunkFd { arena: usize, chunk: usize },
    ChunkBk { arena: usize, chunk: usize },
    TcacheNext { arena: usize, chunk: usize },
    TcacheEntryKey { arena: usize, chunk: usize },
    ArPtr,
    HeapPrev,
    HeapSize,
    SbrkBase,
    NMmaps,
    MmappedMem,
    HpPagesize,
    TcacheKey,
    MmapPrevSize,
    MmapSize,
}

#[derive(Clone, Copy, Debug)]
struct Watched {
    addr: u64,
    mask: u64,
    field: Field,
}

impl Watched {
    fn read(&self, memory: &ImageMemory) -> Option<u64> {
        peek(memory, self.addr).map(|w| w & self.mask)
    }
}

/// A synthetic process: its memory, its mappings, and what was laid out where.
struct Synthetic {
    spec: Spec,
    memory: ImageMemory,
    mappings: Vec<Mapping>,
    /// The main arena, then the second one if any.
    arenas: Vec<ArenaTruth>,
    mmapped: Vec<MmappedChunk>,
    watched: Vec<Watched>,
}

fn mapping(start: u64, len: u64, path: &str) -> Mapping {
    Mapping {
        start,
        end: start + len,
        perms: "rw-p".into(),
        offset: 0,
        path: path.into(),
    }
}

impl Synthetic {
    fn build(spec: Spec) -> Synthetic {
        let g = glibc();
        let o = &g.o;
        let mut rng = Rng::new(spec.seed);
        let mut program = |fixed: &[Op]| {
            if spec.random {
                random_program(&mut rng, HEAP_LEN / 2)
            } else {
                fixed.to_vec()
            }
        };
        let mut arenas = Vec::new();

        let mut main =
            ArenaBuilder::new(MAIN_ARENA, MAIN_HEAP, HEAP_LEN, MAIN_HEAP, false, spec.seed);
        main.put(g.tcache_struct_chunk, Kind::Live);
        program(MAIN_PROGRAM).into_iter().for_each(|op| main.op(op));
        arenas.push(main.finish());

        if spec.arena2 {
            // The first heap of an arena: heap_info, then the malloc_state, then chunks.
            let state = ARENA2_HEAP + o.heap_info_size;
            let first = first_chunk_at(state + o.state_size);
            let mut arena =
                ArenaBuilder::new(state, ARENA2_HEAP, HEAP_LEN, first, true, spec.seed + 1);
            arena.put(g.tcache_struct_chunk, Kind::Live);
            program(ARENA2_PROGRAM)
                .into_iter()
                .for_each(|op| arena.op(op));
            let mut arena = arena.finish();
            let heap = &mut arena.bytes;
            put_word(heap, o.heap_info_ar_ptr, state);
            put_word(heap, o.heap_info_prev, 0);
            put_word(heap, o.heap_info_size_field, HEAP_LEN);
            if let Some(off) = g.heap_info_mprotect_size {
                put_word(heap, off, HEAP_LEN);
            }
            if let Some(off) = g.heap_info_pagesize {
                put_word(heap, off, g.page);
            }
            arenas.push(arena);
        }

        // The ring: main_arena -> arena 2 -> main_arena.
        let ring: Vec<u64> = arenas.iter().map(|a| a.state).collect();
        for (i, arena) in arenas.iter_mut().enumerate() {
            let next = ring[(i + 1) % ring.len()];
            put_word(&mut arena.state_bytes, o.state_next, next);
        }

        let mut libc = vec![0u8; LIBC_DATA_LEN as usize];
        let at = (MAIN_ARENA - LIBC_DATA) as usize;
        libc[at..at + o.state_size as usize].copy_from_slice(&arenas[0].state_bytes);
        let mp = MP - LIBC_DATA;
        put_word(&mut libc, mp + o.mp_sbrk_base, MAIN_HEAP);
        let n_mmaps = u64::from(spec.mmapped);
        put_word(&mut libc, mp + o.mp_n_mmaps, n_mmaps); // and n_mmaps_max after it: 0
        put_word(&mut libc, mp + o.mp_mmapped_mem, n_mmaps * MMAP_LEN);
        put_word(&mut libc, TCACHE_KEY - LIBC_DATA, TCACHE_KEY_VALUE);

        let mut memory = ImageMemory::default();
        memory.regions.push((LIBC_DATA, libc));
        memory.regions.push((MAIN_HEAP, arenas[0].bytes.clone()));
        let mut mappings = vec![
            mapping(LIBC_DATA, LIBC_DATA_LEN, LIBC),
            mapping(MAIN_HEAP, HEAP_LEN, "[heap]"),
        ];
        if let Some(arena) = arenas.get(1) {
            let mut heap = arena.bytes.clone();
            let at = (arena.state - arena.start) as usize;
            heap[at..at + o.state_size as usize].copy_from_slice(&arena.state_bytes);
            memory.regions.push((ARENA2_HEAP, heap));
            mappings.push(mapping(ARENA2_HEAP, HEAP_LEN, ""));
        }
        let mut mmapped = Vec::new();
        if spec.mmapped {
            let mut chunk = vec![0u8; MMAP_LEN as usize];
            rng.fill(&mut chunk[2 * o.size_sz as usize..]);
            put_word(&mut chunk, 0, 0);
            put_word(&mut chunk, o.chunk_size, MMAP_LEN | IS_MMAPPED);
            memory.regions.push((MMAP_CHUNK, chunk));
            mappings.push(mapping(MMAP_CHUNK, MMAP_LEN, ""));
            mmapped.push(MmappedChunk {
                address: MMAP_CHUNK,
                bytes: MMAP_LEN,
            });
        }

        let mut synthetic = Synthetic {
            spec,
            memory,
            mappings,
            arenas,
            mmapped,
            watched: Vec::new(),
        };
        synthetic.watched = synthetic.watched_words();
        synthetic
    }

    fn watched_words(&self) -> Vec<Watched> {
        let g = glibc();
        let o = &g.o;
        let mut words = Vec::new();
        let mut watch = |addr: u64, field: Field| {
            words.push(Watched {
                addr,
                mask: u64::MAX,
                field,
            })
        };
        for (arena, a) in self.arenas.iter().enumerate() {
            watch(a.state + o.state_top, Field::Top(arena));
            watch(a.state + o.state_next, Field::Next(arena));
            for index in 0..o.state_fastbin_count as usize {
                let at = a.state + o.state_fastbins + index as u64 * o.size_sz;
                watch(at, Field::FastbinHead { arena, index });
            }
            for bin in 1..=o.state_bin_count / 2 {
                let at = a.state + o.state_bins + (bin - 1) * 2 * o.size_sz;
                watch(at, Field::BinFd { arena, bin });
                watch(at + o.size_sz, Field::BinBk { arena, bin });
            }
            for (chunk, c) in a.chunks.iter().enumerate() {
                watch(c.addr + o.chunk_size, Field::Size { arena, chunk });
                let user = c.addr + 2 * o.size_sz;
                match c.kind {
                    Kind::Fastbin => watch(c.addr + o.chunk_fd, Field::FastFd { arena, chunk }),
                    Kind::Bin(_) => {
                        watch(c.addr + o.chunk_fd, Field::ChunkFd { arena, chunk });
                        watch(c.addr + o.chunk_bk, Field::ChunkBk { arena, chunk });
                    }
                    Kind::Tcache => {
                        watch(user + g.tcache_next, Field::TcacheNext { arena, chunk });
                        let at = user + o.tcache_key.unwrap();
                        watch(at, Field::TcacheEntryKey { arena, chunk });
                    }
                    _ => {}
                }
            }
        }
        if self.arenas.len() > 1 {
            watch(ARENA2_HEAP + o.heap_info_ar_ptr, Field::ArPtr);
            watch(ARENA2_HEAP + o.heap_info_prev, Field::HeapPrev);
            watch(ARENA2_HEAP + o.heap_info_size_field, Field::HeapSize);
        }
        watch(MP + o.mp_sbrk_base, Field::SbrkBase);
        watch(MP + o.mp_mmapped_mem, Field::MmappedMem);
        if let Some(off) = o.mp_hp_pagesize {
            watch(MP + off, Field::HpPagesize);
        }
        watch(TCACHE_KEY, Field::TcacheKey);
        if !self.mmapped.is_empty() {
            watch(MMAP_CHUNK + o.chunk_size - o.size_sz, Field::MmapPrevSize);
            watch(MMAP_CHUNK + o.chunk_size, Field::MmapSize);
        }
        words.push(Watched {
            addr: MP + o.mp_n_mmaps,
            mask: g.n_mmaps_mask,
            field: Field::NMmaps,
        });
        words
    }

    fn target<'a>(&'a self, memory: &'a ImageMemory, split: Split) -> Target<'a> {
        Target {
            memory,
            offsets: &glibc().o,
            main_arena: MAIN_ARENA,
            mp: MP,
            tcache_key: Some(TCACHE_KEY),
            mappings: &self.mappings,
            split,
        }
    }

    /// The memory a corruption may hit: (name, start, length).
    fn regions(&self) -> Vec<(&'static str, u64, u64)> {
        let o = &glibc().o;
        let mut regions = vec![
            ("main heap", MAIN_HEAP, HEAP_LEN),
            ("main_arena", MAIN_ARENA, o.state_size),
            ("mp_", MP, glibc().mp_size),
        ];
        if self.arenas.len() > 1 {
            regions.push(("arena 2's heap", ARENA2_HEAP, HEAP_LEN));
        }
        if !self.mmapped.is_empty() {
            regions.push(("mmapped chunk", MMAP_CHUNK, MMAP_LEN));
        }
        regions
    }

    fn chunk_addrs(&self) -> Vec<u64> {
        self.arenas
            .iter()
            .flat_map(|a| a.chunks.iter().map(|c| c.addr))
            .collect()
    }
}

// --- Walking, in the child process -------------------------------------------------------------

/// Panics seen by the hook while a walk runs: the walker's own threads are joined with
/// `unwrap_or`, so their panics never reach the caller.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The longest walk of the current case.
static WALK_TIME: Mutex<Duration> = Mutex::new(Duration::ZERO);

fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| lock(&PANICS).push(info.to_string())));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// One walk: the map or the walker's error; or why not: "panic: ..." (the walk's or one of
/// its threads'), "slow: ...", "split: ..." (walked in parts on several threads, the heap
/// gave another map than walked whole on one).
fn run_walk(syn: &Synthetic, memory: &ImageMemory) -> Result<Result<HeapMap, String>, String> {
    let whole = walk_once(syn, memory, WHOLE)?;
    let parts = walk_once(syn, memory, IN_PARTS)?;
    match (&whole, &parts) {
        (Ok(a), Ok(b)) => same_map(a, b).map_err(|why| format!("split: {why}"))?,
        (Err(a), Err(b)) if a == b => {}
        _ => return Err(format!("split: whole {whole:?}, in parts {parts:?}")),
    }
    Ok(whole)
}

/// One thread, every heap in one part.
const WHOLE: Split = Split {
    threads: 1,
    min_part: u64::MAX,
};
/// Parts of a page on four threads: the synthetic heaps are a few pages each.
const IN_PARTS: Split = Split {
    threads: 4,
    min_part: 1,
};

fn walk_once(
    syn: &Synthetic,
    memory: &ImageMemory,
    split: Split,
) -> Result<Result<HeapMap, String>, String> {
    lock(&PANICS).clear();
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| walk(&syn.target(memory, split))));
    let elapsed = started.elapsed();
    let mut slowest = lock(&WALK_TIME);
    *slowest = (*slowest).max(elapsed);
    drop(slowest);
    let panics = std::mem::take(&mut *lock(&PANICS));
    if !panics.is_empty() {
        return Err(format!("panic: {}", panics.join(" / ")));
    }
    let result = result.map_err(|p| format!("panic: {}", panic_message(&*p)))?;
    if elapsed > CASE_BUDGET {
        return Err(format!("slow: the walk took {elapsed:?}"));
    }
    Ok(result.map_err(|e| e.to_string()))
}

/// Two walks of one image found the same: figures, notes, every granule.
fn same_map(a: &HeapMap, b: &HeapMap) -> Result<(), String> {
    let arenas = |m: &HeapMap| -> Vec<_> {
        (m.arenas.iter())
            .map(|a| (a.address, a.heaps.clone(), a.figures.clone()))
            .collect()
    };
    ensure!(
        arenas(a) == arenas(b),
        "arenas {:?} and {:?}",
        arenas(a),
        arenas(b)
    );
    let notes = |m: &HeapMap| m.notes.iter().cloned().collect::<BTreeSet<_>>();
    ensure!(
        notes(a) == notes(b),
        "notes {:?} and {:?}",
        notes(a),
        notes(b)
    );
    ensure!(a.mmapped == b.mmapped, "mmapped chunks differ");
    ensure!(
        a.segments.len() == b.segments.len(),
        "{} and {} segments",
        a.segments.len(),
        b.segments.len()
    );
    for (x, y) in a.segments.iter().zip(&b.segments) {
        ensure!(
            (x.start, x.end, x.arena, &x.resident) == (y.start, y.end, y.arena, &y.resident),
            "segments {:#x}..{:#x} and {:#x}..{:#x}",
            x.start,
            x.end,
            y.start,
            y.end
        );
        if let Some(i) = (0..x.granules.len()).find(|&i| x.granules[i] != y.granules[i]) {
            return Err(format!(
                "granule {:#x}: {:#x} and {:#x}",
                x.start + i as u64 * GRANULE,
                x.granules[i],
                y.granules[i]
            ));
        }
    }
    Ok(())
}

/// What holds for any map, whatever the image: every byte of every heap segment is counted
/// exactly once, in its arena, and mmapped chunks lie in anonymous mappings outside the heaps.
fn check_accounting(map: &HeapMap) -> Result<(), String> {
    for (index, arena) in map.arenas.iter().enumerate() {
        let f = &arena.figures;
        let counted: u128 = [
            f.live_bytes,
            f.tcache_bytes,
            f.fastbin_bytes,
            f.bin_bytes,
            f.top_bytes,
            f.overhead_bytes,
            f.unknown_bytes,
        ]
        .iter()
        .map(|&b| u128::from(b))
        .sum();
        let segments: Vec<_> = map.segments.iter().filter(|s| s.arena == index).collect();
        let spanned: u128 = segments.iter().map(|s| u128::from(s.end - s.start)).sum();
        ensure!(
            counted == spanned,
            "arena {:#x} counts {counted} bytes in segments of {spanned} bytes ({f:?}, segments {:x?})",
            arena.address,
            segments
                .iter()
                .map(|s| (s.start, s.end))
                .collect::<Vec<_>>()
        );
        let heaps: Vec<_> = arena.heaps.iter().map(|h| (h.start, h.end)).collect();
        let spans: Vec<_> = segments.iter().map(|s| (s.start, s.end)).collect();
        ensure!(
            heaps == spans,
            "arena {index}: heaps {heaps:x?}, segments {spans:x?}"
        );
    }
    let mut spans: Vec<(u64, u64)> = map.segments.iter().map(|s| (s.start, s.end)).collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        ensure!(
            pair[0].1 <= pair[1].0,
            "double counting: heap segments {:#x}..{:#x} and {:#x}..{:#x} overlap ({} segments)",
            pair[0].0,
            pair[0].1,
            pair[1].0,
            pair[1].1,
            spans.len()
        );
    }
    let bytes: u128 = map.mmapped.iter().map(|c| u128::from(c.bytes)).sum();
    ensure!(
        map.mmapped_chunks == map.mmapped.len() as u64 && u128::from(map.mmapped_bytes) == bytes,
        "mmapped totals {}/{} for {:x?}",
        map.mmapped_chunks,
        map.mmapped_bytes,
        map.mmapped
    );
    for c in &map.mmapped {
        let end = c.address.checked_add(c.bytes);
        ensure!(
            end.is_some_and(|end| !spans.iter().any(|&(s, e)| c.address < e && s < end)),
            "mmapped chunk {c:x?} overlaps a heap"
        );
    }
    Ok(())
}

/// The walker's figures on an intact heap are exactly what was laid out.
fn check_exact(syn: &Synthetic, map: &HeapMap) -> Result<(), String> {
    ensure!(
        map.notes.is_empty(),
        "notes on a valid heap: {:?}",
        map.notes
    );
    ensure!(
        map.arenas.len() == syn.arenas.len(),
        "{} arenas, {} laid out",
        map.arenas.len(),
        syn.arenas.len()
    );
    let mut totals = HeapFigures::default();
    for (index, (arena, truth)) in map.arenas.iter().zip(&syn.arenas).enumerate() {
        ensure!(
            arena.address == truth.state && arena.main == (index == 0),
            "arena {index}"
        );
        ensure!(
            arena.figures == truth.figures,
            "arena {index}:\n walked {:?}\n laid out {:?}",
            arena.figures,
            truth.figures
        );
        totals.add(&truth.figures);
        let segments: Vec<_> = map.segments.iter().filter(|s| s.arena == index).collect();
        ensure!(
            segments.len() == 1 && segments[0].start == truth.start && segments[0].end == truth.end,
            "arena {index}: segments {:x?}",
            segments
                .iter()
                .map(|s| (s.start, s.end))
                .collect::<Vec<_>>()
        );
        let segment = segments[0];
        ensure!(segment.resident.iter().all(|&r| r), "a page not resident");
        // Every granule: the overhead, then each chunk with its first granule marked.
        let granule = |addr: u64| segment.granules[((addr - segment.start) / GRANULE) as usize];
        for addr in (truth.start..truth.first).step_by(GRANULE as usize) {
            let state = ChunkState::from_granule(granule(addr));
            ensure!(
                state == ChunkState::Overhead,
                "granule {addr:#x} is {state:?}"
            );
        }
        for c in &truth.chunks {
            let state = c.kind.state();
            ensure!(
                granule(c.addr) == CHUNK_START | state as u8,
                "chunk {:#x} ({:?}) starts with granule {:#x}",
                c.addr,
                c.kind,
                granule(c.addr)
            );
            for addr in (c.addr + GRANULE..c.addr + c.size).step_by(GRANULE as usize) {
                ensure!(
                    granule(addr) == state as u8,
                    "granule {addr:#x} of chunk {c:x?}"
                );
            }
        }
    }
    let f = &map.totals;
    ensure!(
        (f.live_bytes, f.bin_bytes, f.top_bytes, f.system_bytes)
            == (
                totals.live_bytes,
                totals.bin_bytes,
                totals.top_bytes,
                totals.system_bytes
            ),
        "totals {f:?}"
    );
    ensure!(map.mmapped == syn.mmapped, "mmapped {:x?}", map.mmapped);
    check_accounting(map)
}

// --- Corruptions and what the walker must make of them ------------------------------------------

/// Applies corruptions to a copy of a synthetic image, noting each, and the ones the walker
/// must report whatever else was changed.
struct Mutator<'a> {
    syn: &'a Synthetic,
    rng: Rng,
    memory: ImageMemory,
    done: Vec<String>,
    /// (arena, what): corruptions the walker must report if it reaches that arena.
    claims: Vec<(usize, String)>,
}

impl<'a> Mutator<'a> {
    fn new(syn: &'a Synthetic, seed: u64) -> Self {
        Mutator {
            syn,
            rng: Rng::new(seed),
            memory: syn.memory.clone(),
            done: Vec::new(),
            claims: Vec::new(),
        }
    }

    fn set(&mut self, addr: u64, value: u64, what: &str) {
        poke(&mut self.memory, addr, value);
        self.done.push(format!("{what} ({addr:#x}) = {value:#x}"));
    }

    /// Sets the size of the main arena's chunk `n` (flags kept); returns its address.
    fn main_size(&mut self, n: usize, size: impl FnOnce(u64) -> u64) -> u64 {
        let o = &glibc().o;
        let c = self.syn.arenas[0].chunks[n];
        let flags = self.old(c.addr + o.chunk_size) & FLAG_BITS;
        let what = format!("size of main arena {:?} chunk {n}", c.kind);
        self.set(c.addr + o.chunk_size, size(c.size) | flags, &what);
        c.addr
    }

    fn old(&self, addr: u64) -> u64 {
        peek(&self.syn.memory, addr).unwrap_or(0)
    }

    fn any_chunk(&mut self) -> u64 {
        let chunks = self.syn.chunk_addrs();
        self.rng.pick(&chunks)
    }

    /// Values that make sizes and pointers interesting: zero, tiny, unaligned, huge, near the
    /// old value, pointers to other chunks and into malloc_state.
    fn interesting(&mut self, old: u64) -> u64 {
        let chunk = self.any_chunk();
        let random = self.rng.word();
        self.rng.pick(&[
            0,
            1,
            8,
            16,
            17,
            24,
            0x21,
            0x30,
            0x31,
            0x38,
            0x1008,
            HEAP_LEN,
            HEAP_LEN + 0x11,
            u64::MAX,
            u64::MAX - 7,
            1 << 63,
            1 << 47,
            0xffff_ffff,
            old ^ PREV_INUSE,
            old ^ 8,
            old.wrapping_add(16),
            old.wrapping_sub(16),
            old.wrapping_mul(2),
            chunk,
            chunk + 8,
            chunk + 16,
            MAIN_ARENA,
            MAIN_ARENA + 0x100,
            random,
            random & 0xffff_fff0,
        ])
    }

    /// 1 to 16 random bytes anywhere in one region.
    fn random_bytes(&mut self) {
        let regions = self.syn.regions();
        let (name, start, len) = self.rng.pick(&regions);
        let n = 1 + self.rng.below(16);
        let at = start + self.rng.below(len - n);
        let mut bytes = vec![0u8; n as usize];
        self.rng.fill(&mut bytes);
        poke_bytes(&mut self.memory, at, &bytes);
        self.done
            .push(format!("{name}: {n} random bytes at {at:#x}: {bytes:02x?}"));
    }

    /// An interesting value in a word the walker depends on.
    fn key_word(&mut self) {
        let watched = &self.syn.watched;
        let k = watched[self.rng.below(watched.len() as u64) as usize];
        let value = self.interesting(self.old(k.addr));
        self.set(k.addr, value, &format!("{:?}", k.field));
    }

    /// An interesting value in a random aligned word of a region.
    fn any_word(&mut self) {
        let regions = self.syn.regions();
        let (name, start, len) = self.rng.pick(&regions);
        let at = start + self.rng.below(len / 8) * 8;
        let value = self.interesting(self.old(at));
        self.set(at, value, name);
    }

    /// The size words of every chunk of a bin with several: huge (the walk cannot use them; the
    /// bins cross-check adds them up).
    fn bin_sizes(&mut self) -> bool {
        let o = &glibc().o;
        let bins: Vec<(usize, u64)> = (self.syn.arenas.iter().enumerate())
            .flat_map(|(a, arena)| {
                (arena.bins.iter())
                    .filter(|(_, list)| list.len() > 1)
                    .map(move |(&b, _)| (a, b))
            })
            .collect();
        if bins.is_empty() {
            return false;
        }
        let (a, bin) = self.rng.pick(&bins);
        let huge = self.rng.pick(&[1 << 63, u64::MAX, 0xffff_ffff_ffff_0000]);
        for &c in &self.syn.arenas[a].bins[&bin] {
            let at = c + o.chunk_size;
            let value = huge | (self.old(at) & FLAG_BITS);
            self.set(at, value, &format!("size of a chunk in bin {bin}"));
        }
        true
    }

    /// A chunk's size word: 0, tiny, unaligned, huge, past the end, one granule off, flags.
    fn chunk_size(&mut self) {
        let o = &glibc().o;
        let a = self.rng.below(self.syn.arenas.len() as u64) as usize;
        let arena = &self.syn.arenas[a];
        let c = arena.chunks[self.rng.below(arena.chunks.len() as u64) as usize];
        let old = self.old(c.addr + o.chunk_size);
        let flags = old & FLAG_BITS;
        let past_end = arena.end - c.addr + o.alignment;
        let value = self.rng.pick(&[
            flags,
            16 | flags,
            o.size_sz | flags,
            (c.size + o.size_sz) | flags,
            (c.size + o.alignment) | flags,
            c.size.saturating_sub(o.alignment) | flags,
            (c.size * 2) | flags,
            past_end | flags,
            u64::MAX,
            (1 << 63) | flags,
            old ^ PREV_INUSE,
            old ^ IS_MMAPPED,
            old ^ NON_MAIN_ARENA,
        ]);
        self.set(
            c.addr + o.chunk_size,
            value,
            &format!("size of {:?} chunk", c.kind),
        );
    }

    /// A fastbin list made cyclic: a chunk's fd back at itself or an earlier chunk.
    fn fastbin_cycle(&mut self) -> bool {
        let o = &glibc().o;
        let lists: Vec<(usize, usize)> = (self.syn.arenas.iter().enumerate())
            .flat_map(|(a, arena)| {
                (arena.fastbins.iter().enumerate())
                    .filter(|(_, l)| !l.is_empty())
                    .map(move |(i, _)| (a, i))
            })
            .collect();
        if lists.is_empty() {
            return false;
        }
        let (a, i) = self.rng.pick(&lists);
        let list = &self.syn.arenas[a].fastbins[i];
        let k = self.rng.below(list.len() as u64) as usize;
        let back = list[self.rng.below(k as u64 + 1) as usize];
        let at = list[k] + o.chunk_fd;
        self.set(at, protect(at, back), "fastbin fd (a cycle)");
        let claim = format!("fastbin cycle {:#x} -> {back:#x}", list[k]);
        self.claims.push((a, claim));
        true
    }

    /// A bin made cyclic, or short, or pointing at a chunk in use.
    fn bin_links(&mut self) -> bool {
        let o = &glibc().o;
        let bins: Vec<(usize, u64)> = (self.syn.arenas.iter().enumerate())
            .flat_map(|(a, arena)| arena.bins.keys().map(move |&b| (a, b)))
            .collect();
        if bins.is_empty() {
            return false;
        }
        let (a, bin) = self.rng.pick(&bins);
        let arena = &self.syn.arenas[a];
        let list = &arena.bins[&bin];
        let k = self.rng.below(list.len() as u64) as usize;
        let live = (arena.chunks.iter())
            .find(|c| c.kind == Kind::Live && c.addr > list[k])
            .map_or(0, |c| c.addr);
        let earlier = list[self.rng.below(k as u64 + 1) as usize];
        let to = self
            .rng
            .pick(&[list[k], earlier, bin_at(arena.state, bin), live]);
        self.set(
            list[k] + o.chunk_fd,
            to,
            &format!("fd of a chunk in bin {bin}"),
        );
        true
    }

    /// The arena ring: next set to 0, unaligned, itself, a chunk, garbage.
    fn next_ring(&mut self) {
        let o = &glibc().o;
        let a = self.rng.below(self.syn.arenas.len() as u64) as usize;
        let arena = &self.syn.arenas[a];
        let chunk = self.any_chunk();
        let random = self.rng.word();
        let value = self.rng.pick(&[
            0,
            arena.state,
            arena.state + 8,
            arena.state + 16,
            MAIN_ARENA + 0x200,
            chunk,
            chunk + 16,
            LIBC_DATA,
            random,
            random & !15,
        ]);
        self.set(
            arena.state + o.state_next,
            value,
            &format!("arena {a}'s next"),
        );
    }

    /// A second arena's heap_info: garbage, a cycle, sizes.
    fn heap_info(&mut self) -> bool {
        let g = glibc();
        let o = &g.o;
        if self.syn.arenas.len() < 2 {
            return false;
        }
        let (field, at) = self.rng.pick(&[
            ("heap_info.ar_ptr", ARENA2_HEAP + o.heap_info_ar_ptr),
            ("heap_info.prev", ARENA2_HEAP + o.heap_info_prev),
            ("heap_info.size", ARENA2_HEAP + o.heap_info_size_field),
        ]);
        let random = self.rng.word();
        let value = self.rng.pick(&[
            0,
            ARENA2_HEAP,
            ARENA2_HEAP - g.heap_max,
            ARENA2_HEAP + g.heap_max,
            ARENA2_HEAP + 8,
            o.heap_info_size,
            o.heap_info_size + 0x100,
            HEAP_LEN / 2,
            HEAP_LEN + 0x1000,
            g.heap_max,
            g.heap_max + 1,
            MAIN_ARENA,
            random,
        ]);
        self.set(at, value, field);
        true
    }

    /// A whole heap's bytes random (arena 2's heap_info and malloc_state kept or not).
    fn whole_segment(&mut self) {
        let (arena, name, start, len) = if self.syn.arenas.len() > 1 && self.rng.percent(50) {
            let keep = if self.rng.percent(50) {
                self.syn.arenas[1].first - ARENA2_HEAP
            } else {
                0
            };
            (1, "arena 2's heap", ARENA2_HEAP + keep, HEAP_LEN - keep)
        } else {
            (0, "main heap", MAIN_HEAP, HEAP_LEN)
        };
        let mut bytes = vec![0u8; len as usize];
        self.rng.fill(&mut bytes);
        poke_bytes(&mut self.memory, start, &bytes);
        self.done
            .push(format!("{name} from {start:#x}: {len} random bytes"));
        // A random size word is a valid one with odds of 2^-40: the first chunk cannot be read.
        self.claims.push((arena, format!("{name}: random bytes")));
    }

    /// mp_: sbrk_base, the mmap counts, hp_pagesize.
    fn mp_field(&mut self) {
        let o = &glibc().o;
        let top = self.syn.arenas[0].top;
        let mut fields = vec![
            ("mp_.sbrk_base", MP + o.mp_sbrk_base),
            ("mp_.n_mmaps", MP + o.mp_n_mmaps),
            ("mp_.mmapped_mem", MP + o.mp_mmapped_mem),
        ];
        if let Some(off) = o.mp_hp_pagesize {
            fields.push(("mp_.hp_pagesize", MP + off));
        }
        let (field, at) = self.rng.pick(&fields);
        let random = self.rng.word();
        let value = self.rng.pick(&[
            0,
            1,
            8,
            top,
            top + 16,
            MAIN_HEAP + 8,
            MAIN_HEAP + 0x10,
            MAIN_HEAP - 0x1000,
            2 << 20,
            1 << 40,
            1 << 62,
            u64::MAX,
            random,
        ]);
        self.set(at, value, field);
    }

    /// An arena's top pointer: 0, on another chunk, mid-chunk, unaligned, outside.
    fn top_pointer(&mut self) {
        let o = &glibc().o;
        let a = self.rng.below(self.syn.arenas.len() as u64) as usize;
        let arena = &self.syn.arenas[a];
        let chunk = arena.chunks[self.rng.below(arena.chunks.len() as u64) as usize].addr;
        let random = self.rng.word();
        let value = self.rng.pick(&[
            0,
            chunk,
            chunk + 8,
            chunk + 16,
            arena.top + 8,
            arena.top + 16,
            arena.start,
            arena.start - 0x1000,
            arena.end,
            MAIN_ARENA,
            u64::MAX,
            u64::MAX - 7,
            random,
        ]);
        self.set(
            arena.state + o.state_top,
            value,
            &format!("arena {a}'s top"),
        );
    }

    /// A fastbinsY head or a bin's fd/bk in malloc_state.
    fn list_head(&mut self) {
        let o = &glibc().o;
        let a = self.rng.below(self.syn.arenas.len() as u64) as usize;
        let arena = &self.syn.arenas[a];
        let at = if self.rng.percent(50) {
            arena.state + o.state_fastbins + self.rng.below(o.state_fastbin_count) * o.size_sz
        } else {
            arena.state + o.state_bins + self.rng.below(o.state_bin_count) * o.size_sz
        };
        let chunk = arena.chunks[self.rng.below(arena.chunks.len() as u64) as usize].addr;
        let value = self
            .rng
            .pick(&[0, chunk, chunk + 16, chunk + 8, arena.top, 1]);
        self.set(at, value, &format!("arena {a}'s list head"));
    }

    /// The mmapped chunk's header.
    fn mmap_header(&mut self) -> bool {
        let o = &glibc().o;
        if self.syn.mmapped.is_empty() {
            return false;
        }
        let page = glibc().page;
        let at = MMAP_CHUNK + self.rng.pick(&[o.chunk_size - o.size_sz, o.chunk_size]);
        let value = self.rng.pick(&[
            0,
            16,
            page | IS_MMAPPED,
            (MMAP_LEN + page) | IS_MMAPPED,
            MMAP_LEN,
            MMAP_LEN | IS_MMAPPED | PREV_INUSE,
            MMAP_LEN | IS_MMAPPED | NON_MAIN_ARENA,
            (u64::MAX - page + 1) | IS_MMAPPED,
            u64::MAX,
        ]);
        self.set(at, value, "mmapped chunk header");
        true
    }

    /// One of the targeted corruptions.
    fn targeted(&mut self) {
        loop {
            let done = match self.rng.below(12) {
                0 | 1 => {
                    self.chunk_size();
                    true
                }
                2 => self.fastbin_cycle(),
                3 => self.bin_links(),
                4 => {
                    self.next_ring();
                    true
                }
                5 => self.heap_info(),
                6 => {
                    self.mp_field();
                    true
                }
                7 => {
                    self.top_pointer();
                    true
                }
                8 => {
                    self.list_head();
                    true
                }
                9 => self.mmap_header(),
                10 => self.bin_sizes(),
                _ => {
                    self.key_word();
                    true
                }
            };
            if done {
                return;
            }
        }
    }
}

/// What the walker must do with a corrupted image, beyond what it must always do.
struct Expect {
    /// Corruptions it must report (a note, unknown bytes, or an error).
    must_report: Vec<String>,
    /// Whether an error is acceptable: only an arena ring leading to unreadable memory gives one.
    error_ok: bool,
}

/// Tells from the words a corruption changed what the walker must report. Where several words
/// changed, only what holds whatever the others are is claimed: the first changed size word of
/// an arena whose extent is intact is surely read; the other rules need a single change.
fn expect(syn: &Synthetic, after: &ImageMemory, claims: &[(usize, String)]) -> Expect {
    let g = glibc();
    let o = &g.o;
    let before = &syn.memory;
    let changed: Vec<Field> = (syn.watched.iter())
        .filter(|k| k.read(before) != k.read(after))
        .map(|k| k.field)
        .collect();
    let is = |key: Field| changed.contains(&key);
    let only = |key: Field| changed == [key];
    let old = |addr: u64| peek(before, addr).unwrap_or(0);
    let new = |addr: u64| peek(after, addr).unwrap_or(0);
    // Arena 2 may not be reached, or its heap not found, if these changed.
    let reached = |a: usize| a == 0 || !is(Field::Next(0)) && !is(Field::HpPagesize);
    let mut must: Vec<String> = (claims.iter())
        .filter(|(a, _)| reached(*a))
        .map(|(_, claim)| claim.clone())
        .collect();
    let mut report = |cond: bool, why: String| {
        if cond {
            must.push(why);
        }
    };
    let sbrk_base = new(MP + o.mp_sbrk_base);

    for (a, arena) in syn.arenas.iter().enumerate() {
        if !reached(a) {
            continue;
        }
        let top_size = arena.top + o.chunk_size;
        let top_key = Field::Size {
            arena: a,
            chunk: arena.chunks.len() - 1,
        };
        let extent_kept = !is(Field::Top(a))
            && (old(top_size) & !FLAG_BITS) == (new(top_size) & !FLAG_BITS)
            && if a == 0 {
                !is(Field::SbrkBase)
            } else {
                !is(Field::ArPtr) && !is(Field::HeapPrev) && !is(Field::HeapSize)
            };
        let boundaries = arena.boundaries();
        let first_changed = (arena.chunks.iter().enumerate())
            .filter(|(_, c)| c.kind != Kind::Top)
            .find(|(_, c)| old(c.addr + o.chunk_size) != new(c.addr + o.chunk_size));
        if let (true, Some((i, c))) = (extent_kept, first_changed) {
            let (was, now) = (old(c.addr + o.chunk_size), new(c.addr + o.chunk_size));
            let size = now & !FLAG_BITS;
            if size != was & !FLAG_BITS {
                let lands = c
                    .addr
                    .checked_add(size)
                    .is_some_and(|e| boundaries.contains(&e));
                report(
                    size == 0 || size == 2 * o.size_sz || !lands,
                    format!(
                        "the size of chunk {:#x} became {now:#x}: it does not end on a chunk",
                        c.addr
                    ),
                );
            } else if (was ^ now) & PREV_INUSE != 0 && i > 0 && changed.len() == 1 {
                report(
                    true,
                    format!(
                        "chunk {:#x}'s PREV_INUSE flipped: the chunk before it changed state \
                         but not its list",
                        c.addr
                    ),
                );
            }
        }
        if only(top_key) {
            let (was, now) = (old(top_size), new(top_size));
            let size = now & !FLAG_BITS;
            if a == 0 {
                report(
                    size < o.min_size,
                    format!("top's size {now:#x} is too small"),
                );
            } else {
                report(
                    size != was & !FLAG_BITS,
                    format!("arena {a}'s top size {now:#x}: top no longer ends its heap"),
                );
            }
            report(
                (was ^ now) & PREV_INUSE != 0,
                "top's PREV_INUSE flipped".into(),
            );
        }
        if only(Field::Top(a)) {
            let top = new(arena.state + o.state_top);
            if a == 0 {
                let readable = top
                    .checked_add(o.chunk_size)
                    .and_then(|at| peek(after, at))
                    .is_some();
                report(
                    top == 0 || !readable || top < sbrk_base,
                    format!("main_arena.top = {top:#x}"),
                );
            } else {
                report(
                    top & !(g.heap_max - 1) != arena.start,
                    format!("arena {a}'s top {top:#x} is outside its heap"),
                );
            }
        }
        if only(Field::Next(a)) {
            let next = new(arena.state + o.state_next);
            let fine = if a == 0 {
                // A ring of the main arena alone is a valid ring.
                next == MAIN_ARENA || syn.arenas.get(1).is_some_and(|x| x.state == next)
            } else {
                next == MAIN_ARENA
            };
            report(!fine, format!("arena {a}'s next = {next:#x}"));
        }
        for (index, list) in arena.fastbins.iter().enumerate() {
            let head = arena.state + o.state_fastbins + index as u64 * o.size_sz;
            if only(Field::FastbinHead { arena: a, index }) {
                let to = new(head);
                report(
                    to != 0 && !arena.in_use_at(to),
                    format!("fastbinsY[{index}] = {to:#x}, not a chunk in use"),
                );
            }
            for (k, &c) in list.iter().enumerate() {
                let chunk = arena.chunks.iter().position(|x| x.addr == c).unwrap();
                if only(Field::FastFd { arena: a, chunk }) {
                    let at = c + o.chunk_fd;
                    let to = protect(at, new(at));
                    report(
                        to != 0 && (list[..=k].contains(&to) || !arena.in_use_at(to)),
                        format!("fastbin chunk {c:#x} links to {to:#x}: a cycle or not a chunk"),
                    );
                }
            }
        }
        for (chunk, c) in arena.chunks.iter().enumerate() {
            if let Kind::Bin(bin) = c.kind {
                report(
                    only(Field::ChunkFd { arena: a, chunk }),
                    format!("the fd of chunk {:#x} in bin {bin} changed", c.addr),
                );
            }
        }
        for bin in 1..=o.state_bin_count / 2 {
            report(
                only(Field::BinFd { arena: a, bin }),
                format!("bin {bin}'s fd changed"),
            );
        }
        if a == 1 {
            report(only(Field::ArPtr), "heap_info.ar_ptr changed".into());
            let size = new(ARENA2_HEAP + o.heap_info_size_field);
            report(
                only(Field::HeapSize) && (size < o.heap_info_size || size > g.heap_max),
                format!("heap_info.size = {size:#x}"),
            );
            let prev = new(ARENA2_HEAP + o.heap_info_prev);
            report(
                only(Field::HeapPrev) && prev != 0,
                format!("heap_info.prev = {prev:#x}"),
            );
        }
    }
    report(
        only(Field::SbrkBase) && (sbrk_base == 0 || sbrk_base > syn.arenas[0].top),
        format!("mp_.sbrk_base = {sbrk_base:#x}"),
    );
    for key in [
        Field::NMmaps,
        Field::MmappedMem,
        Field::MmapPrevSize,
        Field::MmapSize,
    ] {
        report(only(key), format!("{key:?} changed"));
    }
    Expect {
        must_report: must,
        error_ok: is(Field::Next(0)) || is(Field::Next(1)),
    }
}

/// Walks a corrupted image and judges the outcome.
fn judge(syn: &Synthetic, memory: &ImageMemory, expect: &Expect, done: &[String]) -> Verdict {
    let context = format!("[{:?}; {}]", syn.spec, done.join("; "));
    judged_walk(syn, memory, expect, &context).map(|_| ())
}

/// Walks `memory` and checks what every case must satisfy: no panic, no hang, an error only
/// where `expect` allows one, every heap byte counted once, and what must be reported reported.
/// The map, unless the walk ended in an allowed error.
fn judged_walk(
    syn: &Synthetic,
    memory: &ImageMemory,
    expect: &Expect,
    context: &str,
) -> Result<Option<HeapMap>, String> {
    let map = match run_walk(syn, memory) {
        Err(why) => return Err(format!("{why} {context}")),
        Ok(Err(error)) if !expect.error_ok => {
            return Err(format!("unexpected error: {error} {context}"));
        }
        Ok(Err(_)) => return Ok(None),
        Ok(Ok(map)) => map,
    };
    check_accounting(&map).map_err(|e| format!("accounting: {e} {context}"))?;
    if !expect.must_report.is_empty() && map.notes.is_empty() && map.totals.unknown_bytes == 0 {
        return Err(format!(
            "silent: {} {context}",
            expect.must_report.join("; ")
        ));
    }
    Ok(Some(map))
}

// --- The suites --------------------------------------------------------------------------------

/// A case's outcome: Err(why) on failure. The message starts with a category and a colon.
type Verdict = Result<(), String>;

struct Suite {
    name: &'static str,
    cases: usize,
    run: fn(usize) -> Verdict,
}

const SUITES: &[Suite] = &[
    Suite {
        name: "valid",
        cases: 64,
        run: valid_case,
    },
    Suite {
        name: "random_words",
        cases: 3000,
        run: random_words_case,
    },
    Suite {
        name: "targeted",
        cases: 3000,
        run: targeted_case,
    },
    Suite {
        name: "whole_segment",
        cases: 200,
        run: whole_segment_case,
    },
    Suite {
        name: "holes",
        cases: 400,
        run: hole_case,
    },
    Suite {
        name: "reread_after_a_bad_chunk",
        cases: 1,
        run: |_| corrupted(|m| m.main_size(2, |size| size + 8)),
    },
    Suite {
        name: "fencepost_then_garbage",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let c = m.main_size(2, |_| 2 * glibc().o.size_sz);
                m.set(c + 3 * glibc().o.size_sz, 0x1234_5678_9abc_def1, "after it");
            })
        },
    },
    Suite {
        name: "zero_size",
        cases: 1,
        // The chunk before top: no free list passes over what follows it.
        run: |_| corrupted(|m| m.main_size(m.syn.arenas[0].chunks.len() - 2, |_| 0)),
    },
    Suite {
        name: "heap_info_size_past_the_heap",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let at = ARENA2_HEAP + glibc().o.heap_info_size_field;
                m.set(at, HEAP_LEN + glibc().page, "heap_info.size");
            })
        },
    },
    Suite {
        name: "heap_info_size_below_the_first_chunk",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let o = &glibc().o;
                m.set(
                    ARENA2_HEAP + o.heap_info_size_field,
                    o.heap_info_size,
                    "heap_info.size",
                );
            })
        },
    },
    Suite {
        name: "heap_info_prev_cycle",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let at = ARENA2_HEAP + glibc().o.heap_info_prev;
                m.set(at, ARENA2_HEAP, "heap_info.prev (itself)");
            })
        },
    },
    Suite {
        name: "top_near_the_end_of_the_address_space",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                m.set(
                    MAIN_ARENA + glibc().o.state_top,
                    u64::MAX - 7,
                    "main_arena.top",
                )
            })
        },
    },
    Suite {
        name: "huge_hp_pagesize",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let at = MP + glibc().o.mp_hp_pagesize.unwrap();
                m.set(at, 1 << 62, "mp_.hp_pagesize");
            })
        },
    },
    Suite {
        name: "huge_mmapped_size",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let value = (u64::MAX - glibc().page + 1) | IS_MMAPPED;
                m.set(MMAP_CHUNK + glibc().o.chunk_size, value, "mmapped size");
            })
        },
    },
    Suite {
        name: "top_past_the_heap_mapping",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let n = m.syn.arenas[0].chunks.len() - 1;
                m.main_size(n, |size| size + (1 << 20));
                let claim = "top runs 1 MiB past the [heap] mapping, over unreadable pages";
                m.claims.push((0, claim.into()));
            })
        },
    },
    Suite {
        name: "top_on_a_tcache_link",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                // The last entry of a tcache list links to NULL, stored as `&next >> 12`: a
                // "size" of some 20 GiB to a top pointed (unaligned) just below it.
                let o = &glibc().o;
                let arena = &m.syn.arenas[0];
                let c = (arena.chunks.iter())
                    .find(|c| {
                        c.kind == Kind::Tcache && {
                            let at = c.addr + 2 * o.size_sz + glibc().tcache_next;
                            peek(&m.syn.memory, at) == Some(protect(at, 0))
                        }
                    })
                    .unwrap();
                let top = c.addr + 2 * o.size_sz + glibc().tcache_next - o.chunk_size;
                m.set(MAIN_ARENA + o.state_top, top, "main_arena.top");
            })
        },
    },
    Suite {
        name: "arena_top_short_of_its_heap_end",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let o = &glibc().o;
                let arena = &m.syn.arenas[1];
                let at = arena.top + o.chunk_size;
                let value = m.old(at) - glibc().page;
                m.set(at, value, "arena 2's top size");
            })
        },
    },
];

/// One corruption of the fixed heap (two arenas, an mmapped chunk), judged as the fuzz suites
/// judge theirs.
fn corrupted<T>(edit: impl FnOnce(&mut Mutator) -> T) -> Verdict {
    let syn = Synthetic::build(Spec {
        seed: 7,
        arena2: true,
        mmapped: true,
        random: false,
    });
    let mut m = Mutator::new(&syn, 7);
    edit(&mut m);
    let expect = expect(&syn, &m.memory, &m.claims);
    judge(&syn, &m.memory, &expect, &m.done)
}

/// Intact heaps of every layout: the figures are what was laid out.
fn valid_case(case: usize) -> Verdict {
    let syn = Synthetic::build(Spec::nth(case));
    if !syn.spec.random {
        let f = &syn.arenas[0].figures;
        ensure!(
            f.fastbin_chunks > 1
                && f.tcache_chunks > 1
                && f.bin_chunks > 1
                && f.trimmable_bytes > 0,
            "test bug: the fixed program lacks a kind of chunk: {f:?}"
        );
    }
    match run_walk(&syn, &syn.memory) {
        Err(why) => Err(format!("{why} [{:?}]", syn.spec)),
        Ok(Err(error)) => Err(format!("error: {error} [{:?}]", syn.spec)),
        Ok(Ok(map)) => check_exact(&syn, &map).map_err(|e| format!("wrong: {e} [{:?}]", syn.spec)),
    }
}

/// One to four corruptions: random bytes, or interesting values in random words.
fn random_words_case(case: usize) -> Verdict {
    let syn = Synthetic::build(Spec::nth(case));
    let mut m = Mutator::new(&syn, 0x5eed_0000 + case as u64);
    let n = if m.rng.percent(80) {
        1
    } else {
        2 + m.rng.below(3)
    };
    for _ in 0..n {
        match m.rng.below(3) {
            0 => m.random_bytes(),
            1 => m.key_word(),
            _ => m.any_word(),
        }
    }
    let expect = expect(&syn, &m.memory, &m.claims);
    judge(&syn, &m.memory, &expect, &m.done)
}

/// Sizes, cycles, list heads, the ring, heap_info, mp_, top, the mmapped header.
fn targeted_case(case: usize) -> Verdict {
    let syn = Synthetic::build(Spec::nth(case));
    let mut m = Mutator::new(&syn, 0x7a46_0000 + case as u64);
    let n = if m.rng.percent(85) { 1 } else { 2 };
    for _ in 0..n {
        m.targeted();
    }
    let expect = expect(&syn, &m.memory, &m.claims);
    judge(&syn, &m.memory, &expect, &m.done)
}

fn whole_segment_case(case: usize) -> Verdict {
    let syn = Synthetic::build(Spec::nth(case));
    let mut m = Mutator::new(&syn, 0x3e6e_0000 + case as u64);
    m.whole_segment();
    let expect = expect(&syn, &m.memory, &m.claims);
    judge(&syn, &m.memory, &expect, &m.done)
}

/// `memory` without the pages at `holes` (as if they were not resident).
fn without_pages(memory: &ImageMemory, holes: &[u64]) -> ImageMemory {
    let page = glibc().page;
    let mut regions = Vec::new();
    for (base, bytes) in &memory.regions {
        let mut start = *base;
        let end = base + bytes.len() as u64;
        let mut cuts: Vec<u64> = holes
            .iter()
            .copied()
            .filter(|&h| h >= *base && h < end)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        for cut in cuts.into_iter().chain([end]) {
            if cut > start {
                let piece = bytes[(start - base) as usize..(cut - base) as usize].to_vec();
                regions.push((start, piece));
            }
            start = cut + page;
        }
    }
    ImageMemory { regions }
}

/// Non-resident pages in the heaps. Cases 0-3 of each layout are chosen: a page of chunk
/// headers, a page inside a free chunk (nothing to report), top's header, a page of arena 2;
/// the others 1 to 3 random pages.
fn hole_case(case: usize) -> Verdict {
    let g = glibc();
    let o = &g.o;
    let syn = Synthetic::build(Spec::nth(case / 4 * 4 + case % 2));
    let main = &syn.arenas[0];
    let page_of = |addr: u64| addr & !(g.page - 1);
    let header_page = |c: &Chunk| page_of(c.addr + o.chunk_size);
    let mut rng = Rng::new(0x401e_0000 + case as u64);
    // A page with chunk headers, after the first page and before top's.
    let middle = (main.chunks.iter())
        .map(header_page)
        .find(|&p| p > MAIN_HEAP + g.page && p < header_page(main.chunks.last().unwrap()))
        .unwrap();
    // A page inside a free chunk whose headers (and the next chunk's) are elsewhere.
    let inside = (main.chunks.iter())
        .filter(|c| matches!(c.kind, Kind::Bin(_)))
        .find_map(|c| {
            let page = (c.addr + o.chunk_struct_size).next_multiple_of(g.page);
            (page + g.page <= c.addr + c.size).then_some(page)
        });
    let holes: Vec<u64> = match (case % 4, inside) {
        (0, _) => vec![middle],
        (1, Some(inside)) => vec![inside],
        (2, _) => vec![header_page(main.chunks.last().unwrap())],
        (3, _) if syn.arenas.len() > 1 => vec![ARENA2_HEAP + g.page * (1 + rng.below(14))],
        _ => {
            let n = 1 + rng.below(3);
            let heaps: Vec<u64> = syn.arenas.iter().map(|a| a.start).collect();
            (0..n)
                .map(|_| rng.pick(&heaps) + g.page * rng.below(HEAP_LEN / g.page))
                .collect()
        }
    };
    let memory = without_pages(&syn.memory, &holes);
    let on_hole = |addr: u64| holes.contains(&page_of(addr));
    let context = || format!("[{:?}; pages {holes:x?} not resident]", syn.spec);

    // An unreadable malloc_state is an error (the walker cannot go on); a header on a hole
    // must be reported.
    let state_lost = (syn.arenas.iter()).any(|a| {
        (a.state..a.state + o.state_size)
            .step_by(g.page as usize)
            .chain([a.state + o.state_size - 1])
            .any(on_hole)
    });
    let header_lost = (syn.arenas.iter())
        .flat_map(|a| a.chunks.iter())
        .any(|c| on_hole(c.addr + o.chunk_size));
    let heap_info_lost = syn.arenas.len() > 1 && on_hole(ARENA2_HEAP);
    let expect = Expect {
        must_report: if header_lost || heap_info_lost {
            vec!["a chunk header is not resident".into()]
        } else {
            Vec::new()
        },
        error_ok: state_lost,
    };
    let Some(map) = judged_walk(&syn, &memory, &expect, &context())? else {
        return Ok(());
    };
    for segment in &map.segments {
        for (i, &resident) in segment.resident.iter().enumerate() {
            let page = page_of(segment.start) + i as u64 * g.page;
            ensure!(
                resident != on_hole(page),
                "residency: page {page:#x} resident = {resident} {}",
                context()
            );
        }
    }
    // The first main-heap chunk whose header, or whose successor's header, is on a hole
    // cannot be classified: its bytes are unknown.
    let unreadable = main
        .chunks
        .windows(2)
        .find(|w| on_hole(w[0].addr + o.chunk_size) || on_hole(w[1].addr + o.chunk_size));
    let top_lost = on_hole(main.top + o.chunk_size);
    if let (Some(w), false) = (unreadable, top_lost) {
        let f = &map.arenas[0].figures;
        ensure!(
            f.unknown_bytes >= w[0].size && !map.notes.is_empty(),
            "unknown: chunk {:#x} of {} bytes has a header on a hole, yet {} bytes are \
             unknown (notes {:?}) {}",
            w[0].addr,
            w[0].size,
            f.unknown_bytes,
            map.notes,
            context()
        );
    }
    if case % 4 == 1 && inside.is_some() && holes.len() == 1 {
        // Nothing unreadable: the figures are exact but for the missing page's residency.
        let mut figures = main.figures.clone();
        figures.free_resident_bytes -= g.page;
        figures.trimmable_bytes -= g.page;
        ensure!(
            map.notes.is_empty() && map.arenas[0].figures == figures,
            "a hole inside a free chunk: {:?} (notes {:?}), expected {figures:?} {}",
            map.arenas[0].figures,
            map.notes,
            context()
        );
    }
    Ok(())
}

// --- Running suites in child processes ----------------------------------------------------------

const SUITE_ENV: &str = "PAGEALLOC_WALKER_SUITE";
/// A case the child has not finished after this long is a hang.
const HANG: Duration = Duration::from_secs(3);
/// The child's address space: a walker allocating without bound fails its case, not the host.
const MEMORY_LIMIT: u64 = 4 << 30;
/// After this many hung or crashed cases a suite stops (each costs a child process).
const MAX_LOST: usize = 3;

/// Runs cases `from..to` of a suite, printing a start and a verdict line for each.
#[test]
#[ignore = "the suites' child process: does nothing without PAGEALLOC_WALKER_SUITE"]
fn suite_worker() {
    let Ok(spec) = std::env::var(SUITE_ENV) else {
        return;
    };
    let mut parts = spec.split(':');
    let (name, from, to) = (
        parts.next().unwrap(),
        parts.next().unwrap().parse::<usize>().unwrap(),
        parts.next().unwrap().parse::<usize>().unwrap(),
    );
    let suite = SUITES.iter().find(|s| s.name == name).unwrap();
    glibc();
    install_panic_hook();
    let mut out = std::io::stdout();
    for case in from..to {
        writeln!(out, "@@start {case}").unwrap();
        out.flush().unwrap();
        *lock(&WALK_TIME) = Duration::ZERO;
        let verdict = catch_unwind(|| (suite.run)(case)).unwrap_or_else(|p| {
            Err(format!(
                "test bug: the case panicked: {}",
                panic_message(&*p)
            ))
        });
        let micros = lock(&WALK_TIME).as_micros();
        let line = match verdict {
            Ok(()) => format!("@@pass {case} {micros}"),
            Err(why) => format!("@@fail {case} {micros} {}", why.replace('\n', " | ")),
        };
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }
}

struct Report {
    cases: usize,
    run: usize,
    failures: Vec<(usize, String)>,
    slowest: Duration,
    elapsed: Duration,
}

/// Runs a suite in child processes; a hung or crashed case is a failure, and the next child
/// goes on after it.
fn run_suite(name: &str) -> Report {
    let suite = SUITES.iter().find(|s| s.name == name).unwrap();
    let started = Instant::now();
    let exe = std::env::current_exe().unwrap();
    let mut report = Report {
        cases: suite.cases,
        run: 0,
        failures: Vec::new(),
        slowest: Duration::ZERO,
        elapsed: Duration::ZERO,
    };
    let (mut next, mut lost) = (0, 0);
    while next < suite.cases && lost < MAX_LOST {
        let mut command = Command::new(&exe);
        command
            .args(["--exact", "glibc::tests::suite_worker", "--ignored"])
            .args(["--nocapture", "--test-threads=1", "-q"])
            .env(SUITE_ENV, format!("{name}:{next}:{}", suite.cases))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: MEMORY_LIMIT,
                    rlim_max: MEMORY_LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("re-running the test binary");
        let (lines, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut current: Option<usize> = None;
        let lost_case = loop {
            match rx.recv_timeout(HANG) {
                Ok(line) => {
                    let mut words = line.splitn(4, ' ');
                    let tag = words.next().unwrap_or("");
                    let case = words.next().and_then(|c| c.parse::<usize>().ok());
                    let micros = words.next().and_then(|m| m.parse::<u64>().ok());
                    match (tag, case) {
                        ("@@start", Some(case)) => current = Some(case),
                        ("@@pass" | "@@fail", Some(case)) => {
                            report.run += 1;
                            let walk = Duration::from_micros(micros.unwrap_or(0));
                            report.slowest = report.slowest.max(walk);
                            if tag == "@@fail" {
                                report
                                    .failures
                                    .push((case, words.next().unwrap_or("").to_string()));
                            }
                            current = None;
                            next = case + 1;
                        }
                        _ => {}
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    break current.map(|case| (case, format!("hung: no verdict after {HANG:?}")));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break current.map(|case| (case, "crashed".to_string()));
                }
            }
        };
        let status = child.wait().ok();
        let stderr = stderr.join().unwrap_or_default();
        match lost_case {
            Some((case, what)) => {
                let tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                report.run += 1;
                report
                    .failures
                    .push((case, format!("{what} (child {status:?}; stderr: {tail})")));
                next = case + 1;
                lost += 1;
            }
            None if next < suite.cases => {
                panic!("the suite's child process stopped before case {next}: {status:?} {stderr}")
            }
            None => {}
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// Runs a suite and fails with its failures, grouped by category.
fn expect_suite(name: &str) {
    let report = run_suite(name);
    println!(
        "suite {name}: {} of {} cases run in {:.1?}, slowest walk {:?}, {} failed",
        report.run,
        report.cases,
        report.elapsed,
        report.slowest,
        report.failures.len()
    );
    if report.failures.is_empty() && report.run == report.cases {
        return;
    }
    let mut groups: BTreeMap<String, Vec<&(usize, String)>> = BTreeMap::new();
    for failure in &report.failures {
        let category = failure.1.split(':').next().unwrap_or("").to_string();
        groups.entry(category).or_default().push(failure);
    }
    // PAGEALLOC_WALKER_SHOW=n shows n failures of each kind (6 by default).
    let show = (std::env::var("PAGEALLOC_WALKER_SHOW").ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(6);
    let mut text = String::new();
    for (category, failures) in &groups {
        text += &format!("\n{} × {category}:\n", failures.len());
        for (case, why) in failures.iter().take(show) {
            text += &format!("  case {case}: {why}\n");
        }
    }
    text += &format!(
        "\nA case reruns alone with PAGEALLOC_WALKER_SUITE={name}:CASE:CASE+1 cargo test -p \
         pagealloc glibc::tests::suite_worker -- --ignored --exact --nocapture\n"
    );
    if report.run < report.cases {
        text += &format!(
            "\n{} cases not run: the suite stopped after {MAX_LOST} hung or crashed cases\n",
            report.cases - report.run
        );
    }
    panic!("suite {name}: {} failures{text}", report.failures.len());
}

#[test]
fn valid_heaps_are_counted_exactly() {
    expect_suite("valid");
}

#[test]
fn fuzz_random_words() {
    expect_suite("random_words");
}

#[test]
fn fuzz_targeted_corruptions() {
    expect_suite("targeted");
}

#[test]
fn fuzz_whole_segment_random() {
    expect_suite("whole_segment");
}

#[test]
fn pages_not_resident() {
    expect_suite("holes");
}

// One test per corruption that once broke the walker: a hang, a panic, bytes counted twice, or a
// silent wrong answer.

#[test]
fn regression_reread_after_a_bad_chunk() {
    expect_suite("reread_after_a_bad_chunk");
}

#[test]
fn regression_fencepost_then_garbage() {
    expect_suite("fencepost_then_garbage");
}

#[test]
fn regression_zero_size() {
    expect_suite("zero_size");
}

#[test]
fn regression_heap_info_size_past_the_heap() {
    expect_suite("heap_info_size_past_the_heap");
}

#[test]
fn regression_heap_info_size_below_the_first_chunk() {
    expect_suite("heap_info_size_below_the_first_chunk");
}

#[test]
fn regression_heap_info_prev_cycle() {
    expect_suite("heap_info_prev_cycle");
}

#[test]
fn regression_top_near_the_end_of_the_address_space() {
    expect_suite("top_near_the_end_of_the_address_space");
}

#[test]
fn regression_huge_hp_pagesize() {
    expect_suite("huge_hp_pagesize");
}

#[test]
fn regression_huge_mmapped_size() {
    expect_suite("huge_mmapped_size");
}

#[test]
fn regression_top_past_the_heap_mapping() {
    expect_suite("top_past_the_heap_mapping");
}

#[test]
fn regression_top_on_a_tcache_link() {
    expect_suite("top_on_a_tcache_link");
}

#[test]
fn regression_arena_top_short_of_its_heap_end() {
    expect_suite("arena_top_short_of_its_heap_end");
}
