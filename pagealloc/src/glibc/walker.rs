//! Walks every arena of a glibc process: the arena ring, every heap of every arena, every chunk
//! by its size word, then the fastbins, the bins and the mmapped chunks.
//!
//! The target may be running: every pointer, size and alignment is checked, every loop is
//! bounded, a spot that looks inconsistent is read again once, and what stays inconsistent is
//! counted as `unknown`, never guessed.
use std::collections::HashSet;

use super::layout::{Offsets, default_heap_max_size};
use crate::proc::memory::{Memory, ReadError};
use crate::state::heap::{
    AddressRange, Arena, CHUNK_START, ChunkState, HeapFigures, HeapMap, MmappedChunk, Segment,
};
use crate::state::pages::Mapping;

const PREV_INUSE: u64 = 1;
const IS_MMAPPED: u64 = 2;
const FLAG_BITS: u64 = 7;
/// glibc's default arena_max is 8 per core; this bounds a corrupted `next` ring.
const MAX_ARENAS: usize = 4096;
const MAX_HEAPS_PER_ARENA: usize = 4096;
/// A re-read after an inconsistency covers this much from the bad chunk on.
const REREAD_BYTES: u64 = 64 * 1024;

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
    bytes: Vec<u8>,
    page_size: u64,
}

impl Image {
    fn read(memory: &dyn Memory, segment: &mut Segment) -> Image {
        let page_size = memory.page_size();
        let mut image = Image {
            start: segment.start,
            bytes: vec![0; (segment.end - segment.start) as usize],
            page_size,
        };
        image.load(memory, segment, segment.start, segment.end);
        image
    }

    /// (Re-)reads the resident pages of `from..to`, in runs: one read per run, not per chunk.
    fn load(&mut self, memory: &dyn Memory, segment: &mut Segment, from: u64, to: u64) {
        let page = self.page_size;
        let first = (from - self.start) / page;
        let last = (to - self.start).div_ceil(page);
        let mut index = first;
        while index < last {
            if !memory.is_resident(self.start + index * page) {
                segment.resident[index as usize] = false;
                index += 1;
                continue;
            }
            let mut end = index + 1;
            while end < last && memory.is_resident(self.start + end * page) {
                end += 1;
            }
            let lo = (index * page) as usize;
            let hi = ((end * page) as usize).min(self.bytes.len());
            let ok = memory
                .read(self.start + lo as u64, &mut self.bytes[lo..hi])
                .is_ok();
            segment.resident[index as usize..end as usize].fill(ok);
            index = end;
        }
    }

    /// The word at `addr`, if it lies in the image on a page that was read.
    fn word(&self, segment: &Segment, addr: u64) -> Option<u64> {
        let offset = addr.checked_sub(self.start)?;
        if offset + 8 > self.bytes.len() as u64
            || !segment.resident[(offset / self.page_size) as usize]
        {
            return None;
        }
        let o = offset as usize;
        Some(u64::from_ne_bytes(self.bytes[o..o + 8].try_into().unwrap()))
    }
}

struct ArenaHeader {
    address: u64,
    top: u64,
    system_mem: u64,
    fastbins: Vec<u64>,
    bins_address: u64,
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
        addr % self.o.alignment == 0
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
        let heap_max = if hp_pagesize == 0 {
            default_heap_max_size(o.size_sz)
        } else {
            4 * hp_pagesize
        };
        self.tcache_key = match self.t.tcache_key {
            Some(addr) => Some(self.read_u64("tcache_key", addr)?),
            None => {
                self.note("this glibc has no tcache_key: tcache chunks are counted as live".into());
                None
            }
        };

        let headers = self.arenas()?;
        let mut arenas = Vec::with_capacity(headers.len());
        let mut segments: Vec<Segment> = Vec::new();
        for (index, header) in headers.iter().enumerate() {
            let main = header.address == self.t.main_arena;
            let mut figures = HeapFigures {
                system_bytes: header.system_mem,
                ..HeapFigures::default()
            };
            let first_segment = segments.len();
            let heaps = if main {
                self.main_heap(header, sbrk_base)
            } else {
                self.arena_heaps(header, heap_max)
            };
            for (start, end, first_chunk) in &heaps {
                let mut segment = Segment::new(*start, *end, index, self.t.memory.page_size());
                self.walk_segment(&mut segment, *first_chunk, header.top, &mut figures);
                segments.push(segment);
            }
            self.fastbins(header, &mut segments[first_segment..], &mut figures);
            self.check_bins(header, &segments[first_segment..], &figures);
            figures.finish();
            arenas.push(Arena {
                address: header.address,
                main,
                heaps: heaps
                    .iter()
                    .map(|&(start, end, _)| AddressRange { start, end })
                    .collect(),
                figures,
            });
        }

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

    /// The arena ring, from `main_arena` along `next`.
    fn arenas(&mut self) -> Result<Vec<ArenaHeader>, WalkError> {
        let mut headers: Vec<ArenaHeader> = Vec::new();
        let mut address = self.t.main_arena;
        loop {
            let header = self.arena_header(address)?;
            let next = self.read_u64("malloc_state.next", address + self.o.state_next)?;
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
            system_mem: word(o.state_system_mem),
            fastbins: (0..o.state_fastbin_count)
                .map(|i| word(o.state_fastbins + i * o.size_sz))
                .collect(),
            bins_address: address + o.state_bins,
        })
    }

    /// The main arena's brk heap: (start, end, first chunk).
    fn main_heap(&mut self, header: &ArenaHeader, sbrk_base: u64) -> Vec<(u64, u64, u64)> {
        if sbrk_base == 0 || header.top == 0 {
            return Vec::new(); // the main arena never allocated
        }
        let Ok(top_size) = self.t.memory.read_u64(header.top + self.o.chunk_size) else {
            self.note("the main arena's top chunk is unreadable".into());
            return Vec::new();
        };
        let end = header.top.saturating_add(top_size & !FLAG_BITS);
        if header.top < sbrk_base || end - sbrk_base > 1 << 46 {
            self.note(format!(
                "the main arena's top chunk {:#x} is not above sbrk_base {sbrk_base:#x} (the \
                 main arena is not contiguous): its heap is not shown",
                header.top
            ));
            return Vec::new();
        }
        vec![(sbrk_base, end, self.first_chunk_at(sbrk_base))]
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
            if ar_ptr != header.address || size < o.heap_info_size || size > heap_max {
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
        first: u64,
        top: u64,
        figures: &mut HeapFigures,
    ) {
        let o = self.o;
        let mut image = Image::read(self.t.memory, segment);
        if first > segment.start {
            self.count(
                segment,
                figures,
                segment.start,
                first - segment.start,
                ChunkState::Overhead,
            );
        }
        let mut p = first;
        let mut retried = false;
        while p < segment.end {
            if p == top {
                let size = image
                    .word(segment, p + o.chunk_size)
                    .map(|w| w & !FLAG_BITS)
                    .filter(|&s| s >= o.min_size && s <= segment.end - p);
                match size {
                    Some(size) => {
                        self.count(segment, figures, p, size, ChunkState::Top);
                        p += size;
                    }
                    None => {
                        self.note(format!("the top chunk at {top:#x} is inconsistent"));
                        self.count(segment, figures, p, segment.end - p, ChunkState::Unknown);
                        p = segment.end;
                    }
                }
                continue;
            }
            match self.classify(&image, segment, p, top) {
                Some(Chunk::Fencepost(size)) => {
                    let size = size.min(segment.end - p);
                    self.count(segment, figures, p, size, ChunkState::Overhead);
                    p += size;
                }
                Some(Chunk::Regular(size, state)) => {
                    self.count(segment, figures, p, size, state);
                    p += size;
                    retried = false;
                }
                None if !retried => {
                    // The target may have been changing this spot: read it again, once.
                    let to = (p + REREAD_BYTES).min(segment.end);
                    image.load(self.t.memory, segment, p, to);
                    retried = true;
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
                    self.count(segment, figures, p, stop - p, ChunkState::Unknown);
                    p = stop;
                    retried = false;
                }
            }
        }
        if p > segment.end {
            self.note(format!(
                "a chunk runs past the end of the heap at {:#x}",
                segment.end
            ));
        }
    }

    /// Classifies the chunk at `p`; None if its header is unreadable or makes no sense.
    fn classify(&self, image: &Image, segment: &Segment, p: u64, top: u64) -> Option<Chunk> {
        let o = self.o;
        let size = image.word(segment, p + o.chunk_size)? & !FLAG_BITS;
        // Old heaps end with two fenceposts: a chunk of just a header, then one of size 0.
        if size == 0 {
            return Some(Chunk::Fencepost(segment.end - p));
        }
        if size == 2 * o.size_sz {
            return Some(Chunk::Fencepost(size));
        }
        if size < o.min_size || size % o.alignment != 0 || size > segment.end - p {
            return None;
        }
        let next = p + size;
        if next > top && p < top {
            return None; // a chunk cannot straddle top
        }
        let next_size = image.word(segment, next + o.chunk_size)?;
        let state = if next_size & PREV_INUSE == 0 {
            ChunkState::Bin
        } else if self.is_tcache(image, segment, p) {
            ChunkState::Tcache
        } else {
            ChunkState::Live
        };
        Some(Chunk::Regular(size, state))
    }

    /// tcache entries carry `key == tcache_key` and a (protected) link to another entry.
    fn is_tcache(&self, image: &Image, segment: &Segment, p: u64) -> bool {
        let (Some(key), Some(key_offset)) = (self.tcache_key, self.o.tcache_key) else {
            return false;
        };
        let user = p + 2 * self.o.size_sz;
        if image.word(segment, user + key_offset) != Some(key) {
            return false;
        }
        image
            .word(segment, user)
            .is_some_and(|next| self.aligned(self.reveal(user, next)))
    }

    /// Undoes safe-linking: the link stored at `position` is `(position >> 12) ^ pointer`.
    fn reveal(&self, position: u64, stored: u64) -> u64 {
        if self.o.safe_linking {
            (position >> 12) ^ stored
        } else {
            stored
        }
    }

    fn count(
        &self,
        segment: &mut Segment,
        figures: &mut HeapFigures,
        addr: u64,
        size: u64,
        state: ChunkState,
    ) {
        segment.mark(addr, size, state);
        figures.count(state, size);
        self.count_residency(segment, figures, addr, size, state);
    }

    fn count_residency(
        &self,
        segment: &Segment,
        figures: &mut HeapFigures,
        addr: u64,
        size: u64,
        state: ChunkState,
    ) {
        if !state.is_free() {
            return;
        }
        let page = self.t.memory.page_size();
        let interior = addr + 2 * self.o.size_sz;
        let end = addr + size;
        let resident = |a: u64| segment.resident[((a - segment.start) / page) as usize];
        let mut pos = interior;
        while pos < end {
            let page_end = ((pos / page) + 1) * page;
            let stop = page_end.min(end);
            if resident(pos) {
                figures.free_resident_bytes += stop - pos;
            }
            pos = stop;
        }
        if state == ChunkState::Tcache {
            return; // tcache chunks stay cached: malloc_trim does not release them
        }
        // malloc_trim keeps the malloc_chunk struct at the front and releases whole pages.
        let mut pos = (addr + self.o.chunk_struct_size).next_multiple_of(page);
        while pos + page <= end {
            if resident(pos) {
                figures.trimmable_bytes += page;
            }
            pos += page;
        }
    }

    /// Recounts the chunks on each fastbin list (they look in use to the walk).
    fn fastbins(
        &mut self,
        header: &ArenaHeader,
        segments: &mut [Segment],
        figures: &mut HeapFigures,
    ) {
        let o = self.o;
        let budget: u64 = segments
            .iter()
            .map(|s| (s.end - s.start) / o.min_size)
            .sum();
        let mut seen = HashSet::new();
        for &head in &header.fastbins {
            let mut chunk = head;
            while chunk != 0 {
                if !seen.insert(chunk) || seen.len() as u64 > budget {
                    self.note(format!(
                        "a fastbin of arena {:#x} has a cycle",
                        header.address
                    ));
                    break;
                }
                let Some(segment) = segments.iter_mut().find(|s| s.contains(chunk)) else {
                    self.note(format!(
                        "a fastbin of arena {:#x} points outside its heaps ({chunk:#x})",
                        header.address
                    ));
                    break;
                };
                let granule = ((chunk - segment.start) / 16) as usize;
                let (Ok(size_word), Ok(stored)) = (
                    self.t.memory.read_u64(chunk + o.chunk_size),
                    self.t.memory.read_u64(chunk + o.chunk_fd),
                ) else {
                    self.note(format!("fastbin chunk {chunk:#x} is unreadable"));
                    break;
                };
                let size = size_word & !FLAG_BITS;
                if !self.aligned(chunk)
                    || segment.granules[granule] != CHUNK_START | ChunkState::Live as u8
                {
                    self.note(format!(
                        "fastbin chunk {chunk:#x} is not a chunk in use to the walk: the target \
                         changed during the snapshot"
                    ));
                    break;
                }
                figures.uncount(ChunkState::Live, size);
                self.count(segment, figures, chunk, size, ChunkState::Fastbin);
                chunk = self.reveal(chunk + o.chunk_fd, stored);
            }
        }
    }

    /// Cross-checks the walk against the bins: the chunks on the lists must be those it found free.
    fn check_bins(&mut self, header: &ArenaHeader, segments: &[Segment], figures: &HeapFigures) {
        let o = self.o;
        let budget: u64 = segments
            .iter()
            .map(|s| (s.end - s.start) / o.min_size)
            .sum();
        let (mut chunks, mut bytes) = (0u64, 0u64);
        let bins = o.state_bin_count / 2;
        'bins: for bin in 0..bins {
            // bin_at(i): a fake chunk whose fd/bk are the bin's two words.
            let head = header.bins_address + bin * 2 * o.size_sz - o.chunk_fd;
            let Ok(mut chunk) = self.t.memory.read_u64(head + o.chunk_fd) else {
                break;
            };
            while chunk != head {
                chunks += 1;
                if chunks > budget || !self.aligned(chunk) {
                    self.note(format!(
                        "a bin of arena {:#x} is corrupt or cyclic",
                        header.address
                    ));
                    break 'bins;
                }
                let (Ok(size), Ok(next)) = (
                    self.t.memory.read_u64(chunk + o.chunk_size),
                    self.t.memory.read_u64(chunk + o.chunk_fd),
                ) else {
                    self.note(format!("bin chunk {chunk:#x} is unreadable"));
                    break 'bins;
                };
                bytes += size & !FLAG_BITS;
                chunk = next;
            }
        }
        if chunks != figures.bin_chunks || bytes != figures.bin_bytes {
            self.note(format!(
                "arena {:#x}: the bins hold {chunks} chunks of {bytes} bytes, the walk found {} \
                 free chunks of {} bytes: the target changed during the snapshot",
                header.address, figures.bin_chunks, figures.bin_bytes
            ));
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
                let total = offset + size;
                if total % page != 0 || base + total > m.end || size < o.min_size {
                    break;
                }
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

enum Chunk {
    Fencepost(u64),
    Regular(u64, ChunkState),
}
