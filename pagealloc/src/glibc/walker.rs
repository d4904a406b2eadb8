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
    bytes: ImageBuffer,
    /// Whether each page was resident and read.
    resident: Vec<bool>,
    page_size: u64,
    page_shift: u32,
}

/// Reads of at most this size are spread over two threads (this many bytes per piece).
const READ_PIECE: u64 = 8 << 20;

impl Image {
    fn read(memory: &dyn Memory, start: u64, end: u64) -> Image {
        let page_size = memory.page_size();
        let mut image = Image {
            start,
            bytes: ImageBuffer::zeroed((end - start) as usize),
            resident: vec![false; (end - start).div_ceil(page_size) as usize],
            page_size,
            page_shift: page_size.trailing_zeros(),
        };
        image.load(memory, start, end);
        image
    }

    /// (Re-)reads the resident pages of `from..to`: one read per run of resident pages (in
    /// pieces, half of them on a second thread), never one per chunk.
    fn load(&mut self, memory: &dyn Memory, from: u64, to: u64) {
        let page = self.page_size;
        let first = ((from - self.start) / page) as usize;
        let last = (to - self.start).div_ceil(page) as usize;
        let mut pieces: Vec<(usize, usize)> = Vec::new(); // page ranges
        let mut index = first;
        while index < last {
            let resident = memory.is_resident(self.start + index as u64 * page);
            self.resident[index] = resident;
            if resident {
                let piece_pages = (READ_PIECE / page) as usize;
                match pieces.last_mut() {
                    Some(last) if last.1 == index && last.1 - last.0 < piece_pages => last.1 += 1,
                    _ => pieces.push((index, index + 1)),
                }
            }
            index += 1;
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
}

struct ArenaHeader {
    address: u64,
    top: u64,
    system_mem: u64,
    fastbins: Vec<u64>,
    bins_address: u64,
    /// The `fd` word of each bin.
    bins: Vec<u64>,
}

/// The image holding `addr`.
fn image_of(images: &[Image], addr: u64) -> Option<&Image> {
    images
        .iter()
        .find(|i| addr >= i.start && addr - i.start < i.bytes.len() as u64)
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

    /// Walks every heap of one arena, then follows its fastbins and bins through the images
    /// just read (not with a read per chunk), the bins (a cross-check) on a second thread while
    /// the fastbins are recounted. The images are handed back for the caller to drop.
    fn walk_arena(
        &mut self,
        index: usize,
        header: &ArenaHeader,
        heaps: Vec<(u64, u64, u64)>,
        segments: &mut Vec<Segment>,
        images: &mut Vec<Image>,
    ) -> Arena {
        let o = self.o;
        let mut figures = HeapFigures {
            system_bytes: header.system_mem,
            ..HeapFigures::default()
        };
        let first = segments.len();
        let mut arena_images = Vec::with_capacity(heaps.len());
        for &(start, end, first_chunk) in &heaps {
            let mut segment = Segment::new(start, end, index, self.t.memory.page_size());
            arena_images.push(self.walk_segment(
                &mut segment,
                first_chunk,
                header.top,
                &mut figures,
            ));
            segments.push(segment);
        }
        log::debug!("arena {:#x} walked", header.address);
        let expected = (figures.bin_chunks, figures.bin_bytes);
        let bins_note = std::thread::scope(|scope| {
            let bins = scope.spawn(|| check_bins(o, header, &arena_images, expected));
            self.fastbins(header, &mut segments[first..], &arena_images, &mut figures);
            bins.join().unwrap_or(None)
        });
        if let Some(note) = bins_note {
            self.note(note);
        }
        log::debug!("arena {:#x}: fastbins and bins followed", header.address);
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
    ) -> Image {
        let o = self.o;
        let started = std::time::Instant::now();
        let mut image = Image::read(self.t.memory, segment.start, segment.end);
        log::debug!(
            "read {} KiB of heap at {:#x} in {:?}",
            (segment.end - segment.start) / 1024,
            segment.start,
            started.elapsed()
        );
        if first > segment.start {
            self.count(
                segment,
                &image,
                figures,
                segment.start,
                first - segment.start,
                ChunkState::Overhead,
            );
        }
        let mut p = first;
        let mut retried = false;
        // The last chunk counted: its size led to `p`, so it is read again when `p` is bad.
        let mut last: Option<(u64, u64, ChunkState)> = None;
        while p < segment.end {
            if p == top {
                let size = image
                    .word(p + o.chunk_size)
                    .map(|w| w & !FLAG_BITS)
                    .filter(|&s| s >= o.min_size && s <= segment.end - p);
                match size {
                    Some(size) => {
                        self.count(segment, &image, figures, p, size, ChunkState::Top);
                        p += size;
                    }
                    None => {
                        self.note(format!("the top chunk at {top:#x} is inconsistent"));
                        self.count(
                            segment,
                            &image,
                            figures,
                            p,
                            segment.end - p,
                            ChunkState::Unknown,
                        );
                        p = segment.end;
                    }
                }
                continue;
            }
            match self.classify(&image, segment, p, top) {
                Some(Chunk::Fencepost(size)) => {
                    let size = size.min(segment.end - p);
                    self.count(segment, &image, figures, p, size, ChunkState::Overhead);
                    p += size;
                }
                Some(Chunk::Regular(size, state)) => {
                    self.count(segment, &image, figures, p, size, state);
                    last = Some((p, size, state));
                    p += size;
                    retried = false;
                }
                None if !retried => {
                    // The target may have been changing this spot: read it again, once, from the
                    // chunk whose (perhaps stale) size led here.
                    if let Some((addr, size, state)) = last.take() {
                        self.uncount(&image, figures, addr, size, state);
                        p = addr;
                    }
                    let to = (p + REREAD_BYTES).min(segment.end);
                    image.load(self.t.memory, p, to);
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
                    self.count(segment, &image, figures, p, stop - p, ChunkState::Unknown);
                    p = stop;
                    retried = false;
                }
            }
        }
        image
    }

    /// Classifies the chunk at `p`; None if its header is unreadable or makes no sense.
    fn classify(&self, image: &Image, segment: &Segment, p: u64, top: u64) -> Option<Chunk> {
        let o = self.o;
        let size = image.word(p + o.chunk_size)? & !FLAG_BITS;
        // Old heaps end with two fenceposts: a chunk of just a header, then one of size 0.
        if size == 0 {
            return Some(Chunk::Fencepost(segment.end - p));
        }
        if size == 2 * o.size_sz {
            return Some(Chunk::Fencepost(size));
        }
        if size < o.min_size || !size.is_multiple_of(o.alignment) || size > segment.end - p {
            return None;
        }
        let next = p + size;
        if next > top && p < top {
            return None; // a chunk cannot straddle top
        }
        let next_size = image.word(next + o.chunk_size)?;
        let state = if next_size & PREV_INUSE == 0 {
            ChunkState::Bin
        } else if self.is_tcache(image, p) {
            ChunkState::Tcache
        } else {
            ChunkState::Live
        };
        Some(Chunk::Regular(size, state))
    }

    /// tcache entries carry `key == tcache_key` and a (protected) link to another entry.
    fn is_tcache(&self, image: &Image, p: u64) -> bool {
        let (Some(key), Some(key_offset)) = (self.tcache_key, self.o.tcache_key) else {
            return false;
        };
        let user = p + 2 * self.o.size_sz;
        if image.word(user + key_offset) != Some(key) {
            return false;
        }
        image
            .word(user)
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
        image: &Image,
        figures: &mut HeapFigures,
        addr: u64,
        size: u64,
        state: ChunkState,
    ) {
        segment.mark(addr, size, state);
        figures.count(state, size);
        let (resident, trimmable) = self.residency(image, addr, size, state);
        figures.free_resident_bytes += resident;
        figures.trimmable_bytes += trimmable;
    }

    /// Takes back a chunk counted by [`Self::count`] (its granules are marked anew by the walk).
    fn uncount(
        &self,
        image: &Image,
        figures: &mut HeapFigures,
        addr: u64,
        size: u64,
        state: ChunkState,
    ) {
        figures.uncount(state, size);
        let (resident, trimmable) = self.residency(image, addr, size, state);
        figures.free_resident_bytes -= resident;
        figures.trimmable_bytes -= trimmable;
    }

    /// For a free or cached chunk: its interior bytes on resident pages, and the whole resident
    /// pages `malloc_trim(0)` could release from it.
    fn residency(&self, image: &Image, addr: u64, size: u64, state: ChunkState) -> (u64, u64) {
        if !state.is_free() {
            return (0, 0);
        }
        let page = self.t.memory.page_size();
        let end = addr + size;
        let mut resident = 0;
        let mut pos = addr + 2 * self.o.size_sz;
        while pos < end {
            let stop = ((pos / page) + 1) * page;
            let stop = stop.min(end);
            if image.is_resident(pos) {
                resident += stop - pos;
            }
            pos = stop;
        }
        let mut trimmable = 0;
        // tcache chunks stay cached: malloc_trim does not release them. It keeps the
        // malloc_chunk struct at the front of the others and releases their whole pages.
        if state != ChunkState::Tcache {
            let mut pos = (addr + self.o.chunk_struct_size).next_multiple_of(page);
            while pos + page <= end {
                if image.is_resident(pos) {
                    trimmable += page;
                }
                pos += page;
            }
        }
        (resident, trimmable)
    }

    /// Recounts the chunks on each fastbin list (they look in use to the walk). A chunk met
    /// twice is no longer "in use" the second time, so a cycle ends the list.
    fn fastbins(
        &mut self,
        header: &ArenaHeader,
        segments: &mut [Segment],
        images: &[Image],
        figures: &mut HeapFigures,
    ) {
        // The lists are followed side by side, a step each in turn: their loads are independent,
        // so the memory system serves several at once.
        let mut cursors: Vec<u64> = header
            .fastbins
            .iter()
            .copied()
            .filter(|&c| c != 0)
            .collect();
        while !cursors.is_empty() {
            cursors.retain_mut(|chunk| {
                match self.fastbin_step(header, segments, images, figures, *chunk) {
                    Some(next) if next != 0 => {
                        *chunk = next;
                        true
                    }
                    _ => false,
                }
            });
        }
    }

    /// Recounts fastbin chunk `chunk`; returns the next one on its list (0 at the end), or None
    /// if the list cannot be followed further.
    fn fastbin_step(
        &mut self,
        header: &ArenaHeader,
        segments: &mut [Segment],
        images: &[Image],
        figures: &mut HeapFigures,
        chunk: u64,
    ) -> Option<u64> {
        let o = self.o;
        let Some(index) = segments.iter().position(|s| s.contains(chunk)) else {
            self.note(format!(
                "a fastbin of arena {:#x} points outside its heaps ({chunk:#x})",
                header.address
            ));
            return None;
        };
        let (Some(size_word), Some(stored)) = (
            images[index].word(chunk + o.chunk_size),
            images[index].word(chunk + o.chunk_fd),
        ) else {
            self.note(format!("fastbin chunk {chunk:#x} is unreadable"));
            return None;
        };
        let segment = &mut segments[index];
        let granule = ((chunk - segment.start) / GRANULE) as usize;
        if !self.aligned(chunk) || segment.granules[granule] != CHUNK_START | ChunkState::Live as u8
        {
            self.note(format!(
                "fastbin chunk {chunk:#x} is not a chunk in use to the walk: the list is \
                 cyclic, or the target changed during the snapshot"
            ));
            return None;
        }
        let size = size_word & !FLAG_BITS;
        figures.uncount(ChunkState::Live, size);
        self.count(
            segment,
            &images[index],
            figures,
            chunk,
            size,
            ChunkState::Fastbin,
        );
        Some(self.reveal(chunk + o.chunk_fd, stored))
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

/// Cross-checks the walk against the bins: the chunks on the lists must be those it found free
/// (`expected`: chunks and bytes). Returns what disagrees.
fn check_bins(
    o: &Offsets,
    header: &ArenaHeader,
    images: &[Image],
    expected: (u64, u64),
) -> Option<String> {
    let budget: u64 = images
        .iter()
        .map(|i| i.bytes.len() as u64 / o.min_size)
        .sum();
    let (mut chunks, mut bytes) = (0u64, 0u64);
    // (head, cursor) per bin. bin_at(i) is a fake chunk inside malloc_state whose fd/bk are the
    // bin's two words. Followed side by side, as the fastbins.
    let mut cursors: Vec<(u64, u64)> = (0..o.state_bin_count / 2)
        .map(|bin| {
            let head = header.bins_address + bin * 2 * o.size_sz - o.chunk_fd;
            (head, header.bins[bin as usize])
        })
        .filter(|(head, first)| head != first)
        .collect();
    while !cursors.is_empty() {
        for (head, chunk) in cursors.iter_mut() {
            chunks += 1;
            let words = image_of(images, *chunk).and_then(|image| {
                Some((
                    image.word(*chunk + o.chunk_size)?,
                    image.word(*chunk + o.chunk_fd)?,
                ))
            });
            let Some((size, next)) =
                words.filter(|_| chunks <= budget && *chunk % o.alignment == 0)
            else {
                return Some(format!(
                    "a bin of arena {:#x} is corrupt or cyclic at {:#x}",
                    header.address, *chunk
                ));
            };
            bytes += size & !FLAG_BITS;
            *chunk = if next == *head { 0 } else { next };
        }
        cursors.retain(|&(_, chunk)| chunk != 0);
    }
    (expected != (chunks, bytes)).then(|| {
        format!(
            "arena {:#x}: the bins hold {chunks} chunks of {bytes} bytes, the walk found {} free \
             chunks of {} bytes: the target changed during the snapshot",
            header.address, expected.0, expected.1
        )
    })
}

enum Chunk {
    Fencepost(u64),
    Regular(u64, ChunkState),
}
