//! The arena ring (from `main_arena` along `next`) and the heaps of each arena: the brk heap of
//! the main arena, and the `heap_info` chain of the others.
use super::walker::{WalkError, Walker, reason};
use crate::glibc::Offsets;
use crate::glibc::{FLAG_BITS, IS_MMAPPED, NON_MAIN_ARENA, PREV_INUSE};
use crate::proc::memory::{Memory, ReadError};
use crate::state::heap::HeapNote;

/// glibc's default arena_max is 8 per core; this bounds a corrupted `next` ring.
const MAX_ARENAS: usize = 4096;
const MAX_HEAPS_PER_ARENA: usize = 4096;

pub(super) struct ArenaHeader {
    pub address: u64,
    pub top: u64,
    pub next: u64,
    pub system_mem: u64,
    pub fastbins: Vec<u64>,
    pub bins_address: u64,
    /// The `fd` word of each bin.
    pub bins: Vec<u64>,
}

impl ArenaHeader {
    /// Whether glibc never set this arena up: malloc_init_state points top at the unsorted bin
    /// and links every bin to itself, so only an arena malloc never ran in (the main one of a
    /// program that never called malloc, or whose malloc another allocator serves) is all zero.
    pub fn never_initialised(&self) -> bool {
        self.top == 0
            && self.system_mem == 0
            && self
                .bins
                .iter()
                .chain(&self.fastbins)
                .all(|&word| word == 0)
    }
}

impl Walker<'_> {
    /// The arena ring, from `main_arena` along `next`.
    pub(super) fn arenas(&mut self) -> Result<Vec<ArenaHeader>, WalkError> {
        let mut headers: Vec<ArenaHeader> = Vec::new();
        let mut address = self.libc.main_arena;
        loop {
            let header = match self.arena_header(address) {
                Ok(header) => header,
                Err(e) if address == self.libc.main_arena => return Err(e),
                // A new arena whose pages were not resident when the page map was read.
                Err(e) => {
                    self.note(HeapNote::inconsistent(format!(
                        "{e}: this arena and those after it are not shown"
                    )));
                    break;
                }
            };
            let next = header.next;
            headers.push(header);
            if next == self.libc.main_arena {
                break;
            }
            if next == 0 || !self.offsets.aligned(next) || headers.iter().any(|h| h.address == next)
            {
                self.note(HeapNote::inconsistent(format!(
                    "the arena list is broken after {address:#x} (next = {next:#x}): arenas past \
                     it are not shown"
                )));
                break;
            }
            if headers.len() >= MAX_ARENAS {
                self.note(HeapNote::inconsistent(format!(
                    "more than {MAX_ARENAS} arenas: the rest are not shown"
                )));
                break;
            }
            address = next;
        }
        Ok(headers)
    }

    fn arena_header(&self, address: u64) -> Result<ArenaHeader, WalkError> {
        let o = self.offsets;
        let mut bytes = vec![0u8; o.state_size as usize];
        self.memory
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

    /// The main arena's heaps: (start, end, first chunk). Its brk heap when it is contiguous
    /// (from `mp_.sbrk_base` to the end of top, all of `system_mem`); otherwise the regions
    /// glibc mapped for it when sbrk failed, and what it had of the brk heap before.
    pub(super) fn main_heap(
        &mut self,
        header: &ArenaHeader,
        sbrk_base: u64,
    ) -> Vec<(u64, u64, u64)> {
        if sbrk_base == 0 || header.top == 0 {
            return Vec::new(); // the main arena never allocated
        }
        let top_size = header
            .top
            .checked_add(self.offsets.chunk_size)
            .and_then(|at| self.memory.read_u64(at).ok());
        let Some(top_size) = top_size.map(|size| size & !FLAG_BITS) else {
            self.note(HeapNote::inconsistent(
                "the main arena's top chunk is unreadable".into(),
            ));
            return Vec::new();
        };
        let brk_heap = self.brk_heap(header, sbrk_base, top_size);
        if let Some(heap) = brk_heap.filter(|h| h.1 - h.0 == header.system_mem) {
            return vec![heap];
        }
        let regions = self.main_regions(header.top, top_size);
        if regions
            .iter()
            .any(|r| r.0 <= header.top && header.top < r.1)
        {
            // The first region glibc got (brk heap or mapped) set sbrk_base.
            let spanned: u64 = regions.iter().map(|r| r.1 - r.0).sum();
            if spanned == header.system_mem && !regions.iter().any(|r| r.0 == sbrk_base) {
                self.note(HeapNote::inconsistent(format!(
                    "mp_.sbrk_base {sbrk_base:#x} starts none of the main arena's regions: it \
                     is corrupt"
                )));
            }
            return regions;
        }
        match brk_heap {
            Some(heap) => vec![heap],
            None => {
                self.note(HeapNote::inconsistent(format!(
                    "the main arena's top chunk {:#x} is neither in its heap from sbrk_base \
                     {sbrk_base:#x} nor in a region it mapped (corrupt?): its heap is not shown",
                    header.top
                )));
                Vec::new()
            }
        }
    }

    /// The brk heap, from `sbrk_base` to the end of top, if top lies in the memory mapped from
    /// `sbrk_base` on.
    fn brk_heap(
        &mut self,
        header: &ArenaHeader,
        sbrk_base: u64,
        top_size: u64,
    ) -> Option<(u64, u64, u64)> {
        let Some(mapped_end) = self.mapped_end(sbrk_base) else {
            self.note(HeapNote::inconsistent(format!(
                "sbrk_base {sbrk_base:#x} is not in a mapping"
            )));
            return None;
        };
        if header.top < sbrk_base || header.top >= mapped_end || !self.offsets.aligned(header.top) {
            return None;
        }
        // The heap ends with top; a top that claims more than is mapped is inconsistent, and
        // the walk says so when it gets there.
        let end = header.top.saturating_add(top_size);
        if end > mapped_end {
            self.note(HeapNote::inconsistent(format!(
                "the main arena's top chunk {:#x} runs past its mapping (to {end:#x})",
                header.top
            )));
        }
        Some((
            sbrk_base,
            end.min(mapped_end),
            self.offsets.first_chunk_at(sbrk_base),
        ))
    }

    /// The regions of a main arena that is not contiguous, in address order. When sbrk fails,
    /// sysmalloc maps a region (1 MiB at least) and moves top there; the old top ends with two
    /// fenceposts and what is left of it is freed. So a region is a page whose first chunk
    /// (`prev_size` 0, PREV_INUSE, no other flag) starts a chain of chunks that ends exactly at
    /// top's end (the newest region) or at two fenceposts; the kernel may have merged regions
    /// with each other and with other anonymous memory.
    fn main_regions(&self, top: u64, top_size: u64) -> Vec<(u64, u64, u64)> {
        let mut regions = Vec::new();
        for (start, end) in self.anonymous_runs(&[]) {
            self.scan_pages(start, end, |addr, prev_size, size| {
                if prev_size != 0
                    || size & FLAG_BITS != PREV_INUSE
                    || regions.len() >= MAX_HEAPS_PER_ARENA
                {
                    return None;
                }
                let region_end = self.region_end(addr, end, top, top_size)?;
                regions.push((addr, region_end, addr));
                Some(region_end)
            });
        }
        regions.sort_unstable();
        regions
    }

    /// Where the main-arena region from `start` ends, if its chain of chunks ends as glibc
    /// leaves one within `limit`: at the end of top, or after two fenceposts.
    fn region_end(&self, start: u64, limit: u64, top: u64, top_size: u64) -> Option<u64> {
        let o = self.offsets;
        let fencepost = 2 * o.size_sz;
        let mut pages = PageWords::new(self.memory);
        let mut p = start;
        // Bounded: each step moves forward by MINSIZE at least.
        while p < limit {
            if p == top {
                let end = top.checked_add(top_size)?;
                return (end <= limit).then_some(end);
            }
            let word = pages.word(p + o.chunk_size)?;
            let size = word & !FLAG_BITS;
            if word & (IS_MMAPPED | NON_MAIN_ARENA) != 0 {
                return None;
            }
            if size == fencepost {
                let second = pages.word(p + fencepost + o.chunk_size)?;
                let end = p + 2 * fencepost;
                return (second & !PREV_INUSE == fencepost && end <= limit).then_some(end);
            }
            if size < o.min_size || !self.offsets.aligned(size) || size > limit - p {
                return None;
            }
            p += size;
        }
        None
    }

    /// The bytes the main arena got from the system (`system_mem`) that lie in none of its
    /// `heaps`: counted as unknown and said so, never dropped. A `system_mem` larger than all
    /// the memory that could hold a heap is corrupt, not missing.
    pub(super) fn unwalked(&mut self, header: &ArenaHeader, heaps: &[(u64, u64, u64)]) -> u64 {
        let spanned: u64 = heaps.iter().map(|h| h.1 - h.0).sum();
        let Some(missing) = header.system_mem.checked_sub(spanned).filter(|&m| m > 0) else {
            return 0;
        };
        let room: u64 = (self.anonymous_runs(&[]).iter()).map(|r| r.1 - r.0).sum();
        if missing > room {
            self.note(HeapNote::inconsistent(format!(
                "the main arena's system_mem ({} bytes) is more than all the memory that \
                 could hold its heap ({room} bytes): it is corrupt",
                header.system_mem
            )));
            return 0;
        }
        self.note(HeapNote::incomplete(format!(
            "part of the main arena could not be walked: {missing} of the {} bytes it got \
             from the system lie outside the {} heaps found (a region glibc mapped for it \
             when sbrk failed, not found or not resident); those bytes are unknown",
            header.system_mem,
            heaps.len()
        )));
        missing
    }

    /// The end of the mapped memory that contains `addr` (adjacent mappings joined).
    pub(super) fn mapped_end(&self, addr: u64) -> Option<u64> {
        let maps = self.mappings;
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

    /// A non-main arena's heaps, newest (the one holding top) first.
    pub(super) fn arena_heaps(
        &mut self,
        header: &ArenaHeader,
        heap_max: u64,
    ) -> Vec<(u64, u64, u64)> {
        let o = self.offsets;
        let mut heaps = Vec::new();
        let mut heap = header.top & !(heap_max - 1);
        while heap != 0 {
            let Ok(HeapInfo {
                arena: ar_ptr,
                prev,
                end,
                first,
            }) = heap_info(self.memory, o, heap)
            else {
                self.note(HeapNote::inconsistent(format!(
                    "heap_info at {heap:#x} is unreadable"
                )));
                break;
            };
            let size = end.wrapping_sub(heap);
            if heaps.iter().any(|&(h, _, _)| h == heap) {
                self.note(HeapNote::inconsistent(format!(
                    "heap_info.prev of arena {:#x} loops back to {heap:#x}",
                    header.address
                )));
                break;
            }
            if ar_ptr != header.address
                || size < o.heap_info_size
                || size > heap_max
                || self.mapped_end(heap).is_none_or(|end| heap + size > end)
            {
                self.note(HeapNote::inconsistent(format!(
                    "heap_info at {heap:#x} does not belong to arena {:#x}: the heaps past it \
                     are not shown",
                    header.address
                )));
                break;
            }
            if first >= heap + size {
                self.note(HeapNote::inconsistent(format!(
                    "heap_info.size at {heap:#x} ({size:#x}) leaves no room for chunks"
                )));
                break;
            }
            heaps.push((heap, heap + size, first));
            if prev % heap_max != 0 || heaps.len() >= MAX_HEAPS_PER_ARENA {
                if prev != 0 {
                    self.note(HeapNote::inconsistent(format!(
                        "heap_info.prev at {heap:#x} is corrupt ({prev:#x})"
                    )));
                }
                break;
            }
            heap = prev;
        }
        heaps
    }
}

/// What a thread arena's heap says of itself in its `heap_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapInfo {
    /// Its arena's `malloc_state`.
    pub arena: u64,
    /// The arena's heap before it (0: none, it is the arena's first).
    pub prev: u64,
    /// Where its chunks start (past the heap_info, and in an arena's first heap the
    /// malloc_state), and where its mapped part ends.
    pub first: u64,
    pub end: u64,
}

/// Reads the `heap_info` at `heap` (nothing is checked: the caller knows what to expect).
pub fn heap_info(memory: &dyn Memory, o: &Offsets, heap: u64) -> Result<HeapInfo, ReadError> {
    let arena = memory.read_u64(heap + o.heap_info_ar_ptr)?;
    let prev = memory.read_u64(heap + o.heap_info_prev)?;
    let size = memory.read_u64(heap + o.heap_info_size_field)?;
    // The first heap holds the malloc_state right after heap_info.
    let first = if arena == heap + o.heap_info_size {
        o.first_chunk_at(arena + o.state_size)
    } else {
        heap + o.heap_info_size
    };
    Ok(HeapInfo {
        arena,
        prev,
        first,
        end: heap.wrapping_add(size),
    })
}

/// What an arena's `malloc_state` says of its top chunk and its memory now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaTop {
    /// The top chunk, and its size (flags off): the arena's newest heap ends where it does.
    pub top: u64,
    pub top_size: u64,
    /// `system_mem`: what the arena got from the system.
    pub system_mem: u64,
}

/// Reads the top of the arena whose `malloc_state` is at `arena`: three words (nothing is
/// checked, and the target may be changing them: the caller knows what to expect).
pub fn arena_top(memory: &dyn Memory, o: &Offsets, arena: u64) -> Result<ArenaTop, ReadError> {
    let top = memory.read_u64(arena + o.state_top)?;
    let system_mem = memory.read_u64(arena + o.state_system_mem)?;
    let size = memory.read_u64(top.wrapping_add(o.chunk_size))?;
    Ok(ArenaTop {
        top,
        top_size: size & !FLAG_BITS,
        system_mem,
    })
}

/// Words of the target read a page at a time: a chain of chunks read forward costs one read
/// per page it touches. Pages that are not resident are not read.
struct PageWords<'m> {
    memory: &'m dyn Memory,
    page: Option<u64>,
    bytes: Vec<u8>,
}

impl<'m> PageWords<'m> {
    fn new(memory: &'m dyn Memory) -> PageWords<'m> {
        PageWords {
            memory,
            page: None,
            bytes: vec![0; memory.page_size() as usize],
        }
    }

    /// The word at `addr` (8-aligned).
    fn word(&mut self, addr: u64) -> Option<u64> {
        let size = self.bytes.len() as u64;
        let page = addr & !(size - 1);
        if self.page != Some(page) {
            self.page = None;
            self.memory.read(page, &mut self.bytes).ok()?;
            self.page = Some(page);
        }
        let at = (addr - page) as usize;
        Some(u64::from_ne_bytes(
            self.bytes[at..at + 8].try_into().unwrap(),
        ))
    }
}
