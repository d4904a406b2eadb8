//! The heap map: glibc malloc's arenas at chunk granularity, and what each chunk is used for.
//!
//! Each heap segment keeps one byte per 16-byte granule (the chunk state, plus a mark on the
//! first granule of each chunk), so a malloc or free event can later update it in place and the
//! renderers can draw it without the chunks themselves.

/// malloc's allocation unit on x86-64 (MALLOC_ALIGNMENT).
pub const GRANULE: u64 = 16;
/// Set on the first granule of each chunk.
pub const CHUNK_START: u8 = 0x80;

/// What a chunk (or a granule of it) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChunkState {
    /// Could not be read consistently (the target changed it, or a page was not resident).
    Unknown = 0,
    /// Held by the program.
    Live = 1,
    /// Freed into a thread's tcache: free for the program, in use for malloc.
    Tcache = 2,
    /// Freed into a fastbin.
    Fastbin = 3,
    /// Free in the unsorted, small or large bins.
    Bin = 4,
    /// The arena's top chunk (the wilderness).
    Top = 5,
    /// malloc's own structures: heap_info, malloc_state, fenceposts, alignment padding.
    Overhead = 6,
    /// Freed by the program since the heap was last walked (live mode): in tcache, a fastbin, a
    /// bin or merged into top, the next walk tells; never guessed.
    Freed = 7,
}

impl ChunkState {
    pub const ALL: [ChunkState; 8] = [
        ChunkState::Live,
        ChunkState::Tcache,
        ChunkState::Fastbin,
        ChunkState::Bin,
        ChunkState::Top,
        ChunkState::Overhead,
        ChunkState::Unknown,
        ChunkState::Freed,
    ];

    pub fn from_granule(granule: u8) -> ChunkState {
        match granule & !CHUNK_START {
            1 => ChunkState::Live,
            2 => ChunkState::Tcache,
            3 => ChunkState::Fastbin,
            4 => ChunkState::Bin,
            5 => ChunkState::Top,
            6 => ChunkState::Overhead,
            7 => ChunkState::Freed,
            _ => ChunkState::Unknown,
        }
    }

    /// The prefix of its JSON figures (`live_bytes`, ...) and its label value.
    pub fn key(self) -> &'static str {
        match self {
            ChunkState::Live => "live",
            ChunkState::Tcache => "tcache",
            ChunkState::Fastbin => "fastbin",
            ChunkState::Bin => "bin",
            ChunkState::Top => "top",
            ChunkState::Overhead => "overhead",
            ChunkState::Unknown => "unknown",
            ChunkState::Freed => "freed",
        }
    }

    /// Not held by the program (cached or free in malloc).
    pub fn is_free(self) -> bool {
        matches!(
            self,
            ChunkState::Tcache
                | ChunkState::Fastbin
                | ChunkState::Bin
                | ChunkState::Top
                | ChunkState::Freed
        )
    }

    /// Free in malloc itself, so that malloc_trim can give its pages back (tcache keeps its
    /// chunks; where a chunk freed since the last walk went is not known).
    pub fn is_trimmable(self) -> bool {
        matches!(
            self,
            ChunkState::Fastbin | ChunkState::Bin | ChunkState::Top
        )
    }
}

/// The per-arena figures.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HeapFigures {
    /// `malloc_state.system_mem`: bytes this arena got from the system.
    pub system_bytes: u64,
    pub live_chunks: u64,
    pub live_bytes: u64,
    pub tcache_chunks: u64,
    pub tcache_bytes: u64,
    pub fastbin_chunks: u64,
    pub fastbin_bytes: u64,
    pub bin_chunks: u64,
    pub bin_bytes: u64,
    pub top_bytes: u64,
    pub overhead_bytes: u64,
    pub unknown_bytes: u64,
    /// Live mode: chunks and bytes the program freed since the last walk.
    pub freed_chunks: u64,
    pub freed_bytes: u64,
    /// Bytes of free and cached chunk interiors (after the 16-byte header) on resident pages:
    /// memory the process pays for and does not use.
    pub free_resident_bytes: u64,
    /// Whole resident pages inside free chunks (bins, fastbins, top): what `malloc_trim(0)`
    /// could give back.
    pub trimmable_bytes: u64,
    /// The free bytes of [`HeapFigures::free_resident_bytes`] on pages that also hold live
    /// bytes: kept resident by the live chunks beside them, which no trim gives back
    /// ([`Segment::pinned_bytes`]).
    pub pinned_bytes: u64,
    /// The largest chunk in the bins or fastbins (top excluded).
    pub largest_free_bytes: u64,
    /// 1 − largest free chunk / all free bytes in bins and fastbins: 0 = one hole, →1 = dust.
    pub fragmentation: f64,
}

impl HeapFigures {
    /// Counts one chunk of `bytes` in `state`.
    pub fn count(&mut self, state: ChunkState, bytes: u64) {
        let (chunks, total) = self.slots(state);
        if let Some(chunks) = chunks {
            *chunks += 1;
        }
        *total += bytes;
        if matches!(state, ChunkState::Fastbin | ChunkState::Bin) {
            self.largest_free_bytes = self.largest_free_bytes.max(bytes);
        }
    }

    /// Takes one chunk of `bytes` out of `state` (it is being recounted in another state).
    pub fn uncount(&mut self, state: ChunkState, bytes: u64) {
        let (chunks, total) = self.slots(state);
        if let Some(chunks) = chunks {
            *chunks = chunks.saturating_sub(1);
        }
        *total = total.saturating_sub(bytes);
    }

    /// The chunks (of the states that count them) and the bytes in `state`.
    pub fn get(&self, state: ChunkState) -> (Option<u64>, u64) {
        let mut copy = *self;
        let (chunks, bytes) = copy.slots(state);
        (chunks.copied(), *bytes)
    }

    /// The chunk counter (states that count chunks) and the byte counter of `state`.
    pub(crate) fn slots(&mut self, state: ChunkState) -> (Option<&mut u64>, &mut u64) {
        match state {
            ChunkState::Live => (Some(&mut self.live_chunks), &mut self.live_bytes),
            ChunkState::Tcache => (Some(&mut self.tcache_chunks), &mut self.tcache_bytes),
            ChunkState::Fastbin => (Some(&mut self.fastbin_chunks), &mut self.fastbin_bytes),
            ChunkState::Bin => (Some(&mut self.bin_chunks), &mut self.bin_bytes),
            ChunkState::Top => (None, &mut self.top_bytes),
            ChunkState::Overhead => (None, &mut self.overhead_bytes),
            ChunkState::Unknown => (None, &mut self.unknown_bytes),
            ChunkState::Freed => (Some(&mut self.freed_chunks), &mut self.freed_bytes),
        }
    }

    pub fn finish(&mut self) {
        let holes = self.fastbin_bytes + self.bin_bytes;
        self.fragmentation = if holes == 0 {
            0.0
        } else {
            1.0 - self.largest_free_bytes as f64 / holes as f64
        };
    }

    /// Takes away what `other` counted (chunks recounted in another state): every count but
    /// the system bytes and the largest free chunk.
    pub fn subtract(&mut self, other: &HeapFigures) {
        let mut other = *other;
        for (mine, theirs) in self.counts().into_iter().zip(other.counts()) {
            *mine = mine.saturating_sub(*theirs);
        }
    }

    /// The counts that add up across arenas (all but the system bytes, the largest free chunk
    /// and the fragmentation).
    fn counts(&mut self) -> [&mut u64; 16] {
        [
            &mut self.live_chunks,
            &mut self.live_bytes,
            &mut self.tcache_chunks,
            &mut self.tcache_bytes,
            &mut self.fastbin_chunks,
            &mut self.fastbin_bytes,
            &mut self.bin_chunks,
            &mut self.bin_bytes,
            &mut self.top_bytes,
            &mut self.overhead_bytes,
            &mut self.unknown_bytes,
            &mut self.freed_chunks,
            &mut self.freed_bytes,
            &mut self.free_resident_bytes,
            &mut self.trimmable_bytes,
            &mut self.pinned_bytes,
        ]
    }

    pub fn add(&mut self, other: &HeapFigures) {
        self.system_bytes += other.system_bytes;
        let mut other = *other;
        for (mine, theirs) in self.counts().into_iter().zip(other.counts()) {
            *mine += *theirs;
        }
        self.largest_free_bytes = self.largest_free_bytes.max(other.largest_free_bytes);
        self.finish();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Clone, Debug)]
pub struct Arena {
    /// Address of the arena's `malloc_state`.
    pub address: u64,
    pub main: bool,
    /// The memory the arena's chunks live in: the brk heap for the main arena, 64 MiB-aligned
    /// heaps (heap_info) for the others, newest first.
    pub heaps: Vec<AddressRange>,
    pub figures: HeapFigures,
}

/// One contiguous run of chunks (a heap of an arena) and the state of each granule.
#[derive(Clone, Debug)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    /// Index into `HeapMap::arenas`.
    pub arena: usize,
    /// One byte per granule: a [`ChunkState`] value, `| CHUNK_START` on a chunk's first granule.
    pub granules: Vec<u8>,
    /// Whether each page of the segment was resident when read.
    pub resident: Vec<bool>,
}

impl Segment {
    pub fn new(start: u64, end: u64, arena: usize, page_size: u64) -> Segment {
        Segment {
            start,
            end,
            arena,
            granules: vec![ChunkState::Unknown as u8; ((end - start) / GRANULE) as usize],
            resident: vec![false; (end - start).div_ceil(page_size) as usize],
        }
    }
}

impl Segment {
    /// Adds what this segment holds to `figures`: bytes by granule, chunks by their first
    /// granule, and the residency figures by page. Goes run by run (granules of one state, a
    /// chunk's first with them): a heap of few large chunks, as a quiet arena of gigabytes is,
    /// costs its pages, not its granules.
    fn count(&self, page_size: u64, header_bytes: u64, figures: &mut HeapFigures) {
        let per_page = (page_size / GRANULE).max(1) as usize;
        let granules = &self.granules[..];
        // The chunk being gone through (first granule, state), for the largest free chunk.
        let mut chunk: Option<(usize, ChunkState)> = None;
        let close = |figures: &mut HeapFigures, chunk: Option<(usize, ChunkState)>, end: usize| {
            if let Some((start, ChunkState::Bin | ChunkState::Fastbin)) = chunk {
                let bytes = (end - start) as u64 * GRANULE;
                figures.largest_free_bytes = figures.largest_free_bytes.max(bytes);
            }
        };
        // The address of the latest chunk start, for the headers malloc_trim keeps; whether
        // every granule of the page under way so far is trimmable.
        let mut last_start = 0u64;
        let mut page_trimmable = true;
        let mut start = 0;
        while start < granules.len() {
            let first = granules[start];
            let state = ChunkState::from_granule(first);
            let starts = first & CHUNK_START != 0;
            let end = run_end(granules, start, first & !CHUNK_START);
            if starts {
                close(figures, chunk, start);
                chunk = Some((start, state));
                last_start = self.start + start as u64 * GRANULE;
            }
            let (chunks, bytes) = figures.slots(state);
            if let (true, Some(chunks)) = (starts, chunks) {
                *chunks += 1;
            }
            *bytes += (end - start) as u64 * GRANULE;
            // The pages the run lies on, each as far as it covers it.
            let mut at = start;
            while at < end {
                let page = at / per_page;
                let page_end = ((page + 1) * per_page).min(granules.len());
                let covered = end.min(page_end) - at;
                let resident = self.resident.get(page).copied().unwrap_or(false);
                if resident && state.is_free() {
                    let start_here = usize::from(starts && at == start);
                    figures.free_resident_bytes += (covered - start_here) as u64 * GRANULE;
                }
                page_trimmable &= state.is_trimmable();
                at += covered;
                if at == page_end {
                    let page_start = self.start + (page * per_page) as u64 * GRANULE;
                    let whole = page_end - page * per_page == per_page;
                    if page_trimmable
                        && whole
                        && resident
                        && last_start + header_bytes <= page_start
                    {
                        figures.trimmable_bytes += page_size;
                    }
                    page_trimmable = true;
                }
            }
            start = end;
        }
        close(figures, chunk, granules.len());
    }
}

impl Segment {
    /// The pinned bytes of the segment: on each resident page with live bytes, its free
    /// bytes as [`HeapFigures::free_resident_bytes`] counts them (a free chunk's first
    /// granule, its header, is not).
    pub fn pinned_bytes(&self, page_size: u64) -> u64 {
        let per_page = (page_size / GRANULE).max(1) as usize;
        (0..self.resident.len())
            .filter(|&page| self.resident[page])
            .map(|page| self.page_occupancy(page, per_page))
            .filter(|occupancy| occupancy.live > 0)
            .map(|occupancy| occupancy.free)
            .sum()
    }

    /// The runs of granules on page `page` (`per_page` granules a page), each cut at the
    /// page's edges: (first granule, end, the first granule's byte).
    pub fn page_runs(&self, page: usize, per_page: usize) -> impl Iterator<Item = Run> + '_ {
        let end = ((page + 1) * per_page).min(self.granules.len());
        let mut at = page * per_page;
        std::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let first = self.granules[at];
            let run_end = run_end(&self.granules[..end], at, first & !CHUNK_START);
            let run = Run {
                start: at,
                end: run_end,
                state: ChunkState::from_granule(first),
                starts_chunk: first & CHUNK_START != 0,
            };
            at = run_end;
            Some(run)
        })
    }

    /// The live and free bytes on page `page`, as pinning counts them.
    pub fn page_occupancy(&self, page: usize, per_page: usize) -> Occupancy {
        let mut occupancy = Occupancy::default();
        for run in self.page_runs(page, per_page) {
            let granules = (run.end - run.start) as u64;
            if run.state == ChunkState::Live {
                occupancy.live += granules * GRANULE;
            } else if run.state.is_free() {
                occupancy.free += (granules - u64::from(run.starts_chunk)) * GRANULE;
            }
        }
        occupancy
    }

    /// The first granule of the chunk granule `granule` belongs to (the segment's first if no
    /// start is marked before it).
    pub fn chunk_start(&self, granule: usize) -> usize {
        self.granules[..=granule.min(self.granules.len().saturating_sub(1))]
            .iter()
            .rposition(|&g| g & CHUNK_START != 0)
            .unwrap_or(0)
    }
}

/// Granules of one state in a row on one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub start: usize,
    pub end: usize,
    pub state: ChunkState,
    /// Its first granule is a chunk's first.
    pub starts_chunk: bool,
}

/// What a page holds, as pinning counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub live: u64,
    pub free: u64,
}

/// Where the run of granules from `start` ends: the first granule after it that is not `value`
/// (a chunk's first granule is never `value`: it has [`CHUNK_START`]). Eight at a time.
fn run_end(granules: &[u8], start: usize, value: u8) -> usize {
    let mut at = start + 1;
    let repeated = u64::from_le_bytes([value; 8]);
    while let Some(word) = granules.get(at..at + 8) {
        let differ = u64::from_le_bytes(word.try_into().unwrap_or_default()) ^ repeated;
        if differ != 0 {
            return at + (differ.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + granules[at..]
        .iter()
        .position(|&g| g != value)
        .unwrap_or(granules.len() - at)
}

/// The granules of part of a segment, from `start`: threads walking a heap in parts each mark
/// their own stretch, and a chunk that runs past it is marked only as far as the stretch goes.
#[derive(Debug)]
pub struct Stretch<'a> {
    pub start: u64,
    pub granules: &'a mut [u8],
}

impl<'a> Stretch<'a> {
    pub fn end(&self) -> u64 {
        self.start + self.granules.len() as u64 * GRANULE
    }

    /// Marks the part of the chunk at `addr` of `size` bytes that lies in this stretch; its
    /// first granule gets [`CHUNK_START`] if the chunk starts here.
    #[inline(always)]
    pub fn mark(&mut self, addr: u64, size: u64, state: ChunkState) {
        let from = addr.clamp(self.start, self.end());
        let to = addr.saturating_add(size).clamp(self.start, self.end());
        let first = ((from - self.start) / GRANULE) as usize;
        let last = ((to - self.start) / GRANULE) as usize;
        if first >= last {
            return;
        }
        // Stores only, no read-modify-write of a byte just filled: this runs for every chunk.
        let rest = if from == addr {
            self.granules[first] = state as u8 | CHUNK_START;
            first + 1
        } else {
            first
        };
        fill(&mut self.granules[rest..last], state as u8);
    }

    pub fn empty() -> Stretch<'a> {
        Stretch {
            start: 0,
            granules: &mut [],
        }
    }

    /// This stretch cut in two at `addr` (within it, or at its end).
    pub fn split_at(self, addr: u64) -> (Stretch<'a>, Stretch<'a>) {
        let at = ((addr.clamp(self.start, self.end()) - self.start) / GRANULE) as usize;
        let (head, tail) = self.granules.split_at_mut(at);
        let middle = self.start + at as u64 * GRANULE;
        (
            Stretch {
                start: self.start,
                granules: head,
            },
            Stretch {
                start: middle,
                granules: tail,
            },
        )
    }

    /// The granule at `addr`, if it lies in this stretch.
    pub fn get(&self, addr: u64) -> Option<u8> {
        let index = addr.checked_sub(self.start)? / GRANULE;
        self.granules.get(index as usize).copied()
    }
}

/// `slice.fill(byte)` without a call to memset for the few granules of a typical chunk: two
/// overlapping word stores cover 8 to 16 of them.
fn fill(granules: &mut [u8], byte: u8) {
    let len = granules.len();
    let word = [byte; 8];
    if (8..=16).contains(&len) {
        granules[..8].copy_from_slice(&word);
        granules[len - 8..].copy_from_slice(&word);
    } else if len < 8 {
        for g in granules {
            *g = byte;
        }
    } else {
        granules.fill(byte);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmappedChunk {
    pub address: u64,
    /// The mapping's size as glibc accounts it in `mp_.mmapped_mem` (prev_size + chunk size).
    pub bytes: u64,
}

/// Something a walk met that the figures alone do not say.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeapNote {
    pub kind: NoteKind,
    pub message: String,
}

/// What a [`HeapNote`] means to whoever reads the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoteKind {
    /// What was read does not fit together: the target changed it while it was read, or it is
    /// corrupt. The bytes concerned are `unknown`, or a cross-check failed; a later look (or
    /// `--stop`) may read it consistently.
    Inconsistent,
    /// A lasting limit of what can be told about this process (a glibc without `tcache_key`,
    /// memory that another allocator serves): every look says the same.
    Limitation,
    /// Part of the heap could not be walked (memory malloc got from the system that the walk
    /// could not find): its bytes are `unknown`, so that the states still add up to the
    /// system bytes, and the figures are incomplete.
    Incomplete,
}

impl HeapNote {
    pub fn inconsistent(message: String) -> HeapNote {
        HeapNote {
            kind: NoteKind::Inconsistent,
            message,
        }
    }

    pub fn incomplete(message: String) -> HeapNote {
        HeapNote {
            kind: NoteKind::Incomplete,
            message,
        }
    }

    pub fn limitation(message: String) -> HeapNote {
        HeapNote {
            kind: NoteKind::Limitation,
            message,
        }
    }
}

impl std::fmt::Display for HeapNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The sizes malloc lays chunks and heaps out by, as the target's glibc has them (its debug
/// info's layout; `heap_max` as the walk found it at run time): live mode applies events by
/// the same numbers the walk read the heap with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapGeometry {
    /// From a chunk to the pointer malloc hands out of it (chunk2mem: the offset of `fd`).
    pub chunk_header: u64,
    /// MALLOC_ALIGNMENT: where chunks start, and what their sizes are multiples of.
    pub alignment: u64,
    /// How large a thread arena's heaps are reserved, and what they are aligned to:
    /// HEAP_MAX_SIZE, or 4 huge pages under the hugetlb tunable (`mp_.hp_pagesize`).
    pub heap_max: u64,
    /// The most the main heap grows by at once: HEAP_MAX_SIZE (twice the largest mmap
    /// threshold; larger requests are mmapped), whatever the huge pages.
    pub main_growth_max: u64,
}

#[cfg(test)]
impl HeapGeometry {
    /// The geometry of the tests' hand-made maps: x86-64's header and alignment, and a heap
    /// maximum that is deliberately not glibc's default, so that no test leans on 64 MiB.
    pub fn for_tests() -> HeapGeometry {
        HeapGeometry {
            chunk_header: 16,
            alignment: 16,
            heap_max: 1 << 20,
            main_growth_max: 1 << 20,
        }
    }
}

#[cfg(test)]
impl HeapMap {
    /// The tests' map of one main arena whose one heap is `segment`, of `system_bytes`.
    pub fn of_one_segment(segment: Segment, system_bytes: u64) -> HeapMap {
        HeapMap {
            arenas: vec![Arena {
                address: 0x1,
                main: true,
                heaps: vec![AddressRange {
                    start: segment.start,
                    end: segment.end,
                }],
                figures: HeapFigures {
                    system_bytes,
                    ..HeapFigures::default()
                },
            }],
            geometry: HeapGeometry::for_tests(),
            mmapped_chunks: 0,
            mmapped_bytes: 0,
            totals: HeapFigures::default(),
            notes: Vec::new(),
            mmapped: Vec::new(),
            segments: vec![segment],
        }
    }
}

/// Every arena of one process.
#[derive(Clone, Debug)]
pub struct HeapMap {
    pub arenas: Vec<Arena>,
    pub geometry: HeapGeometry,
    pub mmapped_chunks: u64,
    pub mmapped_bytes: u64,
    pub totals: HeapFigures,
    /// Inconsistencies met, cross-checks that failed and limits of what could be told, each
    /// said once.
    pub notes: Vec<HeapNote>,
    pub mmapped: Vec<MmappedChunk>,
    pub segments: Vec<Segment>,
}

impl HeapMap {
    /// Every arena's figures counted again from the granules and the pages' residency, as the
    /// walk counts them; `system_bytes` are kept. Live mode changes granules as events come and
    /// counts here. `header_bytes` is what malloc_trim keeps of a free chunk
    /// (`sizeof(struct malloc_chunk)`).
    pub fn recount(&mut self, page_size: u64, header_bytes: u64) {
        let mut figures = vec![HeapFigures::default(); self.arenas.len()];
        for segment in &self.segments {
            if let Some(figures) = figures.get_mut(segment.arena) {
                segment.count(page_size, header_bytes, figures);
            }
        }
        self.count_pinned(page_size, &mut figures);
        let mut totals = HeapFigures::default();
        for (arena, mut counted) in self.arenas.iter_mut().zip(figures) {
            counted.system_bytes = arena.figures.system_bytes;
            counted.finish();
            totals.add(&counted);
            arena.figures = counted;
        }
        self.totals = totals;
    }

    /// Each arena's pinned bytes (and the totals'), counted from the granules and the pages'
    /// residency: the walk counts everything else as it goes, this once it is done.
    pub fn set_pinned(&mut self, page_size: u64) {
        let mut figures = vec![HeapFigures::default(); self.arenas.len()];
        self.count_pinned(page_size, &mut figures);
        self.totals.pinned_bytes = 0;
        for (arena, counted) in self.arenas.iter_mut().zip(figures) {
            arena.figures.pinned_bytes = counted.pinned_bytes;
            self.totals.pinned_bytes += counted.pinned_bytes;
        }
    }

    fn count_pinned(&self, page_size: u64, figures: &mut [HeapFigures]) {
        for segment in &self.segments {
            if let Some(figures) = figures.get_mut(segment.arena) {
                figures.pinned_bytes += segment.pinned_bytes(page_size);
            }
        }
    }

    /// Adds a [`NoteKind::Limitation`] note, once.
    pub fn note_limitation(&mut self, message: String) {
        let note = HeapNote::limitation(message);
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// The live chunks and bytes, counted from the granules.
    pub fn live(&self) -> (u64, u64) {
        let live = ChunkState::Live as u8;
        self.segments
            .iter()
            .flat_map(|s| &s.granules)
            .fold((0, 0), |(chunks, bytes), &g| {
                (
                    chunks + u64::from(g == live | CHUNK_START),
                    bytes + if g & !CHUNK_START == live { GRANULE } else { 0 },
                )
            })
    }

    /// Which pages of each heap are resident now, by `pages` (live mode reads the page map at
    /// every sample, the heap only at walks).
    pub fn update_residency(&mut self, pages: &super::pages::PageMap) {
        let resident = pages.resident_ranges();
        for segment in &mut self.segments {
            for (index, page) in segment.resident.iter_mut().enumerate() {
                let at = segment.start + index as u64 * pages.page_size;
                *page = resident.covers(at, at + 1);
            }
        }
    }

    /// Read without an inconsistency. (What the walk could not read consistently it counts as
    /// unknown with an inconsistency noted; memory it could not find at all is noted
    /// [`NoteKind::Incomplete`]: looking again does not find it.)
    pub fn is_consistent(&self) -> bool {
        !self.notes.iter().any(|n| n.kind == NoteKind::Inconsistent)
    }

    /// Why the map is incomplete, if it is.
    pub fn incomplete(&self) -> Option<&HeapNote> {
        self.notes.iter().find(|n| n.kind == NoteKind::Incomplete)
    }
}

#[cfg(test)]
mod tests {
    use super::{CHUNK_START, ChunkState, GRANULE, HeapFigures, Segment, Stretch};

    /// What [`Segment::count`] counts, granule by granule: the model its runs must agree with.
    fn count_by_granule(segment: &Segment, page_size: u64, header_bytes: u64) -> HeapFigures {
        let mut figures = HeapFigures::default();
        let per_page = (page_size / GRANULE) as usize;
        let mut chunk: Option<(usize, ChunkState)> = None;
        let mut last_start = 0;
        for (page, granules) in segment.granules.chunks(per_page).enumerate() {
            let first = page * per_page;
            let page_start = segment.start + first as u64 * GRANULE;
            let resident = segment.resident[page];
            let mut trimmable = granules.len() == per_page;
            for (offset, &granule) in granules.iter().enumerate() {
                let state = ChunkState::from_granule(granule);
                let starts = granule & CHUNK_START != 0;
                if starts {
                    if let Some((start, ChunkState::Bin | ChunkState::Fastbin)) = chunk {
                        let bytes = (first + offset - start) as u64 * GRANULE;
                        figures.largest_free_bytes = figures.largest_free_bytes.max(bytes);
                    }
                    chunk = Some((first + offset, state));
                    last_start = page_start + offset as u64 * GRANULE;
                }
                let (chunks, bytes) = figures.slots(state);
                if let (true, Some(chunks)) = (starts, chunks) {
                    *chunks += 1;
                }
                *bytes += GRANULE;
                if resident && state.is_free() && !starts {
                    figures.free_resident_bytes += GRANULE;
                }
                trimmable &= state.is_trimmable();
            }
            if trimmable && resident && last_start + header_bytes <= page_start {
                figures.trimmable_bytes += page_size;
            }
            let live = granules
                .iter()
                .any(|&g| ChunkState::from_granule(g) == ChunkState::Live);
            if resident && live {
                figures.pinned_bytes += granules
                    .iter()
                    .filter(|&&g| ChunkState::from_granule(g).is_free() && g & CHUNK_START == 0)
                    .count() as u64
                    * GRANULE;
            }
        }
        if let Some((start, ChunkState::Bin | ChunkState::Fastbin)) = chunk {
            let bytes = (segment.granules.len() - start) as u64 * GRANULE;
            figures.largest_free_bytes = figures.largest_free_bytes.max(bytes);
        }
        figures
    }

    /// Segments of random chunks (1 to 2,000 granules, every state; some with a run of
    /// another state inside, some pages not resident, an unfinished last page) are counted as
    /// the granule-by-granule model counts them, at two page sizes.
    #[test]
    fn counting_by_runs_agrees_with_counting_by_granule() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        for round in 0..200 {
            let page_size = if round % 2 == 0 { 4096 } else { 64 };
            let granules = 1 + next(20_000) as usize;
            let start = 0x10000;
            let end = start + granules as u64 * GRANULE;
            let mut segment = Segment::new(start, end, 0, page_size);
            let mut at = 0;
            while at < granules {
                let longest = if next(4) == 0 { 2000 } else { 40 };
                let length = (1 + next(longest) as usize).min(granules - at);
                let state = ChunkState::ALL[next(8) as usize] as u8;
                segment.granules[at..at + length].fill(state);
                // Most chunks start with a start granule; some runs do not (the tail of a
                // chunk marked in two stretches, a walk's unknown stretch).
                if next(10) != 0 {
                    segment.granules[at] |= CHUNK_START;
                }
                at += length;
            }
            for page in &mut segment.resident {
                *page = next(5) != 0;
            }
            let header_bytes = [0, 16, 32][round % 3];
            let mut counted = HeapFigures::default();
            segment.count(page_size, header_bytes, &mut counted);
            counted.pinned_bytes = segment.pinned_bytes(page_size);
            let model = count_by_granule(&segment, page_size, header_bytes);
            assert_eq!(counted, model, "round {round}: {granules} granules");
        }
    }

    /// A chunk across the cut between two stretches is marked in both, its start only in the
    /// first; what lies outside a stretch is left alone.
    #[test]
    fn stretches_mark_only_their_own_granules() {
        let mut segment = Segment::new(0x1000, 0x2000, 0, 4096);
        let whole = Stretch {
            start: segment.start,
            granules: &mut segment.granules,
        };
        let (mut head, mut tail) = whole.split_at(0x1800);
        assert_eq!(
            (head.start, head.end(), tail.start, tail.end()),
            (0x1000, 0x1800, 0x1800, 0x2000)
        );
        for stretch in [&mut head, &mut tail] {
            stretch.mark(0x1700, 0x200, ChunkState::Bin);
            stretch.mark(0x1000, 0x20, ChunkState::Live);
            stretch.mark(0x1fe0, 0x100, ChunkState::Top);
        }
        let g = |addr: u64| segment.granules[((addr - 0x1000) / GRANULE) as usize];
        assert_eq!(g(0x1000), CHUNK_START | ChunkState::Live as u8);
        assert_eq!(g(0x1010), ChunkState::Live as u8);
        assert_eq!(g(0x1020), ChunkState::Unknown as u8);
        assert_eq!(g(0x1700), CHUNK_START | ChunkState::Bin as u8);
        for addr in (0x1710..0x1900).step_by(GRANULE as usize) {
            assert_eq!(g(addr), ChunkState::Bin as u8, "{addr:#x}");
        }
        assert_eq!(g(0x1900), ChunkState::Unknown as u8);
        assert_eq!(g(0x1fe0), CHUNK_START | ChunkState::Top as u8);
        assert_eq!(g(0x1ff0), ChunkState::Top as u8);
    }

    #[test]
    fn small_and_large_fills() {
        for granules in [1u64, 2, 7, 8, 9, 15, 16, 17, 100] {
            let mut segment = Segment::new(0, 0x1000, 0, 4096);
            let mut stretch = Stretch {
                start: 0,
                granules: &mut segment.granules,
            };
            stretch.mark(0x100, granules * GRANULE, ChunkState::Tcache);
            let marked: Vec<u8> = segment.granules[0x10..0x10 + granules as usize + 1].to_vec();
            let mut expected = vec![ChunkState::Tcache as u8; granules as usize];
            expected[0] |= CHUNK_START;
            expected.push(ChunkState::Unknown as u8);
            assert_eq!(marked, expected, "{granules} granules");
            assert_eq!(segment.granules[0xf], ChunkState::Unknown as u8);
        }
    }
}
