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
//! of the whole mapping in place, `prev_size` 0, size the whole mapping. That header is what is
//! counted: `mp_.mmapped_mem` counts whole mappings too.
//!
//! Cost: one 16-byte read per resident page of anonymous memory outside the heaps, 1024 pages
//! per system call, until as many chunks as glibc counts are found: measured 0.2 s per GiB
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
        let mut found = Vec::new();
        let mut counted = (0, 0);
        for (start, end) in self.anonymous_runs(segments) {
            if counted == expected {
                break;
            }
            self.scan_pages(start, end, |addr, prev_size, size| {
                let bytes = self.mmapped_header(prev_size, size, end - addr)?;
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
            });
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
        let o = self.offsets;
        let page = self.memory.page_size();
        let header = 2 * o.size_sz as usize;
        let pages = self.memory.resident_runs(start, end);
        let mut cursor = start;
        let mut words = vec![0u8; BATCH * header];
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
            for (i, &addr) in batch.iter().enumerate() {
                if addr < cursor || !read[i] {
                    continue;
                }
                let word = |w: u64| {
                    let at = i * header + (o.chunk_size - o.size_sz + w * o.size_sz) as usize;
                    u64::from_ne_bytes(words[at..at + 8].try_into().unwrap())
                };
                if let Some(next) = visit(addr, word(0), word(1)) {
                    cursor = next.max(addr + page);
                }
            }
            cursor = cursor.max(last + page);
        }
    }

    /// The bytes of the mmapped chunk whose mapping starts with the header (`prev_size`,
    /// `size`) and has `room` bytes of memory that may hold it; None if it is no such header.
    fn mmapped_header(&self, prev_size: u64, size: u64, room: u64) -> Option<u64> {
        let page = self.memory.page_size();
        let bytes = size & !FLAG_BITS;
        (prev_size == 0
            && size & FLAG_BITS == IS_MMAPPED
            && bytes >= self.offsets.min_size
            && bytes.is_multiple_of(page)
            && bytes <= room)
            .then_some(bytes)
    }
}
