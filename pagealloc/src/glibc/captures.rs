//! The chunks a walk keeps because they can be on a free list, with their first link: the heap
//! itself is not kept after the walk (see [`super::window`]), so [`super::lists`] follows the
//! lists through these.
//!
//! Millions of them are kept, so they are kept small: where each one starts is a bit per granule
//! of its heap (a bitmap beside the granule map, an eighth of its size), and its link and size
//! are kept in address order, so the rank of its bit among the set bits is its index. That rank
//! also finds a chunk by its address in constant time, without a search.
use std::ops::Range;

use crate::state::heap::GRANULE;

const WORD_BITS: u64 = u64::BITS as u64;

/// A bit per granule of a stretch of a heap from `start`, on the granules of the heap's marks
/// (a chunk's bit is that of its first granule): set where a kept chunk starts.
pub(super) struct Bits<'a> {
    pub start: u64,
    pub words: &'a mut [u64],
}

impl<'a> Bits<'a> {
    pub fn empty() -> Bits<'a> {
        Bits {
            start: 0,
            words: &mut [],
        }
    }

    fn end(&self) -> u64 {
        self.start + self.words.len() as u64 * WORD_BITS * GRANULE
    }

    /// The bit of `addr`, clamped to this stretch.
    fn bit(&self, addr: u64) -> u64 {
        (addr.clamp(self.start, self.end()) - self.start) / GRANULE
    }

    pub fn set(&mut self, addr: u64) {
        let bit = self.bit(addr);
        self.words[(bit / WORD_BITS) as usize] |= 1 << (bit % WORD_BITS);
    }

    /// The set bits for `from..to`.
    pub fn count(&self, from: u64, to: u64) -> usize {
        let mut count = 0;
        for_words(self.bit(from), self.bit(to), |word, mask| {
            count += (self.words[word] & mask).count_ones() as usize;
        });
        count
    }

    /// Clears the bits for `from..to`, writing only words that have some set: a bitmap of
    /// zeroed pages stays untouched (and costs no memory) where nothing was kept.
    pub fn clear(&mut self, from: u64, to: u64) {
        for_words(self.bit(from), self.bit(to), |word, mask| {
            if self.words[word] & mask != 0 {
                self.words[word] &= !mask;
            }
        });
    }

    /// Moves the bits for `from..to` of `other` (a stretch from the same start) into this one,
    /// whose bits there must be clear; they are cleared in `other`.
    pub fn take(&mut self, other: &mut Bits, from: u64, to: u64) {
        debug_assert_eq!(self.start, other.start);
        for_words(self.bit(from), self.bit(to), |word, mask| {
            let moved = other.words[word] & mask;
            if moved != 0 {
                self.words[word] |= moved;
                other.words[word] &= !mask;
            }
        });
    }

    /// Cuts off the stretch up to `addr` (a whole number of words from the start), or the
    /// whole of it for None, and returns it.
    pub fn take_head(&mut self, addr: Option<u64>) -> Bits<'a> {
        let all = std::mem::replace(self, Bits::empty());
        let Some(addr) = addr else {
            return all;
        };
        let bit = all.bit(addr);
        debug_assert_eq!(bit % WORD_BITS, 0, "cut inside a word");
        let start = all.start;
        let (head, tail) = all.words.split_at_mut((bit / WORD_BITS) as usize);
        *self = Bits {
            start: start + bit * GRANULE,
            words: tail,
        };
        Bits { start, words: head }
    }
}

/// Calls `f(word, mask)` for each word that holds some of the bits `from..to`, with the mask
/// of those bits.
fn for_words(from: u64, to: u64, mut f: impl FnMut(usize, u64)) {
    let mut bit = from;
    while bit < to {
        let word = bit / WORD_BITS;
        let low = bit % WORD_BITS;
        let high = (to - word * WORD_BITS).min(WORD_BITS);
        let mask = (u64::MAX >> (WORD_BITS - (high - low))) << low;
        f(word as usize, mask);
        bit = (word + 1) * WORD_BITS;
    }
}

/// The words of a bitmap of the heap `start..end`, zeroed: pages of it that nothing is ever
/// set in are never touched.
pub(super) fn bitmap(start: u64, end: u64) -> Vec<u64> {
    vec![0; (end - start).div_ceil(GRANULE * WORD_BITS).max(1) as usize]
}

/// The links and sizes of the chunks of one kind kept along a stretch, in address order (their
/// addresses are the set bits).
#[derive(Default)]
pub(super) struct Run {
    /// Each chunk's first link (fastbin links revealed); [`Kepts`] turns each into the index of
    /// the chunk it leads to.
    pub links: Vec<u64>,
    /// Each chunk's size in granules; 0 for a size too large for a byte, kept in `large`.
    pub sizes: Vec<u8>,
    /// (place in this run, size) of the chunks too large for `sizes`, in order.
    pub large: Vec<(usize, u64)>,
}

impl Run {
    fn push(&mut self, size: u64, link: u64) {
        match u8::try_from(size / GRANULE) {
            Ok(granules) => self.sizes.push(granules),
            Err(_) => {
                self.sizes.push(0);
                self.large.push((self.links.len(), size));
            }
        }
        self.links.push(link);
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// The size of the chunk at `place`.
    fn size(&self, place: usize) -> u64 {
        match self.sizes[place] {
            0 => (self.large.binary_search_by_key(&place, |&(p, _)| p))
                .map_or(0, |found| self.large[found].1),
            granules => u64::from(granules) * GRANULE,
        }
    }

    /// Drops the chunks at `places`.
    fn drain(&mut self, places: Range<usize>) {
        self.links.drain(places.clone());
        self.sizes.drain(places.clone());
        self.large.retain(|&(p, _)| !places.contains(&p));
        for (p, _) in &mut self.large {
            if *p >= places.end {
                *p -= places.len();
            }
        }
    }

    /// Room for `chunks` more, reserved (not touched): only a hint, without the room they grow
    /// as they come.
    pub fn reserve(&mut self, chunks: usize) {
        let _ = self.links.try_reserve(chunks);
        let _ = self.sizes.try_reserve(chunks);
    }
}

/// The chunks of one kind kept along a stretch: where they start, and their links and sizes.
pub(super) struct Kept<'a> {
    pub starts: Bits<'a>,
    pub run: Run,
}

impl<'a> Kept<'a> {
    pub fn new(starts: Bits<'a>) -> Kept<'a> {
        Kept {
            starts,
            run: Run::default(),
        }
    }

    /// Keeps the chunk at `addr`, past every chunk kept so far.
    pub fn push(&mut self, addr: u64, size: u64, link: u64) {
        self.starts.set(addr);
        self.run.push(size, link);
    }

    /// Drops the chunks kept in `start..end`.
    pub fn forget(&mut self, start: u64, end: u64) {
        let dropped = self.starts.count(start, end);
        if dropped == 0 {
            return;
        }
        // Counted from the end: a chunk read again is one of the last kept.
        let after = self.starts.count(end, u64::MAX);
        let to = self.run.len() - after;
        self.run.drain(to - dropped..to);
        self.starts.clear(start, end);
    }
}

/// What a walk keeps along a stretch: chunks in use of fastbin size whose link could be one, and
/// chunks free in a bin.
pub(super) struct Captures<'a> {
    pub fast: Kept<'a>,
    pub bin: Kept<'a>,
}

impl<'a> Captures<'a> {
    pub fn new(fast: Bits<'a>, bin: Bits<'a>) -> Captures<'a> {
        Captures {
            fast: Kept::new(fast),
            bin: Kept::new(bin),
        }
    }

    pub fn forget(&mut self, start: u64, end: u64) {
        self.fast.forget(start, end);
        self.bin.forget(start, end);
    }

    /// Clears where chunks start in `from..to`, leaving their links and sizes: for a walk whose
    /// runs are dropped whole.
    pub fn clear(&mut self, from: u64, to: u64) {
        self.fast.starts.clear(from, to);
        self.bin.starts.clear(from, to);
    }

    /// Moves where the chunks of `other` (kept along the same stretch) start in `from..to` into
    /// these, which must have none there.
    pub fn take(&mut self, other: &mut Captures, from: u64, to: u64) {
        self.fast.starts.take(&mut other.fast.starts, from, to);
        self.bin.starts.take(&mut other.bin.starts, from, to);
    }

    /// The links and sizes, without the borrowed bits.
    pub fn into_runs(self) -> (Run, Run) {
        (self.fast.run, self.bin.run)
    }
}

/// Where the bit of a chunk lies: which heap's bitmap, which bit.
#[derive(Clone, Copy)]
pub(super) struct Spot {
    map: usize,
    bit: u64,
}

/// Asks the cache for the line of `value`: the lists are followed many at a time, each asking
/// for what its next step reads before the others take theirs.
#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint to the cache: it reads nothing the program sees and
    // cannot fault, whatever the address (this one is a valid reference anyway).
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Rank entries are kept per block of this many words.
const RANK_WORDS: usize = 8;
/// Bits per count of chunks in the words of a block before one of them (at most 7 × 64).
const COUNT_BITS: usize = 9;

/// The bitmap of one heap segment, with the rank entry of each block of words.
struct Bitmap {
    start: u64,
    end: u64,
    words: Vec<u64>,
    /// Per block of words: the index of its first chunk, and the chunks in its first 1 to 7
    /// words, packed: a chunk's index then costs one count of bits, not eight (this runs for
    /// every link). Plain words, so that the allocator hands them over zeroed and untouched.
    ranks: Vec<[u64; 2]>,
}

impl Bitmap {
    /// The address of the chunk whose bit is `bit`: chunks start on a granule boundary of the
    /// address space, which a heap need not.
    fn address(&self, bit: u64) -> u64 {
        (self.start + bit * GRANULE).next_multiple_of(GRANULE)
    }

    /// The bit of the first chunk that could start at or after `addr`.
    fn bit_from(&self, addr: u64) -> u64 {
        (addr.clamp(self.start, self.end).next_multiple_of(GRANULE) - self.start) / GRANULE
    }

    /// The index of the chunk whose bit is `bit` (set or not: the index it would have).
    #[inline]
    fn rank(&self, bit: u64) -> usize {
        let word = (bit / WORD_BITS) as usize;
        let [first, counts] = self.ranks[word / RANK_WORDS];
        let before = match word % RANK_WORDS {
            0 => 0,
            k => counts >> (COUNT_BITS * (k - 1)) & ((1 << COUNT_BITS) - 1),
        };
        let below = self.words[word] & ((1 << (bit % WORD_BITS)) - 1);
        (first + before) as usize + below.count_ones() as usize
    }

    /// The rank entries of `words`, counting from `first`: written only where not zero, so that
    /// a bitmap with nothing set costs no memory for them either.
    fn ranks(words: &[u64], first: &mut usize) -> Vec<[u64; 2]> {
        let mut ranks = vec![[0; 2]; words.len().div_ceil(RANK_WORDS)];
        for (rank, block) in ranks.iter_mut().zip(words.chunks(RANK_WORDS)) {
            let mut counts = 0u64;
            let mut count = 0u64;
            for (k, word) in block.iter().enumerate() {
                if k > 0 {
                    counts |= count << (COUNT_BITS * (k - 1));
                }
                count += u64::from(word.count_ones());
            }
            if *first != 0 || counts != 0 {
                *rank = [*first as u64, counts];
            }
            *first += count as usize;
        }
        ranks
    }
}

/// Where the chunks of one kind kept in an arena's heaps start: each found by its address, in
/// constant time.
struct Starts {
    /// By address.
    maps: Vec<Bitmap>,
}

impl Starts {
    #[inline]
    fn locate(&self, addr: u64) -> Option<Spot> {
        let map = self
            .maps
            .partition_point(|m| m.start <= addr)
            .checked_sub(1)?;
        let m = &self.maps[map];
        (addr < m.end && addr.is_multiple_of(GRANULE)).then_some(Spot {
            map,
            bit: (addr - m.start) / GRANULE,
        })
    }

    #[inline]
    fn index(&self, spot: Spot) -> Option<usize> {
        let map = &self.maps[spot.map];
        let word = map.words[(spot.bit / WORD_BITS) as usize];
        (word >> (spot.bit % WORD_BITS) & 1 == 1).then(|| map.rank(spot.bit))
    }

    #[inline]
    fn find(&self, addr: u64) -> Option<usize> {
        self.locate(addr).and_then(|spot| self.index(spot))
    }

    /// Asks for what [`Self::index`] will read at `spot`, ahead of it.
    #[inline]
    fn prefetch(&self, spot: Spot) {
        let map = &self.maps[spot.map];
        let word = (spot.bit / WORD_BITS) as usize;
        prefetch(&map.words[word]);
        prefetch(&map.ranks[word / RANK_WORDS]);
    }
}

/// The chunks of one kind kept in an arena's heaps, after the walk: in address order, each found
/// by its address or its index, each link already turned into the place of the chunk it leads
/// to (following a list then reads one word per step, not a bitmap, its rank and a link).
pub(super) struct Kepts {
    starts: Starts,
    runs: Vec<Run>,
    places: Places,
    /// (chunk, link) of each chunk whose link leads to no chunk kept, by chunk: its word in
    /// [`Run::links`] is [`EXIT`].
    exits: Vec<(usize, u64)>,
    pub len: usize,
}

/// Where a chunk kept lies: its run, and its place there. The runs stay where the walk made
/// them: copied end to end, the copy and the runs freed to the allocator but not to the system
/// would coexist (an arena's worth of links more at the peak).
#[derive(Clone, Copy)]
pub(super) struct Place(u64);

impl Place {
    const RUN_SHIFT: u32 = 40;

    fn new(run: usize, at: usize) -> Place {
        Place((run as u64) << Self::RUN_SHIFT | at as u64)
    }

    fn run(self) -> usize {
        (self.0 >> Self::RUN_SHIFT) as usize
    }

    fn at(self) -> usize {
        (self.0 & ((1 << Self::RUN_SHIFT) - 1)) as usize
    }
}

/// The index of each run's first chunk, to and from the place of a chunk.
struct Places {
    run_starts: Vec<usize>,
    /// The run that holds chunk `k << TABLE_SHIFT`, for each k: a chunk's run is then at most a
    /// few runs on, not a search away.
    table: Vec<u32>,
}

impl Places {
    const TABLE_SHIFT: u32 = 12;

    fn new(runs: &[Run]) -> Places {
        let mut run_starts = Vec::with_capacity(runs.len());
        let mut kept = 0;
        for run in runs {
            run_starts.push(kept);
            kept += run.len();
        }
        let table = (0..kept.div_ceil(1 << Self::TABLE_SHIFT))
            .map(|k| (run_starts.partition_point(|&s| s <= k << Self::TABLE_SHIFT) - 1) as u32)
            .collect();
        Places { run_starts, table }
    }

    #[inline]
    fn place(&self, index: usize) -> Place {
        let mut run = self.table[index >> Self::TABLE_SHIFT] as usize;
        while self.run_starts.get(run + 1).is_some_and(|&s| s <= index) {
            run += 1;
        }
        Place::new(run, index - self.run_starts[run])
    }

    #[inline]
    fn index(&self, place: Place) -> usize {
        self.run_starts[place.run()] + place.at()
    }
}

/// The word of a link that leads to no chunk kept.
const EXIT: u64 = u64::MAX;
/// Links resolved per piece of work.
const RESOLVE_PIECE: usize = 1 << 16;
/// How many links ahead the bitmap is asked for while links are resolved.
const RESOLVE_AHEAD: usize = 16;

/// What a walk of an arena's heaps kept of one kind.
#[derive(Default)]
pub(super) struct KeptRuns {
    /// The bitmap (start, end, words: see [`bitmap`]) of each heap.
    pub maps: Vec<(u64, u64, Vec<u64>)>,
    /// The runs of chunks kept along them, each with the start of the stretch it was kept
    /// along; the runs of one stretch in the order they were kept.
    pub runs: Vec<(u64, Run)>,
}

impl Kepts {
    /// The chunks `kept`, their links resolved on `threads` threads.
    pub fn new(kept: KeptRuns, threads: usize) -> Kepts {
        let KeptRuns { maps, mut runs } = kept;
        let mut maps: Vec<Bitmap> = (maps.into_iter())
            .map(|(start, end, words)| Bitmap {
                start,
                end,
                words,
                ranks: Vec::new(),
            })
            .collect();
        maps.sort_unstable_by_key(|m| m.start);
        let mut len = 0;
        for map in &mut maps {
            map.ranks = Bitmap::ranks(&map.words, &mut len);
        }
        runs.retain(|(_, run)| run.len() > 0);
        runs.sort_by_key(|&(start, _)| start); // stable: a stretch's runs keep their order
        let mut runs: Vec<Run> = runs.into_iter().map(|(_, run)| run).collect();
        let places = Places::new(&runs);
        let kept: usize = runs.iter().map(Run::len).sum();
        debug_assert_eq!(len, kept, "every kept chunk has its bit");
        let len = len.min(kept);
        let starts = Starts { maps };
        let mut pieces = Vec::new();
        for (run, &first) in runs.iter_mut().zip(&places.run_starts) {
            for (k, piece) in run.links.chunks_mut(RESOLVE_PIECE).enumerate() {
                pieces.push((first + k * RESOLVE_PIECE, piece));
            }
        }
        let exits = crate::parallel::map(pieces, threads, |(first, links)| {
            resolve(&starts, &places, first, links)
        })
        .into_iter()
        .flatten()
        .collect();
        Kepts {
            starts,
            runs,
            places,
            exits,
            len,
        }
    }

    /// The index of the chunk kept at `addr`, if one is.
    pub fn find(&self, addr: u64) -> Option<usize> {
        self.starts.find(addr)
    }

    /// The address of the chunk at `index`.
    pub fn address(&self, index: usize) -> u64 {
        let maps = &self.starts.maps;
        let map = &maps[maps
            .partition_point(|m| m.ranks.first().is_some_and(|r| r[0] as usize <= index))
            .saturating_sub(1)];
        let block = (map.ranks.partition_point(|r| r[0] as usize <= index)).saturating_sub(1);
        let mut left = index - map.ranks[block][0] as usize;
        for (w, &word) in map.words.iter().enumerate().skip(block * RANK_WORDS) {
            let ones = word.count_ones() as usize;
            if left < ones {
                let mut word = word;
                for _ in 0..left {
                    word &= word - 1;
                }
                return map.address(w as u64 * WORD_BITS + u64::from(word.trailing_zeros()));
            }
            left -= ones;
        }
        unreachable!("index {index} past the kept chunks")
    }

    /// Where the chunk at `index` lies.
    #[inline]
    pub fn place(&self, index: usize) -> Place {
        self.places.place(index)
    }

    /// The index of the chunk at `place`.
    #[inline]
    pub fn index(&self, place: Place) -> usize {
        self.places.index(place)
    }

    /// Where the link of the chunk at `place` leads: the chunk kept there, or the link itself
    /// if it leads to no chunk kept.
    #[inline]
    pub fn next(&self, place: Place) -> Result<Place, u64> {
        match self.runs[place.run()].links[place.at()] {
            EXIT => {
                let index = self.index(place);
                let exit = self.exits.binary_search_by_key(&index, |&(chunk, _)| chunk);
                Err(exit.map_or(0, |found| self.exits[found].1))
            }
            next => Ok(Place(next)),
        }
    }

    /// Asks for what [`Self::next`] will read at `place`, ahead of it.
    #[inline]
    pub fn prefetch_next(&self, place: Place) {
        prefetch(&self.runs[place.run()].links[place.at()]);
    }

    /// The size of the chunk at `index`.
    pub fn size(&self, index: usize) -> u64 {
        let place = self.place(index);
        self.runs[place.run()].size(place.at())
    }

    /// The largest chunk kept.
    pub fn largest(&self) -> u64 {
        let small = self.runs.iter().flat_map(|r| r.sizes.iter()).max();
        let large = (self.runs.iter().flat_map(|r| r.large.iter())).map(|&(_, size)| size);
        (small.map_or(0, |&g| u64::from(g) * GRANULE)).max(large.max().unwrap_or(0))
    }

    /// The chunks kept in `from..to` (addresses in one heap segment), in address order.
    pub fn chunks_in(&self, from: u64, to: u64) -> ChunksIn<'_> {
        let maps = &self.starts.maps;
        let map = (maps.partition_point(|m| m.start <= from).checked_sub(1))
            .map(|m| &maps[m])
            .filter(|m| from < m.end);
        let (first, last) = map.map_or((0, 0), |m| (m.bit_from(from), m.bit_from(to)));
        let (map, index) = match map {
            Some(map) if first < last => (Some(map), map.rank(first)),
            _ => (None, 0),
        };
        ChunksIn {
            kepts: self,
            map,
            word: first / WORD_BITS,
            bits: map.map_or(0, |m| {
                m.words[(first / WORD_BITS) as usize] & (u64::MAX << (first % WORD_BITS))
            }),
            last,
            index,
            place: None,
        }
    }

    /// The first chunk kept at or after `addr` in its heap segment, if any before `end`.
    pub fn first_from(&self, addr: u64, end: u64) -> Option<u64> {
        self.chunks_in(addr, end).next().map(|chunk| chunk.address)
    }
}

/// A chunk kept.
#[derive(Clone, Copy)]
pub(super) struct Chunk {
    pub index: usize,
    pub address: u64,
    pub size: u64,
}

/// The chunks kept along a stretch of a heap: its bitmap read word by word, their sizes run by
/// run.
pub(super) struct ChunksIn<'k> {
    kepts: &'k Kepts,
    map: Option<&'k Bitmap>,
    word: u64,
    /// The bits of `word` not yet gone through.
    bits: u64,
    /// The bit where the stretch ends.
    last: u64,
    index: usize,
    /// The place of the chunk at `index`, once found.
    place: Option<Place>,
}

impl Iterator for ChunksIn<'_> {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        let map = self.map?;
        while self.bits == 0 {
            self.word += 1;
            if self.word * WORD_BITS >= self.last {
                return None;
            }
            self.bits = map.words[self.word as usize];
        }
        let bit = self.word * WORD_BITS + u64::from(self.bits.trailing_zeros());
        if bit >= self.last {
            return None;
        }
        self.bits &= self.bits - 1;
        let runs = &self.kepts.runs;
        let place = self.place.unwrap_or_else(|| self.kepts.place(self.index));
        let (mut run, mut at) = (place.run(), place.at());
        while at >= runs[run].len() {
            (run, at) = (run + 1, 0);
        }
        self.place = Some(Place::new(run, at + 1));
        self.index += 1;
        Some(Chunk {
            index: self.index - 1,
            address: map.address(bit),
            size: runs[run].size(at),
        })
    }
}

/// Turns each of `links` (of the chunks from index `first` on) into the place of the chunk it
/// leads to, or [`EXIT`]; returns (chunk, link) of those. The links are independent of each
/// other: the bitmap of links a few ahead is asked for while one is resolved.
fn resolve(starts: &Starts, places: &Places, first: usize, links: &mut [u64]) -> Vec<(usize, u64)> {
    let mut exits = Vec::new();
    for at in 0..links.len() {
        if let Some(spot) = (links.get(at + RESOLVE_AHEAD)).and_then(|&l| starts.locate(l)) {
            starts.prefetch(spot);
        }
        let link = links[at];
        links[at] = match starts.find(link) {
            Some(next) => places.place(next).0,
            None => {
                exits.push((first + at, link));
                EXIT
            }
        };
    }
    exits
}

/// Kept chunks (address, size, link) in heaps (start, end), the way walks in parts keep them:
/// in runs, one per `run_bytes` of each heap (a multiple of 1 KiB), handed over out of order.
#[cfg(test)]
pub(super) fn kepts_of(heaps: &[(u64, u64)], chunks: &[(u64, u64, u64)], run_bytes: u64) -> Kepts {
    let mut maps: Vec<(u64, u64, Vec<u64>)> = (heaps.iter())
        .map(|&(start, end)| (start, end, bitmap(start, end)))
        .collect();
    let mut runs = Vec::new();
    for (start, end, words) in &mut maps {
        let mut rest = Bits {
            start: *start,
            words,
        };
        let mut from = *start;
        while from < *end {
            let to = (from + run_bytes).min(*end);
            let mut kept = Kept::new(rest.take_head((to < *end).then_some(to)));
            for &(addr, size, link) in chunks.iter().filter(|c| c.0 >= from && c.0 < to) {
                kept.push(addr, size, link);
            }
            runs.push((from, kept.run));
            from = to;
        }
    }
    runs.reverse();
    Kepts::new(KeptRuns { maps, runs }, 2)
}

#[cfg(test)]
mod tests {
    use super::{Bits, Kept, bitmap, kepts_of};

    /// Two heaps, one starting off a granule boundary, chunks of every size class (some too
    /// large for a byte), kept in runs handed over out of order: every chunk is found at its
    /// place in address order with its size, its link leads to the chunk it points to (or is
    /// kept as it is), and nothing else is found.
    #[test]
    fn kept_chunks_are_found_across_runs_and_heaps() {
        let heaps = [(0x10_0008u64, 0x18_0000u64), (0x4000_0000, 0x4002_0000)];
        let mut chunks = Vec::new();
        for &(start, end) in &heaps {
            let mut addr = start.next_multiple_of(16);
            let mut k = 0u64;
            while addr + 0x3000 < end {
                let size = [32, 48, 4080, 4096, 0x2010][(k % 5) as usize];
                chunks.push((addr, size, addr ^ 0xff));
                addr += size + 16 * (k % 3);
                k += 1;
            }
        }
        for i in (0..chunks.len() - 7).step_by(3) {
            chunks[i].2 = chunks[i + 7].0;
        }
        let kept = kepts_of(&heaps, &chunks, 0x2000);
        assert_eq!(kept.len, chunks.len());
        for (i, &(addr, size, link)) in chunks.iter().enumerate() {
            assert_eq!(kept.find(addr), Some(i), "{addr:#x}");
            let next = if i % 3 == 0 && i + 7 < chunks.len() {
                Ok(i + 7)
            } else {
                Err(link)
            };
            let place = kept.place(i);
            assert_eq!(kept.index(place), i);
            assert_eq!(kept.next(place).map(|p| kept.index(p)), next, "{addr:#x}");
            assert_eq!(kept.address(i), addr);
            assert_eq!(kept.size(i), size, "{addr:#x}");
            assert_eq!(kept.find(addr + 16), None);
            assert_eq!(kept.find(addr + 8), None);
        }
        for outside in [
            0,
            0x10_0000,
            0x18_0000,
            0x3fff_fff0,
            0x4002_0000,
            u64::MAX - 15,
        ] {
            assert_eq!(kept.find(outside), None, "{outside:#x}");
        }
        assert_eq!(kept.largest(), 0x2010);
        let last_first = chunks.iter().filter(|c| c.0 < 0x18_0000).count() - 1;
        let (from, to) = (chunks[100].0, chunks[110].0);
        let found: Vec<(usize, u64, u64)> = (kept.chunks_in(from, to))
            .map(|c| (c.index, c.address, c.size))
            .collect();
        let expected: Vec<(usize, u64, u64)> =
            (100..110).map(|i| (i, chunks[i].0, chunks[i].1)).collect();
        assert_eq!(found, expected);
        let next = kept.chunks_in(from + 1, to + 1).next();
        assert_eq!(
            next.map(|c| (c.index, c.address)),
            Some((101, chunks[101].0))
        );
        let across: Vec<usize> = (kept.chunks_in(chunks[1].0, 0x18_0000))
            .map(|c| c.index)
            .collect();
        assert_eq!(across, (1..=last_first).collect::<Vec<_>>(), "across runs");
        assert_eq!(kept.first_from(from + 8, 0x18_0000), Some(chunks[101].0));
        assert_eq!(
            kept.first_from(chunks[last_first].0 + 16, 0x18_0000),
            None,
            "past the last chunk of the first heap"
        );
    }

    /// Chunks forgotten in the middle of a run, and chunks moved in from another walk of the
    /// same stretch, leave the bits and the runs in step.
    #[test]
    fn forgetting_and_taking_keep_bits_and_runs_in_step() {
        let (start, end) = (0x20_0000u64, 0x20_4000u64);
        let mut words = bitmap(start, end);
        let mut other_words = bitmap(start, end);
        let mut kept = Kept::new(Bits {
            start,
            words: &mut words,
        });
        let mut other = Kept::new(Bits {
            start,
            words: &mut other_words,
        });
        let addrs: Vec<u64> = (start..end).step_by(64).collect();
        for &addr in &addrs {
            let size = if addr % 0x1000 == 0 { 0x1_0000 } else { 64 };
            if addr < start + 0x800 {
                other.push(addr, size, addr + 1);
            } else {
                kept.push(addr, size, addr + 1);
            }
        }
        kept.forget(start + 0x1000, start + 0x1800);
        kept.forget(start + 0x3fc0, end);
        kept.starts.take(&mut other.starts, start, start + 0x800);
        assert_eq!(other.starts.count(start, end), 0);
        let runs = vec![(start, other.run), (start, kept.run)];
        let maps = vec![(start, end, words)];
        let all = super::Kepts::new(super::KeptRuns { maps, runs }, 1);
        let expected: Vec<u64> = (addrs.iter().copied())
            .filter(|&a| !(start + 0x1000..start + 0x1800).contains(&a) && a < start + 0x3fc0)
            .collect();
        assert_eq!(all.len, expected.len());
        for (i, &addr) in expected.iter().enumerate() {
            assert_eq!(all.find(addr), Some(i), "{addr:#x}");
            assert_eq!(all.next(all.place(i)).map(|p| all.index(p)), Err(addr + 1));
            let size = if addr % 0x1000 == 0 { 0x1_0000 } else { 64 };
            assert_eq!(all.size(i), size, "{addr:#x}");
        }
    }
}
