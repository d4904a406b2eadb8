//! The fastbin and bin lists of an arena, followed through what the walk kept.
//!
//! The heap is not kept in memory after the walk (see [`super::window`]), so the walk keeps each
//! chunk that can be on a list with its first link ([`super::captures`]): chunks in use of
//! fastbin size (a fastbin chunk looks in use to the walk) and chunks free in a bin. The lists
//! are then followed through those: a list that reaches anything else is reported, and every
//! chunk is met at most once, so a cycle or two joined lists end the walk of a list in bounded
//! time.
//!
//! One list can hold millions of chunks, and following it link by link waits for memory at
//! every step, on one core. So the lists are first followed in segments, side by side on every
//! core ([`follow_in_segments`]): from a few chunks picked in advance (splitters) and from the
//! lists' first chunks, each segment up to the next splitter. Linking the segments from the
//! lists' heads is then a short walk. When every segment that walk reaches ends at the next
//! splitter or at its list's proper end, the chunks of those segments are exactly the chunks
//! on the lists. Anything else on the way (a link to a chunk not kept, a segment running into
//! another, a cycle, a list ending at another list's end) sends the lists to the walk link by
//! link ([`follow_one_by_one`]), which says what broke where. Segments no list reaches (say
//! from a chunk in use whose first word merely looks like a link) cannot change the answer.
use super::captures::{Chunk, Kepts, Place};
use super::layout::Offsets;
use super::window::Residency;
use crate::state::heap::{CHUNK_START, ChunkState, HeapFigures, Segment, Stretch};
use std::ops::Range;

/// One splitter per block of this many chunks (in address order).
pub(super) const BLOCK: usize = 64;
/// The segments one thread follows side by side.
const LANES: usize = 16;

/// A bit per kept chunk.
pub(super) struct ChunkBits(Vec<u64>);

impl ChunkBits {
    pub fn new(chunks: usize) -> ChunkBits {
        ChunkBits(vec![0; chunks.div_ceil(64)])
    }

    /// Sets the bit of chunk `index`; whether it was clear.
    fn insert(&mut self, index: usize) -> bool {
        let (word, bit) = (index / 64, 1 << (index % 64));
        let clear = self.0[word] & bit == 0;
        self.0[word] |= bit;
        clear
    }

    pub fn contains(&self, index: usize) -> bool {
        self.0[index / 64] >> (index % 64) & 1 == 1
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The set bits, in order.
    fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    w * 64 + bit
                })
            })
        })
    }

    /// The chunks set in any of `sets` (of as many chunks), and those set in more than one.
    fn union(sets: Vec<ChunkBits>, chunks: usize) -> (ChunkBits, ChunkBits) {
        let mut sets = sets.into_iter();
        let mut any = sets.next().unwrap_or_else(|| ChunkBits::new(chunks));
        let mut twice = ChunkBits::new(chunks);
        for set in sets {
            for ((a, t), w) in any.0.iter_mut().zip(&mut twice.0).zip(set.0) {
                *t |= *a & w;
                *a |= w;
            }
        }
        (any, twice)
    }

    /// Clears the chunks set in any of `sets`.
    fn subtract(&mut self, sets: Vec<ChunkBits>) {
        for set in sets {
            for (a, w) in self.0.iter_mut().zip(set.0) {
                *a &= !w;
            }
        }
    }
}

/// What an arena's lists hold.
pub(super) struct Lists {
    /// Which fast chunks are on a fastbin list.
    pub on_fastbin: ChunkBits,
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

/// The lists of one kind (the fastbins, or the bins) and the chunks they must go through.
pub(super) struct Kind<'k> {
    pub kept: &'k Kepts,
    /// What the lists are called, and what they must reach.
    pub lists: &'static str,
    pub expected: &'static str,
    /// (list, first chunk, the link that ends it) of each list that is not empty.
    pub starts: Vec<(usize, u64, u64)>,
}

/// Follows the fastbins and the bins through the chunks kept, on `threads` threads.
pub(super) fn follow(
    o: &Offsets,
    heads: &Heads,
    fast: &Kepts,
    bin: &Kepts,
    threads: usize,
) -> Lists {
    let fastbins = Kind {
        kept: fast,
        lists: "fastbin",
        expected: "a chunk in use with a valid link",
        starts: (heads.fastbins.iter().copied().enumerate())
            .filter(|&(_, head)| head != 0)
            .map(|(list, head)| (list, head, 0))
            .collect(),
    };
    // bin_at(i) is a fake chunk inside malloc_state whose fd/bk are the bin's two words.
    let bin_head = |bin: usize| heads.bins_address + bin as u64 * 2 * o.size_sz - o.chunk_fd;
    let bins = Kind {
        kept: bin,
        lists: "bin",
        expected: "a free chunk",
        starts: (heads.bins.iter().copied().enumerate())
            .filter(|&(bin, first)| first != bin_head(bin))
            .map(|(bin, first)| (bin, first, bin_head(bin)))
            .collect(),
    };
    let (on_fastbin, fastbins_broken) = follow_kind(&fastbins, threads, BLOCK);
    let (on_bin, bins_broken) = follow_kind(&bins, threads, BLOCK);
    let (mut bin_chunks, mut bin_bytes) = (0u64, 0u64);
    for index in on_bin.ones() {
        bin_chunks += 1;
        bin_bytes = bin_bytes.saturating_add(bin.size(index));
    }
    let broken = fastbins_broken
        .into_iter()
        .chain(bins_broken)
        .map(|why| format!("a free list of arena {:#x} is corrupt: {why}", heads.arena))
        .collect();
    Lists {
        on_fastbin,
        bin_chunks,
        bin_bytes,
        largest_bin: bin.largest(),
        broken,
    }
}

/// Which chunks the lists of `kind` go through, and why each broken list broke.
pub(super) fn follow_kind(kind: &Kind, threads: usize, block: usize) -> (ChunkBits, Vec<String>) {
    match follow_in_segments(kind, threads, block) {
        Some(on_lists) => (on_lists, Vec::new()),
        None => {
            log::debug!(
                "the {}s are followed link by link: a segment a list reaches does not end at a \
                 splitter or at its list's end",
                kind.lists
            );
            follow_one_by_one(kind)
        }
    }
}

/// The chunks (by index) that segments are followed from: one in each block of `block`
/// indices, at a place a hash of the block's number picks, so that no regular pattern in the
/// order of the chunks keeps a list from meeting them.
struct Splitters {
    /// Blocks are `1 << shift` chunks long: shifts and masks, not divisions (this is asked at
    /// every step).
    shift: u32,
    chunks: usize,
}

impl Splitters {
    fn new(block: usize, chunks: usize) -> Splitters {
        Splitters {
            shift: block.max(1).next_power_of_two().trailing_zeros(),
            chunks,
        }
    }

    fn blocks(&self) -> usize {
        self.chunks.div_ceil(1 << self.shift)
    }

    fn block_of(&self, index: usize) -> usize {
        index >> self.shift
    }

    fn of_block(&self, block: usize) -> usize {
        let start = block << self.shift;
        let hash = (block as u64 ^ 0x5bd1_e995).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        let place = hash as usize & ((1 << self.shift) - 1);
        // Only the last block can be short.
        let len = self.chunks - start;
        start + if place < len { place } else { place % len }
    }

    fn is_splitter(&self, index: usize) -> bool {
        self.of_block(self.block_of(index)) == index
    }
}

/// How a segment ended.
#[derive(Clone, Copy)]
enum End {
    /// At a splitter: the segment that starts there.
    Splitter(usize),
    /// At a link to no chunk kept (a list's end, or a broken link).
    Exit(u64),
    /// At a chunk another segment had met (or this one: a cycle).
    Met,
}

#[derive(Clone, Copy)]
struct SegmentEnd {
    end: End,
    /// The chunks this segment met first, its own start included.
    chunks: usize,
}

/// The lists of `kind` followed in segments (see the module's comment): which chunks they go
/// through, or None if a segment a list reaches does not end cleanly.
fn follow_in_segments(kind: &Kind, threads: usize, block: usize) -> Option<ChunkBits> {
    let kept = kind.kept;
    // The walk link by link stops at a list's end without looking it up: the segments, which
    // do not know their list, can only stop there if it is no chunk.
    if (kind.starts.iter()).any(|&(_, _, end)| kept.find(end).is_some()) {
        return None;
    }
    let splitters = Splitters::new(block, kept.len);
    // Segment k < blocks starts at block k's splitter; then one per first chunk of a list that
    // is not a splitter.
    let mut starts: Vec<usize> = (0..splitters.blocks())
        .map(|b| splitters.of_block(b))
        .collect();
    let mut first_segments = Vec::with_capacity(kind.starts.len());
    for &(_, first, _) in &kind.starts {
        let chunk = kept.find(first)?;
        if splitters.is_splitter(chunk) {
            first_segments.push(splitters.block_of(chunk));
        } else {
            first_segments.push(starts.len());
            starts.push(chunk);
        }
    }
    // Each thread marks the chunks its segments meet in a set of its own: a chunk marked by
    // two (segments of two threads ran into each other) shows in `twice`.
    let walked = crate::parallel::map(per_thread(starts.len(), threads), threads, |segments| {
        let mut met = ChunkBits::new(kept.len);
        let ends = follow_segments(kept, &splitters, &mut met, &starts, segments);
        (met, ends)
    });
    let (sets, ends): (Vec<ChunkBits>, Vec<Vec<SegmentEnd>>) = walked.into_iter().unzip();
    let ends: Vec<SegmentEnd> = ends.into_iter().flatten().collect();
    let (met, twice) = ChunkBits::union(sets, kept.len);

    // Linking the segments from each list's head: bounded, each segment is reached once.
    let mut reached = vec![false; starts.len()];
    for (&(_, _, list_end), &first) in kind.starts.iter().zip(&first_segments) {
        let mut segment = first;
        loop {
            if std::mem::replace(&mut reached[segment], true) {
                return None;
            }
            match ends[segment].end {
                End::Splitter(next) => segment = next,
                End::Exit(link) if link == list_end => break,
                End::Exit(_) | End::Met => return None,
            }
        }
    }

    // The chunks of the segments reached: the fewer of those and the others are followed
    // again, unless segments of two threads ran into each other: then those reached are, and
    // must not hold a chunk another segment met too.
    let conflicts = (!twice.is_empty()).then_some(twice);
    let chunks = |on: bool| -> usize {
        (ends.iter().zip(&reached))
            .filter(|&(_, &r)| r == on)
            .map(|(end, _)| end.chunks)
            .sum()
    };
    let keep_met = conflicts.is_none() && chunks(true) > chunks(false);
    let again: Vec<(usize, usize)> = (starts.iter().zip(&ends).zip(&reached))
        .filter(|&(_, &r)| r != keep_met)
        .map(|((&start, end), _)| (start, end.chunks))
        .collect();
    let followed = crate::parallel::map(per_thread(again.len(), threads), threads, |segments| {
        follow_again(kept, &again[segments], conflicts.as_ref())
    });
    let followed: Option<Vec<ChunkBits>> = followed.into_iter().collect();
    let followed = followed?;
    Some(if keep_met {
        let mut on_lists = met;
        on_lists.subtract(followed);
        on_lists
    } else {
        ChunkBits::union(followed, kept.len).0
    })
}

/// `0..count` cut into one range per thread (none if `count` is 0).
fn per_thread(count: usize, threads: usize) -> Vec<Range<usize>> {
    // A thread costs more than it saves on a few segments.
    let pieces = threads.min(count.div_ceil(256)).max(1);
    (0..pieces)
        .map(|k| count * k / pieces..count * (k + 1) / pieces)
        .collect()
}

/// The chunks of the segments `segments` (first chunk, chunks met), followed again; None if
/// one of them is in `conflicts`.
fn follow_again(
    kept: &Kepts,
    segments: &[(usize, usize)],
    conflicts: Option<&ChunkBits>,
) -> Option<ChunkBits> {
    let mut chunks = ChunkBits::new(kept.len);
    let mut conflict = false;
    let mut mark = |chunk: usize| {
        conflict |= conflicts.is_some_and(|c| c.contains(chunk));
        chunks.insert(chunk);
    };
    // (where the chase is, chunks left): each chunk is marked when the chase gets there.
    let cursors: Vec<(Place, usize)> = (segments.iter())
        .filter(|&&(_, count)| count > 0)
        .map(|&(start, count)| {
            mark(start);
            let place = kept.place(start);
            kept.prefetch_next(place);
            (place, count - 1)
        })
        .collect();
    side_by_side(cursors.into_iter(), |(place, left)| {
        // Followed before, to the end: every link up to its last chunk leads to a chunk.
        let (Ok(next), true) = (kept.next(*place), *left > 0) else {
            return false;
        };
        mark(kept.index(next));
        kept.prefetch_next(next);
        *place = next;
        *left -= 1;
        *left > 0
    });
    (!conflict).then_some(chunks)
}

/// Follows the segments `segments` (their first chunks are `starts`), marking in `met` each
/// chunk met first; how each one ended.
fn follow_segments(
    kept: &Kepts,
    splitters: &Splitters,
    met: &mut ChunkBits,
    starts: &[usize],
    segments: Range<usize>,
) -> Vec<SegmentEnd> {
    let mut ends = vec![
        SegmentEnd {
            end: End::Met,
            chunks: 0,
        };
        segments.len()
    ];
    let first = segments.start;
    // (segment, where it is, chunks met): a segment whose start another met first is done.
    let mut started = Vec::with_capacity(segments.len());
    for segment in segments {
        if met.insert(starts[segment]) {
            let place = kept.place(starts[segment]);
            kept.prefetch_next(place);
            started.push((segment, place, 1));
        }
    }
    side_by_side(started.into_iter(), |(segment, place, chunks)| {
        let end = match kept.next(*place).map(|next| (next, kept.index(next))) {
            Err(link) => End::Exit(link),
            Ok((_, next)) if splitters.is_splitter(next) => End::Splitter(splitters.block_of(next)),
            Ok((next, index)) if met.insert(index) => {
                kept.prefetch_next(next);
                *place = next;
                *chunks += 1;
                return true;
            }
            Ok(_) => End::Met,
        };
        ends[*segment - first] = SegmentEnd {
            end,
            chunks: *chunks,
        };
        false
    });
    ends
}

/// Runs `step` on several cursors side by side, up to [`LANES`] at once, each until `step`
/// says it is done: the loads of one chase do not wait for another's, so the memory system
/// serves several at once.
fn side_by_side<C>(cursors: impl Iterator<Item = C>, mut step: impl FnMut(&mut C) -> bool) {
    let mut waiting = cursors;
    let mut lanes: Vec<C> = waiting.by_ref().take(LANES).collect();
    while !lanes.is_empty() && !crate::cancel::asked() {
        let mut lane = 0;
        while lane < lanes.len() {
            if step(&mut lanes[lane]) {
                lane += 1;
            } else if let Some(next) = waiting.next() {
                lanes[lane] = next;
                lane += 1;
            } else {
                lanes.swap_remove(lane);
            }
        }
    }
}

/// The lists of `kind` followed link by link, side by side: which chunks they go through, and
/// why each broken list broke.
fn follow_one_by_one(kind: &Kind) -> (ChunkBits, Vec<String>) {
    let Kind {
        kept,
        lists,
        expected,
        ..
    } = *kind;
    let lists_count = kind.starts.iter().map(|&(list, _, _)| list + 1).max();
    // The link that ends each list, and the chunk kept there if one is (a corrupt heap).
    let mut ends = vec![(0, None); lists_count.unwrap_or(0)];
    for &(list, _, end) in &kind.starts {
        ends[list] = (end, kept.find(end));
    }
    let starts = (kind.starts.iter())
        .map(|&(list, first, _)| (list, kept.find(first).map(|c| kept.place(c)).ok_or(first)))
        .collect();
    let mut met = ChunkBits::new(kept.len);
    // A list is at a chunk kept, or at a link that leads to none.
    let broken = follow_lists(starts, |list, at: Result<Place, u64>| {
        let place = match at {
            Ok(place) => place,
            Err(link) => {
                return Err(format!(
                    "{lists} {list} reaches {link:#x}, not {expected} to the walk (or the target \
                     changed during the snapshot)"
                ));
            }
        };
        let chunk = kept.index(place);
        if !met.insert(chunk) {
            return Err(format!(
                "{lists} {list} reaches {:#x} again (a cycle, or two lists joined)",
                kept.address(chunk)
            ));
        }
        let next = kept.next(place);
        let (end, end_chunk) = ends[list];
        let at_end = match next {
            Ok(next) => Some(kept.index(next)) == end_chunk,
            Err(link) => link == end,
        };
        Ok((!at_end).then_some(next))
    });
    (met, broken)
}

/// Follows several linked lists side by side, one step of each in turn: their loads are
/// independent, so the memory system serves several at once. `step(list, node)` returns the next
/// node, None at the end of the list, or why the list cannot be followed further; it must end
/// each list in bounded time (every node is met once). Returns why each broken list broke.
fn follow_lists<N: Copy>(
    starts: Vec<(usize, N)>,
    mut step: impl FnMut(usize, N) -> Result<Option<N>, String>,
) -> Vec<String> {
    let mut cursors = starts;
    let mut broken = Vec::new();
    while !cursors.is_empty() && !crate::cancel::asked() {
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
    fast: &Kepts,
    on_fastbin: &ChunkBits,
    segments: &mut [Segment],
    page_shift: u32,
    threads: usize,
    figures: &mut HeapFigures,
) -> u64 {
    // (granules, pages): the chunks kept from the start of one range lie in its granules, for
    // the ranges are cut where a kept chunk starts.
    let mut tasks = Vec::new();
    for segment in segments.iter_mut() {
        let (start, end) = (segment.start, segment.end);
        let (pages, mut rest) = Residency::of(segment, page_shift);
        let pieces = threads.max(1) as u64;
        let mut from = start;
        for k in 1..=pieces {
            let cut = start + (end - start) / pieces * k;
            let to = match k {
                k if k == pieces => end,
                _ => fast.first_from(cut.max(from), end).unwrap_or(end),
            };
            let (mine, tail) = std::mem::replace(&mut rest, Stretch::empty()).split_at(to);
            rest = tail;
            tasks.push((mine, pages, from..to));
            from = to;
        }
    }
    // (what the fastbins hold, what the walk had counted of those chunks as it saw them)
    let counted = crate::parallel::map(tasks, threads, |(mut stretch, pages, range)| {
        let (mut found, mut seen) = (HeapFigures::default(), HeapFigures::default());
        for Chunk {
            index,
            address: chunk,
            size,
        } in fast.chunks_in(range.start, range.end)
        {
            // Captured from the walk as a chunk in use, or cached (a chunk an exiting thread's
            // tcache gave back keeps its tcache key), and marked so since.
            let was = match stretch
                .get(chunk)
                .map(|g| (g & CHUNK_START, ChunkState::from_granule(g)))
            {
                Some((CHUNK_START, state @ (ChunkState::Live | ChunkState::Tcache))) => state,
                _ => continue,
            };
            if !on_fastbin.contains(index) {
                continue;
            }
            stretch.mark(chunk, size, ChunkState::Fastbin);
            for (figures, state) in [(&mut found, ChunkState::Fastbin), (&mut seen, was)] {
                figures.count(state, size);
                let (resident, trimmable) = pages.free_bytes(o, chunk, size, state);
                figures.free_resident_bytes += resident;
                figures.trimmable_bytes += trimmable;
            }
        }
        (found, seen)
    });
    let mut largest = 0;
    for (found, seen) in counted {
        figures.subtract(&seen);
        largest = largest.max(found.largest_free_bytes);
        figures.add(&found);
    }
    largest
}

#[cfg(test)]
mod tests {
    use super::{ChunkBits, Kind, follow_in_segments, follow_kind, follow_one_by_one};
    use crate::glibc::captures::{Kepts, kepts_of};

    const HEAP: (u64, u64) = (0x5555_0000_0008, 0x5555_0100_0000);
    /// The end of list `list` in the bins of this test.
    fn bin_end(list: usize) -> u64 {
        0x7fff_0000_0000 + 16 * list as u64
    }

    /// xorshift64*: cases that fail reproduce from their number.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// A random case: chunks in address order, lists through some of them in random order,
    /// chunks off the lists whose links lead anywhere (into the lists too if `into_lists`), and
    /// `corruptions` of the lists (cycles, joins, links to no chunk, a list ending at another's
    /// end, a shared first chunk, a list whose end is a chunk).
    struct Case {
        kept: Kepts,
        starts: Vec<(usize, u64, u64)>,
        /// The chunks on the lists, if the lists are sound.
        on_lists: Option<Vec<bool>>,
    }

    fn case(seed: u64, chunks: usize, lists: usize, corruptions: usize, into_lists: bool) -> Case {
        let mut random = Random(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut addrs = Vec::with_capacity(chunks);
        let mut addr = HEAP.0.next_multiple_of(16);
        for _ in 0..chunks {
            addrs.push(addr);
            addr += 32 + 16 * random.below(4) as u64;
        }
        let mut order: Vec<usize> = (0..chunks).collect();
        for i in (1..chunks).rev() {
            order.swap(i, random.below(i + 1));
        }
        // Most chunks on lists of very different lengths; the rest are garbage.
        let on = chunks * (5 + random.below(6)) / 10;
        let mut cuts: Vec<usize> = (0..lists.saturating_sub(1))
            .map(|_| random.below(on + 1))
            .collect();
        cuts.sort_unstable();
        let mut links = vec![0u64; chunks];
        let mut on_lists = vec![false; chunks];
        let mut starts = Vec::new();
        let mut from = 0;
        for (list, to) in cuts.into_iter().chain([on]).enumerate() {
            let members = &order[from..to];
            from = to;
            let Some(&first) = members.first() else {
                continue;
            };
            for pair in members.windows(2) {
                links[pair[0]] = addrs[pair[1]];
            }
            links[*members.last().unwrap()] = bin_end(list);
            members.iter().for_each(|&c| on_lists[c] = true);
            starts.push((list, addrs[first], bin_end(list)));
        }
        for &garbage in &order[on..] {
            links[garbage] = match random.below(4) {
                0 if into_lists => addrs[random.below(chunks)],
                0 | 1 => addrs[order[on + random.below(chunks - on)]],
                2 => random.next(),
                _ => addrs[random.below(chunks)] + 16,
            };
        }
        for _ in 0..corruptions {
            let victim = order[random.below(on.max(1))];
            links[victim] = match random.below(6) {
                0 => addrs[order[random.below(on.max(1))]], // a cycle or a join
                1 if on < chunks => addrs[order[on + random.below(chunks - on)]],
                1 | 2 => addrs[victim] + 8,
                3 => bin_end(random.below(lists + 1)),
                4 => {
                    if let Some(&(list, first, end)) = starts.first() {
                        starts.push((list + 1000, first, end));
                    }
                    links[victim]
                }
                _ => {
                    // A list that ends at a chunk (its end word corrupt).
                    if let Some(start) = starts.last_mut() {
                        start.2 = addrs[random.below(chunks)];
                    }
                    links[victim]
                }
            };
        }
        let chunks: Vec<(u64, u64, u64)> = (0..chunks).map(|c| (addrs[c], 32, links[c])).collect();
        Case {
            kept: kepts_of(&[HEAP], &chunks, 0x4000),
            starts,
            on_lists: (corruptions == 0).then_some(on_lists),
        }
    }

    fn bits(set: &ChunkBits, chunks: usize) -> Vec<bool> {
        (0..chunks).map(|c| set.contains(c)).collect()
    }

    /// Lists followed in segments (on 1 to 4 threads, with blocks of 1 to 64 chunks) give
    /// exactly what following them link by link gives: the chunks on the lists and the notes,
    /// whatever the lists and the garbage around them; and on sound lists, the segments alone
    /// give it (no fallback), equal to the lists laid out.
    #[test]
    fn segments_give_what_following_link_by_link_gives() {
        let mut sound = 0;
        let mut broken = 0;
        for seed in 0..600u64 {
            let chunks = [1, 2, 7, 64, 300, 3000][seed as usize % 6];
            let lists = 1 + (seed as usize / 6) % 9;
            let corruptions = [0, 0, 1, 2, 5][(seed as usize / 54) % 5];
            let into_lists = seed % 7 == 3;
            let case = case(seed, chunks, lists, corruptions, into_lists);
            let kind = Kind {
                kept: &case.kept,
                lists: "bin",
                expected: "a free chunk",
                starts: case.starts.clone(),
            };
            let (one_by_one, why) = follow_one_by_one(&kind);
            let reference = bits(&one_by_one, chunks);
            if let Some(laid_out) = &case.on_lists {
                assert_eq!(&reference, laid_out, "seed {seed}: the reference itself");
                assert!(why.is_empty(), "seed {seed}: {why:?}");
            }
            for threads in [1, 2, 4] {
                for block in [1, 2, 4, 64] {
                    let (on, notes) = follow_kind(&kind, threads, block);
                    assert_eq!(
                        bits(&on, chunks),
                        reference,
                        "seed {seed}, {threads} threads, block {block}"
                    );
                    assert_eq!(notes, why, "seed {seed}, {threads} threads, block {block}");
                    let segments = follow_in_segments(&kind, threads, block);
                    if case.on_lists.is_some() && !into_lists {
                        assert!(
                            segments.is_some(),
                            "seed {seed}: sound lists sent link by link"
                        );
                    }
                }
            }
            if why.is_empty() {
                sound += 1;
            } else {
                broken += 1;
            }
        }
        assert!(
            sound > 100 && broken > 100,
            "{sound} sound, {broken} broken cases"
        );
    }

    /// One list of many chunks in random order, with garbage chunks whose links look like
    /// links, on several threads: the segments give the whole list without falling back.
    #[test]
    fn one_long_list_in_segments() {
        let case = case(7, 200_000, 1, 0, false);
        let kind = Kind {
            kept: &case.kept,
            lists: "fastbin",
            expected: "a chunk in use with a valid link",
            starts: case.starts.clone(),
        };
        for threads in [1, 2, 3] {
            let on = follow_in_segments(&kind, threads, 64).expect("a sound list");
            assert_eq!(Some(bits(&on, 200_000)), case.on_lists);
        }
    }
}
