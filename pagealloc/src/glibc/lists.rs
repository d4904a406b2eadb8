//! The fastbin and bin lists of an arena, followed through what the walk captured.
//!
//! The heap is not kept in memory after the walk (see [`super::window`]), so the walk captures
//! each chunk that can be on a list with its first link: chunks in use of fastbin size (a
//! fastbin chunk looks in use to the walk) and chunks free in a bin. The lists are then followed
//! through the captures: a list that reaches anything else is reported, and every capture is met
//! at most once, so a cycle or two joined lists end the walk of a list in bounded time.
use super::layout::Offsets;
use super::tally::residency;
use super::window::Residency;
use crate::state::heap::{CHUNK_START, ChunkState, HeapFigures, Segment};

/// A chunk that can be on a free list, with its first link (fastbin links revealed).
#[derive(Clone, Copy, Debug)]
pub(super) struct Capture {
    pub chunk: u64,
    pub size: u64,
    pub link: u64,
}

/// Captures in address order.
#[derive(Default)]
pub(super) struct Captures {
    /// Chunks in use of fastbin size whose link could be one.
    pub fast: Vec<Capture>,
    /// Chunks free in a bin.
    pub bin: Vec<Capture>,
}

impl Captures {
    /// Appends captures of chunks further along the heap.
    pub fn append(&mut self, other: Captures) {
        for (mine, mut theirs) in [(&mut self.fast, other.fast), (&mut self.bin, other.bin)] {
            // Millions of captures: moved, not copied, where possible.
            if mine.is_empty() {
                *mine = theirs;
            } else {
                mine.append(&mut theirs);
            }
        }
    }

    /// Drops the captures of chunks in `start..end`.
    pub fn forget(&mut self, start: u64, end: u64) {
        for captures in [&mut self.fast, &mut self.bin] {
            let from = captures.partition_point(|c| c.chunk < start);
            let to = captures.partition_point(|c| c.chunk < end);
            captures.drain(from..to);
        }
    }
}

/// Finds captures by address: a table per heap segment gives, for each page, the first capture
/// at or after it; then a binary search among that page's few captures.
struct Index<'c> {
    captures: &'c [Capture],
    page_shift: u32,
    /// (start, end, first capture of each page and one past the last page), by start.
    segments: Vec<(u64, u64, Vec<u32>)>,
}

impl<'c> Index<'c> {
    fn new(captures: &'c [Capture], segments: &[Segment], page_shift: u32) -> Index<'c> {
        let mut spans: Vec<(u64, u64)> = segments.iter().map(|s| (s.start, s.end)).collect();
        spans.sort_unstable();
        let segments = spans
            .into_iter()
            .map(|(start, end)| {
                let pages = (end - start).div_ceil(1 << page_shift) as usize;
                let mut first = Vec::with_capacity(pages + 1);
                let mut i = captures.partition_point(|c| c.chunk < start);
                for page in 0..=pages as u64 {
                    let at = start + (page << page_shift);
                    while i < captures.len() && captures[i].chunk < at {
                        i += 1;
                    }
                    first.push(i as u32);
                }
                (start, end, first)
            })
            .collect();
        Index {
            captures,
            page_shift,
            segments,
        }
    }

    fn find(&self, chunk: u64) -> Option<usize> {
        let s = self
            .segments
            .partition_point(|s| s.0 <= chunk)
            .checked_sub(1)?;
        let (start, end, first) = &self.segments[s];
        if chunk >= *end {
            return None;
        }
        let page = ((chunk - start) >> self.page_shift) as usize;
        let (lo, hi) = (first[page] as usize, first[page + 1] as usize);
        let found = self.captures[lo..hi].binary_search_by_key(&chunk, |c| c.chunk);
        found.ok().map(|i| lo + i)
    }
}

/// What an arena's lists hold.
#[derive(Default)]
pub(super) struct Lists {
    /// Whether each fast capture is on a fastbin list.
    pub on_fastbin: Vec<bool>,
    /// Chunks and bytes on the bins (unsorted, small, large): the walk must find as many free.
    pub bin_chunks: u64,
    pub bin_bytes: u64,
    /// Why lists broke off.
    pub broken: Vec<String>,
}

/// The heads of an arena's lists.
pub(super) struct Heads<'h> {
    pub arena: u64,
    /// The fastbins' first chunks.
    pub fastbins: &'h [u64],
    /// Address of `bins` in the arena's malloc_state.
    pub bins_address: u64,
    /// The `fd` word of each bin.
    pub bins: &'h [u64],
}

/// Follows the fastbins and the bins through the captures (the two on two threads).
pub(super) fn follow(
    o: &Offsets,
    heads: &Heads,
    captures: &Captures,
    segments: &[Segment],
    page_shift: u32,
) -> Lists {
    let (on_fastbin, (bin_chunks, bin_bytes, bins_broken), fastbins_broken) =
        std::thread::scope(|scope| {
            let bins = scope.spawn(|| follow_bins(o, heads, &captures.bin, segments, page_shift));
            let (on, broken) = follow_fastbins(heads, &captures.fast, segments, page_shift);
            let bins = bins
                .join()
                .unwrap_or_else(|_| (0, 0, vec!["following the bins failed".to_string()]));
            (on, bins, broken)
        });
    let broken = fastbins_broken
        .into_iter()
        .chain(bins_broken)
        .map(|why| format!("a free list of arena {:#x} is corrupt: {why}", heads.arena))
        .collect();
    Lists {
        on_fastbin,
        bin_chunks,
        bin_bytes,
        broken,
    }
}

fn follow_fastbins(
    heads: &Heads,
    fast: &[Capture],
    segments: &[Segment],
    page_shift: u32,
) -> (Vec<bool>, Vec<String>) {
    let index = Index::new(fast, segments, page_shift);
    let mut on = vec![false; fast.len()];
    let starts = (heads.fastbins.iter().copied().enumerate())
        .filter(|&(_, head)| head != 0)
        .collect();
    let broken = follow_lists(starts, |list, chunk| {
        let Some(i) = index.find(chunk) else {
            return Err(format!(
                "fastbin {list} reaches {chunk:#x}, not a chunk in use with a valid link to \
                 the walk (or the target changed during the snapshot)"
            ));
        };
        if std::mem::replace(&mut on[i], true) {
            return Err(format!(
                "fastbin {list} reaches {chunk:#x} again (a cycle, or two lists joined)"
            ));
        }
        let next = fast[i].link;
        Ok((next != 0).then_some(next))
    });
    (on, broken)
}

/// (chunks, bytes, why lists broke)
fn follow_bins(
    o: &Offsets,
    heads: &Heads,
    bin: &[Capture],
    segments: &[Segment],
    page_shift: u32,
) -> (u64, u64, Vec<String>) {
    let index = Index::new(bin, segments, page_shift);
    let mut met = vec![false; bin.len()];
    // bin_at(i) is a fake chunk inside malloc_state whose fd/bk are the bin's two words.
    let bin_head = |bin: usize| heads.bins_address + bin as u64 * 2 * o.size_sz - o.chunk_fd;
    let starts = (heads.bins.iter().copied().enumerate())
        .filter(|&(bin, first)| first != bin_head(bin))
        .collect();
    let (mut chunks, mut bytes) = (0u64, 0u64);
    let broken = follow_lists(starts, |list, chunk| {
        let Some(i) = index.find(chunk) else {
            return Err(format!(
                "bin {list} reaches {chunk:#x}, not a free chunk to the walk (or the target \
                 changed during the snapshot)"
            ));
        };
        if std::mem::replace(&mut met[i], true) {
            return Err(format!(
                "bin {list} reaches {chunk:#x} again (a cycle, or two lists joined)"
            ));
        }
        chunks += 1;
        bytes = bytes.saturating_add(bin[i].size);
        let next = bin[i].link;
        Ok((next != bin_head(list)).then_some(next))
    });
    (chunks, bytes, broken)
}

/// Follows several linked lists side by side, one step of each in turn: their loads are
/// independent, so the memory system serves several at once. `step(list, node)` returns the next
/// node, None at the end of the list, or why the list cannot be followed further; it must end
/// each list in bounded time (every node is met once). Returns why each broken list broke.
fn follow_lists(
    starts: Vec<(usize, u64)>,
    mut step: impl FnMut(usize, u64) -> Result<Option<u64>, String>,
) -> Vec<String> {
    let mut cursors = starts;
    let mut broken = Vec::new();
    while !cursors.is_empty() {
        let mut i = 0;
        while i < cursors.len() {
            let (list, node) = cursors[i];
            match step(list, node) {
                Ok(Some(next)) => {
                    cursors[i].1 = next;
                    i += 1;
                }
                Ok(None) => {
                    cursors.swap_remove(i);
                }
                Err(why) => {
                    broken.push(why);
                    cursors.swap_remove(i);
                }
            }
        }
    }
    broken
}

/// Recounts the chunks found on the fastbin lists: they looked in use to the walk. Returns the
/// largest of them.
pub(super) fn recount_fastbins(
    o: &Offsets,
    fast: &[Capture],
    on_fastbin: &[bool],
    segments: &mut [Segment],
    page_shift: u32,
    figures: &mut HeapFigures,
) -> u64 {
    let mut largest = 0;
    let mut segment = 0;
    for (capture, _) in fast.iter().zip(on_fastbin).filter(|(_, on)| **on) {
        let Capture { chunk, size, .. } = *capture;
        if !segments[segment].contains(chunk) {
            match segments.iter().position(|s| s.contains(chunk)) {
                Some(s) => segment = s,
                None => continue, // captures lie in the segments: unreachable
            }
        }
        let Segment {
            start,
            granules,
            resident,
            ..
        } = &mut segments[segment];
        let pages = Residency {
            start: *start,
            page_shift,
            resident,
        };
        let mut stretch = crate::state::heap::Stretch {
            start: *start,
            granules,
        };
        // Captured from the walk as a chunk in use, and marked so since.
        if stretch.get(chunk) != Some(CHUNK_START | ChunkState::Live as u8) {
            continue;
        }
        stretch.mark(chunk, size, ChunkState::Fastbin);
        figures.uncount(ChunkState::Live, size);
        figures.count(ChunkState::Fastbin, size);
        let (resident, trimmable) = residency(o, pages, chunk, size, ChunkState::Fastbin);
        figures.free_resident_bytes += resident;
        figures.trimmable_bytes += trimmable;
        largest = largest.max(size);
    }
    largest
}
