//! Walking a large heap on several threads.
//!
//! The chunks of a heap form a chain: each size word leads to the next chunk, so a walk can only
//! start where a chunk is known to begin. The heap is cut into parts; the first is walked from
//! the heap's first chunk, each other one from a guessed chunk start (a run of headers that make
//! sense), all at once. Then, part after part, the chain that is known to be right is followed
//! into the next part until it meets a chunk that the part's walk found: from there the two
//! chains are the same (each size decides the next chunk), so the part's walk is kept from there
//! and what it found before is taken back. A wrong guess costs time, never correctness: at worst
//! the known chain is followed through the whole part, as one thread would have.
use super::captures::Captures;
use super::chain::{ChainEnd, HeapBounds, Mode};
use super::tally::Tally;
use super::walker::Walker;
use super::window::{Residency, Window};
use crate::state::heap::{CHUNK_START, ChunkState, GRANULE, HeapFigures, Segment, Stretch};

/// Parts per thread for a large heap.
const PARTS_PER_THREAD: u64 = 4;

/// What the walk of an arena's heaps found, besides the granule marks.
#[derive(Default)]
pub(super) struct Found {
    pub figures: HeapFigures,
    /// The captures of each part: each run in address order.
    pub captures: Vec<Captures>,
    /// (address, note), in address order within each heap.
    pub notes: Vec<(u64, String)>,
    /// The last chunk counted along the heap walked last: (address, size, state).
    last: Option<(u64, u64, ChunkState)>,
}

impl Found {
    /// Adds what a walk found further along the heap.
    fn absorb(&mut self, tally: Tally) {
        self.figures.add(&tally.figures);
        self.captures.push(tally.captures);
        self.notes.extend(tally.notes);
        if tally.last.is_some() {
            self.last = tally.last;
        }
    }
}

/// One part of a heap: its walk marks the stretch of granules from `marks.start`, and stops at
/// the first chunk at or past `until`.
struct Part<'a> {
    heap: usize,
    /// The chunk to start from; None for a part that starts from a guess.
    first: Option<u64>,
    until: u64,
    pages: Residency<'a>,
    marks: Stretch<'a>,
}

/// A part walked: where the walk started (None: no guess was found) and ended.
struct Walked<'a> {
    heap: usize,
    until: u64,
    start: Option<u64>,
    chain: ChainEnd,
    tally: Tally<'a>,
}

impl<'w> Walker<'w> {
    /// Walks the heaps (start, end, first chunk) of arena `arena` (the main one if `main`) whose
    /// top chunk is `top`.
    pub(super) fn walk_heaps(
        &self,
        arena: usize,
        main: bool,
        heaps: &[(u64, u64, u64)],
        top: u64,
    ) -> (Vec<Segment>, Found) {
        let memory = self.memory;
        let page = memory.page_size();
        let page_shift = page.trailing_zeros();
        let mut segments: Vec<Segment> = heaps
            .iter()
            .map(|&(start, end, _)| {
                let mut segment = Segment::new(start, end, arena, page);
                for (index, resident) in segment.resident.iter_mut().enumerate() {
                    *resident = memory.is_resident(start + index as u64 * page);
                }
                segment
            })
            .collect();
        let arena_span = (heaps.iter().map(|h| h.0).min().unwrap_or(0))
            ..(heaps.iter().map(|h| h.1).max().unwrap_or(0));
        let bounds: Vec<HeapBounds> = heaps
            .iter()
            .map(|&(start, end, _)| HeapBounds {
                start,
                end,
                top,
                main,
                arena_span: arena_span.clone(),
            })
            .collect();

        let mut parts = Vec::new();
        for (heap, segment) in segments.iter_mut().enumerate() {
            let (start, end, first) = heaps[heap];
            let (pages, mut rest) = Residency::of(segment, page_shift);
            let cuts = self.cuts(start, end, first, top, page);
            for (index, &cut) in cuts.iter().enumerate() {
                let until = cuts.get(index + 1).copied().unwrap_or(end);
                let (marks, tail) = std::mem::replace(&mut rest, Stretch::empty()).split_at(until);
                rest = tail;
                debug_assert_eq!(marks.start, cut);
                parts.push(Part {
                    heap,
                    first: (index == 0).then_some(first),
                    until,
                    pages,
                    marks,
                });
            }
        }
        let walked = crate::parallel::map(parts, self.split.threads, |part| {
            self.walk_part(&bounds[part.heap], part)
        });

        let mut found = Found::default();
        let mut scratch = Vec::new();
        let mut walked = walked.into_iter().peekable();
        while let Some(first) = walked.next() {
            let bounds = &bounds[first.heap];
            let mut chain = first.chain;
            found.last = None;
            found.absorb(first.tally);
            while let Some(part) = walked.next_if(|w| w.heap == first.heap) {
                chain = self.join(bounds, &mut found, &mut scratch, chain.end, part);
            }
        }
        (segments, found)
    }

    /// Where the parts of a heap begin: the heap's start, then cuts a whole number of pages
    /// into the heap that share the chunks before top out evenly.
    fn cuts(&self, start: u64, end: u64, first: u64, top: u64, page: u64) -> Vec<u64> {
        let split = self.split;
        let chunks_end = if top > first && top < end { top } else { end };
        let span = chunks_end.saturating_sub(first);
        // A few parts per thread: a thread slowed down (these machines are shared) leaves its
        // later parts to the others. One thread walks the heap whole.
        let most = match split.threads {
            0 | 1 => 1,
            threads => threads as u64 * PARTS_PER_THREAD,
        };
        let parts = (span / split.min_part.max(page)).clamp(1, most);
        let mut cuts = vec![start];
        for k in 1..parts {
            let cut = start + (first - start + span / parts * k) / page * page;
            if cut > *cuts.last().unwrap_or(&start) && cut < end {
                cuts.push(cut);
            }
        }
        cuts
    }

    fn walk_part<'a>(&self, heap: &HeapBounds, part: Part<'a>) -> Walked<'a>
    where
        'w: 'a,
    {
        let o = self.offsets;
        let until = part.until;
        let mut window = Window::new(self.memory, part.pages, heap.end);
        let mut tally = Tally::new(o, part.pages, part.marks);
        // Room for the captures of a typical heap, reserved (not touched) up front: growing
        // them as they come cost a large heap's walk a tenth of its time. Only a hint: without
        // the room they grow as they come.
        let bytes = until.saturating_sub(tally.marks.start) as usize;
        let _ = tally.captures.fast.try_reserve(bytes / 256);
        let _ = tally.captures.bin.try_reserve(bytes / 512);
        // The first part starts at the heap's first chunk, after malloc's own structures; the
        // others from a guess, if one is found.
        let start = match part.first {
            Some(first) => {
                if first > heap.start {
                    tally.count(heap.start, first - heap.start, ChunkState::Overhead, None);
                }
                Some((first, Mode::Exact))
            }
            None => {
                let from = tally.marks.start;
                (self.guess_chunk(heap, &mut window, from, until))
                    .map(|guess| (guess, Mode::Guessed))
            }
        };
        let chain = match start {
            Some((from, mode)) => {
                self.walk_chain(heap, &mut window, &mut tally, from..until, mode, |_| false)
            }
            None => ChainEnd::at(tally.marks.start),
        };
        let start = start.map(|(from, _)| from);
        Walked {
            heap: part.heap,
            until,
            start,
            chain,
            tally,
        }
    }

    /// Follows the known chain from `p` into the next part until it meets the part's walk;
    /// takes back what that walk found before, keeps the rest, and returns where the known
    /// chain now ends.
    fn join<'a>(
        &self,
        heap: &HeapBounds,
        found: &mut Found,
        scratch: &mut Vec<u8>,
        p: u64,
        part: Walked<'a>,
    ) -> ChainEnd
    where
        'w: 'a,
    {
        let Walked {
            until: hi,
            start,
            chain: guessed,
            mut tally,
            ..
        } = part;
        let lo = tally.marks.start;
        // The known chain's own marks over this part, until it meets the part's walk.
        let granules = tally.marks.granules.len();
        if scratch.len() < granules {
            // Zeroed by the allocator: only what the known chain marks gets touched.
            *scratch = vec![0u8; granules];
        }
        let mut known = Tally::new(
            self.offsets,
            tally.pages,
            Stretch {
                start: lo,
                granules: &mut scratch[..granules],
            },
        );
        let mut window = Window::new(self.memory, tally.pages, heap.end);
        let met = {
            let marks = &tally.marks;
            let on_guessed = |q: u64| {
                start.is_some_and(|s| q >= s && q < guessed.end)
                    && marks.get(q).is_some_and(|g| g & CHUNK_START != 0)
            };
            if p < hi {
                self.walk_chain(
                    heap,
                    &mut window,
                    &mut known,
                    p..hi,
                    Mode::Exact,
                    on_guessed,
                )
            } else {
                ChainEnd::at(p)
            }
        };
        log::debug!(
            "part at {lo:#x}: guessed {start:x?}, the known chain met it at {:#x} ({})",
            met.end,
            met.joined
        );
        if let Some(s) = start.filter(|_| met.joined) {
            tally.uncount_range(s, met.end);
        }
        // The chunk that runs into this part from before it, then the known chain's chunks.
        if let Some((addr, size, state)) = found.last.filter(|&(a, s, _)| a < lo && a + s > lo) {
            tally.marks.mark(addr, size, state);
        }
        let from = p.clamp(lo, tally.marks.end());
        let to = met.end.clamp(lo, tally.marks.end());
        let (a, b) = (
            ((from - lo) / GRANULE) as usize,
            ((to - lo) / GRANULE) as usize,
        );
        tally.marks.granules[a..b].copy_from_slice(&known.marks.granules[a..b]);
        // Left zeroed for the next part: the known chain marked nothing else.
        known.marks.granules[a..b].fill(0);
        found.absorb(known);
        if !met.joined {
            return met; // the known chain passed the part's walk by: all it found is dropped
        }
        let mut end = guessed;
        if guessed.gave_up {
            // The part's walk stopped at something it could not make sense of: the known chain
            // takes over there, with its re-reads.
            end = self.walk_chain(
                heap,
                &mut window,
                &mut tally,
                guessed.end..hi,
                Mode::Exact,
                |_| false,
            );
        }
        found.absorb(tally);
        end
    }
}
