//! Page states from `/proc/PID/pagemap` and `/proc/kpageflags`.
//!
//! pagemap says present / swapped / file-or-shared per page and, with CAP_SYS_ADMIN, the frame
//! number; kpageflags (root only) says whether that frame belongs to a huge page or large folio.
use procfs::KPageFlags;
use procfs::PhysicalPageFlags;
use procfs::process::{MemoryPageFlags, PageInfo, PageMap as PagemapFile, Pfn};

use super::Target;
use crate::error::Result;
use crate::state::pages::{Mapping, MappingPages, PageCounts, PageMap, PageState};

/// Pages read from pagemap per call: bounds memory for huge mappings (64 Ki entries = 512 KiB).
const CHUNK_PAGES: u64 = 64 * 1024;
/// Frames closer than this are read from kpageflags in one span rather than one read each.
const PFN_GAP: u64 = 256;

pub struct PageReader<'t> {
    target: &'t Target,
    pagemap: PagemapFile,
    kpageflags: Option<KPageFlags>,
    page_size: u64,
    limitations: Vec<String>,
    /// A resident page came without its frame number (no CAP_SYS_ADMIN).
    frames_hidden: bool,
}

impl<'t> PageReader<'t> {
    pub fn open(target: &'t Target) -> Result<Self> {
        let pagemap = target
            .process()
            .pagemap()
            .map_err(|e| target.read_error("pagemap", e))?;
        let mut limitations = Vec::new();
        let kpageflags = match KPageFlags::new() {
            Ok(k) => Some(k),
            Err(e) => {
                limitations.push(format!(
                    "huge pages are not told apart from small ones: /proc/kpageflags cannot be \
                     read ({e}); it and pagemap's frame numbers need root (CAP_SYS_ADMIN)"
                ));
                None
            }
        };
        Ok(PageReader {
            target,
            pagemap,
            kpageflags,
            page_size: procfs::page_size(),
            limitations,
            frames_hidden: false,
        })
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The page map of every mapping of the target.
    pub fn read_all(self) -> Result<PageMap> {
        let maps = self.target.maps()?;
        self.read_mappings(maps)
    }

    /// The page map of `maps`. A mapping that vanished since `maps` was read reads as absent.
    pub fn read_mappings(mut self, maps: Vec<Mapping>) -> Result<PageMap> {
        let mut mappings = Vec::with_capacity(maps.len());
        let mut totals = PageCounts::default();
        for mapping in maps {
            let mut pages = MappingPages::new(mapping);
            self.read_mapping(&mut pages)?;
            totals.merge(&pages.counts);
            mappings.push(pages);
        }
        // A process that died mid-read leaves zeros behind, not errors: check once at the end.
        self.target.ensure_alive()?;
        if self.frames_hidden && self.kpageflags.is_some() {
            self.limitations.push(
                "huge pages are not told apart from small ones: pagemap hides frame numbers \
                 without CAP_SYS_ADMIN"
                    .to_string(),
            );
        }
        Ok(PageMap {
            pid: self.target.pid,
            page_size: self.page_size,
            mappings,
            totals,
            limitations: self.limitations,
        })
    }

    fn read_mapping(&mut self, pages: &mut MappingPages) -> Result<()> {
        let first = pages.mapping.start / self.page_size;
        let end = pages.mapping.end / self.page_size;
        if pages.mapping.path == "[vsyscall]" {
            // Above the user address range: pagemap has no entries for it and it is not the
            // process's memory anyway.
            pages.push(PageState::Absent, end - first);
            return Ok(());
        }
        let mut index = first;
        while index < end {
            let stop = end.min(index + CHUNK_PAGES);
            let states = self.states(index, stop)?;
            for state in states {
                pages.push(state, 1);
            }
            index = stop;
        }
        Ok(())
    }

    /// The state of pages `first..end` (page indices, not addresses).
    pub fn states(&mut self, first: u64, end: u64) -> Result<Vec<PageState>> {
        let infos = self
            .pagemap
            .get_range_info(first as usize..end as usize)
            .map_err(|e| self.target.read_error("pagemap", e))?;
        let mut states = Vec::with_capacity(infos.len());
        let mut frames = Vec::new();
        for (i, info) in infos.iter().enumerate() {
            states.push(match info {
                PageInfo::SwapPage(_) => PageState::Swapped,
                PageInfo::MemoryPage(flags) if !flags.contains(MemoryPageFlags::PRESENT) => {
                    PageState::Absent
                }
                PageInfo::MemoryPage(flags) => {
                    match flags.get_page_frame_number().0 {
                        0 => self.frames_hidden = true,
                        pfn => frames.push((i, pfn)),
                    }
                    if flags.contains(MemoryPageFlags::FILE) {
                        PageState::File
                    } else {
                        PageState::Anon
                    }
                }
            });
        }
        if let Some(kpageflags) = self.kpageflags.as_mut() {
            mark_huge(kpageflags, &mut frames, &mut states);
        }
        Ok(states)
    }
}

/// Upgrades resident pages whose frame is part of a huge page or large folio, of any size.
fn mark_huge(kpageflags: &mut KPageFlags, frames: &mut [(usize, u64)], states: &mut [PageState]) {
    frames.sort_unstable_by_key(|&(_, pfn)| pfn);
    let huge = PhysicalPageFlags::THP
        | PhysicalPageFlags::COMPOUND_HEAD
        | PhysicalPageFlags::COMPOUND_TAIL
        | PhysicalPageFlags::HUGE;
    let mut span_start = 0;
    while span_start < frames.len() {
        let mut span_end = span_start + 1;
        while span_end < frames.len() && frames[span_end].1 - frames[span_end - 1].1 <= PFN_GAP {
            span_end += 1;
        }
        let (low, high) = (frames[span_start].1, frames[span_end - 1].1);
        // A frame kpageflags cannot describe (outside RAM) is left as plain resident.
        if let Ok(flags) = kpageflags.get_range_info(Pfn(low), Pfn(high + 1)) {
            for &(index, pfn) in &frames[span_start..span_end] {
                if flags[(pfn - low) as usize].intersects(huge) {
                    states[index] = match states[index] {
                        PageState::File => PageState::ThpFile,
                        _ => PageState::ThpAnon,
                    };
                }
            }
        }
        span_start = span_end;
    }
}
