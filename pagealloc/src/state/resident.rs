//! Where a process's resident memory goes. Every resident page of the page map is counted once,
//! in one part, so that the parts sum to the resident set the kernel reports (`Rss` of
//! `/proc/PID/smaps_rollup`): a heap page by the state of each of its granules, a page of an
//! mmapped chunk as that, other anonymous memory (stacks, the program's own mappings, other
//! allocators) and file-backed memory as such.
use super::Sample;
use super::heap::{ChunkState, GRANULE, Segment};
use super::pages::PageState;

/// A part of the resident memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// Heap granules held by the program.
    HeapLive,
    /// Heap granules free or cached in malloc (tcache, fastbins, bins, top, freed since the
    /// last walk): what the process pays for and does not use.
    HeapFree,
    /// Heap granules of malloc's own structures, and the parts of heap pages outside the heap.
    HeapOverhead,
    /// Heap granules that could not be read consistently.
    HeapUnknown,
    /// Pages of chunks malloc mapped on their own.
    Mmapped,
    /// Other anonymous memory: stacks, the program's own mappings, other allocators, writable
    /// data of the program and its libraries.
    OtherAnon,
    /// File-backed and shared memory (the page cache mapped by the process).
    File,
}

impl Part {
    pub const ALL: [Part; 7] = [
        Part::HeapLive,
        Part::HeapFree,
        Part::HeapOverhead,
        Part::HeapUnknown,
        Part::Mmapped,
        Part::OtherAnon,
        Part::File,
    ];

    /// The label value.
    pub fn key(self) -> &'static str {
        match self {
            Part::HeapLive => "heap_live",
            Part::HeapFree => "heap_free",
            Part::HeapOverhead => "heap_overhead",
            Part::HeapUnknown => "heap_unknown",
            Part::Mmapped => "mmapped_chunks",
            Part::OtherAnon => "anon_other",
            Part::File => "file",
        }
    }

    fn of_granule(granule: u8) -> Part {
        match ChunkState::from_granule(granule) {
            ChunkState::Live => Part::HeapLive,
            ChunkState::Overhead => Part::HeapOverhead,
            ChunkState::Unknown => Part::HeapUnknown,
            ChunkState::Tcache
            | ChunkState::Fastbin
            | ChunkState::Bin
            | ChunkState::Top
            | ChunkState::Freed => Part::HeapFree,
        }
    }
}

/// The resident memory of one process, by part, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resident {
    bytes: [u64; Part::ALL.len()],
    /// Of all of it, the bytes in huge pages or large folios.
    pub huge_bytes: u64,
}

impl Resident {
    pub fn get(&self, part: Part) -> u64 {
        self.bytes[part as usize]
    }

    /// All resident bytes: the RSS.
    pub fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }

    fn add(&mut self, part: Part, bytes: u64) {
        self.bytes[part as usize] += bytes;
    }

    /// The breakdown of a sample: its page map's resident pages, parted by its heap map (when it
    /// has one).
    pub fn of(sample: &Sample) -> Resident {
        let page_size = sample.pages.page_size;
        let mut segments: Vec<&Segment> = Vec::new();
        let mut mmapped: Vec<(u64, u64)> = Vec::new();
        if let Some(heap) = sample.heap_map() {
            segments = heap.segments.iter().collect();
            segments.sort_by_key(|s| s.start);
            mmapped = (heap.mmapped.iter())
                .map(|c| (c.address, c.address.saturating_add(c.bytes)))
                .collect();
            mmapped.sort_unstable();
        }
        // Pages come in rising address order: each list is gone through once.
        let (mut segment, mut chunk) = (0, 0);
        let mut resident = Resident::default();
        for pages in &sample.pages.mappings {
            let mut page = pages.mapping.start;
            for run in &pages.runs {
                let end = page + run.pages * page_size;
                if !run.state.is_resident() {
                    page = end;
                    continue;
                }
                if matches!(run.state, PageState::ThpAnon | PageState::ThpFile) {
                    resident.huge_bytes += end - page;
                }
                if matches!(run.state, PageState::File | PageState::ThpFile) {
                    resident.add(Part::File, end - page);
                    page = end;
                    continue;
                }
                while page < end {
                    let next = page + page_size;
                    while segments.get(segment).is_some_and(|s| s.end <= page) {
                        segment += 1;
                    }
                    while mmapped.get(chunk).is_some_and(|c| c.1 <= page) {
                        chunk += 1;
                    }
                    if let Some(s) = segments.get(segment).filter(|s| s.start < next) {
                        // Every page of the run that the heap overlaps, at once.
                        let upto = end.min(s.end.next_multiple_of(page_size));
                        resident.add_heap_pages(s, page, upto);
                        page = upto;
                        continue;
                    } else if mmapped.get(chunk).is_some_and(|c| c.0 < next) {
                        resident.add(Part::Mmapped, page_size);
                    } else {
                        resident.add(Part::OtherAnon, page_size);
                    }
                    page = next;
                }
            }
        }
        resident
    }

    /// Resident pages `from..to` that `segment` overlaps: its granules by their state, the rest
    /// of the pages (before or after the heap) as malloc's overhead.
    fn add_heap_pages(&mut self, segment: &Segment, from: u64, to: u64) {
        let first = ((from.max(segment.start) - segment.start) / GRANULE) as usize;
        let last = ((to.min(segment.end) - segment.start) / GRANULE) as usize;
        let granules = segment.granules.get(first..last).unwrap_or(&[]);
        // A count per granule value (state, and the chunk-start bit folded away): the loop a
        // gigabyte heap's 70 million granules go through at every sample.
        let mut counts = [0u64; 8];
        for &granule in granules {
            counts[usize::from(granule & 7)] += 1;
        }
        for (value, count) in counts.into_iter().enumerate() {
            self.add(Part::of_granule(value as u8), count * GRANULE);
        }
        let outside = (to - from).saturating_sub(granules.len() as u64 * GRANULE);
        self.add(Part::HeapOverhead, outside);
    }
}

#[cfg(test)]
mod tests {
    use super::{Part, Resident};
    use crate::state::heap::{
        ChunkState, HeapFigures, HeapGeometry, HeapMap, MmappedChunk, Segment, Stretch,
    };
    use crate::state::pages::{Mapping, MappingPages, PageMap, PageState};
    use crate::state::{Heap, Sample};

    const PAGE: u64 = 4096;

    fn mapping(start: u64, end: u64, path: &str, states: &[(PageState, u64)]) -> MappingPages {
        let mut pages = MappingPages::new(Mapping {
            start,
            end,
            perms: "rw-p".into(),
            offset: 0,
            path: path.into(),
        });
        for &(state, count) in states {
            pages.push(state, count);
        }
        pages
    }

    /// Every resident page lands in exactly one part, heap pages split by granule, and pages
    /// that are not resident count nowhere.
    #[test]
    fn parts_sum_to_the_resident_pages() {
        // A heap of 4 pages starting 0x100 bytes into its first page: a live chunk of 0x200,
        // a bin chunk of 0x1000, top to the end.
        let heap_start = 0x10_0000;
        let mut segment = Segment::new(heap_start + 0x100, heap_start + 4 * PAGE, 0, PAGE);
        let mut stretch = Stretch {
            start: segment.start,
            granules: &mut segment.granules,
        };
        stretch.mark(heap_start + 0x100, 0x200, ChunkState::Live);
        stretch.mark(heap_start + 0x300, 0x1000, ChunkState::Bin);
        stretch.mark(heap_start + 0x1300, 4 * PAGE - 0x1300, ChunkState::Top);
        let mappings = vec![
            mapping(
                heap_start,
                heap_start + 4 * PAGE,
                "[heap]",
                &[
                    (PageState::Anon, 2),
                    (PageState::Absent, 1),
                    (PageState::Anon, 1),
                ],
            ),
            mapping(0x20_0000, 0x20_4000, "", &[(PageState::Anon, 4)]),
            mapping(0x30_0000, 0x50_0000, "", &[(PageState::ThpAnon, 512)]),
            mapping(
                0x60_0000,
                0x60_3000,
                "/lib/x.so",
                &[(PageState::File, 2), (PageState::Swapped, 1)],
            ),
        ];
        let sample = Sample {
            pid: 1,
            taken: std::time::SystemTime::now(),
            duration: Default::default(),
            pages: PageMap {
                pid: 1,
                page_size: PAGE,
                mappings,
                totals: Default::default(),
                limitations: Vec::new(),
            },
            libc: None,
            heap: Heap::Map(Box::new(HeapMap {
                arenas: Vec::new(),
                geometry: HeapGeometry::for_tests(),
                mmapped_chunks: 1,
                mmapped_bytes: 2 * PAGE,
                totals: HeapFigures::default(),
                notes: Vec::new(),
                // Two pages of the second mapping are an mmapped chunk.
                mmapped: vec![MmappedChunk {
                    address: 0x20_1000,
                    bytes: 2 * PAGE,
                }],
                segments: vec![segment],
            })),
            events: None,
            sites: None,
        };
        let resident = Resident::of(&sample);
        // Page 0: 0x100 outside the heap, 0x200 live, 0xd00 bin; page 1: bin 0x300, top
        // 0xd00; page 2 absent; page 3: top.
        assert_eq!(resident.get(Part::HeapLive), 0x200);
        assert_eq!(resident.get(Part::HeapFree), 0xd00 + 0x300 + 0xd00 + PAGE);
        assert_eq!(resident.get(Part::HeapOverhead), 0x100);
        assert_eq!(resident.get(Part::HeapUnknown), 0);
        assert_eq!(resident.get(Part::Mmapped), 2 * PAGE);
        assert_eq!(resident.get(Part::OtherAnon), 2 * PAGE + 512 * PAGE);
        assert_eq!(resident.get(Part::File), 2 * PAGE);
        assert_eq!(resident.huge_bytes, 512 * PAGE);
        assert_eq!(resident.total(), (3 + 4 + 512 + 2) * PAGE);
    }
}
