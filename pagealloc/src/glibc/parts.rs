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
use super::captures::{Bits, Captures, KeptRuns, bitmap};
use super::chain::{ChainEnd, Chains, HeapBounds, Mode};
use super::tally::Tally;
use super::window::{Residency, Window};
use crate::proc::memory::Memory;
use crate::state::heap::{CHUNK_START, ChunkState, GRANULE, HeapFigures, Segment, Stretch};

/// How large heaps are cut into parts walked side by side.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    pub threads: usize,
    /// Parts are at least this many bytes: below it a thread costs more than it saves.
    pub min_part: u64,
}

impl Split {
    /// All cores, for heaps of 32 MiB and more.
    pub fn for_this_machine() -> Split {
        Split {
            threads: crate::parallel::cores(),
            min_part: 16 << 20,
        }
    }
}

/// What walking heaps in parts needs: the chains of chunks, the memory they are in, and how to
/// cut them.
pub(super) struct Parts<'a> {
    pub chains: Chains<'a>,
    pub memory: &'a dyn Memory,
    pub split: Split,
}

/// Parts per thread for a large heap.
const PARTS_PER_THREAD: u64 = 4;

/// The heaps of one arena, to walk.
pub(super) struct ArenaHeaps {
    /// (start, end, first chunk) of each heap.
    pub heaps: Vec<(u64, u64, u64)>,
    /// Whether this is the main arena.
    pub main: bool,
    /// The arena's top chunk (in one of its heaps).
    pub top: u64,
    /// Bytes the arena got from the system beyond the heaps found (a main arena not
    /// contiguous, regions not found): unknown.
    pub unwalked: u64,
}

/// What the walk of an arena's heaps found.
pub(super) struct HeapsWalked {
    /// One per heap, in the order of [`ArenaHeaps::heaps`].
    pub segments: Vec<Segment>,
    pub figures: HeapFigures,
    /// (address, note), in address order within each heap.
    pub notes: Vec<(u64, String)>,
    /// The chunks kept that can be on a fastbin (in use, of fastbin size, with a plausible
    /// link) and on a bin (free).
    pub fast: KeptRuns,
    pub bin: KeptRuns,
}

/// What the walks of an arena's heaps found so far, as their parts are joined.
#[derive(Default)]
struct Found {
    figures: HeapFigures,
    /// The chunks kept, with the bitmaps still to come.
    fast: KeptRuns,
    bin: KeptRuns,
    notes: Vec<(u64, String)>,
    /// The last chunk counted along the heap walked last: (address, size, state).
    last: Option<(u64, u64, ChunkState)>,
}

impl Found {
    /// Adds what a walk found further along the heap.
    fn absorb(&mut self, tally: Tally) {
        self.figures.add(&tally.figures);
        let stretch = tally.captures.fast.starts.start;
        let (fast, bin) = tally.captures.into_runs();
        self.fast.runs.push((stretch, fast));
        self.bin.runs.push((stretch, bin));
        self.notes.extend(tally.notes);
        if tally.last.is_some() {
            self.last = tally.last;
        }
    }
}

/// One part of a heap: its walk marks the stretch of granules from `marks.start`, and stops at
/// the first chunk at or past `until`.
struct Part<'a> {
    arena: usize,
    heap: usize,
    /// The chunk to start from; None for a part that starts from a guess.
    first: Option<u64>,
    until: u64,
    pages: Residency<'a>,
    marks: Stretch<'a>,
    captures: Captures<'a>,
}

/// A part walked: where the walk started (None: no guess was found) and ended.
struct Walked<'a> {
    arena: usize,
    heap: usize,
    until: u64,
    start: Option<u64>,
    chain: ChainEnd,
    tally: Tally<'a>,
}

/// What the known chain marks and keeps over a part, reused from join to join: zeroed once,
/// and only what the chain marks gets touched (and zeroed again after it).
#[derive(Default)]
struct Scratch {
    marks: Vec<u8>,
    fast: Vec<u64>,
    bin: Vec<u64>,
}

/// The bounds of each heap of each arena, for the chains that walk them.
fn heap_bounds(arenas: &[ArenaHeaps]) -> Vec<Vec<HeapBounds>> {
    (arenas.iter())
        .map(|arena| {
            let heaps = &arena.heaps;
            let arena_span = (heaps.iter().map(|h| h.0).min().unwrap_or(0))
                ..(heaps.iter().map(|h| h.1).max().unwrap_or(0));
            (heaps.iter())
                .map(|&(start, end, _)| HeapBounds {
                    start,
                    end,
                    top: arena.top,
                    main: arena.main,
                    arena_span: arena_span.clone(),
                })
                .collect()
        })
        .collect()
}

impl<'w> Parts<'w> {
    /// Walks the heaps of every arena of `arenas` (the parts of all of them shared out between
    /// the threads: many small arenas keep every core busy too).
    pub(super) fn walk_heaps(&self, arenas: &[ArenaHeaps]) -> Vec<HeapsWalked> {
        let mut segments = self.segments(arenas);
        // Per heap, where the chunks kept start: fast and bin.
        let mut bitmaps: Vec<Vec<[Vec<u64>; 2]>> = (arenas.iter())
            .map(|arena| {
                (arena.heaps.iter())
                    .map(|&(start, end, _)| [bitmap(start, end), bitmap(start, end)])
                    .collect()
            })
            .collect();
        let bounds = heap_bounds(arenas);
        let parts = self.cut_into_parts(arenas, &mut segments, &mut bitmaps);
        let walked = crate::parallel::map(parts, self.split.threads, |part| {
            self.walk_part(&bounds[part.arena][part.heap], part)
        });
        let found = self.join_parts(&bounds, walked, arenas.len());

        (found.into_iter().zip(segments).zip(bitmaps).zip(arenas))
            .map(|(((mut found, segments), bitmaps), arena)| {
                for ([fast, bin], &(start, end, _)) in bitmaps.into_iter().zip(&arena.heaps) {
                    found.fast.maps.push((start, end, fast));
                    found.bin.maps.push((start, end, bin));
                }
                HeapsWalked {
                    segments,
                    figures: found.figures,
                    notes: found.notes,
                    fast: found.fast,
                    bin: found.bin,
                }
            })
            .collect()
    }

    /// A segment of each heap of each arena, its pages' residency read.
    fn segments(&self, arenas: &[ArenaHeaps]) -> Vec<Vec<Segment>> {
        let memory = self.memory;
        let page = memory.page_size();
        (arenas.iter().enumerate())
            .map(|(index, arena)| {
                (arena.heaps.iter())
                    .map(|&(start, end, _)| {
                        let mut segment = Segment::new(start, end, index, page);
                        for (page_index, resident) in segment.resident.iter_mut().enumerate() {
                            *resident = memory.is_resident(start + page_index as u64 * page);
                        }
                        segment
                    })
                    .collect()
            })
            .collect()
    }

    /// The parts of every heap, in arena and heap order, each marking its stretch of the
    /// heap's segment and keeping its chunks in its share of the heap's bitmaps.
    fn cut_into_parts<'a>(
        &self,
        arenas: &[ArenaHeaps],
        segments: &'a mut [Vec<Segment>],
        bitmaps: &'a mut [Vec<[Vec<u64>; 2]>],
    ) -> Vec<Part<'a>> {
        let page = self.memory.page_size();
        let page_shift = page.trailing_zeros();
        let mut parts = Vec::new();
        let each_arena = (arenas.iter()).zip(segments.iter_mut().zip(bitmaps.iter_mut()));
        for (index, (arena, (segments, bitmaps))) in each_arena.enumerate() {
            for (heap, (segment, [fast, bin])) in segments.iter_mut().zip(bitmaps).enumerate() {
                let (start, end, first) = arena.heaps[heap];
                let (pages, mut marks) = Residency::of(segment, page_shift);
                let mut fast = Bits { start, words: fast };
                let mut bin = Bits { start, words: bin };
                let cuts = self.cuts(start, end, first, arena.top, page);
                for (part, &cut) in cuts.iter().enumerate() {
                    let next = cuts.get(part + 1).copied();
                    let until = next.unwrap_or(end);
                    let (part_marks, rest) =
                        std::mem::replace(&mut marks, Stretch::empty()).split_at(until);
                    marks = rest;
                    debug_assert_eq!(part_marks.start, cut);
                    // The last part takes what is left: the heap's end need not fall on a word.
                    let part_fast = fast.take_head(next);
                    let part_bin = bin.take_head(next);
                    parts.push(Part {
                        arena: index,
                        heap,
                        first: (part == 0).then_some(first),
                        until,
                        pages,
                        marks: part_marks,
                        captures: Captures::new(part_fast, part_bin),
                    });
                }
            }
        }
        parts
    }

    /// Each arena's finds, its heaps' parts joined one after the other along the known chain.
    fn join_parts(
        &self,
        bounds: &[Vec<HeapBounds>],
        walked: Vec<Walked>,
        arenas: usize,
    ) -> Vec<Found> {
        let mut found: Vec<Found> = (0..arenas).map(|_| Found::default()).collect();
        let mut scratch = Scratch::default();
        let mut walked = walked.into_iter().peekable();
        while let Some(first) = walked.next() {
            let (arena, heap) = (first.arena, first.heap);
            let bounds = &bounds[arena][heap];
            let found = &mut found[arena];
            let mut chain = first.chain;
            found.last = None;
            found.absorb(first.tally);
            while let Some(part) = walked.next_if(|w| (w.arena, w.heap) == (arena, heap)) {
                chain = self.join(bounds, found, &mut scratch, chain.end, part);
            }
        }
        found
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
        let o = self.chains.offsets;
        let until = part.until;
        let mut window = Window::new(self.memory, part.pages, heap.end);
        let mut tally = Tally::new(o, part.pages, part.marks, part.captures);
        // Room for the captures of a typical heap, reserved (not touched) up front: growing
        // them as they come cost a large heap's walk a tenth of its time.
        let bytes = until.saturating_sub(tally.marks.start) as usize;
        tally.captures.fast.run.reserve(bytes / 256);
        tally.captures.bin.run.reserve(bytes / 512);
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
                (self.chains.guess_chunk(heap, &mut window, from, until))
                    .map(|guess| (guess, Mode::Guessed))
            }
        };
        let chain = match start {
            Some((from, mode)) => {
                self.chains
                    .walk_chain(heap, &mut window, &mut tally, from..until, mode, |_| false)
            }
            None => ChainEnd::at(tally.marks.start),
        };
        let start = start.map(|(from, _)| from);
        Walked {
            arena: part.arena,
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
        scratch: &mut Scratch,
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
        // The known chain's own marks and chunks kept over this part, until it meets the
        // part's walk.
        let granules = tally.marks.granules.len();
        if scratch.marks.len() < granules {
            // Zeroed by the allocator: only what the known chain marks gets touched.
            scratch.marks = vec![0u8; granules];
        }
        let (bits, words) = (
            tally.captures.fast.starts.start,
            tally.captures.fast.starts.words.len(),
        );
        if scratch.fast.len() < words {
            scratch.fast = vec![0; words];
            scratch.bin = vec![0; words];
        }
        let mut known = Tally::new(
            self.chains.offsets,
            tally.pages,
            Stretch {
                start: lo,
                granules: &mut scratch.marks[..granules],
            },
            Captures::new(
                Bits {
                    start: bits,
                    words: &mut scratch.fast[..words],
                },
                Bits {
                    start: bits,
                    words: &mut scratch.bin[..words],
                },
            ),
        );
        let mut window = Window::new(self.memory, tally.pages, heap.end);
        let met = {
            let marks = &tally.marks;
            let on_guessed = |q: u64| {
                start.is_some_and(|s| q >= s && q < guessed.end)
                    && marks.get(q).is_some_and(|g| g & CHUNK_START != 0)
            };
            if p < hi {
                self.chains.walk_chain(
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
        if !met.joined {
            // The known chain passed the part's walk by: all it found is dropped.
            tally.captures.clear(lo, hi);
        }
        tally.captures.take(&mut known.captures, from, to);
        found.absorb(known);
        if !met.joined {
            return met;
        }
        let mut end = guessed;
        if guessed.gave_up {
            // The part's walk stopped at something it could not make sense of: the known chain
            // takes over there, with its re-reads.
            end = self.chains.walk_chain(
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
