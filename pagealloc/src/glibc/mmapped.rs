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
//! it, in place or elsewhere), glibc rewrites that one and the header at the start of the
//! mapping keeps the old size. So a page that starts with such a header is also probed where
//! memalign puts the moved chunk's header (its user pointer aligned to a power of two up to a
//! page: `2^k - 2 * SIZE_SZ` bytes in, within the first page), and a header found there, whose
//! `prev_size` is exactly that lead, gives the mapping's size: lead plus chunk size. What is
//! counted is the whole mapping, as `mp_.mmapped_mem` counts it. (A chunk aligned to more than
//! a page and then mremapped still shows its old size: its header is not in the first page.)
//!
//! Cost: one 16-byte read per resident page of anonymous memory outside the heaps, 1024 pages
//! per system call, and one more system call per batch for the probes of the pages that start
//! with a header, until as many chunks as glibc counts are found: measured 0.2 s per GiB
//! resident (the kernel's cost of reaching each page), nothing without mmapped chunks.
use super::walker::Walker;
use crate::glibc::{FLAG_BITS, IS_MMAPPED};
use crate::state::heap::{MmappedChunk, Segment};
use crate::state::pages::Mapping;

/// Page boundaries read per batch.
const BATCH: usize = 1024;

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
            let starts_mapping = |prev_size, size| self.mapping_header(prev_size, size).is_some();
            self.scan_pages_probing(
                start,
                end,
                &leads,
                starts_mapping,
                |addr, prev_size, size, moved| {
                    let bytes = self.mmapped_bytes(prev_size, size, &leads, moved, end - addr)?;
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
            &[],
            |_, _| false,
            |addr, prev_size, size, _| visit(addr, prev_size, size),
        );
    }

    /// [`Self::scan_pages`], and for each page whose two words `probe` accepts, the two words
    /// at each of `offsets` into that page too (all less than a page less two words: the
    /// page is resident), read in one more batch: `visit` gets them in the order of
    /// `offsets`, None where they could not be read (and for the pages not probed).
    fn scan_pages_probing(
        &self,
        start: u64,
        end: u64,
        offsets: &[u64],
        probe: impl Fn(u64, u64) -> bool,
        mut visit: impl FnMut(u64, u64, u64, &[Option<(u64, u64)>]) -> Option<u64>,
    ) {
        let o = self.offsets;
        let page = self.memory.page_size();
        let header = 2 * o.size_sz as usize;
        debug_assert!(offsets.iter().all(|&at| at + header as u64 <= page));
        let pages = self.memory.resident_runs(start, end);
        let mut cursor = start;
        let mut words = vec![0u8; BATCH * header];
        let mut probes = vec![None; offsets.len()];
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
            let pair = |bytes: &[u8], i: usize| {
                let word = |w: u64| {
                    let at = i * header + (o.chunk_size - o.size_sz + w * o.size_sz) as usize;
                    u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap())
                };
                (word(0), word(1))
            };
            // The pages to probe, and their probes (offsets.len() each), in one batch.
            let probed: Vec<usize> = if offsets.is_empty() {
                Vec::new()
            } else {
                (0..batch.len())
                    .filter(|&i| read[i] && batch[i] >= cursor)
                    .filter(|&i| {
                        let (prev_size, size) = pair(words, i);
                        probe(prev_size, size)
                    })
                    .collect()
            };
            let probe_addrs: Vec<u64> = (probed.iter())
                .flat_map(|&i| offsets.iter().map(move |&at| (i, at)))
                .map(|(i, at)| batch[i] + at)
                .collect();
            let mut probe_words = vec![0u8; probe_addrs.len() * header];
            let probe_read = if probe_addrs.is_empty() {
                Vec::new()
            } else {
                self.memory.read_each(&probe_addrs, &mut probe_words)
            };
            for (i, &addr) in batch.iter().enumerate() {
                if addr < cursor || !read[i] {
                    continue;
                }
                probes.fill(None);
                if let Ok(p) = probed.binary_search(&i) {
                    for (k, slot) in probes.iter_mut().enumerate() {
                        let at = p * offsets.len() + k;
                        *slot = probe_read[at].then(|| pair(&probe_words, at));
                    }
                }
                let (prev_size, size) = pair(words, i);
                if let Some(next) = visit(addr, prev_size, size, &probes) {
                    cursor = next.max(addr + page);
                }
            }
            cursor = cursor.max(last + page);
        }
    }

    /// Where memalign may have moved an mmapped chunk's header from the start of its mapping
    /// (`2^k - 2 * SIZE_SZ`, MINSIZE at least, its user pointer at most a page in), in
    /// increasing order. memalign moves the chunk to the first aligned user pointer at least
    /// MINSIZE up, and glibc's own check (mremap_chunk, munmap_chunk) wants the user pointer's
    /// offset in its page a power of two.
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

    /// The bytes of the mmapped chunk whose mapping starts with the header (`prev_size`,
    /// `size`), given the headers found at `leads` into its first page (`moved`), and has
    /// `room` bytes of memory that may hold it; None if it is no such header. A header at a
    /// lead, with that lead as `prev_size`, is the chunk memalign moved up: its size is
    /// current, the mapping's header may be stale (realloc mremapped the chunk).
    fn mmapped_bytes(
        &self,
        prev_size: u64,
        size: u64,
        leads: &[u64],
        moved: &[Option<(u64, u64)>],
        room: u64,
    ) -> Option<u64> {
        let bytes = self.mapping_header(prev_size, size)?;
        let page = self.memory.page_size();
        let current = leads.iter().zip(moved).find_map(|(&lead, words)| {
            let (prev_size, size) = (*words)?;
            let chunk = size & !FLAG_BITS;
            let bytes = lead.checked_add(chunk)?;
            (prev_size == lead
                && size & FLAG_BITS == IS_MMAPPED
                && chunk >= self.offsets.min_size
                && bytes.is_multiple_of(page)
                && bytes <= room)
                .then_some(bytes)
        });
        current.or((bytes <= room).then_some(bytes))
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
