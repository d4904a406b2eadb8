//! mmapped chunks: linked from nowhere, found from the mappings.
//!
//! Each chunk glibc maps gets a mapping of its own, but the kernel merges adjacent anonymous
//! mappings of the same protection: a chunk may lie anywhere in a mapping, after other chunks,
//! after anonymous memory of the program's or libc's `.bss`. So every resident page boundary of
//! anonymous memory outside the heaps is a candidate: the first words of each are read (in
//! batches, a few system calls for thousands of pages), and a page that starts with an mmapped
//! chunk's header is a chunk, whose interior is then skipped.
//!
//! The header is at the start of the chunk's mapping even for memalign's chunks: glibc moves
//! such a chunk up inside its mapping (its `prev_size` says by how much) and leaves the header
//! of the whole mapping in place, `prev_size` 0, size the whole mapping. But only the moved
//! chunk's own header is kept up to date: when realloc mremaps the chunk (growing or shrinking
//! it, in place or elsewhere: the mapping moves whole, the lead with it), glibc rewrites that
//! one and the header at the start of the mapping keeps the old size. So a page that starts
//! with such a header is also probed where memalign puts the moved chunk's header, and a header
//! found there, whose `prev_size` is exactly its lead, gives the mapping's size: lead plus
//! chunk size. What is counted is the whole mapping, as `mp_.mmapped_mem` counts it.
//!
//! Where the moved header is: memalign moves the chunk up to the first aligned user pointer at
//! least MINSIZE in, and the mapping starts on a page. Aligned to a page or less, the user
//! pointer is `2^k` bytes in (the header `2^k - 2 * SIZE_SZ`), within the first page; aligned
//! to more (64 KiB, 2 MiB), it starts a page further in, and its header ends the page before:
//! nothing in the mapping between the first page and that one was ever written (glibc writes
//! neither, the program's memory starts after), so that page is the first resident one after
//! the first page (past the zero pages of a transparent huge page, at most two of them).
//!
//! Cost: one 16-byte read per resident page of anonymous memory outside the heaps, 1024 pages
//! per system call, and one more system call per batch for the probes of the pages that start
//! with a header, until as many chunks as glibc counts are found: measured 0.2 s per GiB
//! resident (the kernel's cost of reaching each page), nothing without mmapped chunks. A chunk
//! whose second resident page ends in zeros (written with zeros, or a huge page) costs one
//! system call more, for up to 1024 pages.
use super::walker::Walker;
use crate::glibc::{FLAG_BITS, IS_MMAPPED};
use crate::state::heap::{MmappedChunk, Segment};
use crate::state::pages::Mapping;

/// Page boundaries read per batch.
const BATCH: usize = 1024;

/// Two words read at an address: `prev_size` and `size` of a chunk starting there, None if they
/// could not be read.
type Probe = (u64, Option<(u64, u64)>);

/// Memory that may hold mmapped chunks: private, writable and not a file's (hugetlb mappings
/// are named after their pseudo-file; `[heap]` may have absorbed a neighbour).
fn may_hold_chunks(m: &Mapping) -> bool {
    m.perms == "rw-p"
        && (m.path.is_empty() || m.path == "[heap]" || m.path.starts_with("/anon_hugepage"))
}

impl Walker<'_> {
    /// Every mmapped chunk in anonymous memory outside the heap segments, in address order.
    /// The search stops once it found as many chunks and bytes as glibc counts (`expected`:
    /// `mp_.n_mmaps`, `mp_.mmapped_mem`): a process without mmapped chunks costs nothing.
    pub(super) fn mmapped_chunks(
        &self,
        segments: &[Segment],
        expected: (u64, u64),
    ) -> Vec<MmappedChunk> {
        let leads = self.memalign_leads();
        let mut found = Vec::new();
        let mut counted = (0, 0);
        for (start, end) in self.anonymous_runs(segments) {
            if counted == expected {
                break;
            }
            self.scan_pages_probing(
                start,
                end,
                |addr, prev_size, size| self.moved_header_spots(addr, prev_size, size, end, &leads),
                |addr, prev_size, size, moved| {
                    let bytes = self.mmapped_bytes(addr, prev_size, size, moved, end)?;
                    found.push(MmappedChunk {
                        address: addr,
                        bytes,
                    });
                    counted = (counted.0 + 1, counted.1 + bytes);
                    Some(if counted == expected {
                        end
                    } else {
                        addr + bytes
                    })
                },
            );
        }
        found
    }

    /// The runs of adjacent mappings that may hold chunks (mmapped ones, or the regions of a
    /// main arena that is not contiguous), less the heap segments.
    pub(super) fn anonymous_runs(&self, segments: &[Segment]) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for m in self.mappings.iter().filter(|m| may_hold_chunks(m)) {
            match runs.last_mut() {
                Some(last) if last.1 == m.start => last.1 = m.end,
                _ => runs.push((m.start, m.end)),
            }
        }
        let mut heaps: Vec<(u64, u64)> = segments.iter().map(|s| (s.start, s.end)).collect();
        heaps.sort_unstable();
        let mut outside = Vec::new();
        for (mut start, end) in runs {
            for &(heap_start, heap_end) in &heaps {
                if heap_end <= start || heap_start >= end {
                    continue;
                }
                if heap_start > start {
                    outside.push((start, heap_start));
                }
                start = start.max(heap_end);
            }
            if start < end {
                outside.push((start, end));
            }
        }
        outside
    }

    /// Hands the first two words (`prev_size` and `size` of a chunk starting there) of each
    /// resident page of `start..end` to `visit`, in address order, read in batches. `visit`
    /// returns where the scan goes on when it found something there (past it: none of its
    /// pages is read), None for the next page.
    pub(super) fn scan_pages(
        &self,
        start: u64,
        end: u64,
        mut visit: impl FnMut(u64, u64, u64) -> Option<u64>,
    ) {
        self.scan_pages_probing(
            start,
            end,
            |_, _, _| Vec::new(),
            |addr, prev_size, size, _| visit(addr, prev_size, size),
        );
    }

    /// [`Self::scan_pages`], and for each page the two words at each of the resident spots
    /// `probe` names for it (given the page and its two words) too, all read in one more batch:
    /// `visit` gets them in the order named, None where they could not be read.
    fn scan_pages_probing(
        &self,
        start: u64,
        end: u64,
        probe: impl Fn(u64, u64, u64) -> Vec<u64>,
        mut visit: impl FnMut(u64, u64, u64, &[Probe]) -> Option<u64>,
    ) {
        let page = self.memory.page_size();
        let header = self.header_bytes();
        let pages = self.memory.resident_runs(start, end);
        let mut cursor = start;
        let mut words = vec![0u8; BATCH * header];
        let mut probes = Vec::new();
        loop {
            let first = pages.partition_point(|&(_, to)| to <= cursor);
            let batch: Vec<u64> = (pages[first..].iter())
                .flat_map(|&(from, to)| (from.max(cursor)..to).step_by(page as usize))
                .take(BATCH)
                .collect();
            let Some(&last) = batch.last() else {
                break;
            };
            let words = &mut words[..batch.len() * header];
            let read = self.memory.read_each(&batch, words);
            // Each page's spots to probe (most pages have none), all in one batch.
            let spots: Vec<Vec<u64>> = (0..batch.len())
                .map(|i| match read[i] {
                    true => {
                        let (prev_size, size) = self.words_at(words, i);
                        probe(batch[i], prev_size, size)
                    }
                    false => Vec::new(),
                })
                .collect();
            let (spot_words, spot_read) = self.read_words(&spots.concat());
            let mut next_spot = 0;
            for (i, &addr) in batch.iter().enumerate() {
                let spots = &spots[i];
                let first_spot = next_spot;
                next_spot += spots.len();
                if addr < cursor || !read[i] {
                    continue;
                }
                probes.clear();
                probes.extend(spots.iter().enumerate().map(|(k, &at)| {
                    let k = first_spot + k;
                    (at, spot_read[k].then(|| self.words_at(&spot_words, k)))
                }));
                let (prev_size, size) = self.words_at(words, i);
                if let Some(next) = visit(addr, prev_size, size, &probes) {
                    cursor = next.max(addr + page);
                }
            }
            cursor = cursor.max(last + page);
        }
    }

    /// `prev_size` and `size` of a chunk's header, two words (16 bytes on LP64).
    fn header_bytes(&self) -> usize {
        2 * self.offsets.size_sz as usize
    }

    /// The two header words at each of `spots` (the bytes, and which were read), in one batch.
    fn read_words(&self, spots: &[u64]) -> (Vec<u8>, Vec<bool>) {
        let mut bytes = vec![0u8; spots.len() * self.header_bytes()];
        if spots.is_empty() {
            return (bytes, Vec::new());
        }
        let read = self.memory.read_each(spots, &mut bytes);
        (bytes, read)
    }

    /// The `i`th pair of header words (`prev_size`, `size`) of `bytes`.
    fn words_at(&self, bytes: &[u8], i: usize) -> (u64, u64) {
        let o = self.offsets;
        let word = |w: u64| {
            let at = i * self.header_bytes() + (o.chunk_size - o.size_sz + w * o.size_sz) as usize;
            u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap())
        };
        (word(0), word(1))
    }

    /// Where memalign may have moved an mmapped chunk's header from the start of its mapping
    /// within its first page (`2^k - 2 * SIZE_SZ`, MINSIZE at least, its user pointer at most a
    /// page in), in increasing order. memalign moves the chunk to the first aligned user
    /// pointer at least MINSIZE up, and glibc's own check (mremap_chunk, munmap_chunk) wants
    /// the user pointer's offset in its page a power of two.
    fn memalign_leads(&self) -> Vec<u64> {
        let o = self.offsets;
        let header = 2 * o.size_sz;
        let page = self.memory.page_size();
        (0..64)
            .map(|k| 1u64 << k)
            .take_while(|&aligned| aligned <= page)
            .filter(|&aligned| aligned >= o.min_size + header)
            .map(|aligned| aligned - header)
            .collect()
    }

    /// For a page at `addr` that starts with the header (`prev_size`, `size`) of an mmapped
    /// chunk's mapping, in memory that may hold it up to `end`: where the header of a chunk
    /// memalign moved up may be. Those of `leads` into the first page, and the last two words
    /// of the next resident page the mapping's old size covers. None for any other page.
    fn moved_header_spots(
        &self,
        addr: u64,
        prev_size: u64,
        size: u64,
        end: u64,
        leads: &[u64],
    ) -> Vec<u64> {
        let Some(bytes) = self.mapping_header(prev_size, size) else {
            return Vec::new();
        };
        let page = self.memory.page_size();
        let extent = addr.saturating_add(bytes).min(end);
        let next = self.resident_tails(addr + page, extent).next();
        (leads.iter().map(|&lead| addr + lead))
            .chain(next)
            .collect()
    }

    /// The last two words of each resident page of `from..to`, in order: where the header of a
    /// chunk aligned to more than a page ends up.
    fn resident_tails(&self, from: u64, to: u64) -> impl Iterator<Item = u64> {
        let page = self.memory.page_size();
        let header = self.header_bytes() as u64;
        (self.memory.resident_runs(from, to).into_iter())
            .flat_map(move |(from, to)| (from..to).step_by(page as usize))
            .map(move |p| p + page - header)
    }

    /// The bytes of the mmapped chunk whose mapping starts at `addr` with the header
    /// (`prev_size`, `size`), given the words at the spots [`Self::moved_header_spots`] named
    /// (`moved`), in memory that may hold it up to `end`; None if it is no such header. A header
    /// at a spot, whose `prev_size` is its lead, is the chunk memalign moved up: its size is
    /// current, the mapping's header may be stale (realloc mremapped the chunk).
    fn mmapped_bytes(
        &self,
        addr: u64,
        prev_size: u64,
        size: u64,
        moved: &[Probe],
        end: u64,
    ) -> Option<u64> {
        let bytes = self.mapping_header(prev_size, size)?;
        let room = end - addr;
        let current = |&(at, words): &Probe| self.moved_chunk(at - addr, words?, room);
        let page = self.memory.page_size();
        // The spot past the first page ends in zeros: a page of a huge one, or the program's
        // zeros. The moved header is in the next page that does not, if any.
        let past_zeros = || {
            let &(at, words) = moved.last().filter(|(at, _)| *at >= addr + page)?;
            if words != Some((0, 0)) {
                return None;
            }
            let extent = addr.saturating_add(bytes).min(end);
            let tails: Vec<u64> = self
                .resident_tails(at + self.header_bytes() as u64, extent)
                .take(BATCH)
                .collect();
            let (words, read) = self.read_words(&tails);
            (0..tails.len())
                .filter(|&k| read[k])
                .map(|k| (tails[k], self.words_at(&words, k)))
                .find(|&(_, words)| words != (0, 0))
                .and_then(|(at, words)| self.moved_chunk(at - addr, words, room))
        };
        (moved.iter().find_map(current))
            .or_else(past_zeros)
            .or((bytes <= room).then_some(bytes))
    }

    /// The mapping's bytes if the header words (`prev_size`, `size`) `lead` bytes into it, in
    /// `room` bytes that may hold it, are those of the chunk memalign moved up that far.
    fn moved_chunk(&self, lead: u64, (prev_size, size): (u64, u64), room: u64) -> Option<u64> {
        let chunk = size & !FLAG_BITS;
        let bytes = lead.checked_add(chunk)?;
        (prev_size == lead
            && size & FLAG_BITS == IS_MMAPPED
            && chunk >= self.offsets.min_size
            && bytes.is_multiple_of(self.memory.page_size())
            && bytes <= room)
            .then_some(bytes)
    }

    /// The bytes the header (`prev_size`, `size`) at the start of an mmapped chunk's mapping
    /// says the mapping has; None if it is no such header.
    fn mapping_header(&self, prev_size: u64, size: u64) -> Option<u64> {
        let page = self.memory.page_size();
        let bytes = size & !FLAG_BITS;
        (prev_size == 0
            && size & FLAG_BITS == IS_MMAPPED
            && bytes >= self.offsets.min_size
            && bytes.is_multiple_of(page))
        .then_some(bytes)
    }
}
