//! Who holds the memory: the allocation sites of sampled chunks, their estimated live and
//! allocated objects and bytes, and the pinned bytes their chunks keep resident.
//!
//! [`SiteTable`] is updated by live mode's events (each sampled allocation comes with its
//! stack, unwound); [`SitesReport`] is what a sample carries of it, its frames symbolised, for
//! the renderers and exporters to read.
//!
//! Two estimators, each unbiased on its own:
//! - **Byte sampling** (`inuse_*`, `alloc_*`): a Poisson process over allocated bytes with mean
//!   R picks an allocation of `bytes` with probability p = 1 − e^(−bytes/R); each picked one
//!   counts 1/p objects and bytes/p bytes (Horvitz–Thompson).
//! - **Page sampling** (`pinned`): one page in N is in the pinning set, and every allocation
//!   whose chunk begins or ends on one of those pages is sampled, whatever its size. On a page
//!   of the set every live chunk made since attach has its site; its pinned bytes are shared
//!   out among them and counted N times.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use pagealloc_common::{SAMPLED_BYTES, SAMPLED_PAGE, STACK_MISSED, page_sampled};

use super::heap::{CHUNK_START, ChunkState, GRANULE, HeapMap};

/// An allocation site: the return addresses of its stack, innermost first (each minus one, to
/// fall in the call instruction), with the allocator's own frames dropped.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stack {
    pub frames: Arc<[u64]>,
    /// The unwinding stopped before the stack's root (a frame without call-frame information,
    /// through a JIT, or past the bytes copied): the frames are the innermost ones.
    pub truncated: bool,
}

/// A site's figures: estimates (see the module's doc), in objects and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SiteFigures {
    pub inuse_objects: f64,
    pub inuse_bytes: f64,
    pub alloc_objects: f64,
    pub alloc_bytes: f64,
    pub pinned_bytes: f64,
}

impl SiteFigures {
    fn add(&mut self, other: &SiteFigures) {
        self.inuse_objects += other.inuse_objects;
        self.inuse_bytes += other.inuse_bytes;
        self.alloc_objects += other.alloc_objects;
        self.alloc_bytes += other.alloc_bytes;
        self.pinned_bytes += other.pinned_bytes;
    }

    fn hold(&mut self, objects: f64, bytes: f64) {
        self.inuse_objects += objects;
        self.inuse_bytes += bytes;
    }

    fn release(&mut self, objects: f64, bytes: f64) {
        self.inuse_objects = (self.inuse_objects - objects).max(0.0);
        self.inuse_bytes = (self.inuse_bytes - bytes).max(0.0);
        // The same weights summed in another order leave rounding behind, not a chunk.
        if self.inuse_objects < ROUNDING {
            (self.inuse_objects, self.inuse_bytes) = (0.0, 0.0);
        }
    }
}

/// How the probes sampled, for the estimates' weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sampling {
    /// The byte sampler's mean (1: every allocation; 0: none).
    pub sample_bytes: u64,
    /// log2 of the pinning set's one page in N (0: every page; 64: none).
    pub page_shift: u64,
    pub page_salt: u64,
    pub page_size: u64,
}

impl Sampling {
    /// The probability that the byte sampler picks an allocation of `bytes`.
    fn probability(&self, bytes: u64) -> f64 {
        match self.sample_bytes {
            0 => 0.0,
            1 => 1.0,
            mean => -(-(bytes as f64) / mean as f64).exp_m1(),
        }
    }

    fn covers(&self, page_start: u64) -> bool {
        let page = page_start / self.page_size.max(1);
        page_sampled(page, self.page_salt, self.page_shift)
    }

    /// One page in how many is in the pinning set (1: every page; 0: none).
    pub fn pin_pages(&self) -> u64 {
        match self.page_shift {
            shift if shift >= 64 => 0,
            shift => 1 << shift,
        }
    }

    /// How many pages each page of the pinning set stands for.
    fn page_weight(&self) -> f64 {
        2f64.powi(self.page_shift.min(63) as i32)
    }
}

pub type SiteId = u32;

/// Less than this many objects is what adding and taking away the same weights left.
const ROUNDING: f64 = 1e-6;

/// A live chunk whose allocation was sampled.
#[derive(Clone, Copy, Debug)]
struct Held {
    site: Holder,
    bytes: u64,
    /// How many objects it stands for in `inuse_*` (0 if only the page sampler picked it).
    weight: f64,
}

/// Whose a sampled chunk is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// A site of the table, as long as its slot's generation is this one (else it was merged
    /// into "other").
    Site { id: SiteId, generation: u32 },
    /// Sampled, but its stack was not copied.
    Unknown,
}

struct Site {
    stack: Stack,
    figures: SiteFigures,
    generation: u32,
}

/// The chunks live when the probes attached (from the seed walk), until an event of theirs:
/// they have no stack, and form a bucket of their own with exact figures.
#[derive(Default)]
struct BeforeAttach {
    /// (user pointer, bytes), by pointer.
    chunks: Vec<(u64, u64)>,
    gone: Vec<bool>,
    objects: u64,
    bytes: u64,
}

impl BeforeAttach {
    fn position(&self, pointer: u64) -> Option<usize> {
        let at = self.chunks.binary_search_by_key(&pointer, |c| c.0).ok()?;
        (!self.gone[at]).then_some(at)
    }

    /// The chunk at `pointer` had an event: it is not from before attach (any longer).
    fn forget(&mut self, pointer: u64) {
        if let Some(at) = self.position(pointer) {
            self.forget_at(at);
        }
    }

    fn forget_at(&mut self, at: usize) {
        self.gone[at] = true;
        self.objects -= 1;
        self.bytes -= self.chunks[at].1;
    }
}

/// The sites of one process's sampled allocations since the probes attached, and their
/// sampled chunks still live. Bounded: past `capacity` sites, the lightest merges into
/// "other".
pub struct SiteTable {
    sampling: Sampling,
    capacity: usize,
    sites: Vec<Site>,
    index: HashMap<Stack, SiteId>,
    /// By user pointer: looked up at every allocation and free the probes report.
    chunks: HashMap<u64, Held, BuildHasherDefault<PointerHasher>>,
    before: BeforeAttach,
    other: SiteFigures,
    merged: u64,
    unknown: SiteFigures,
    /// The pinned bytes of the chunks from before attach.
    before_pinned: f64,
    /// The pinned bytes of live chunks on watched pages that have no site.
    unattributed_pinned: f64,
    stacks: u64,
    missed: u64,
}

/// How many sites a table holds by default.
pub const DEFAULT_MAX_SITES: usize = 4096;

impl SiteTable {
    /// The table of a process whose heap, as the probes attached, is `seed` (its live chunks
    /// are the bucket from before attach).
    pub fn new(sampling: Sampling, capacity: usize, seed: &HeapMap) -> SiteTable {
        let mut table = SiteTable {
            sampling,
            capacity: capacity.max(1),
            sites: Vec::new(),
            index: HashMap::new(),
            chunks: HashMap::default(),
            before: BeforeAttach::default(),
            other: SiteFigures::default(),
            merged: 0,
            unknown: SiteFigures::default(),
            before_pinned: 0.0,
            unattributed_pinned: 0.0,
            stacks: 0,
            missed: 0,
        };
        let mut chunks = live_chunks(seed);
        chunks.sort_unstable();
        chunks.dedup_by_key(|c| c.0);
        table.before = BeforeAttach {
            gone: vec![false; chunks.len()],
            objects: chunks.len() as u64,
            bytes: chunks.iter().map(|c| c.1).sum(),
            chunks,
        };
        table
    }

    pub fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// The program was handed the chunk at `pointer` of `bytes`; `sampled` is its event's
    /// sampling bits, `stack` its unwound stack if it came with one.
    pub fn allocated(&mut self, pointer: u64, bytes: u64, sampled: u16, stack: Option<Stack>) {
        self.before.forget(pointer);
        self.freed(pointer);
        if sampled & (SAMPLED_BYTES | SAMPLED_PAGE) == 0 {
            return;
        }
        let weight = if sampled & SAMPLED_BYTES != 0 {
            1.0 / self.sampling.probability(bytes)
        } else {
            0.0
        };
        let site = match stack {
            Some(stack) if sampled & STACK_MISSED == 0 => {
                self.stacks += 1;
                self.site(stack)
            }
            _ => {
                self.missed += 1;
                Holder::Unknown
            }
        };
        let figures = self.figures_mut(site);
        figures.alloc_objects += weight;
        figures.alloc_bytes += weight * bytes as f64;
        figures.hold(weight, weight * bytes as f64);
        self.chunks.insert(
            pointer,
            Held {
                site,
                bytes,
                weight,
            },
        );
    }

    /// The program gave the chunk at `pointer` back.
    pub fn freed(&mut self, pointer: u64) {
        self.before.forget(pointer);
        if let Some(held) = self.chunks.remove(&pointer) {
            let weight = held.weight;
            self.figures_mut(held.site)
                .release(weight, weight * held.bytes as f64);
        }
    }

    /// After a walk replaced the state (`map`): a sampled chunk, or one from before attach,
    /// that the map does not have live at its place and size is gone (its free was among
    /// events lost); its site no longer counts it. Returns how many were dropped.
    pub fn verify(&mut self, map: &HeapMap) -> u64 {
        let live = LiveLookup::new(map);
        let stale: Vec<u64> = (self.chunks.iter())
            .filter(|(pointer, held)| !live.has(**pointer, held.bytes))
            .map(|(pointer, _)| *pointer)
            .collect();
        for pointer in &stale {
            self.freed(*pointer);
        }
        let mut dropped = stale.len() as u64;
        for at in 0..self.before.chunks.len() {
            let (pointer, bytes) = self.before.chunks[at];
            if !self.before.gone[at] && !live.has(pointer, bytes) {
                self.before.forget_at(at);
                dropped += 1;
            }
        }
        dropped
    }

    /// Shares the pinned bytes of `map`'s pages in the pinning set out among the live chunks on
    /// each (in proportion to their live bytes there), each page counted for the pages it
    /// stands for.
    pub fn pin(&mut self, map: &HeapMap) {
        for site in &mut self.sites {
            site.figures.pinned_bytes = 0.0;
        }
        self.other.pinned_bytes = 0.0;
        self.unknown.pinned_bytes = 0.0;
        let (mut before_pinned, mut unattributed_pinned) = (0.0, 0.0);
        let page_size = self.sampling.page_size.max(GRANULE);
        let per_page = (page_size / GRANULE) as usize;
        let weight = self.sampling.page_weight();
        let header = map.geometry.chunk_header;
        for segment in &map.segments {
            for page in 0..segment.resident.len() {
                let page_start = segment.start + page as u64 * page_size;
                if !segment.resident[page] || !self.sampling.covers(page_start) {
                    continue;
                }
                let occupancy = segment.page_occupancy(page, per_page);
                if occupancy.live == 0 || occupancy.free == 0 {
                    continue;
                }
                let share = weight * occupancy.free as f64 / occupancy.live as f64;
                for run in segment.page_runs(page, per_page) {
                    if run.state != ChunkState::Live {
                        continue;
                    }
                    // A run is one chunk's (each chunk's first granule starts a run).
                    let start = if run.starts_chunk {
                        run.start
                    } else {
                        segment.chunk_start(run.start)
                    };
                    let pointer = segment.start + start as u64 * GRANULE + header;
                    let pinned = share * ((run.end - run.start) as u64 * GRANULE) as f64;
                    match self.chunks.get(&pointer) {
                        Some(held) => {
                            let site = held.site;
                            self.figures_mut(site).pinned_bytes += pinned;
                        }
                        None if self.before.position(pointer).is_some() => before_pinned += pinned,
                        None => unattributed_pinned += pinned,
                    }
                }
            }
        }
        self.before_pinned = before_pinned;
        self.unattributed_pinned = unattributed_pinned;
    }

    /// Every address of the sites' stacks, for their symbols.
    pub fn addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.sites
            .iter()
            .flat_map(|site| site.stack.frames.iter().copied())
    }

    /// What a sample carries: each site with its frames as `frame` describes each address;
    /// `since`: when the probes attached.
    pub fn report(
        &self,
        since: Option<SystemTime>,
        mut frame: impl FnMut(u64) -> Arc<Frame>,
    ) -> SitesReport {
        // Each table slot's index among the sites reported (those that count something).
        let mut shown = vec![None; self.sites.len()];
        let mut sites = Vec::new();
        for (slot, site) in self.sites.iter().enumerate() {
            if site.figures == SiteFigures::default() {
                continue;
            }
            shown[slot] = Some(sites.len() as u32);
            sites.push(SiteReport {
                frames: site.stack.frames.iter().map(|&a| frame(a)).collect(),
                truncated: site.stack.truncated,
                figures: site.figures,
            });
        }
        let mut chunks: Vec<(u64, u32)> = (self.chunks.iter())
            .filter_map(|(&pointer, held)| match held.site {
                Holder::Site { id, generation }
                    if self.sites[id as usize].generation == generation =>
                {
                    Some((pointer, shown[id as usize]?))
                }
                _ => None,
            })
            .take(MAX_CHUNKS_REPORTED)
            .collect();
        chunks.sort_unstable();
        SitesReport {
            chunks,
            since,
            sampling: self.sampling,
            sites,
            other: self.other,
            merged: self.merged,
            unknown: self.unknown,
            before_attach: SiteFigures {
                inuse_objects: self.before.objects as f64,
                inuse_bytes: self.before.bytes as f64,
                pinned_bytes: self.before_pinned,
                ..SiteFigures::default()
            },
            unattributed: SiteFigures {
                pinned_bytes: self.unattributed_pinned,
                ..SiteFigures::default()
            },
            stacks: self.stacks,
            missed: self.missed,
        }
    }

    /// The site of `stack`, made if new (merging the lightest into "other" if full).
    fn site(&mut self, stack: Stack) -> Holder {
        if let Some(&id) = self.index.get(&stack) {
            let generation = self.sites[id as usize].generation;
            return Holder::Site { id, generation };
        }
        let id = if self.sites.len() < self.capacity {
            self.sites.push(Site {
                stack: stack.clone(),
                figures: SiteFigures::default(),
                generation: 0,
            });
            (self.sites.len() - 1) as SiteId
        } else {
            let (id, lightest) = (self.sites.iter().enumerate())
                .min_by(|a, b| weight(&a.1.figures).total_cmp(&weight(&b.1.figures)))
                .expect("a full table has sites");
            self.other.add(&lightest.figures);
            self.merged += 1;
            self.index.remove(&lightest.stack);
            let site = &mut self.sites[id];
            site.generation += 1;
            site.figures = SiteFigures::default();
            site.stack = stack.clone();
            id as SiteId
        };
        self.index.insert(stack, id);
        let generation = self.sites[id as usize].generation;
        Holder::Site { id, generation }
    }

    fn figures_mut(&mut self, holder: Holder) -> &mut SiteFigures {
        match holder {
            Holder::Site { id, generation } => match self.sites.get_mut(id as usize) {
                Some(site) if site.generation == generation => &mut site.figures,
                _ => &mut self.other,
            },
            Holder::Unknown => &mut self.unknown,
        }
    }
}

/// A hasher for chunk pointers: a multiply and a shift (a pointer is no attacker's choice
/// here, and the default SipHash costs more than the rest of an event's work on the table).
#[derive(Default)]
struct PointerHasher(u64);

impl Hasher for PointerHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, pointer: u64) {
        // Chunks are 16-aligned: the low bits say nothing; the high ones go to the low ones.
        let mixed = (pointer >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = mixed ^ (mixed >> 32);
    }
}

/// What makes a site worth keeping: the memory it holds and pins now, then what it made.
fn weight(figures: &SiteFigures) -> f64 {
    figures.inuse_bytes + figures.pinned_bytes + figures.alloc_bytes * 1e-6
}

/// The live chunks of `map`: (user pointer, bytes), heap chunks by granule, then mmapped ones.
fn live_chunks(map: &HeapMap) -> Vec<(u64, u64)> {
    let header = map.geometry.chunk_header;
    let start = ChunkState::Live as u8 | CHUNK_START;
    let live = ChunkState::Live as u8;
    let mut chunks = Vec::new();
    for segment in &map.segments {
        let mut at = 0;
        let granules = &segment.granules;
        while at < granules.len() {
            if granules[at] != start {
                at += 1;
                continue;
            }
            let end = at
                + 1
                + granules[at + 1..]
                    .iter()
                    .take_while(|&&g| g == live)
                    .count();
            let address = segment.start + at as u64 * GRANULE;
            chunks.push((address + header, (end - at) as u64 * GRANULE));
            at = end;
        }
    }
    chunks.extend((map.mmapped.iter()).map(|chunk| (chunk.address + header, chunk.bytes)));
    chunks
}

/// Whether a map has a live chunk at a user pointer, of a size.
struct LiveLookup<'a> {
    map: &'a HeapMap,
    mmapped: HashMap<u64, u64>,
}

impl<'a> LiveLookup<'a> {
    fn new(map: &'a HeapMap) -> Self {
        let header = map.geometry.chunk_header;
        let mmapped = (map.mmapped.iter())
            .map(|chunk| (chunk.address + header, chunk.bytes))
            .collect();
        LiveLookup { map, mmapped }
    }

    fn has(&self, pointer: u64, bytes: u64) -> bool {
        if let Some(&mapped) = self.mmapped.get(&pointer) {
            return mapped == bytes;
        }
        let chunk = pointer.wrapping_sub(self.map.geometry.chunk_header);
        let Some(segment) = (self.map.segments.iter()).find(|s| s.start <= chunk && chunk < s.end)
        else {
            return false;
        };
        let first = ((chunk - segment.start) / GRANULE) as usize;
        let live = ChunkState::Live as u8;
        let granules = &segment.granules;
        let count = (bytes / GRANULE) as usize;
        granules.get(first) == Some(&(live | CHUNK_START))
            && granules
                .get(first + 1..first + count)
                .is_some_and(|rest| rest.iter().all(|&g| g == live))
            && granules.get(first + count).is_none_or(|&g| g != live)
    }
}

/// One frame of a site's stack, symbolised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// The address looked up (a return address minus one).
    pub address: u64,
    /// The mapped file it lies in, if any.
    pub module: Option<Arc<Module>>,
    /// Where it is in that file.
    pub file_offset: u64,
    /// The function and source line, innermost (inlined) first: the last is the function
    /// whose code it is. Empty if it could not be symbolised.
    pub lines: Vec<Line>,
}

/// A mapped file a frame lies in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Module {
    pub path: String,
    /// Hex.
    pub build_id: Option<String>,
    /// The mapping (the file's executable one) and the file offset at its start.
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Line {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// One site as a sample carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteReport {
    /// Innermost first.
    pub frames: Vec<Arc<Frame>>,
    pub truncated: bool,
    pub figures: SiteFigures,
}

impl SiteReport {
    /// The innermost frame of the program's own code: the first outside the C library (the
    /// first frame if every one is in it).
    pub fn own_frame(&self) -> Option<&Frame> {
        let in_libc = |frame: &&Arc<Frame>| {
            frame.module.as_ref().is_some_and(|m| {
                let name = m.path.rsplit('/').next().unwrap_or_default();
                name.starts_with("libc.so") || name.starts_with("libc-")
            })
        };
        let frames = &self.frames;
        frames
            .iter()
            .find(|f| !in_libc(f))
            .or(frames.first())
            .map(|f| &**f)
    }
}

impl SitesReport {
    /// How long the sites were traced, until `taken`.
    pub fn traced(&self, taken: SystemTime) -> std::time::Duration {
        (self.since)
            .and_then(|since| taken.duration_since(since).ok())
            .unwrap_or_default()
    }

    /// The heaviest sites by `measure`, at most `n`, heaviest first (none that weighs 0).
    pub fn top_by(&self, n: usize, measure: impl Fn(&SiteReport) -> f64) -> Vec<&SiteReport> {
        let mut sites: Vec<&SiteReport> = (self.sites.iter())
            .filter(|site| measure(site) > 0.0)
            .collect();
        sites.sort_by(|a, b| measure(b).total_cmp(&measure(a)));
        sites.truncate(n);
        sites
    }

    /// The `n` heaviest by live bytes, then those of the `n` heaviest by pinned bytes not
    /// among them.
    pub fn top(&self, n: usize) -> Vec<&SiteReport> {
        let mut top = self.top_by(n, |s| s.figures.inuse_bytes);
        for site in self.top_by(n, |s| s.figures.pinned_bytes) {
            if !top.iter().any(|t| std::ptr::eq(*t, site)) {
                top.push(site);
            }
        }
        top
    }
}

/// What a sample carries of the sites.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SitesReport {
    /// When the probes attached: `alloc_*` count from then.
    pub since: Option<SystemTime>,
    pub sampling: Sampling,
    pub sites: Vec<SiteReport>,
    /// The sites merged away to keep the table bounded, together.
    pub other: SiteFigures,
    pub merged: u64,
    /// Sampled allocations whose stack could not be copied.
    pub unknown: SiteFigures,
    /// The chunks live when the probes attached, exact (they have no stack).
    pub before_attach: SiteFigures,
    /// Pinned bytes only: those of live chunks on watched pages that no allocation of the
    /// program's made since attach (malloc's own, such as a thread's tcache).
    pub unattributed: SiteFigures,
    /// Stacks taken, and samples that missed theirs.
    pub stacks: u64,
    pub missed: u64,
    /// Sampled chunks still live and their site: (user pointer, index in `sites`), by
    /// pointer, at most [`MAX_CHUNKS_REPORTED`] (what the web view's heap map says on hover).
    pub chunks: Vec<(u64, u32)>,
}

/// The most sampled chunks a report names, so that a report stays small when every
/// allocation is sampled.
pub const MAX_CHUNKS_REPORTED: usize = 1 << 18;

impl SitesReport {
    /// The site whose sampled chunk has its user pointer at `pointer`.
    pub fn site_of_chunk(&self, pointer: u64) -> Option<&SiteReport> {
        let at = self.chunks.binary_search_by_key(&pointer, |c| c.0).ok()?;
        self.sites.get(self.chunks[at].1 as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pagealloc_common::{SAMPLED_BYTES, SAMPLED_PAGE, STACK_MISSED};

    use super::{Sampling, SiteTable, Stack};
    use crate::state::heap::{CHUNK_START, ChunkState, GRANULE, HeapMap, Segment};

    const HEAP: u64 = 0x5500_0000_0000;
    const PAGE: u64 = 0x1000;
    const HEADER: u64 = 16;

    /// One resident page of chunks (size, state) from HEAP, the rest of it top.
    fn map(chunks: &[(u64, ChunkState)]) -> HeapMap {
        let mut segment = Segment::new(HEAP, HEAP + PAGE, 0, PAGE);
        segment.resident[0] = true;
        let mut at = 0;
        let top = PAGE - chunks.iter().map(|c| c.0).sum::<u64>();
        for &(size, state) in chunks.iter().chain([&(top, ChunkState::Top)]) {
            let first = (at / GRANULE) as usize;
            let granules = (size / GRANULE) as usize;
            segment.granules[first..first + granules].fill(state as u8);
            segment.granules[first] |= CHUNK_START;
            at += size;
        }
        HeapMap::of_one_segment(segment, 0)
    }

    fn every() -> Sampling {
        Sampling {
            sample_bytes: 1,
            page_shift: 0,
            page_salt: 0,
            page_size: PAGE,
        }
    }

    fn stack(frame: u64) -> Option<Stack> {
        Some(Stack {
            frames: Arc::from([frame, 0x1000]),
            truncated: false,
        })
    }

    /// The figures of the site whose innermost frame is `frame`, as reported.
    fn figures(table: &SiteTable, frame: u64) -> super::SiteFigures {
        let report = table.report(None, |address| {
            Arc::new(super::Frame {
                address,
                ..Default::default()
            })
        });
        (report.sites.iter())
            .find(|s| s.frames[0].address == frame)
            .map(|s| s.figures)
            .unwrap_or_default()
    }

    /// A pointer `offset` bytes into the page.
    fn at(offset: u64) -> u64 {
        HEAP + offset + HEADER
    }

    #[test]
    fn the_chunks_live_at_attach_are_one_bucket_until_an_event_of_theirs() {
        let seed = map(&[(0x40, ChunkState::Live), (0x80, ChunkState::Live)]);
        let mut table = SiteTable::new(every(), 8, &seed);
        let bucket = |t: &SiteTable| t.report(None, |_| Arc::default()).before_attach;
        assert_eq!(
            (bucket(&table).inuse_objects, bucket(&table).inuse_bytes),
            (2.0, 192.0)
        );
        table.freed(at(0));
        assert_eq!(bucket(&table).inuse_bytes, 128.0);
        // Handed out again, its free among events lost: a newer chunk, not from before attach.
        table.allocated(at(0x40), 0x80, 0, None);
        assert_eq!(bucket(&table).inuse_bytes, 0.0);
        table.freed(at(0x40));
        assert_eq!(bucket(&table).inuse_objects, 0.0, "not taken away twice");
    }

    #[test]
    fn a_site_holds_its_chunks_until_they_are_freed_and_a_realloc_moves_them() {
        let mut table = SiteTable::new(every(), 8, &map(&[]));
        table.allocated(at(0), 64, SAMPLED_BYTES, stack(0xa));
        table.allocated(at(0x40), 128, SAMPLED_BYTES, stack(0xb));
        table.freed(at(0));
        let a = figures(&table, 0xa);
        assert_eq!((a.inuse_objects, a.inuse_bytes), (0.0, 0.0));
        assert_eq!((a.alloc_objects, a.alloc_bytes), (1.0, 64.0));
        // realloc: the old chunk's free, then the new chunk, the realloc's site's.
        table.freed(at(0x40));
        table.allocated(at(0x200), 256, SAMPLED_BYTES, stack(0xc));
        assert_eq!(figures(&table, 0xb).inuse_bytes, 0.0);
        assert_eq!(figures(&table, 0xc).inuse_bytes, 256.0);
    }

    /// A byte-sampled chunk stands for 1/p objects; one the page sampler alone picked counts
    /// for pinning only; one whose stack was not copied goes to `unknown`.
    #[test]
    fn the_weights_follow_what_picked_each_chunk() {
        let sampling = Sampling {
            sample_bytes: 1024,
            page_shift: 6,
            ..every()
        };
        let mut table = SiteTable::new(sampling, 8, &map(&[]));
        table.allocated(at(0), 64, SAMPLED_BYTES, stack(0xa));
        table.allocated(at(0x40), 64, SAMPLED_PAGE, stack(0xb));
        table.allocated(at(0x80), 64, SAMPLED_BYTES | STACK_MISSED, None);
        let p = 1.0 - (-64.0f64 / 1024.0).exp();
        let a = figures(&table, 0xa);
        assert!((a.inuse_objects - 1.0 / p).abs() < 1e-9, "{a:?}");
        assert!((a.inuse_bytes - 64.0 / p).abs() < 1e-9, "{a:?}");
        assert_eq!(figures(&table, 0xb).inuse_objects, 0.0);
        let report = table.report(None, |_| Arc::default());
        assert!((report.unknown.inuse_objects - 1.0 / p).abs() < 1e-9);
        assert_eq!((report.stacks, report.missed), (2, 1));
    }

    /// Past its capacity the table merges its lightest site into "other"; a chunk of the
    /// merged site is freed from "other", never from the site that took its slot.
    #[test]
    fn a_full_table_merges_the_lightest_site_into_other() {
        let mut table = SiteTable::new(every(), 2, &map(&[]));
        table.allocated(at(0), 1024, SAMPLED_BYTES, stack(0xa));
        table.allocated(at(0x400), 32, SAMPLED_BYTES, stack(0xb));
        table.allocated(at(0x500), 64, SAMPLED_BYTES, stack(0xc));
        let report = table.report(None, |_| Arc::default());
        assert_eq!(report.merged, 1);
        assert_eq!(report.other.inuse_bytes, 32.0);
        assert_eq!(report.sites.len(), 2);
        table.freed(at(0x400));
        let report = table.report(None, |_| Arc::default());
        assert_eq!(report.other.inuse_bytes, 0.0);
        assert_eq!(figures(&table, 0xc).inuse_bytes, 64.0);
    }

    /// A walk that does not have a sampled chunk live at its place and size (its free was
    /// lost) drops it from its site.
    #[test]
    fn a_walk_drops_the_chunks_it_does_not_have_live() {
        let mut table = SiteTable::new(every(), 8, &map(&[]));
        table.allocated(at(0), 0x40, SAMPLED_BYTES, stack(0xa));
        table.allocated(at(0x40), 0x40, SAMPLED_BYTES, stack(0xb));
        let walked = map(&[(0x40, ChunkState::Live), (0x40, ChunkState::Bin)]);
        assert_eq!(table.verify(&walked), 1);
        assert_eq!(figures(&table, 0xa).inuse_bytes, 64.0);
        assert_eq!(figures(&table, 0xb).inuse_bytes, 0.0);
        // Live at its place but of another size: not the chunk the site made.
        let other_size = map(&[(0x80, ChunkState::Live)]);
        assert_eq!(table.verify(&other_size), 1);
    }

    /// A page's pinned bytes (its free bytes but the free chunks' headers) go to the live
    /// chunks on it in proportion to their live bytes there, and add up to the map's figure.
    #[test]
    fn pinned_bytes_are_shared_by_live_bytes_on_each_page() {
        let heap = map(&[
            (0x40, ChunkState::Live),
            (0x200, ChunkState::Bin),
            (0x80, ChunkState::Live),
        ]);
        let mut table = SiteTable::new(every(), 8, &map(&[]));
        table.allocated(at(0), 0x40, SAMPLED_BYTES, stack(0xa));
        table.allocated(at(0x240), 0x80, SAMPLED_BYTES, stack(0xb));
        table.pin(&heap);
        let total = heap.segments[0].pinned_bytes(PAGE);
        let free = 0x200 - 0x10 + (PAGE - 0x2c0 - 0x10);
        assert_eq!(total, free);
        let (a, b) = (figures(&table, 0xa), figures(&table, 0xb));
        assert!((a.pinned_bytes - total as f64 / 3.0).abs() < 1e-6, "{a:?}");
        assert!(
            (b.pinned_bytes - total as f64 * 2.0 / 3.0).abs() < 1e-6,
            "{b:?}"
        );
        // A page out of the pinning set counts for nothing; in it, for the pages it stands for.
        let salted = |salt| Sampling {
            page_shift: 1,
            page_salt: salt,
            ..every()
        };
        let page = HEAP / PAGE;
        let (inside, outside) = (0..64)
            .map(|salt| (salt, pagealloc_common::page_sampled(page, salt, 1)))
            .fold((None, None), |(i, o), (salt, held)| {
                if held {
                    (i.or(Some(salt)), o)
                } else {
                    (i, o.or(Some(salt)))
                }
            });
        for (salt, weight) in [(inside.unwrap(), 2.0), (outside.unwrap(), 0.0)] {
            let mut table = SiteTable::new(salted(salt), 8, &map(&[]));
            table.allocated(at(0), 0x40, SAMPLED_PAGE, stack(0xa));
            table.allocated(at(0x240), 0x80, SAMPLED_PAGE, stack(0xb));
            table.pin(&heap);
            let pinned = figures(&table, 0xa).pinned_bytes + figures(&table, 0xb).pinned_bytes;
            assert!(
                (pinned - weight * total as f64).abs() < 1e-6,
                "salt {salt}: {pinned}"
            );
        }
    }
}
