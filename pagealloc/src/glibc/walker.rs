//! Walks every arena of a glibc process: the arena ring, every heap of every arena, every chunk
//! by its size word, then the fastbins, the bins and the mmapped chunks.
//!
//! The target may be running: every pointer, size and alignment is checked, every loop is
//! bounded, a spot that looks inconsistent is read again once, and what stays inconsistent is
//! counted as `unknown`, never guessed.
use super::layout::{Offsets, default_heap_max_size};
use crate::proc::memory::{ImageBuffer, Memory, ReadError};
use crate::state::heap::{
    AddressRange, Arena, CHUNK_START, ChunkState, GRANULE, HeapFigures, HeapMap, MmappedChunk,
    Segment,
};
use crate::state::pages::Mapping;

pub(crate) const PREV_INUSE: u64 = 1;
pub(crate) const IS_MMAPPED: u64 = 2;
pub(crate) use pagealloc_common::CHUNK_FLAG_BITS as FLAG_BITS;
/// glibc's default arena_max is 8 per core; this bounds a corrupted `next` ring.
const MAX_ARENAS: usize = 4096;
const MAX_HEAPS_PER_ARENA: usize = 4096;
/// A re-read after an inconsistency covers this much from the bad chunk on.
const REREAD_BYTES: u64 = 64 * 1024;
/// Re-reads per heap, at most: a target changing everywhere gets `unknown`, not an endless walk.
const MAX_REREADS: u32 = 1024;

/// What the walker needs to know about the target, all addresses at run time.
pub struct Target<'a> {
    pub memory: &'a dyn Memory,
    pub offsets: &'a Offsets,
    pub main_arena: u64,
    pub mp: u64,
    /// Address of libc's `tcache_key` (glibc ≥ 2.34).
    pub tcache_key: Option<u64>,
    /// The target's mappings, to find mmapped chunks.
    pub mappings: &'a [Mapping],
}

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot read {what} at {address:#x}: {reason}")]
    Unreadable {
        what: &'static str,
        address: u64,
        reason: &'static str,
    },
}

fn reason(e: ReadError) -> &'static str {
    match e {
        ReadError::NotResident => "its page is not resident (reading it would change the target)",
        ReadError::Failed => "the read failed (the process may have exited)",
    }
}

/// A heap segment's bytes as read (zeros where pages were not resident).
struct Image {
    start: u64,
    bytes: ImageBuffer,
    /// Whether each page was resident and read.
    resident: Vec<bool>,
    page_size: u64,
    page_shift: u32,
}

/// Reads of at most this size are spread over two threads (this many bytes per piece).
const READ_PIECE: u64 = 8 << 20;

impl Image {
    /// None if there is no room for the image.
    fn read(memory: &dyn Memory, start: u64, end: u64) -> Option<Image> {
        let page_size = memory.page_size();
        let mut image = Image {
            start,
            bytes: ImageBuffer::zeroed((end - start) as usize)?,
            resident: vec![false; (end - start).div_ceil(page_size) as usize],
            page_size,
            page_shift: page_size.trailing_zeros(),
        };
        image.load(memory);
        Some(image)
    }

    /// Reads the resident pages: one read per run of resident pages (in pieces, half of them on
    /// a second thread), never one per chunk.
    fn load(&mut self, memory: &dyn Memory) {
        let page = self.page_size;
        let piece_pages = (READ_PIECE / page) as usize;
        let mut pieces: Vec<(usize, usize)> = Vec::new(); // page ranges
        for index in 0..self.resident.len() {
            let resident = memory.is_resident(self.start + index as u64 * page);
            self.resident[index] = resident;
            if resident {
                match pieces.last_mut() {
                    Some(last) if last.1 == index && last.1 - last.0 < piece_pages => last.1 += 1,
                    _ => pieces.push((index, index + 1)),
                }
            }
        }
        // Disjoint slices of the buffer, one per piece.
        let mut jobs: Vec<(u64, &mut [u8], (usize, usize))> = Vec::with_capacity(pieces.len());
        let mut rest: &mut [u8] = &mut self.bytes;
        let mut consumed = 0;
        for &(lo, hi) in &pieces {
            let lo_byte = lo * page as usize;
            let hi_byte = (hi * page as usize).min(consumed + rest.len());
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(lo_byte - consumed);
            let (slice, tail) = tail.split_at_mut(hi_byte - lo_byte);
            rest = tail;
            consumed = hi_byte;
            jobs.push((self.start + lo_byte as u64, slice, (lo, hi)));
        }
        let read = |jobs: &mut [(u64, &mut [u8], (usize, usize))]| -> Vec<(usize, usize)> {
            jobs.iter_mut()
                .filter_map(|(addr, slice, range)| {
                    memory.read(*addr, slice).is_err().then_some(*range)
                })
                .collect()
        };
        let half = jobs.len() / 2;
        let (a, b) = jobs.split_at_mut(half);
        let failed: Vec<(usize, usize)> = if a.is_empty() {
            read(b)
        } else {
            std::thread::scope(|scope| {
                let other = scope.spawn(|| read(b));
                let mut failed = read(a);
                failed.extend(other.join().unwrap_or_default());
                failed
            })
        };
        for (lo, hi) in failed {
            self.resident[lo..hi].fill(false);
        }
    }

    /// The word at `addr`, if it lies in the image on a page that was read.
    fn word(&self, addr: u64) -> Option<u64> {
        let offset = addr.checked_sub(self.start)?;
        if offset + 8 > self.bytes.len() as u64
            || !self.resident[(offset >> self.page_shift) as usize]
        {
            return None;
        }
        let o = offset as usize;
        Some(u64::from_ne_bytes(self.bytes[o..o + 8].try_into().unwrap()))
    }

    fn is_resident(&self, addr: u64) -> bool {
        self.resident[((addr - self.start) >> self.page_shift) as usize]
    }

    fn covers(&self, addr: u64) -> bool {
        addr >= self.start && addr - self.start < self.bytes.len() as u64
    }
}

struct ArenaHeader {
    address: u64,
    top: u64,
    next: u64,
    system_mem: u64,
    fastbins: Vec<u64>,
    bins_address: u64,
    /// The `fd` word of each bin.
    bins: Vec<u64>,
}

/// The image holding `addr`.
fn image_of(images: &[Image], addr: u64) -> Option<&Image> {
    images.iter().find(|i| i.covers(addr))
}

struct Walker<'a> {
    t: &'a Target<'a>,
    o: &'a Offsets,
    notes: Vec<String>,
    tcache_key: Option<u64>,
}

pub fn walk(target: &Target) -> Result<HeapMap, WalkError> {
    let mut walker = Walker {
        t: target,
        o: target.offsets,
        notes: Vec::new(),
        tcache_key: None,
    };
    walker.walk()
}

impl<'a> Walker<'a> {
    fn read_u64(&self, what: &'static str, address: u64) -> Result<u64, WalkError> {
        self.t
            .memory
            .read_u64(address)
            .map_err(|e| WalkError::Unreadable {
                what,
                address,
                reason: reason(e),
            })
    }

    fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    fn aligned(&self, addr: u64) -> bool {
        addr.is_multiple_of(self.o.alignment)
    }

    fn walk(&mut self) -> Result<HeapMap, WalkError> {
        let o = self.o;
        let mp = self.t.mp;
        let sbrk_base = self.read_u64("mp_.sbrk_base", mp + o.mp_sbrk_base)?;
        let n_mmaps = self.read_u64("mp_.n_mmaps", mp + o.mp_n_mmaps)? & 0xffff_ffff;
        let mmapped_mem = self.read_u64("mp_.mmapped_mem", mp + o.mp_mmapped_mem)?;
        let hp_pagesize = match o.mp_hp_pagesize {
            Some(off) => self.read_u64("mp_.hp_pagesize", mp + off)?,
            None => 0,
        };
        // Heaps are 4 huge pages when the hugetlb tunable is set: a power of two, at most 1 GiB.
        let heap_max = match hp_pagesize {
            0 => default_heap_max_size(o.size_sz),
            p if p.is_power_of_two() && p <= 1 << 30 => 4 * p,
            p => {
                self.note(format!(
                    "mp_.hp_pagesize {p:#x} is corrupt: assuming no huge pages"
                ));
                default_heap_max_size(o.size_sz)
            }
        };
        self.tcache_key = match self.t.tcache_key {
            Some(addr) => Some(self.read_u64("tcache_key", addr)?),
            None => {
                self.note("this glibc has no tcache_key: tcache chunks are counted as live".into());
                None
            }
        };

        let headers = self.arenas()?;
        let mut segments: Vec<Segment> = Vec::new();
        let mut images = Vec::new();
        let arenas: Vec<Arena> = headers
            .iter()
            .enumerate()
            .map(|(index, header)| {
                let heaps = if header.address == self.t.main_arena {
                    self.main_heap(header, sbrk_base)
                } else {
                    self.arena_heaps(header, heap_max)
                };
                self.walk_arena(index, header, heaps, &mut segments, &mut images)
            })
            .collect();
        // Unmapping a gigabyte of images takes tens of milliseconds: not on the caller's time.
        std::thread::spawn(move || drop(images));

        let mmapped = self.mmapped_chunks(&segments);
        let mmapped_bytes: u64 = mmapped.iter().map(|c| c.bytes).sum();
        if mmapped.len() as u64 != n_mmaps || mmapped_bytes != mmapped_mem {
            self.note(format!(
                "found {} mmapped chunks of {} bytes, glibc counts {} of {} (mp_.n_mmaps, \
                 mp_.mmapped_mem): the target changed during the snapshot, or a mapping looked \
                 like a chunk",
                mmapped.len(),
                mmapped_bytes,
                n_mmaps,
                mmapped_mem
            ));
        }
        let mut totals = HeapFigures::default();
        for arena in &arenas {
            totals.add(&arena.figures);
        }
        Ok(HeapMap {
            arenas,
            mmapped_chunks: mmapped.len() as u64,
            mmapped_bytes,
            totals,
            notes: std::mem::take(&mut self.notes),
            mmapped,
            segments,
        })
    }

    /// Reads and walks every heap of one arena and follows its fastbins and bins (through the
    /// images read, not with a read per chunk). The images are handed back for the caller to drop.
    fn walk_arena(
        &mut self,
        index: usize,
        header: &ArenaHeader,
        mut heaps: Vec<(u64, u64, u64)>,
        segments: &mut Vec<Segment>,
        images: &mut Vec<Image>,
    ) -> Arena {
        let o = self.o;
        let mut figures = HeapFigures {
            system_bytes: header.system_mem,
            ..HeapFigures::default()
        };
        let mut arena_images = Vec::with_capacity(heaps.len());
        heaps.retain(|&(start, end, _)| {
            let started = std::time::Instant::now();
            let Some(image) = Image::read(self.t.memory, start, end) else {
                self.note(format!(
                    "no room to copy the {} bytes of the heap at {start:#x}: it is not shown",
                    end - start
                ));
                return false;
            };
            log::debug!(
                "read {} KiB of heap at {start:#x} in {:?}",
                (end - start) / 1024,
                started.elapsed()
            );
            arena_images.push(image);
            true
        });
        // The fastbin and bin lists are followed through the images on a second thread while
        // the heaps are walked (re-reads during the walk leave the images as they are).
        let first = segments.len();
        let lists = std::thread::scope(|scope| {
            let lists = scope.spawn(|| follow_free_lists(o, header, &arena_images));
            for (&(start, end, first_chunk), image) in heaps.iter().zip(&arena_images) {
                let mut segment = Segment::new(start, end, index, self.t.memory.page_size());
                self.walk_segment(&mut segment, image, first_chunk, header.top, &mut figures);
                segments.push(segment);
            }
            log::debug!("arena {:#x} walked", header.address);
            lists.join().unwrap_or_else(|_| Lists {
                broken: vec!["following the free lists failed".into()],
                ..Lists::default()
            })
        });
        for why in &lists.broken {
            self.note(why.clone());
        }
        self.apply_fastbins(
            header,
            &lists.fastbin_chunks,
            &mut segments[first..],
            &arena_images,
            &mut figures,
        );
        if lists.broken.is_empty()
            && (lists.bin_chunks, lists.bin_bytes) != (figures.bin_chunks, figures.bin_bytes)
        {
            self.note(format!(
                "arena {:#x}: the bins hold {} chunks of {} bytes, the walk found {} free chunks \
                 of {} bytes: the target changed during the snapshot",
                header.address,
                lists.bin_chunks,
                lists.bin_bytes,
                figures.bin_chunks,
                figures.bin_bytes
            ));
        }
        log::debug!("arena {:#x}: fastbins and bins followed", header.address);
        let mut arena_images = arena_images;
        for (segment, image) in segments[first..].iter_mut().zip(&mut arena_images) {
            segment.resident = std::mem::take(&mut image.resident);
        }
        images.extend(arena_images);
        figures.finish();
        Arena {
            address: header.address,
            main: header.address == self.t.main_arena,
            heaps: heaps
                .iter()
                .map(|&(start, end, _)| AddressRange { start, end })
                .collect(),
            figures,
        }
    }

    /// The arena ring, from `main_arena` along `next`.
    fn arenas(&mut self) -> Result<Vec<ArenaHeader>, WalkError> {
        let mut headers: Vec<ArenaHeader> = Vec::new();
        let mut address = self.t.main_arena;
        loop {
            let header = match self.arena_header(address) {
                Ok(header) => header,
                Err(e) if address == self.t.main_arena => return Err(e),
                // A new arena whose pages were not resident when the page map was read.
                Err(e) => {
                    self.note(format!("{e}: this arena and those after it are not shown"));
                    break;
                }
            };
            let next = header.next;
            headers.push(header);
            if next == self.t.main_arena {
                break;
            }
            if next == 0 || !self.aligned(next) || headers.iter().any(|h| h.address == next) {
                self.note(format!(
                    "the arena list is broken after {address:#x} (next = {next:#x}): arenas past \
                     it are not shown"
                ));
                break;
            }
            if headers.len() >= MAX_ARENAS {
                self.note(format!(
                    "more than {MAX_ARENAS} arenas: the rest are not shown"
                ));
                break;
            }
            address = next;
        }
        Ok(headers)
    }

    fn arena_header(&self, address: u64) -> Result<ArenaHeader, WalkError> {
        let o = self.o;
        let mut bytes = vec![0u8; o.state_size as usize];
        self.t
            .memory
            .read(address, &mut bytes)
            .map_err(|e| WalkError::Unreadable {
                what: "malloc_state",
                address,
                reason: reason(e),
            })?;
        let word = |off: u64| {
            let o = off as usize;
            u64::from_ne_bytes(bytes[o..o + 8].try_into().unwrap())
        };
        Ok(ArenaHeader {
            address,
            top: word(o.state_top),
            next: word(o.state_next),
            system_mem: word(o.state_system_mem),
            fastbins: (0..o.state_fastbin_count)
                .map(|i| word(o.state_fastbins + i * o.size_sz))
                .collect(),
            bins_address: address + o.state_bins,
            bins: (0..o.state_bin_count / 2)
                .map(|i| word(o.state_bins + 2 * i * o.size_sz))
                .collect(),
        })
    }

    /// The main arena's brk heap: (start, end, first chunk).
    fn main_heap(&mut self, header: &ArenaHeader, sbrk_base: u64) -> Vec<(u64, u64, u64)> {
        if sbrk_base == 0 || header.top == 0 {
            return Vec::new(); // the main arena never allocated
        }
        let top_size = header
            .top
            .checked_add(self.o.chunk_size)
            .and_then(|at| self.t.memory.read_u64(at).ok());
        let Some(top_size) = top_size else {
            self.note("the main arena's top chunk is unreadable".into());
            return Vec::new();
        };
        let Some(mapped_end) = self.mapped_end(sbrk_base) else {
            self.note(format!("sbrk_base {sbrk_base:#x} is not in a mapping"));
            return Vec::new();
        };
        if header.top < sbrk_base || header.top >= mapped_end || !self.aligned(header.top) {
            self.note(format!(
                "the main arena's top chunk {:#x} is not in its heap from sbrk_base \
                 {sbrk_base:#x} (corrupt, or the main arena is not contiguous): its heap is not \
                 shown",
                header.top
            ));
            return Vec::new();
        }
        // The heap ends with top; a top that claims more than is mapped is inconsistent, and
        // the walk says so when it gets there.
        let end = header.top.saturating_add(top_size & !FLAG_BITS);
        if end > mapped_end {
            self.note(format!(
                "the main arena's top chunk {:#x} runs past its mapping (to {end:#x})",
                header.top
            ));
        }
        vec![(
            sbrk_base,
            end.min(mapped_end),
            self.first_chunk_at(sbrk_base),
        )]
    }

    /// The end of the mapped memory that contains `addr` (adjacent mappings joined).
    fn mapped_end(&self, addr: u64) -> Option<u64> {
        let maps = self.t.mappings;
        let mut end = maps.iter().find(|m| m.start <= addr && addr < m.end)?.end;
        // Bounded: each step moves `end` to the end of another mapping.
        for _ in 0..maps.len() {
            match maps.iter().find(|m| m.start == end) {
                Some(next) => end = next.end,
                None => break,
            }
        }
        Some(end)
    }

    /// The first chunk at or after `addr` whose user pointer is aligned.
    fn first_chunk_at(&self, addr: u64) -> u64 {
        let header = 2 * self.o.size_sz;
        (addr + header).next_multiple_of(self.o.alignment) - header
    }

    /// A non-main arena's heaps, newest (the one holding top) first.
    fn arena_heaps(&mut self, header: &ArenaHeader, heap_max: u64) -> Vec<(u64, u64, u64)> {
        let o = self.o;
        let mut heaps = Vec::new();
        let mut heap = header.top & !(heap_max - 1);
        while heap != 0 {
            let (Ok(ar_ptr), Ok(prev), Ok(size)) = (
                self.t.memory.read_u64(heap + o.heap_info_ar_ptr),
                self.t.memory.read_u64(heap + o.heap_info_prev),
                self.t.memory.read_u64(heap + o.heap_info_size_field),
            ) else {
                self.note(format!("heap_info at {heap:#x} is unreadable"));
                break;
            };
            if heaps.iter().any(|&(h, _, _)| h == heap) {
                self.note(format!(
                    "heap_info.prev of arena {:#x} loops back to {heap:#x}",
                    header.address
                ));
                break;
            }
            if ar_ptr != header.address
                || size < o.heap_info_size
                || size > heap_max
                || self.mapped_end(heap).is_none_or(|end| heap + size > end)
            {
                self.note(format!(
                    "heap_info at {heap:#x} does not belong to arena {:#x}: the heaps past it \
                     are not shown",
                    header.address
                ));
                break;
            }
            // The first heap holds the malloc_state right after heap_info.
            let first = if header.address == heap + o.heap_info_size {
                self.first_chunk_at(header.address + o.state_size)
            } else {
                heap + o.heap_info_size
            };
            if first >= heap + size {
                self.note(format!(
                    "heap_info.size at {heap:#x} ({size:#x}) leaves no room for chunks"
                ));
                break;
            }
            heaps.push((heap, heap + size, first));
            if prev % heap_max != 0 || heaps.len() >= MAX_HEAPS_PER_ARENA {
                if prev != 0 {
                    self.note(format!(
                        "heap_info.prev at {heap:#x} is corrupt ({prev:#x})"
                    ));
                }
                break;
            }
            heap = prev;
        }
        heaps
    }

    fn walk_segment(
        &mut self,
        segment: &mut Segment,
        image: &Image,
        first: u64,
        top: u64,
        figures: &mut HeapFigures,
    ) {
        let o = self.o;
        let mut view = View { image, fresh: None };
        if first > segment.start {
            self.count(
                segment,
                &view,
                figures,
                segment.start,
                first - segment.start,
                ChunkState::Overhead,
            );
        }
        let mut p = first;
        // Where a re-read was last tried: an inconsistency is read again once, not forever.
        let mut retried_at: Option<u64> = None;
        let mut rereads = 0;
        // The chunk counted just before `p`, if a regular one: its size led to `p`, so it is read
        // again when `p` is bad.
        let mut last: Option<(u64, u64, ChunkState)> = None;
        while p < segment.end {
            if p == top {
                // Top is the last chunk of its heap: it must end exactly there.
                let size = view
                    .word(p + o.chunk_size)
                    .map(|w| w & !FLAG_BITS)
                    .filter(|&s| s >= o.min_size && s <= segment.end - p);
                match size {
                    Some(size) => self.count(segment, &view, figures, p, size, ChunkState::Top),
                    None => self.note(format!("the top chunk at {top:#x} is inconsistent")),
                }
                let size = size.unwrap_or(0);
                if p + size < segment.end {
                    if size > 0 {
                        self.note(format!(
                            "the top chunk at {top:#x} does not end its heap at {:#x}",
                            segment.end
                        ));
                    }
                    self.count(
                        segment,
                        &view,
                        figures,
                        p + size,
                        segment.end - p - size,
                        ChunkState::Unknown,
                    );
                }
                break;
            }
            match self.classify(&view, segment, p, top) {
                Some(Chunk::Fencepost(size)) => {
                    self.count(segment, &view, figures, p, size, ChunkState::Overhead);
                    last = None;
                    p += size;
                }
                Some(Chunk::Regular(size, state)) => {
                    self.count(segment, &view, figures, p, size, state);
                    last = Some((p, size, state));
                    p += size;
                }
                None if retried_at != Some(p) && rereads < MAX_REREADS => {
                    // The target may have been changing this spot: read it again, once, from the
                    // chunk whose (perhaps stale) size led here.
                    retried_at = Some(p);
                    rereads += 1;
                    if let Some((addr, size, state)) = last.take() {
                        self.uncount(&view, figures, addr, size, state);
                        p = addr;
                    }
                    let page = self.t.memory.page_size();
                    let from = p - (p - segment.start) % page;
                    let to = (p + REREAD_BYTES).min(segment.end);
                    view.fresh = Image::read(self.t.memory, from, to);
                }
                None => {
                    let stop = if top > p && top < segment.end {
                        top
                    } else {
                        segment.end
                    };
                    self.note(format!(
                        "inconsistent chunk at {p:#x} (not resident, or changed while read): \
                         {} bytes up to {stop:#x} are unknown; --stop gives a consistent view",
                        stop - p
                    ));
                    self.count(segment, &view, figures, p, stop - p, ChunkState::Unknown);
                    last = None;
                    p = stop;
                }
            }
        }
    }

    /// Classifies the chunk at `p`; None if its header is unreadable or makes no sense.
    fn classify(&self, view: &View, segment: &Segment, p: u64, top: u64) -> Option<Chunk> {
        let o = self.o;
        let size = view.word(p + o.chunk_size)? & !FLAG_BITS;
        // Old heaps end with two fenceposts: a chunk of just a header, then one of size 0 that
        // covers the last (less than MINSIZE) bytes. Anywhere else such sizes are corrupt.
        let header = 2 * o.size_sz;
        let left = segment.end - p;
        if size == 0 && left < o.min_size + header {
            return Some(Chunk::Fencepost(left));
        }
        if size == header && left < o.min_size + 2 * header {
            return Some(Chunk::Fencepost(size));
        }
        if size < o.min_size || !size.is_multiple_of(o.alignment) || size > segment.end - p {
            return None;
        }
        let next = p + size;
        if next > top && p < top {
            return None; // a chunk cannot straddle top
        }
        let next_size = view.word(next + o.chunk_size)?;
        let state = if next_size & PREV_INUSE == 0 {
            ChunkState::Bin
        } else if self.is_tcache(view, p) {
            ChunkState::Tcache
        } else {
            ChunkState::Live
        };
        Some(Chunk::Regular(size, state))
    }

    /// tcache entries carry `key == tcache_key` and a (protected) link to another entry.
    fn is_tcache(&self, view: &View, p: u64) -> bool {
        let (Some(key), Some(key_offset)) = (self.tcache_key, self.o.tcache_key) else {
            return false;
        };
        let user = p + 2 * self.o.size_sz;
        if view.word(user + key_offset) != Some(key) {
            return false;
        }
        view.word(user)
            .is_some_and(|next| self.aligned(reveal(self.o, user, next)))
    }

    fn count(
        &self,
        segment: &mut Segment,
        view: &View,
        figures: &mut HeapFigures,
        addr: u64,
        size: u64,
        state: ChunkState,
    ) {
        segment.mark(addr, size, state);
        figures.count(state, size);
        let (resident, trimmable) = self.residency(view, addr, size, state);
        figures.free_resident_bytes += resident;
        figures.trimmable_bytes += trimmable;
    }

    /// Takes back a chunk counted by [`Self::count`] (its granules are marked anew by the walk).
    fn uncount(
        &self,
        view: &View,
        figures: &mut HeapFigures,
        addr: u64,
        size: u64,
        state: ChunkState,
    ) {
        figures.uncount(state, size);
        let (resident, trimmable) = self.residency(view, addr, size, state);
        figures.free_resident_bytes = figures.free_resident_bytes.saturating_sub(resident);
        figures.trimmable_bytes = figures.trimmable_bytes.saturating_sub(trimmable);
    }

    /// For a free or cached chunk: its interior bytes on resident pages, and the whole resident
    /// pages `malloc_trim(0)` could release from it.
    fn residency(&self, view: &View, addr: u64, size: u64, state: ChunkState) -> (u64, u64) {
        if !state.is_free() {
            return (0, 0);
        }
        // Page sizes are powers of two: masks, not divisions (this runs for every free chunk).
        let mask = self.t.memory.page_size() - 1;
        let end = addr + size;
        let mut resident = 0;
        let mut pos = addr + 2 * self.o.size_sz;
        while pos < end {
            let stop = ((pos | mask) + 1).min(end);
            if view.is_resident(pos) {
                resident += stop - pos;
            }
            pos = stop;
        }
        let mut trimmable = 0;
        // tcache chunks stay cached: malloc_trim does not release them. It keeps the
        // malloc_chunk struct at the front of the others and releases their whole pages.
        if state != ChunkState::Tcache {
            let mut pos = (addr + self.o.chunk_struct_size + mask) & !mask;
            while pos + mask < end {
                if view.is_resident(pos) {
                    trimmable += mask + 1;
                }
                pos += mask + 1;
            }
        }
        (resident, trimmable)
    }

    /// Recounts the chunks found on the fastbin lists: they look in use to the walk.
    fn apply_fastbins(
        &mut self,
        header: &ArenaHeader,
        chunks: &[(u64, u64)],
        segments: &mut [Segment],
        images: &[Image],
        figures: &mut HeapFigures,
    ) {
        for (i, &(chunk, size)) in chunks.iter().enumerate() {
            if i > 0 && chunks[i - 1].0 == chunk {
                continue; // on two lists (or twice on one): counted once, the list noted
            }
            let Some(index) = segments.iter().position(|s| s.contains(chunk)) else {
                continue; // follow_free_lists only returns chunks inside the images
            };
            let segment = &mut segments[index];
            let granule = ((chunk - segment.start) / GRANULE) as usize;
            // The walk must have found a live chunk of this very size here.
            let next = granule + (size / GRANULE) as usize;
            let same_extent = size >= self.o.min_size
                && size <= segment.end - chunk
                && segment
                    .granules
                    .get(next)
                    .is_none_or(|g| g & CHUNK_START != 0)
                && !segment.granules[granule + 1..next]
                    .iter()
                    .any(|g| g & CHUNK_START != 0);
            if segment.granules[granule] != CHUNK_START | ChunkState::Live as u8 || !same_extent {
                self.note(format!(
                    "fastbin chunk {chunk:#x} of arena {:#x} is not a chunk in use to the walk: \
                     the target changed during the snapshot",
                    header.address
                ));
                continue;
            }
            figures.uncount(ChunkState::Live, size);
            let view = View {
                image: &images[index],
                fresh: None,
            };
            self.count(segment, &view, figures, chunk, size, ChunkState::Fastbin);
        }
    }

    /// mmapped chunks are linked from nowhere: look for their headers at the start of anonymous
    /// mappings outside the heaps.
    fn mmapped_chunks(&self, segments: &[Segment]) -> Vec<MmappedChunk> {
        let o = self.o;
        let page = self.t.memory.page_size();
        let mut found = Vec::new();
        for m in self.t.mappings {
            if m.perms != "rw-p"
                || !m.path.is_empty()
                || segments.iter().any(|s| s.start < m.end && m.start < s.end)
            {
                continue;
            }
            let mut base = m.start;
            while base < m.end {
                let Some((offset, size)) = self.mmapped_header(base, page) else {
                    break;
                };
                let fits = offset
                    .checked_add(size)
                    .filter(|total| total.is_multiple_of(page) && *total <= m.end - base);
                let Some(total) = fits.filter(|_| size >= o.min_size) else {
                    break;
                };
                found.push(MmappedChunk {
                    address: base + offset,
                    bytes: total,
                });
                base += total;
            }
        }
        found
    }

    /// The header of an mmapped chunk in the first page at `base`: (prev_size, size). The
    /// chunk sits at `base + prev_size` (memalign may have moved it up).
    fn mmapped_header(&self, base: u64, page: u64) -> Option<(u64, u64)> {
        let mut first_page = vec![0u8; page as usize];
        self.t.memory.read(base, &mut first_page).ok()?;
        let word = |o: u64| {
            let o = o as usize;
            u64::from_ne_bytes(first_page[o..o + 8].try_into().unwrap())
        };
        let mut offset = 0;
        while offset + 2 * self.o.size_sz <= page {
            let prev = word(offset + self.o.chunk_size - self.o.size_sz);
            let size = word(offset + self.o.chunk_size);
            if prev == offset && size & FLAG_BITS == IS_MMAPPED {
                return Some((offset, size & !FLAG_BITS));
            }
            if offset == 0 && (prev != 0 || size != 0) {
                return None; // data at the very start: not a chunk moved up by memalign
            }
            offset += self.o.alignment;
        }
        None
    }
}

/// Undoes safe-linking: the link stored at `position` is `(position >> 12) ^ pointer`.
fn reveal(o: &Offsets, position: u64, stored: u64) -> u64 {
    if o.safe_linking {
        (position >> 12) ^ stored
    } else {
        stored
    }
}

/// Follows several linked lists side by side, one step of each in turn: their loads are
/// independent, so the memory system serves several at once. `step(list, node)` returns the next
/// node, None at the end of the list, or why the list cannot be followed further. Each list is
/// checked for cycles (Brent's algorithm: no extra reads), so a corrupted list ends in bounded
/// time. Returns why each broken list broke.
fn follow_lists(
    starts: Vec<(usize, u64)>,
    mut step: impl FnMut(usize, u64) -> Result<Option<u64>, String>,
) -> Vec<String> {
    struct Cursor {
        list: usize,
        node: u64,
        tortoise: u64,
        power: u64,
        steps: u64,
    }
    let mut cursors: Vec<Cursor> = starts
        .into_iter()
        .map(|(list, node)| Cursor {
            list,
            node,
            tortoise: node,
            power: 1,
            steps: 0,
        })
        .collect();
    let mut broken = Vec::new();
    while !cursors.is_empty() {
        let mut i = 0;
        while i < cursors.len() {
            let c = &mut cursors[i];
            let next = match step(c.list, c.node) {
                Ok(Some(next)) if next == c.tortoise => Err(format!("cyclic at {next:#x}")),
                other => other,
            };
            match next {
                Ok(Some(next)) => {
                    c.node = next;
                    c.steps += 1;
                    if c.steps == c.power {
                        c.tortoise = next;
                        c.power *= 2;
                        c.steps = 0;
                    }
                    i += 1;
                }
                Ok(None) => {
                    cursors.swap_remove(i);
                }
                Err(why) => {
                    broken.push(why);
                    cursors.swap_remove(i);
                }
            }
        }
    }
    broken
}

/// The size word and first link of the chunk at `chunk`, from whichever image holds it.
fn chunk_words(o: &Offsets, images: &[Image], chunk: u64) -> Result<(u64, u64), String> {
    image_of(images, chunk)
        .filter(|_| chunk.is_multiple_of(o.alignment))
        .and_then(|image| {
            Some((
                image.word(chunk + o.chunk_size)?,
                image.word(chunk + o.chunk_fd)?,
            ))
        })
        .ok_or_else(|| format!("points at {chunk:#x}, not a chunk of its heaps"))
}

/// What the arena's free lists hold.
#[derive(Default)]
struct Lists {
    /// Every chunk met on a fastbin list, with its size word (read already: no second trip to
    /// the image, whose pages mostly miss the TLB by then), in address order.
    fastbin_chunks: Vec<(u64, u64)>,
    /// Chunks and bytes on the bins (unsorted, small, large): the walk must find the same free.
    bin_chunks: u64,
    bin_bytes: u64,
    /// Why lists broke off.
    broken: Vec<String>,
}

/// Follows the arena's fastbin and bin lists through the heap images, all side by side.
fn follow_free_lists(o: &Offsets, header: &ArenaHeader, images: &[Image]) -> Lists {
    let mut lists = Lists::default();
    let fastbins = header.fastbins.len();
    // bin_at(i) is a fake chunk inside malloc_state whose fd/bk are the bin's two words.
    let bin_head = |bin: usize| header.bins_address + bin as u64 * 2 * o.size_sz - o.chunk_fd;
    let starts = (header.fastbins.iter().copied().enumerate())
        .filter(|&(_, head)| head != 0)
        .chain(
            (header.bins.iter().copied().enumerate())
                .filter(|&(bin, first)| first != bin_head(bin))
                .map(|(bin, first)| (fastbins + bin, first)),
        )
        .collect();
    let broken = follow_lists(starts, |list, chunk| {
        let (size, link) = chunk_words(o, images, chunk)?;
        if list < fastbins {
            lists.fastbin_chunks.push((chunk, size & !FLAG_BITS));
            let next = reveal(o, chunk + o.chunk_fd, link);
            Ok((next != 0).then_some(next))
        } else {
            lists.bin_chunks += 1;
            lists.bin_bytes = lists.bin_bytes.saturating_add(size & !FLAG_BITS);
            Ok((link != bin_head(list - fastbins)).then_some(link))
        }
    });
    // In address order the recount touches the granule map in order too; sorted here, off the
    // walk's thread.
    lists.fastbin_chunks.sort_unstable();
    lists.broken = broken
        .into_iter()
        .map(|why| {
            format!(
                "a free list of arena {:#x} is corrupt: {why}",
                header.address
            )
        })
        .collect();
    lists
}

/// What the walk reads: the heap image, and a window read again after an inconsistency.
struct View<'i> {
    image: &'i Image,
    fresh: Option<Image>,
}

impl View<'_> {
    fn source(&self, addr: u64) -> &Image {
        match &self.fresh {
            Some(fresh) if fresh.covers(addr) => fresh,
            _ => self.image,
        }
    }

    fn word(&self, addr: u64) -> Option<u64> {
        self.source(addr).word(addr)
    }

    fn is_resident(&self, addr: u64) -> bool {
        self.source(addr).is_resident(addr)
    }
}

enum Chunk {
    Fencepost(u64),
    Regular(u64, ChunkState),
}
