//! Walking a chain of chunks along their size words: what each chunk is, re-reads of a spot the
//! target may have been changing, the top chunk, and guessing where a chunk starts (for parts of
//! a heap walked from the middle, see [`super::parts`]).
use std::ops::Range;

use super::layout::Offsets;
use super::tally::Tally;
use super::window::Window;
use crate::glibc::{FLAG_BITS, IS_MMAPPED, NON_MAIN_ARENA, PREV_INUSE};
use crate::state::heap::ChunkState;

/// Re-reads per chain of chunks, at most: a target changing everywhere gets `unknown`, not an
/// endless walk.
const MAX_REREADS: u32 = 1024;

/// What following a chain of chunks needs to know of the target's glibc.
#[derive(Clone, Copy)]
pub(super) struct Chains<'a> {
    pub offsets: &'a Offsets,
    /// The value of libc's `tcache_key` (glibc ≥ 2.34): it marks tcache chunks.
    pub tcache_key: Option<u64>,
    /// The largest chunk a fastbin holds (0 without fastbins).
    pub max_fast_chunk: u64,
}

impl Chains<'_> {
    /// Walks the chain of chunks from `from` (a chunk start, or a guess in [`Mode::Guessed`])
    /// up to the first chunk at or past `until`, counting each in `tally`; stops early at a
    /// chunk where `joins` says another walk already is.
    pub(super) fn walk_chain(
        &self,
        heap: &HeapBounds,
        window: &mut Window,
        tally: &mut Tally,
        Range {
            start: from,
            end: until,
        }: Range<u64>,
        mode: Mode,
        joins: impl Fn(u64) -> bool,
    ) -> ChainEnd {
        let mut p = from;
        // Where a re-read was last tried: an inconsistency is read again once, not forever.
        let mut retried_at: Option<u64> = None;
        let mut rereads = 0;
        // The chunk counted just before `p`, if a regular one: its size led to `p`, so it is read
        // again when `p` is bad.
        let mut last: Option<(u64, u64, ChunkState)> = None;
        while p < heap.end && p < until && !crate::cancel::asked() {
            if joins(p) {
                return ChainEnd {
                    end: p,
                    joined: true,
                    gave_up: false,
                };
            }
            if p == heap.top {
                self.count_top(heap, window, tally);
                p = heap.end;
                break;
            }
            match self.classify(window, heap, p) {
                Some(Chunk::Fencepost(size)) => {
                    tally.count(p, size, ChunkState::Overhead, None);
                    last = None;
                    p += size;
                }
                Some(Chunk::Regular { size, state, link }) => {
                    tally.count(p, size, state, link);
                    last = Some((p, size, state));
                    p += size;
                }
                None if mode == Mode::Guessed => {
                    return ChainEnd {
                        end: p,
                        joined: false,
                        gave_up: true,
                    };
                }
                None if retried_at != Some(p) && rereads < MAX_REREADS => {
                    // The target may have been changing this spot: read it again, once, from the
                    // chunk whose (perhaps stale) size led here.
                    retried_at = Some(p);
                    rereads += 1;
                    if let Some((addr, size, state)) = last.take() {
                        tally.uncount(addr, size, state);
                        p = addr;
                    }
                    window.reload(p);
                }
                None => {
                    let stop = if heap.top > p && heap.top < heap.end {
                        heap.top
                    } else {
                        heap.end
                    };
                    tally.note(
                        p,
                        format!(
                            "inconsistent chunk at {p:#x} (not resident, or changed while read): \
                             {} bytes up to {stop:#x} are unknown; --stop gives a consistent view",
                            stop - p
                        ),
                    );
                    tally.count(p, stop - p, ChunkState::Unknown, None);
                    last = None;
                    p = stop;
                }
            }
        }
        ChainEnd {
            end: p,
            joined: false,
            gave_up: false,
        }
    }

    /// Top is the last chunk of its heap: it must end exactly there.
    fn count_top(&self, heap: &HeapBounds, window: &mut Window, tally: &mut Tally) {
        let o = self.offsets;
        let top = heap.top;
        let size = window
            .word(top + o.chunk_size)
            .map(|w| w & !FLAG_BITS)
            .filter(|&s| s >= o.min_size && s <= heap.end - top);
        match size {
            Some(size) => tally.count(top, size, ChunkState::Top, None),
            None => tally.note(top, format!("the top chunk at {top:#x} is inconsistent")),
        }
        let size = size.unwrap_or(0);
        if top + size < heap.end {
            if size > 0 {
                tally.note(
                    top,
                    format!(
                        "the top chunk at {top:#x} does not end its heap at {:#x}",
                        heap.end
                    ),
                );
            }
            tally.count(top + size, heap.end - top - size, ChunkState::Unknown, None);
        }
    }

    /// Classifies the chunk at `p`; None if its header is unreadable or makes no sense. Inlined
    /// into the walk's loop: returned through memory, its result cost the loop a stall per chunk
    /// (measured: the walk of 10 million chunks 5 % slower).
    #[inline(always)]
    fn classify(&self, window: &mut Window, heap: &HeapBounds, p: u64) -> Option<Chunk> {
        let o = self.offsets;
        let size = window.word(p + o.chunk_size)? & !FLAG_BITS;
        // Old heaps end with two fenceposts: a chunk of just a header, then one of size 0 that
        // covers the last (less than MINSIZE) bytes. Anywhere else such sizes are corrupt.
        let header = 2 * o.size_sz;
        let left = heap.end - p;
        if size == 0 && left < o.min_size + header {
            return Some(Chunk::Fencepost(left));
        }
        if size == header && left < o.min_size + 2 * header {
            return Some(Chunk::Fencepost(size));
        }
        if size < o.min_size || !self.offsets.aligned(size) || size > left {
            return None;
        }
        let next = p + size;
        if next > heap.top && p < heap.top {
            return None; // a chunk cannot straddle top
        }
        // The chunk's own words before the next chunk's: the window only moves forward.
        let first_word = window.word(p + o.chunk_fd);
        let tcache = self.is_tcache(window, p, first_word);
        let next_size = window.word(next + o.chunk_size)?;
        let (state, link) = if next_size & PREV_INUSE == 0 {
            // Unreadable, the link leads nowhere: the bin's list then says so.
            (ChunkState::Bin, Some(first_word.unwrap_or(0)))
        } else if tcache {
            // An exiting thread gives its tcache back to the fastbins without clearing the
            // key: such a chunk looks cached, and is kept in case a fastbin holds it.
            (
                ChunkState::Tcache,
                self.fastbin_link(heap, p, size, first_word),
            )
        } else {
            (
                ChunkState::Live,
                self.fastbin_link(heap, p, size, first_word),
            )
        };
        Some(Chunk::Regular { size, state, link })
    }

    /// tcache entries carry `key == tcache_key` and a (protected) link to another entry.
    #[inline(always)]
    fn is_tcache(&self, window: &mut Window, p: u64, first_word: Option<u64>) -> bool {
        let (Some(key), Some(key_offset)) = (self.tcache_key, self.offsets.tcache_key) else {
            return false;
        };
        let user = p + 2 * self.offsets.size_sz;
        if window.word(user + key_offset) != Some(key) {
            return false;
        }
        first_word.is_some_and(|next| self.offsets.aligned(reveal(self.offsets, user, next)))
    }

    /// The link of a chunk that could be a fastbin chunk (it looks in use, or cached, to the
    /// walk): of fastbin size, its first word a protected link to an aligned chunk of the
    /// arena's heaps or the list's end.
    fn fastbin_link(
        &self,
        heap: &HeapBounds,
        p: u64,
        size: u64,
        first_word: Option<u64>,
    ) -> Option<u64> {
        if size > self.max_fast_chunk {
            return None;
        }
        let next = reveal(self.offsets, p + self.offsets.chunk_fd, first_word?);
        (next == 0 || (self.offsets.aligned(next) && heap.arena_span.contains(&next)))
            .then_some(next)
    }

    /// A likely chunk start in `from..to`: the first place from which [`GUESS_CHUNKS`] chunks in
    /// a row have headers that make sense. A wrong guess costs time, not correctness.
    pub(super) fn guess_chunk(
        &self,
        heap: &HeapBounds,
        window: &mut Window,
        from: u64,
        to: u64,
    ) -> Option<u64> {
        let o = self.offsets;
        let limit = to.min(from.saturating_add(GUESS_SPAN)).min(heap.end);
        let mut q = self.offsets.first_chunk_at(from);
        while q < limit {
            if self.plausible_run(heap, window, q) {
                return Some(q);
            }
            q += o.alignment;
        }
        None
    }

    fn plausible_run(&self, heap: &HeapBounds, window: &mut Window, from: u64) -> bool {
        let o = self.offsets;
        let mut c = from;
        for _ in 0..GUESS_CHUNKS {
            if c == heap.top || c == heap.end {
                return true;
            }
            let Some(word) = window.word(c + o.chunk_size) else {
                return false;
            };
            let size = word & !FLAG_BITS;
            // Chunks of the main arena never carry NON_MAIN_ARENA; others' free chunks do not
            // either, so only the main arena's can be checked.
            if word & IS_MMAPPED != 0
                || (heap.main && word & NON_MAIN_ARENA != 0)
                || size < o.min_size
                || !self.offsets.aligned(size)
                || size > heap.end - c
            {
                return false;
            }
            let next = c + size;
            // A free chunk's size is repeated at its end when the next chunk says it is free.
            if next < heap.end {
                let Some(next_word) = window.word(next + o.chunk_size) else {
                    return false;
                };
                if next_word & PREV_INUSE == 0
                    && window.word(next + o.chunk_size - o.size_sz) != Some(size)
                {
                    return false;
                }
            }
            c = next;
        }
        true
    }
}

/// Undoes safe-linking: the link stored at `position` is `(position >> 12) ^ pointer`.
fn reveal(o: &Offsets, position: u64, stored: u64) -> u64 {
    if o.safe_linking {
        (position >> 12) ^ stored
    } else {
        stored
    }
}

/// The heap a chain of chunks is walked in.
pub(super) struct HeapBounds {
    pub start: u64,
    pub end: u64,
    /// The arena's top chunk (perhaps in another of its heaps).
    pub top: u64,
    /// Whether the heap belongs to the main arena.
    pub main: bool,
    /// From the lowest to the highest address of the arena's heaps: where its free lists lead.
    pub arena_span: Range<u64>,
}

/// How a walk treats a chunk that makes no sense.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The walk started at a known chunk: read it again, and count what stays inconsistent
    /// as unknown.
    Exact,
    /// The walk started from a guess: stop there (the guess may have been wrong).
    Guessed,
}

/// Where a walk along a chain of chunks stopped.
#[derive(Clone, Copy, Debug)]
pub(super) struct ChainEnd {
    /// The first chunk not walked (or the heap's end).
    pub end: u64,
    /// Stopped where another walk already was.
    pub joined: bool,
    /// A guessed walk stopped at a chunk that made no sense.
    pub gave_up: bool,
}

impl ChainEnd {
    pub fn at(end: u64) -> ChainEnd {
        ChainEnd {
            end,
            joined: false,
            gave_up: false,
        }
    }
}

/// A guess of a chunk start is taken after this many chunks in a row make sense...
const GUESS_CHUNKS: usize = 16;
/// ...and looked for this far, at most.
const GUESS_SPAN: u64 = 64 * 1024;

enum Chunk {
    Fencepost(u64),
    Regular {
        size: u64,
        state: ChunkState,
        /// The first link word, for chunks that can be on a free list.
        link: Option<u64>,
    },
}
