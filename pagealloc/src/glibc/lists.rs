//! The fastbin and bin lists of an arena, followed through what the walk captured.
//!
//! The heap is not kept in memory after the walk (see [`super::window`]), so the walk captures
//! each chunk that can be on a list with its first link: chunks in use of fastbin size (a
//! fastbin chunk looks in use to the walk) and chunks free in a bin. The lists are then followed
//! through the captures: a list that reaches anything else is reported, and every capture is met
//! at most once, so a cycle or two joined lists end the walk of a list in bounded time.
use super::captures::{Capture, Sorted};
use super::layout::Offsets;
use super::window::Residency;
use crate::state::heap::{CHUNK_START, ChunkState, HeapFigures, Segment, Stretch};

/// Finds captures by address: a table per heap segment gives, for each page, the first capture
/// at or after it; then a binary search among that page's few captures.
struct Index<'c> {
    captures: &'c Sorted,
    page_shift: u32,
    /// (start, end, first capture of each page and one past the last page), by start.
    segments: Vec<(u64, u64, Vec<u32>)>,
}

impl<'c> Index<'c> {
    fn new(captures: &'c Sorted, segments: &[Segment], page_shift: u32) -> Index<'c> {
        let mut spans: Vec<(u64, u64)> = segments.iter().map(|s| (s.start, s.end)).collect();
        spans.sort_unstable();
        let mut all = captures.iter().enumerate().peekable();
        let segments = spans
            .into_iter()
            .map(|(start, end)| {
                let pages = (end - start).div_ceil(1 << page_shift);
                let first = (0..=pages)
                    .map(|page| {
                        let at = start + (page << page_shift);
                        while all.next_if(|(_, c)| c.chunk < at).is_some() {}
                        all.peek().map_or(captures.len, |&(i, _)| i) as u32
                    })
                    .collect();
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
        let (mut lo, mut hi) = (first[page] as usize, first[page + 1] as usize);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.captures.get(mid).chunk.cmp(&chunk) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
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
    /// The largest chunk free in a bin, to the walk.
    pub largest_bin: u64,
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
    fast: &Sorted,
    bin: &Sorted,
    segments: &[Segment],
    page_shift: u32,
) -> Lists {
    let (on_fastbin, fastbins_broken, bins) = std::thread::scope(|scope| {
        let bins = scope.spawn(|| follow_bins(o, heads, bin, segments, page_shift));
        let (on, broken) = follow_fastbins(heads, fast, segments, page_shift);
        let bins = bins.join().unwrap_or_else(|_| Lists {
            broken: vec!["following the bins failed".to_string()],
            ..Lists::default()
        });
        (on, broken, bins)
    });
    let broken = fastbins_broken
        .into_iter()
        .chain(bins.broken)
        .map(|why| format!("a free list of arena {:#x} is corrupt: {why}", heads.arena))
        .collect();
    Lists {
        on_fastbin,
        broken,
        ..bins
    }
}

fn follow_fastbins(
    heads: &Heads,
    fast: &Sorted,
    segments: &[Segment],
    page_shift: u32,
) -> (Vec<bool>, Vec<String>) {
    let starts = (heads.fastbins.iter().copied().enumerate())
        .filter(|&(_, head)| head != 0)
        .collect();
    let kind = ("fastbin", "a chunk in use with a valid link");
    follow_captures(fast, segments, page_shift, kind, starts, |_, capture| {
        (capture.link != 0).then_some(capture.link)
    })
}

/// The bins' figures (no fastbin in them).
fn follow_bins(
    o: &Offsets,
    heads: &Heads,
    bin: &Sorted,
    segments: &[Segment],
    page_shift: u32,
) -> Lists {
    // bin_at(i) is a fake chunk inside malloc_state whose fd/bk are the bin's two words.
    let bin_head = |bin: usize| heads.bins_address + bin as u64 * 2 * o.size_sz - o.chunk_fd;
    let starts = (heads.bins.iter().copied().enumerate())
        .filter(|&(bin, first)| first != bin_head(bin))
        .collect();
    let (mut chunks, mut bytes) = (0u64, 0u64);
    let kind = ("bin", "a free chunk");
    let (_, broken) = follow_captures(bin, segments, page_shift, kind, starts, |list, capture| {
        chunks += 1;
        bytes = bytes.saturating_add(capture.size);
        (capture.link != bin_head(list)).then_some(capture.link)
    });
    Lists {
        bin_chunks: chunks,
        bin_bytes: bytes,
        largest_bin: bin.iter().map(|c| c.size).max().unwrap_or(0),
        broken,
        ..Lists::default()
    }
}

/// Follows lists from `starts` (list, first chunk) through `captures`: `next(list, capture)`
/// gives the chunk after a capture, None at the end of its list. A list that reaches a chunk
/// not captured, or one met before, breaks there. `kind` names the lists and what they must
/// reach. Returns which captures the lists met, and why each broken list broke.
fn follow_captures(
    captures: &Sorted,
    segments: &[Segment],
    page_shift: u32,
    (lists, expected): (&str, &str),
    starts: Vec<(usize, u64)>,
    mut next: impl FnMut(usize, &Capture) -> Option<u64>,
) -> (Vec<bool>, Vec<String>) {
    let index = Index::new(captures, segments, page_shift);
    let mut met = vec![false; captures.len];
    let broken = follow_lists(starts, |list, chunk| {
        let Some(i) = index.find(chunk) else {
            return Err(format!(
                "{lists} {list} reaches {chunk:#x}, not {expected} to the walk (or the target \
                 changed during the snapshot)"
            ));
        };
        if std::mem::replace(&mut met[i], true) {
            return Err(format!(
                "{lists} {list} reaches {chunk:#x} again (a cycle, or two lists joined)"
            ));
        }
        Ok(next(list, captures.get(i)))
    });
    (met, broken)
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

/// Recounts the chunks found on the fastbin lists: they looked in use to the walk. Address
/// ranges of the heaps are recounted side by side on `threads` threads. Returns the largest.
pub(super) fn recount_fastbins(
    o: &Offsets,
    fast: &Sorted,
    on_fastbin: &[bool],
    segments: &mut [Segment],
    page_shift: u32,
    threads: usize,
    figures: &mut HeapFigures,
) -> u64 {
    // (granules, pages, captures): the chunks of one range of captures lie in its granules.
    let mut tasks = Vec::new();
    for segment in segments.iter_mut() {
        let lo = fast.partition_point(|c| c.chunk < segment.start);
        let hi = fast.partition_point(|c| c.chunk < segment.end);
        let (pages, mut rest) = Residency::of(segment, page_shift);
        let pieces = threads.clamp(1, (hi - lo).max(1));
        for k in 0..pieces {
            let (from, to) = (
                lo + (hi - lo) * k / pieces,
                lo + (hi - lo) * (k + 1) / pieces,
            );
            let mine = if to < hi {
                let (mine, tail) = rest.split_at(fast.get(to).chunk);
                rest = tail;
                mine
            } else {
                std::mem::replace(&mut rest, Stretch::empty())
            };
            tasks.push((mine, pages, from..to));
        }
    }
    let counted = crate::parallel::map(tasks, threads, |(mut stretch, pages, captures)| {
        let mut found = HeapFigures::default();
        for (capture, _) in fast
            .range(captures.clone())
            .zip(&on_fastbin[captures])
            .filter(|(_, on)| **on)
        {
            let Capture { chunk, size, .. } = *capture;
            // Captured from the walk as a chunk in use, and marked so since.
            if stretch.get(chunk) != Some(CHUNK_START | ChunkState::Live as u8) {
                continue;
            }
            stretch.mark(chunk, size, ChunkState::Fastbin);
            found.count(ChunkState::Fastbin, size);
            let (resident, trimmable) = pages.free_bytes(o, chunk, size, ChunkState::Fastbin);
            found.free_resident_bytes += resident;
            found.trimmable_bytes += trimmable;
        }
        found
    });
    let mut largest = 0;
    for found in counted {
        figures.live_chunks = figures.live_chunks.saturating_sub(found.fastbin_chunks);
        figures.live_bytes = figures.live_bytes.saturating_sub(found.fastbin_bytes);
        largest = largest.max(found.largest_free_bytes);
        figures.add(&found);
    }
    largest
}

#[cfg(test)]
mod tests {
    use super::{Capture, Index, Sorted};
    use crate::state::heap::Segment;

    /// Two heaps, their captures in runs handed over out of order; every capture is found at
    /// its place in the whole sequence, and nothing else is.
    #[test]
    fn captures_are_found_across_runs_and_heaps() {
        let heaps = [(0x10_0000u64, 0x18_0000u64), (0x4000_0000, 0x4002_0000)];
        let segments: Vec<Segment> = heaps
            .iter()
            .map(|&(start, end)| Segment::new(start, end, 0, 4096))
            .collect();
        // Chunks every 48 bytes, cut into runs at uneven places (not at page boundaries).
        let mut all = Vec::new();
        for &(start, end) in &heaps {
            all.extend((start..end - 64).step_by(48).map(|chunk| Capture {
                chunk,
                size: 48,
                link: chunk ^ 0xff,
            }));
        }
        let mut runs: Vec<Vec<Capture>> = Vec::new();
        let mut rest = &all[..];
        for cut in [7usize, 4000, 1, 9000, 333] {
            let (run, tail) = rest.split_at(cut.min(rest.len()));
            runs.push(run.to_vec());
            rest = tail;
        }
        runs.push(rest.to_vec());
        runs.reverse();
        let sorted = Sorted::new(runs);
        assert_eq!(sorted.len, all.len());
        let index = Index::new(&sorted, &segments, 12);
        for (i, capture) in all.iter().enumerate() {
            assert_eq!(index.find(capture.chunk), Some(i), "{:#x}", capture.chunk);
            assert_eq!(sorted.get(i).link, capture.link);
            assert_eq!(index.find(capture.chunk + 16), None);
        }
        for outside in [
            0,
            0xf_fff0,
            0x18_0000,
            0x3fff_fff0,
            0x4002_0000,
            u64::MAX - 15,
        ] {
            assert_eq!(index.find(outside), None, "{outside:#x}");
        }
        let range: Vec<u64> = sorted.range(4000..4010).map(|c| c.chunk).collect();
        assert_eq!(
            range,
            all[4000..4010].iter().map(|c| c.chunk).collect::<Vec<_>>()
        );
        assert_eq!(
            sorted.partition_point(|c| c.chunk < 0x4000_0000),
            (0x8_0000 - 64) / 48 + 1
        );
    }
}
