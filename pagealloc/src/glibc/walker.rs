//! Walks every arena of a glibc process: the arena ring, every heap of every arena, every chunk
//! by its size word, then the fastbins, the bins and the mmapped chunks.
//!
//! The target may be running: every pointer, size and alignment is checked, every loop is
//! bounded, a spot that looks inconsistent is read again once, and what stays inconsistent is
//! counted as `unknown`, never guessed. Large heaps are walked in parts on several threads
//! ([`super::parts`]), through a window that reads the heap as the walk goes
//! ([`super::window`]).
use std::ops::Range;

use super::layout::{Offsets, default_heap_max_size};
use super::lists::{self, Heads, Sorted};
use super::tally::Tally;
use super::window::Window;
use crate::proc::memory::{Memory, ReadError};
use crate::state::heap::{
    AddressRange, Arena, ChunkState, HeapFigures, HeapMap, MmappedChunk, Segment,
};
use crate::state::pages::Mapping;

pub(crate) const PREV_INUSE: u64 = 1;
pub(crate) const IS_MMAPPED: u64 = 2;
pub(crate) const NON_MAIN_ARENA: u64 = 4;
pub(crate) use pagealloc_common::CHUNK_FLAG_BITS as FLAG_BITS;
/// glibc's default arena_max is 8 per core; this bounds a corrupted `next` ring.
const MAX_ARENAS: usize = 4096;
const MAX_HEAPS_PER_ARENA: usize = 4096;
/// Re-reads per chain of chunks, at most: a target changing everywhere gets `unknown`, not an
/// endless walk.
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
    pub split: Split,
}

/// How large heaps are cut into parts walked side by side.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    pub threads: usize,
    /// Parts are at least this many bytes: below it a thread costs more than it saves.
    pub min_part: u64,
}

impl Split {
    /// All cores, for heaps of 32 MiB and more.
    pub fn for_this_machine() -> Split {
        Split {
            threads: crate::parallel::cores(),
            min_part: 16 << 20,
        }
    }
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

pub(super) struct Walker<'a> {
    pub t: &'a Target<'a>,
    pub o: &'a Offsets,
    notes: Vec<String>,
    tcache_key: Option<u64>,
    /// The largest chunk a fastbin holds (0 without fastbins).
    max_fast_chunk: u64,
}

pub fn walk(target: &Target) -> Result<HeapMap, WalkError> {
    let o = target.offsets;
    let mut walker = Walker {
        t: target,
        o,
        notes: Vec::new(),
        tcache_key: None,
        // fastbin_index(size) = size / (2 * SIZE_SZ) - 2
        max_fast_chunk: match o.state_fastbin_count {
            0 => 0,
            n => (n + 1) * 2 * o.size_sz,
        },
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

    /// MALLOC_ALIGNMENT is a power of two: a mask, not a division (this runs for every chunk).
    fn aligned(&self, addr: u64) -> bool {
        addr & (self.o.alignment - 1) == 0
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
        let arenas: Vec<Arena> = headers
            .iter()
            .enumerate()
            .map(|(index, header)| {
                let heaps = if header.address == self.t.main_arena {
                    self.main_heap(header, sbrk_base)
                } else {
                    self.arena_heaps(header, heap_max)
                };
                let (arena, arena_segments) = self.walk_arena(index, header, heaps);
                segments.extend(arena_segments);
                arena
            })
            .collect();

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

    /// Walks every heap of one arena, then follows its fastbins and bins through what the walk
    /// captured of the chunks they can hold.
    fn walk_arena(
        &mut self,
        index: usize,
        header: &ArenaHeader,
        heaps: Vec<(u64, u64, u64)>,
    ) -> (Arena, Vec<Segment>) {
        let o = self.o;
        let page_shift = self.t.memory.page_size().trailing_zeros();
        let (mut segments, found) = self.walk_heaps(
            index,
            header.address == self.t.main_arena,
            &heaps,
            header.top,
        );
        log::debug!("arena {:#x} walked", header.address);
        for (_, note) in found.notes {
            self.note(note);
        }
        let mut figures = found.figures;
        figures.system_bytes = header.system_mem;
        let (fast, bin): (Vec<_>, Vec<_>) = (found.captures.into_iter())
            .map(|c| (c.fast, c.bin))
            .unzip();
        let (fast, bin) = (Sorted::new(fast), Sorted::new(bin));
        let heads = Heads {
            arena: header.address,
            fastbins: &header.fastbins,
            bins_address: header.bins_address,
            bins: &header.bins,
        };
        let lists = lists::follow(o, &heads, &fast, &bin, &segments, page_shift);
        for why in &lists.broken {
            self.note(why.clone());
        }
        let largest_fastbin = lists::recount_fastbins(
            o,
            &fast,
            &lists.on_fastbin,
            &mut segments,
            page_shift,
            self.t.split.threads,
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
        // From the chunks kept, not from the walk's running maximum: parts walked from a wrong
        // guess and taken back may have counted a larger one.
        figures.largest_free_bytes = largest_fastbin.max(lists.largest_bin);
        figures.finish();
        // Freeing millions of captures takes milliseconds: not on the caller's time.
        std::thread::spawn(move || drop((fast, bin, lists)));
        let arena = Arena {
            address: header.address,
            main: header.address == self.t.main_arena,
            heaps: heaps
                .iter()
                .map(|&(start, end, _)| AddressRange { start, end })
                .collect(),
            figures,
        };
        (arena, segments)
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

    /// Walks the chain of chunks from `from` (a chunk start, or a guess in [`Mode::Guessed`])
    /// up to the first chunk at or past `until`, counting each in `tally`; stops early at a
    /// chunk where `joins` says another walk already is.
    pub(super) fn walk_chain(
        &self,
        heap: &HeapBounds,
        window: &mut Window,
        tally: &mut Tally,
        Range {
            start: from,
            end: until,
        }: Range<u64>,
        mode: Mode,
        joins: impl Fn(u64) -> bool,
    ) -> ChainEnd {
        let mut p = from;
        // Where a re-read was last tried: an inconsistency is read again once, not forever.
        let mut retried_at: Option<u64> = None;
        let mut rereads = 0;
        // The chunk counted just before `p`, if a regular one: its size led to `p`, so it is read
        // again when `p` is bad.
        let mut last: Option<(u64, u64, ChunkState)> = None;
        while p < heap.end && p < until {
            if joins(p) {
                return ChainEnd {
                    end: p,
                    joined: true,
                    gave_up: false,
                };
            }
            if p == heap.top {
                self.count_top(heap, window, tally);
                p = heap.end;
                break;
            }
            match self.classify(window, heap, p) {
                Some(Chunk::Fencepost(size)) => {
                    tally.count(p, size, ChunkState::Overhead, None);
                    last = None;
                    p += size;
                }
                Some(Chunk::Regular { size, state, link }) => {
                    tally.count(p, size, state, link);
                    last = Some((p, size, state));
                    p += size;
                }
                None if mode == Mode::Guessed => {
                    return ChainEnd {
                        end: p,
                        joined: false,
                        gave_up: true,
                    };
                }
                None if retried_at != Some(p) && rereads < MAX_REREADS => {
                    // The target may have been changing this spot: read it again, once, from the
                    // chunk whose (perhaps stale) size led here.
                    retried_at = Some(p);
                    rereads += 1;
                    if let Some((addr, size, state)) = last.take() {
                        tally.uncount(addr, size, state);
                        p = addr;
                    }
                    window.reload(p);
                }
                None => {
                    let stop = if heap.top > p && heap.top < heap.end {
                        heap.top
                    } else {
                        heap.end
                    };
                    tally.note(
                        p,
                        format!(
                            "inconsistent chunk at {p:#x} (not resident, or changed while read): \
                             {} bytes up to {stop:#x} are unknown; --stop gives a consistent view",
                            stop - p
                        ),
                    );
                    tally.count(p, stop - p, ChunkState::Unknown, None);
                    last = None;
                    p = stop;
                }
            }
        }
        ChainEnd {
            end: p,
            joined: false,
            gave_up: false,
        }
    }

    /// Top is the last chunk of its heap: it must end exactly there.
    fn count_top(&self, heap: &HeapBounds, window: &mut Window, tally: &mut Tally) {
        let o = self.o;
        let top = heap.top;
        let size = window
            .word(top + o.chunk_size)
            .map(|w| w & !FLAG_BITS)
            .filter(|&s| s >= o.min_size && s <= heap.end - top);
        match size {
            Some(size) => tally.count(top, size, ChunkState::Top, None),
            None => tally.note(top, format!("the top chunk at {top:#x} is inconsistent")),
        }
        let size = size.unwrap_or(0);
        if top + size < heap.end {
            if size > 0 {
                tally.note(
                    top,
                    format!(
                        "the top chunk at {top:#x} does not end its heap at {:#x}",
                        heap.end
                    ),
                );
            }
            tally.count(top + size, heap.end - top - size, ChunkState::Unknown, None);
        }
    }

    /// Classifies the chunk at `p`; None if its header is unreadable or makes no sense. Inlined
    /// into the walk's loop: returned through memory, its result cost the loop a stall per chunk
    /// (measured: the walk of 10 million chunks 5 % slower).
    #[inline(always)]
    fn classify(&self, window: &mut Window, heap: &HeapBounds, p: u64) -> Option<Chunk> {
        let o = self.o;
        let size = window.word(p + o.chunk_size)? & !FLAG_BITS;
        // Old heaps end with two fenceposts: a chunk of just a header, then one of size 0 that
        // covers the last (less than MINSIZE) bytes. Anywhere else such sizes are corrupt.
        let header = 2 * o.size_sz;
        let left = heap.end - p;
        if size == 0 && left < o.min_size + header {
            return Some(Chunk::Fencepost(left));
        }
        if size == header && left < o.min_size + 2 * header {
            return Some(Chunk::Fencepost(size));
        }
        if size < o.min_size || !self.aligned(size) || size > left {
            return None;
        }
        let next = p + size;
        if next > heap.top && p < heap.top {
            return None; // a chunk cannot straddle top
        }
        // The chunk's own words before the next chunk's: the window only moves forward.
        let first_word = window.word(p + o.chunk_fd);
        let tcache = self.is_tcache(window, p, first_word);
        let next_size = window.word(next + o.chunk_size)?;
        let (state, link) = if next_size & PREV_INUSE == 0 {
            // Unreadable, the link leads nowhere: the bin's list then says so.
            (ChunkState::Bin, Some(first_word.unwrap_or(0)))
        } else if tcache {
            (ChunkState::Tcache, None)
        } else {
            (
                ChunkState::Live,
                self.fastbin_link(heap, p, size, first_word),
            )
        };
        Some(Chunk::Regular { size, state, link })
    }

    /// tcache entries carry `key == tcache_key` and a (protected) link to another entry.
    #[inline(always)]
    fn is_tcache(&self, window: &mut Window, p: u64, first_word: Option<u64>) -> bool {
        let (Some(key), Some(key_offset)) = (self.tcache_key, self.o.tcache_key) else {
            return false;
        };
        let user = p + 2 * self.o.size_sz;
        if window.word(user + key_offset) != Some(key) {
            return false;
        }
        first_word.is_some_and(|next| self.aligned(reveal(self.o, user, next)))
    }

    /// The link of a chunk in use that could be a fastbin chunk (it looks in use to the walk):
    /// of fastbin size, its first word a protected link to an aligned chunk of the arena's heaps
    /// or the list's end.
    fn fastbin_link(
        &self,
        heap: &HeapBounds,
        p: u64,
        size: u64,
        first_word: Option<u64>,
    ) -> Option<u64> {
        if size > self.max_fast_chunk {
            return None;
        }
        let next = reveal(self.o, p + self.o.chunk_fd, first_word?);
        (next == 0 || (self.aligned(next) && heap.arena_span.contains(&next))).then_some(next)
    }

    /// A likely chunk start in `from..to`: the first place from which [`GUESS_CHUNKS`] chunks in
    /// a row have headers that make sense. A wrong guess costs time, not correctness.
    pub(super) fn guess_chunk(
        &self,
        heap: &HeapBounds,
        window: &mut Window,
        from: u64,
        to: u64,
    ) -> Option<u64> {
        let o = self.o;
        let limit = to.min(from.saturating_add(GUESS_SPAN)).min(heap.end);
        let mut q = self.first_chunk_at(from);
        while q < limit {
            if self.plausible_run(heap, window, q) {
                return Some(q);
            }
            q += o.alignment;
        }
        None
    }

    fn plausible_run(&self, heap: &HeapBounds, window: &mut Window, from: u64) -> bool {
        let o = self.o;
        let mut c = from;
        for _ in 0..GUESS_CHUNKS {
            if c == heap.top || c == heap.end {
                return true;
            }
            let Some(word) = window.word(c + o.chunk_size) else {
                return false;
            };
            let size = word & !FLAG_BITS;
            // Chunks of the main arena never carry NON_MAIN_ARENA; others' free chunks do not
            // either, so only the main arena's can be checked.
            if word & IS_MMAPPED != 0
                || (heap.main && word & NON_MAIN_ARENA != 0)
                || size < o.min_size
                || !self.aligned(size)
                || size > heap.end - c
            {
                return false;
            }
            let next = c + size;
            // A free chunk's size is repeated at its end when the next chunk says it is free.
            if next < heap.end {
                let Some(next_word) = window.word(next + o.chunk_size) else {
                    return false;
                };
                if next_word & PREV_INUSE == 0
                    && window.word(next + o.chunk_size - o.size_sz) != Some(size)
                {
                    return false;
                }
            }
            c = next;
        }
        true
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

/// The heap a chain of chunks is walked in.
pub(super) struct HeapBounds {
    pub start: u64,
    pub end: u64,
    /// The arena's top chunk (perhaps in another of its heaps).
    pub top: u64,
    /// Whether the heap belongs to the main arena.
    pub main: bool,
    /// From the lowest to the highest address of the arena's heaps: where its free lists lead.
    pub arena_span: Range<u64>,
}

/// How a walk treats a chunk that makes no sense.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The walk started at a known chunk: read it again, and count what stays inconsistent
    /// as unknown.
    Exact,
    /// The walk started from a guess: stop there (the guess may have been wrong).
    Guessed,
}

/// Where a walk along a chain of chunks stopped.
#[derive(Clone, Copy, Debug)]
pub(super) struct ChainEnd {
    /// The first chunk not walked (or the heap's end).
    pub end: u64,
    /// Stopped where another walk already was.
    pub joined: bool,
    /// A guessed walk stopped at a chunk that made no sense.
    pub gave_up: bool,
}

impl ChainEnd {
    pub fn at(end: u64) -> ChainEnd {
        ChainEnd {
            end,
            joined: false,
            gave_up: false,
        }
    }
}

/// A guess of a chunk start is taken after this many chunks in a row make sense...
const GUESS_CHUNKS: usize = 16;
/// ...and looked for this far, at most.
const GUESS_SPAN: u64 = 64 * 1024;

enum Chunk {
    Fencepost(u64),
    Regular {
        size: u64,
        state: ChunkState,
        /// The first link word, for chunks that can be on a free list.
        link: Option<u64>,
    },
}
