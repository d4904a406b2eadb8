//! A heap segment's bytes as the walk needs them: a window of a few hundred KiB that slides
//! along with the walk and is read on demand, resident pages only.
//!
//! The heap is never copied whole: each stretch of chunk headers is walked right after it was
//! read, while it is still in the cache, and the interiors of chunks larger than the window
//! (a big free chunk, top) are never read at all. A gigabyte heap costs the walk a window per
//! thread instead of a gigabyte copy.
use super::layout::Offsets;
use crate::proc::memory::Memory;
use crate::state::heap::{ChunkState, Segment, Stretch};

/// The window's size: well inside the L2 cache of a core, large enough that a read costs far
/// more in copying than in the system call.
const WINDOW_BYTES: u64 = 256 * 1024;

/// Which pages of a segment were resident in the page map (what may be read, and what the
/// residency figures count).
#[derive(Clone, Copy)]
pub(super) struct Residency<'a> {
    pub start: u64,
    pub page_shift: u32,
    pub resident: &'a [bool],
}

impl<'a> Residency<'a> {
    /// A segment's pages, and its granules to mark as one stretch.
    pub fn of(segment: &'a mut Segment, page_shift: u32) -> (Residency<'a>, Stretch<'a>) {
        let Segment {
            start,
            granules,
            resident,
            ..
        } = segment;
        let pages = Residency {
            start: *start,
            page_shift,
            resident,
        };
        let stretch = Stretch {
            start: *start,
            granules,
        };
        (pages, stretch)
    }

    pub fn page_size(&self) -> u64 {
        1 << self.page_shift
    }

    /// Whether `addr`'s page is resident (false outside the segment).
    pub fn is_resident(&self, addr: u64) -> bool {
        addr.checked_sub(self.start)
            .and_then(|offset| self.resident.get((offset >> self.page_shift) as usize))
            .is_some_and(|&r| r)
    }

    /// For a free or cached chunk: its interior bytes on resident pages, and the whole resident
    /// pages `malloc_trim(0)` could release from it.
    pub fn free_bytes(&self, o: &Offsets, addr: u64, size: u64, state: ChunkState) -> (u64, u64) {
        if !state.is_free() {
            return (0, 0);
        }
        // Page sizes are powers of two: masks, not divisions (this runs for every free chunk).
        let mask = self.page_size() - 1;
        let end = addr + size;
        let mut resident = 0;
        let mut pos = addr + 2 * o.size_sz;
        while pos < end {
            let stop = ((pos | mask) + 1).min(end);
            if self.is_resident(pos) {
                resident += stop - pos;
            }
            pos = stop;
        }
        let mut trimmable = 0;
        // tcache chunks stay cached: malloc_trim does not release them. It keeps the
        // malloc_chunk struct at the front of the others and releases their whole pages.
        if state.is_trimmable() {
            let mut pos = (addr + o.chunk_struct_size + mask) & !mask;
            while pos + mask < end {
                if self.is_resident(pos) {
                    trimmable += mask + 1;
                }
                pos += mask + 1;
            }
        }
        (resident, trimmable)
    }

    /// The segment's first address past its last page.
    fn end(&self) -> u64 {
        self.start + ((self.resident.len() as u64) << self.page_shift)
    }
}

pub(super) struct Window<'a> {
    memory: &'a dyn Memory,
    pages: Residency<'a>,
    /// The segment's end: nothing at or past it is read.
    end: u64,
    /// The window covers `start..start + bytes.len()`, page-aligned within the segment.
    start: u64,
    bytes: Vec<u8>,
    /// Whether each page of the window was read (resident, and the read succeeded).
    read: Vec<bool>,
    /// All of them were: no page to check per word (the common case).
    all_read: bool,
}

impl<'a> Window<'a> {
    pub fn new(memory: &'a dyn Memory, pages: Residency<'a>, end: u64) -> Window<'a> {
        Window {
            memory,
            pages,
            end: end.min(pages.end()),
            start: pages.start,
            bytes: Vec::new(),
            read: Vec::new(),
            all_read: false,
        }
    }

    /// The word at `addr` (8-aligned), if it lies in the segment on a page that was read. Moves
    /// the window to `addr` when it lies outside.
    #[inline]
    pub fn word(&mut self, addr: u64) -> Option<u64> {
        let end = addr.checked_add(8)?;
        if addr < self.start || end > self.start + self.bytes.len() as u64 {
            if addr < self.pages.start || end > self.end {
                return None;
            }
            self.load(addr);
        }
        let offset = addr - self.start;
        if !self.all_read && !self.read[(offset >> self.pages.page_shift) as usize] {
            return None;
        }
        let o = offset as usize;
        Some(u64::from_ne_bytes(self.bytes[o..o + 8].try_into().unwrap()))
    }

    /// Reads the window again from `addr` on: the target may have been changing it.
    pub fn reload(&mut self, addr: u64) {
        if addr >= self.pages.start && addr < self.end {
            self.load(addr);
        }
    }

    /// Reads the window from `addr`'s page on: one read per run of resident pages in it.
    fn load(&mut self, addr: u64) {
        let shift = self.pages.page_shift;
        let first = ((addr - self.pages.start) >> shift) as usize;
        self.start = self.pages.start + ((first as u64) << shift);
        let len = WINDOW_BYTES.max(1 << shift).min(self.end - self.start) as usize;
        let pages = len.div_ceil(1 << shift);
        self.bytes.resize(len, 0);
        self.read.clear();
        self.read
            .extend_from_slice(&self.pages.resident[first..first + pages]);
        let mut page = 0;
        while page < pages {
            if !self.read[page] {
                page += 1;
                continue;
            }
            let run = self.read[page..].iter().take_while(|&&r| r).count();
            let from = page << shift;
            let to = ((page + run) << shift).min(len);
            if self
                .memory
                .read(self.start + from as u64, &mut self.bytes[from..to])
                .is_err()
            {
                self.read[page..page + run].fill(false);
            }
            page += run;
        }
        self.all_read = self.read.iter().all(|&r| r);
    }
}
