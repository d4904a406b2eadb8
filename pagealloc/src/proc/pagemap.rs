//! Page states from `/proc/PID/pagemap` and `/proc/kpageflags`.
//!
//! pagemap says present / swapped / file-or-shared per page and, with CAP_SYS_ADMIN, the frame
//! number; kpageflags (root only) says whether that frame belongs to a huge page or large folio.
//!
//! Both files are read with one positioned read per span (procfs's readers go through an 8 KiB
//! buffer that a seek discards, which makes scattered frame lookups read 1024 entries each);
//! procfs decodes the entries.
use std::fs::File;
use std::os::unix::fs::FileExt;

use procfs::PhysicalPageFlags;
use procfs::process::{MemoryPageFlags, PageInfo};

use super::Target;
use crate::error::{Error, Result};
use crate::state::pages::{Limitation, Mapping, MappingPages, PageCounts, PageMap, PageState};

/// Pages read from pagemap per call: bounds memory for huge mappings (64 Ki entries = 512 KiB).
const CHUNK_PAGES: u64 = 64 * 1024;
/// Frames closer than this are read from kpageflags in one span rather than one read each: the
/// kernel's cost per entry against the cost of a system call.
const PFN_GAP: u64 = 16;
const ENTRY: usize = 8;

/// The page tables of one process: its pagemap and the kernel's kpageflags, opened once and
/// read at every look.
pub struct PageReader {
    pagemap: File,
    kpageflags: Option<File>,
    /// Why kpageflags could not be opened.
    no_page_flags: Option<String>,
    page_size: u64,
    /// The frame of the kernel's shared zero page, when pagemap shows frames: an anonymous page
    /// that was read and never written maps it, and the process does not pay for it (it is not
    /// in its RSS), so it reads as absent.
    zero_frame: Option<u64>,
}

impl PageReader {
    pub fn open(target: &Target) -> Result<Self> {
        let pagemap =
            File::open(target.proc_file("pagemap")).map_err(|e| target.io_error("pagemap", e))?;
        let (kpageflags, no_page_flags) = match File::open("/proc/kpageflags") {
            Ok(k) => (Some(k), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Ok(PageReader {
            pagemap,
            kpageflags,
            no_page_flags,
            page_size: procfs::page_size(),
            zero_frame: zero_frame(),
        })
    }

    /// The page map of `maps`. A mapping that vanished since `maps` was read reads as absent.
    pub fn read_mappings(&self, target: &Target, maps: Vec<Mapping>) -> Result<PageMap> {
        let mut mappings: Vec<MappingPages> = maps.into_iter().map(MappingPages::new).collect();
        // Pieces of at most CHUNK_PAGES pages: (mapping, first page, end page), read on every
        // core (a gigabyte heap is a quarter million entries, each a page-table lookup).
        let mut pieces = Vec::new();
        for (index, pages) in mappings.iter_mut().enumerate() {
            let first = pages.mapping.start / self.page_size;
            let end = pages.mapping.end / self.page_size;
            if pages.mapping.path == "[vsyscall]" {
                // Above the user address range: pagemap has no entries for it and it is not the
                // process's memory anyway.
                pages.push(PageState::Absent, end - first);
                continue;
            }
            pieces.extend(
                (first..end)
                    .step_by(CHUNK_PAGES as usize)
                    .map(|at| (index, at, end.min(at + CHUNK_PAGES))),
            );
        }
        let read = crate::parallel::map(pieces, crate::parallel::cores(), |(index, first, end)| {
            (index, self.states(target, first, end))
        });
        let mut frames_hidden = false;
        for (index, states) in read {
            let (states, hidden) = states?;
            frames_hidden |= hidden;
            for state in states {
                mappings[index].push(state, 1);
            }
        }
        let mut totals = PageCounts::default();
        for pages in &mappings {
            totals.merge(&pages.counts);
        }
        // A process that died mid-read leaves zeros behind, not errors: check once at the end.
        target.ensure_alive()?;
        let mut limitations: Vec<Limitation> = self
            .no_page_flags
            .iter()
            .map(|e| Limitation::NoPageFlags(e.clone()))
            .collect();
        if frames_hidden {
            limitations.push(Limitation::FramesHidden);
        }
        Ok(PageMap {
            pid: target.pid,
            page_size: self.page_size,
            mappings,
            totals,
            limitations,
        })
    }

    /// The state of pages `first..end` (page indices, not addresses), and whether pagemap hid
    /// a resident page's frame number.
    fn states(&self, target: &Target, first: u64, end: u64) -> Result<(Vec<PageState>, bool)> {
        let count = (end - first) as usize;
        let mut entries = vec![0u8; count * ENTRY];
        self.pagemap
            .read_exact_at(&mut entries, first * ENTRY as u64)
            .map_err(|e| match e.kind() {
                // The pagemap opened reads the memory of the program image it was opened on:
                // nothing, once the process has exec'd another.
                std::io::ErrorKind::UnexpectedEof if !target.is_gone() => {
                    Error::ProcessExeced { pid: target.pid }
                }
                _ => target.io_error("pagemap", e),
            })?;
        let mut states = Vec::with_capacity(count);
        let mut frames = Vec::new();
        let mut frames_hidden = false;
        for (i, entry) in entries.chunks_exact(ENTRY).enumerate() {
            let info = PageInfo::parse_info(u64::from_ne_bytes(entry.try_into().unwrap()));
            states.push(match info {
                PageInfo::SwapPage(_) => PageState::Swapped,
                PageInfo::MemoryPage(flags) if !flags.contains(MemoryPageFlags::PRESENT) => {
                    PageState::Absent
                }
                PageInfo::MemoryPage(flags) => {
                    let pfn = flags.get_page_frame_number().0;
                    let zero = pfn != 0 && Some(pfn) == self.zero_frame;
                    match pfn {
                        0 => frames_hidden = true,
                        _ if zero => {}
                        pfn => frames.push((i, pfn)),
                    }
                    if zero {
                        PageState::Absent
                    } else if flags.contains(MemoryPageFlags::FILE) {
                        PageState::File
                    } else {
                        PageState::Anon
                    }
                }
            });
        }
        if let Some(kpageflags) = &self.kpageflags {
            mark_huge(kpageflags, &frames, &mut states);
        }
        Ok((states, frames_hidden))
    }
}

/// Upgrades resident pages whose frame is part of a huge page or large folio, of any size.
///
/// A large folio mapped here spans consecutive pages with consecutive frames, so only pages whose
/// frame continues a neighbour's are looked up: a process of small pages costs few lookups.
/// (A single page of a large folio mapped on its own is shown as a small page: to this mapping
/// it is one.) Folios are aligned to their size, so the two pages of an aligned pair of frames
/// mapped side by side share their folio: one lookup answers for both.
fn mark_huge(kpageflags: &File, frames: &[(usize, u64)], states: &mut [PageState]) {
    let contiguous = |a: &(usize, u64), b: &(usize, u64)| b.0 == a.0 + 1 && b.1 == a.1 + 1;
    // (page, frame, the next page shares the frame's folio)
    let mut lookups: Vec<(usize, u64, bool)> = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let next = frames.get(i + 1).filter(|n| contiguous(&frames[i], n));
        let previous = i.checked_sub(1).map(|p| &frames[p]);
        let (page, pfn) = frames[i];
        if next.is_some() && pfn % 2 == 0 {
            lookups.push((page, pfn, true));
            i += 2;
            continue;
        }
        if next.is_some() || previous.is_some_and(|p| contiguous(p, &frames[i])) {
            lookups.push((page, pfn, false));
        }
        i += 1;
    }
    // Frames mostly rise with the pages: runs that a stable sort merges cheaply.
    lookups.sort_by_key(|&(_, pfn, _)| pfn);
    let huge = PhysicalPageFlags::THP
        | PhysicalPageFlags::COMPOUND_HEAD
        | PhysicalPageFlags::COMPOUND_TAIL
        | PhysicalPageFlags::HUGE;
    let mut span_start = 0;
    while span_start < lookups.len() {
        let mut span_end = span_start + 1;
        while span_end < lookups.len() && lookups[span_end].1 - lookups[span_end - 1].1 <= PFN_GAP {
            span_end += 1;
        }
        let (low, high) = (lookups[span_start].1, lookups[span_end - 1].1);
        let mut bytes = vec![0u8; (high + 1 - low) as usize * ENTRY];
        // A frame kpageflags cannot describe (outside RAM) is left as plain resident.
        if kpageflags
            .read_exact_at(&mut bytes, low * ENTRY as u64)
            .is_ok()
        {
            for &(page, pfn, pair) in &lookups[span_start..span_end] {
                let at = (pfn - low) as usize * ENTRY;
                let word = u64::from_ne_bytes(bytes[at..at + ENTRY].try_into().unwrap());
                let flags = PhysicalPageFlags::parse_info(word);
                // The huge zero page: read, never written, not the process's memory.
                if flags.contains(PhysicalPageFlags::ZERO_PAGE) {
                    for state in &mut states[page..page + 1 + usize::from(pair)] {
                        *state = PageState::Absent;
                    }
                } else if flags.intersects(huge) {
                    for state in &mut states[page..page + 1 + usize::from(pair)] {
                        *state = match *state {
                            PageState::File => PageState::ThpFile,
                            _ => PageState::ThpAnon,
                        };
                    }
                }
            }
        }
        span_start = span_end;
    }
}

/// The frame of the shared zero page, found by reading (never writing) a fresh anonymous page of
/// our own; None when pagemap hides frame numbers.
fn zero_frame() -> Option<u64> {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};
    let page = procfs::page_size();
    let length = std::num::NonZeroUsize::new(page as usize)?;
    // SAFETY: a fresh private mapping of our own, read once and unmapped.
    let mapped =
        unsafe { mmap_anonymous(None, length, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE).ok()? };
    let address = mapped.as_ptr() as u64;
    // SAFETY: the page was just mapped readable.
    unsafe { std::ptr::read_volatile(mapped.as_ptr().cast::<u8>()) };
    let mut entry = [0u8; ENTRY];
    let read = File::open("/proc/self/pagemap")
        .and_then(|pagemap| pagemap.read_exact_at(&mut entry, address / page * ENTRY as u64));
    // SAFETY: unmapping what was mapped above.
    let _ = unsafe { munmap(mapped, page as usize) };
    read.ok()?;
    match PageInfo::parse_info(u64::from_ne_bytes(entry)) {
        PageInfo::MemoryPage(flags) if flags.contains(MemoryPageFlags::PRESENT) => {
            Some(flags.get_page_frame_number().0).filter(|&pfn| pfn != 0)
        }
        _ => None,
    }
}
