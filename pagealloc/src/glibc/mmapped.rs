//! mmapped chunks: linked from nowhere, found from the mappings.
use super::walker::Walker;
use crate::glibc::{FLAG_BITS, IS_MMAPPED};
use crate::state::heap::{MmappedChunk, Segment};

impl Walker<'_> {
    /// mmapped chunks are linked from nowhere: look for their headers at the start of anonymous
    /// mappings outside the heaps.
    pub(super) fn mmapped_chunks(&self, segments: &[Segment]) -> Vec<MmappedChunk> {
        let o = self.offsets;
        let page = self.memory.page_size();
        let mut found = Vec::new();
        for m in self.mappings {
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
        self.memory.read(base, &mut first_page).ok()?;
        let word = |o: u64| {
            let o = o as usize;
            u64::from_ne_bytes(first_page[o..o + 8].try_into().unwrap())
        };
        let mut offset = 0;
        while offset + 2 * self.offsets.size_sz <= page {
            let prev = word(offset + self.offsets.chunk_size - self.offsets.size_sz);
            let size = word(offset + self.offsets.chunk_size);
            if prev == offset && size & FLAG_BITS == IS_MMAPPED {
                return Some((offset, size & !FLAG_BITS));
            }
            if offset == 0 && (prev != 0 || size != 0) {
                return None; // data at the very start: not a chunk moved up by memalign
            }
            offset += self.offsets.alignment;
        }
        None
    }
}
