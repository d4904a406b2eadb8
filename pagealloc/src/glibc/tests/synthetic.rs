//! The synthetic process: this machine's glibc, and heaps laid out with its offsets.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use crate::debuginfo::DebugOptions;
use crate::glibc::debug;
use crate::glibc::layout::{Offsets, default_heap_max_size};
use crate::glibc::{IS_MMAPPED, Libc, NON_MAIN_ARENA, PREV_INUSE};
use crate::proc::memory::{ImageMemory, Memory};
use crate::state::heap::{ChunkState, HeapFigures, MmappedChunk};
use crate::state::pages::Mapping;

pub(super) const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

// The synthetic process. Everything but the main heap lies below it, so that a corrupted `top`
// pointing up cannot land in another region (`regression_top_on_a_tcache_link` tests that case).
pub(super) const LIBC_DATA: u64 = 0x1100_0000_0000;
pub(super) const LIBC_DATA_LEN: u64 = 0x2000;
pub(super) const MAIN_ARENA: u64 = LIBC_DATA + 0x40;
pub(super) const MP: u64 = LIBC_DATA + 0x1000;
pub(super) const TCACHE_KEY: u64 = LIBC_DATA + 0x1800;
pub(super) const TCACHE_KEY_VALUE: u64 = 0x6a09_e667_f3bc_c908;
pub(super) const MAIN_HEAP: u64 = 0x5555_0000_0000;
/// A second arena's heap: HEAP_MAX_SIZE-aligned, as glibc maps them.
pub(super) const ARENA2_HEAP: u64 = 0x1000_0000_0000;
pub(super) const MMAP_CHUNK: u64 = 0x1200_0000_0000;
pub(super) const HEAP_LEN: u64 = 0x10000;
pub(super) const MMAP_LEN: u64 = 0x2000;

/// A case's walks must take less than this.
pub(super) const CASE_BUDGET: Duration = Duration::from_secs(1);

// --- This machine's glibc ----------------------------------------------------------------------

/// This machine's glibc malloc: the walker's offsets and the few layout facts the builder needs
/// besides them.
pub(super) struct Glibc {
    pub(super) o: Offsets,
    /// request2size(sizeof(tcache_perthread_struct)): the first chunk of an arena's heap.
    pub(super) tcache_struct_chunk: u64,
    /// Offset of `tcache_entry.next` from the user pointer.
    pub(super) tcache_next: u64,
    pub(super) mp_size: u64,
    /// The bits of the word at `mp_.n_mmaps` that are `n_mmaps` (an int).
    pub(super) n_mmaps_mask: u64,
    pub(super) heap_info_mprotect_size: Option<u64>,
    pub(super) heap_info_pagesize: Option<u64>,
    pub(super) heap_max: u64,
    pub(super) page: u64,
}

pub(super) fn glibc() -> &'static Glibc {
    static GLIBC: OnceLock<Glibc> = OnceLock::new();
    GLIBC.get_or_init(|| {
        let options = DebugOptions {
            use_cache: false,
            debuginfod_urls: Some(Vec::new()),
            ..Default::default()
        };
        let layout = debug::load(Path::new(LIBC), &options)
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
pub(super) fn fastbin_index(size: u64) -> usize {
    (size / glibc().o.alignment - 2) as usize
}

pub(super) fn smallbin_index(size: u64) -> u64 {
    size / glibc().o.alignment
}

pub(super) fn bin_at(state: u64, bin: u64) -> u64 {
    let o = &glibc().o;
    state + o.state_bins + (bin - 1) * 2 * o.size_sz - o.chunk_fd
}

/// Safe-linking: the link stored at `position` is `(position >> 12) ^ pointer`.
pub(super) fn protect(position: u64, pointer: u64) -> u64 {
    (position >> 12) ^ pointer
}

/// The first chunk at or after `addr` whose user pointer is aligned.
pub(super) fn first_chunk_at(addr: u64) -> u64 {
    let o = &glibc().o;
    (addr + 2 * o.size_sz).next_multiple_of(o.alignment) - 2 * o.size_sz
}

// --- Small helpers -----------------------------------------------------------------------------

/// xorshift64*: small, fast and deterministic, so that every case reproduces from its seed.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        // splitmix64 of the seed: nearby seeds give unrelated streams (and never the state 0).
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub(super) fn word(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.word() % n.max(1)
    }

    pub(super) fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub(super) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub(super) fn fill(&mut self, bytes: &mut [u8]) {
        for piece in bytes.chunks_mut(8) {
            let word = self.word().to_ne_bytes();
            piece.copy_from_slice(&word[..piece.len()]);
        }
    }
}

pub(super) fn peek(memory: &ImageMemory, addr: u64) -> Option<u64> {
    memory.read_u64(addr).ok()
}

pub(super) fn poke_bytes(memory: &mut ImageMemory, addr: u64, bytes: &[u8]) {
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

pub(super) fn poke(memory: &mut ImageMemory, addr: u64, value: u64) {
    poke_bytes(memory, addr, &value.to_ne_bytes());
}

pub(super) fn put_word(bytes: &mut [u8], offset: u64, value: u64) {
    let offset = offset as usize;
    bytes[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

/// Whole pages `malloc_trim` could release from a free chunk: it keeps the malloc_chunk struct.
pub(super) fn trimmable(addr: u64, end: u64) -> u64 {
    let g = glibc();
    let first = (addr + g.o.chunk_struct_size).next_multiple_of(g.page);
    (end.saturating_sub(first) / g.page) * g.page
}

// --- The builder -------------------------------------------------------------------------------

/// What a laid-out chunk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Live,
    Tcache,
    Fastbin,
    /// Free in bin number n (1: unsorted).
    Bin(u64),
    Top,
}

impl Kind {
    pub(super) fn state(self) -> ChunkState {
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
pub(super) struct Chunk {
    pub(super) addr: u64,
    pub(super) size: u64,
    pub(super) kind: Kind,
}

/// One step of a heap program: a chunk of this size, in this state.
#[derive(Clone, Copy, Debug)]
pub(super) enum Op {
    Live(u64),
    Fast(u64),
    Tcache(u64),
    Small(u64),
    Unsorted(u64),
}

impl Op {
    pub(super) fn size(self) -> u64 {
        match self {
            Op::Live(s) | Op::Fast(s) | Op::Tcache(s) | Op::Small(s) | Op::Unsorted(s) => s,
        }
    }
}

/// A bit of everything: fastbin and tcache lists of two, small bins, a page-spanning chunk, a
/// free chunk with whole pages (trimmable), top with whole pages.
pub(super) const MAIN_PROGRAM: &[Op] = &[
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

pub(super) const ARENA2_PROGRAM: &[Op] = &[
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
pub(super) fn random_program(rng: &mut Rng, budget: u64) -> Vec<Op> {
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
pub(super) struct ArenaBuilder {
    pub(super) state: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) first: u64,
    pub(super) non_main: bool,
    pub(super) bytes: Vec<u8>,
    pub(super) cursor: u64,
    pub(super) chunks: Vec<Chunk>,
    pub(super) rng: Rng,
}

impl ArenaBuilder {
    pub(super) fn new(
        state: u64,
        start: u64,
        len: u64,
        first: u64,
        non_main: bool,
        seed: u64,
    ) -> Self {
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

    pub(super) fn write(&mut self, addr: u64, value: u64) {
        put_word(&mut self.bytes, addr - self.start, value);
    }

    /// Runs `op` if it leaves a page for top.
    pub(super) fn op(&mut self, op: Op) {
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
    pub(super) fn put(&mut self, size: u64, kind: Kind) {
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

    pub(super) fn finish(mut self) -> ArenaTruth {
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
pub(super) struct ArenaTruth {
    pub(super) state: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) first: u64,
    pub(super) top: u64,
    /// In address order, top last.
    pub(super) chunks: Vec<Chunk>,
    /// Per fastbinsY index, head first.
    pub(super) fastbins: Vec<Vec<u64>>,
    /// Per bin number, in fd order.
    pub(super) bins: BTreeMap<u64, Vec<u64>>,
    pub(super) figures: HeapFigures,
    pub(super) bytes: Vec<u8>,
    pub(super) state_bytes: Vec<u8>,
}

impl ArenaTruth {
    /// The figures a walker must find on the intact, fully resident heap.
    pub(super) fn expected_figures(&self) -> HeapFigures {
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
        f.pinned_bytes = self.pinned_bytes();
        f.finish();
        f
    }

    /// The free bytes (past each free chunk's header) on pages that hold live bytes.
    fn pinned_bytes(&self) -> u64 {
        let g = glibc();
        let overlap =
            |from: u64, to: u64, page: u64| to.min(page + g.page).saturating_sub(from.max(page));
        (self.start..self.end)
            .step_by(g.page as usize)
            .map(|page| {
                let (mut live, mut free) = (0, 0);
                for c in &self.chunks {
                    if c.kind == Kind::Live {
                        live += overlap(c.addr, c.addr + c.size, page);
                    } else {
                        free += overlap(c.addr + 2 * g.o.size_sz, c.addr + c.size, page);
                    }
                }
                if live > 0 { free } else { 0 }
            })
            .sum()
    }

    /// Chunk starts and the heap's end: where a chunk may end.
    pub(super) fn boundaries(&self) -> BTreeSet<u64> {
        self.chunks
            .iter()
            .map(|c| c.addr)
            .chain([self.end])
            .collect()
    }

    /// Whether the walk counts a chunk in use at `addr` (what a fastbin may point to).
    pub(super) fn in_use_at(&self, addr: u64) -> bool {
        self.chunks
            .iter()
            .any(|c| c.addr == addr && matches!(c.kind, Kind::Live | Kind::Fastbin))
    }
}

/// Which synthetic heap: the builder's seed and what it holds.
#[derive(Clone, Copy, Debug)]
pub(super) struct Spec {
    pub(super) seed: u64,
    pub(super) arena2: bool,
    pub(super) mmapped: bool,
    /// Random programs instead of the fixed ones.
    pub(super) random: bool,
}

impl Spec {
    /// The layouts the suites cycle through.
    pub(super) fn nth(n: usize) -> Spec {
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
pub(super) enum Field {
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
pub(super) struct Watched {
    pub(super) addr: u64,
    pub(super) mask: u64,
    pub(super) field: Field,
}

impl Watched {
    pub(super) fn read(&self, memory: &ImageMemory) -> Option<u64> {
        peek(memory, self.addr).map(|w| w & self.mask)
    }
}

/// A synthetic process: its memory, its mappings, and what was laid out where.
pub(super) struct Synthetic {
    pub(super) spec: Spec,
    pub(super) memory: ImageMemory,
    pub(super) mappings: Vec<Mapping>,
    /// The main arena, then the second one if any.
    pub(super) arenas: Vec<ArenaTruth>,
    pub(super) mmapped: Vec<MmappedChunk>,
    pub(super) watched: Vec<Watched>,
}

pub(super) fn mapping(start: u64, len: u64, path: &str) -> Mapping {
    Mapping {
        start,
        end: start + len,
        perms: "rw-p".into(),
        offset: 0,
        path: path.into(),
    }
}

impl Synthetic {
    pub(super) fn build(spec: Spec) -> Synthetic {
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

    pub(super) fn watched_words(&self) -> Vec<Watched> {
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

    /// The synthetic process's glibc: this machine's offsets at the synthetic addresses.
    pub(super) fn libc(&self) -> Libc {
        Libc {
            offsets: glibc().o.clone(),
            main_arena: MAIN_ARENA,
            mp: MP,
            tcache_key: Some(TCACHE_KEY),
        }
    }

    /// The memory a corruption may hit: (name, start, length).
    pub(super) fn regions(&self) -> Vec<(&'static str, u64, u64)> {
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

    pub(super) fn chunk_addrs(&self) -> Vec<u64> {
        self.arenas
            .iter()
            .flat_map(|a| a.chunks.iter().map(|c| c.addr))
            .collect()
    }
}
