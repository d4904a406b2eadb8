//! A heap map kept current by allocation events: each event changes the granules of its chunk,
//! once (O(chunk size / 16)); the figures are counted again from the granules when a sample is
//! taken ([`HeapMap::recount`]).
//!
//! What an event tells is applied exactly: a chunk became live, a live chunk was freed. What it
//! does not tell (whether a freed chunk sits in tcache, a fastbin, a bin, or merged into top)
//! stays unknown to it: freed chunks are [`ChunkState::Freed`] until the next walk.
use std::collections::BTreeMap;

use pagealloc_common::{CHUNK_FLAG_BITS, Call, Event, EventKind, IS_MMAPPED};

use crate::glibc::{ArenaTop, HeapInfo};
use crate::state::heap::{
    AddressRange, Arena, CHUNK_START, ChunkState, GRANULE, HeapFigures, HeapGeometry, HeapMap,
    MmappedChunk, Segment,
};

/// An event the state says cannot have happened: the state, or the event stream, is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Contradiction {
    #[error("a chunk at {address:#x} of {size} bytes was handed out over a live one")]
    AllocOverLive { address: u64, size: u64 },
    #[error("a chunk at {address:#x} of {size} bytes was freed that is not live")]
    FreeOfNotLive { address: u64, size: u64 },
    #[error("an mmapped chunk at {address:#x} was {what} that the state {state}")]
    Mmapped {
        address: u64,
        what: &'static str,
        state: &'static str,
    },
    /// The chunk lies in none of the heaps known: a new heap or arena since the walk.
    #[error("a chunk at {address:#x} lies outside the heaps known (a heap grew, or a new one)")]
    Outside { address: u64 },
}

/// How an event is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply {
    /// To a state that already holds everything before the event: a contradiction is an error.
    Strict,
    /// To a walk taken while the event happened: the walk may have seen the chunk before the
    /// event or after it, so an event already reflected is skipped and the rest applied.
    Replay,
}

/// How far past a heap's end an aligned allocation from its new memory may start.
const ALIGNMENT_SLACK: u64 = 64 << 10;

pub struct LiveHeap {
    pub map: HeapMap,
    page_size: u64,
    /// (start, end, index in `map.segments`), by start.
    index: Vec<(u64, u64, usize)>,
    /// mmapped chunks by address: their bytes.
    mmapped: BTreeMap<u64, u64>,
}

impl LiveHeap {
    pub fn new(map: HeapMap, page_size: u64) -> LiveHeap {
        let index = index_of(&map.segments);
        let mmapped = map.mmapped.iter().map(|c| (c.address, c.bytes)).collect();
        LiveHeap {
            map,
            page_size,
            index,
            mmapped,
        }
    }

    /// The map with its mmapped chunks as the events left them (the figures are not counted
    /// here: see [`HeapMap::recount`]).
    pub fn finish_mmapped(&mut self) {
        self.map.mmapped = (self.mmapped.iter())
            .map(|(&address, &bytes)| MmappedChunk { address, bytes })
            .collect();
        self.map.mmapped_chunks = self.mmapped.len() as u64;
        self.map.mmapped_bytes = self.mmapped.values().sum();
    }

    pub fn apply(&mut self, event: &Event, how: Apply) -> Result<(), Contradiction> {
        let geometry = self.map.geometry;
        let chunk = event.pointer.wrapping_sub(geometry.chunk_header);
        let size = event.size & !CHUNK_FLAG_BITS;
        let alloc = event.kind == EventKind::Alloc as u8;
        if event.size & IS_MMAPPED != 0 {
            return self.apply_mmapped(chunk, size, alloc, how);
        }
        let end_of_chunk = chunk.saturating_add(size);
        let found = match self.segment_of(chunk) {
            Some(&(_, end, _)) if end_of_chunk > end && alloc => self.grow(chunk, size),
            None if alloc => self.grow(chunk, size),
            found => found.copied(),
        };
        let Some((start, end, segment)) = found else {
            return Err(Contradiction::Outside { address: chunk });
        };
        if size < geometry.alignment
            || chunk.saturating_add(size) > end
            || !(chunk - start).is_multiple_of(geometry.alignment)
        {
            return Err(Contradiction::Outside { address: chunk });
        }
        let granules = &mut self.map.segments[segment].granules;
        let first = ((chunk - start) / GRANULE) as usize;
        let count = (size / GRANULE) as usize;
        let range = first..first + count;
        // Whether the state has this very chunk live (and the next chunk starting right after
        // it, or the heap's end): asked only where the answer matters, each a pass over it.
        let live_here = |granules: &[u8]| {
            granules[first] == ChunkState::Live as u8 | CHUNK_START
                && granules[range.clone()]
                    .iter()
                    .all(|&g| g & !CHUNK_START == ChunkState::Live as u8)
                && granules.get(range.end).is_none_or(|g| g & CHUNK_START != 0)
        };
        if alloc {
            if how == Apply::Replay && live_here(granules) {
                return Ok(()); // the walk saw it handed out already
            }
            let over_live = || {
                granules[range.clone()]
                    .iter()
                    .any(|&g| g & !CHUNK_START == ChunkState::Live as u8)
            };
            if how == Apply::Strict && over_live() {
                return Err(Contradiction::AllocOverLive {
                    address: chunk,
                    size,
                });
            }
            mark(granules, range, ChunkState::Live);
            return Ok(());
        }
        if !live_here(granules) {
            let state = ChunkState::from_granule(granules[first]);
            // What was read inconsistently, or given back by an exiting thread (its tcache,
            // and the tcache's own chunk that glibc allocated out of sight), may be freed.
            let expected = state == ChunkState::Unknown || event.call == Call::Flush as u8;
            if how == Apply::Replay && !expected {
                return Ok(()); // the walk saw it freed already
            }
            if !expected {
                return Err(Contradiction::FreeOfNotLive {
                    address: chunk,
                    size,
                });
            }
        }
        mark(granules, range, ChunkState::Freed);
        Ok(())
    }

    fn apply_mmapped(
        &mut self,
        address: u64,
        bytes: u64,
        alloc: bool,
        how: Apply,
    ) -> Result<(), Contradiction> {
        let known = self.mmapped.contains_key(&address);
        let contradiction = |what, state| Contradiction::Mmapped {
            address,
            what,
            state,
        };
        match (alloc, known, how) {
            (true, true, Apply::Strict) => Err(contradiction("made", "already has")),
            (false, false, Apply::Strict) => Err(contradiction("unmapped", "does not have")),
            (true, _, _) => {
                self.mmapped.insert(address, bytes);
                Ok(())
            }
            (false, _, _) => {
                self.mmapped.remove(&address);
                Ok(())
            }
        }
    }

    /// A heap grows by its top chunk (sbrk for the main arena, heap_info.size within its
    /// reservation for the others): a chunk handed out past the end of a heap that ends with top
    /// (or from its very end) is in the heap grown to hold it, the rest of what it grew by being
    /// top.
    fn grow(&mut self, chunk: u64, size: u64) -> Option<(u64, u64, usize)> {
        let end = chunk.checked_add(size)?;
        let i = self
            .index
            .partition_point(|s| s.0 <= chunk)
            .checked_sub(1)?;
        let (start, old_end, segment) = self.index[i];
        let heap_max = self.map.geometry.heap_max;
        let reservation = self.heap_of(start) + heap_max;
        let next_start = self.index.get(i + 1).map_or(u64::MAX, |s| s.0);
        let page = self.page_size;
        let new_end = end.next_multiple_of(page);
        let main = self.map.arenas.get(self.map.segments[segment].arena)?.main;
        let fits = new_end <= next_start
            && if main {
                new_end - old_end <= self.map.geometry.main_growth_max
            } else {
                new_end <= reservation
            };
        let heap = &mut self.map.segments[segment];
        let ends_with_top = heap
            .granules
            .last()
            .is_some_and(|&g| ChunkState::from_granule(g) == ChunkState::Top);
        // It grew from its top, or from its end once top was used up (memalign may leave a
        // little of the new memory before the chunk, as a free chunk).
        let contiguous = ends_with_top || chunk <= old_end + ALIGNMENT_SLACK;
        if !fits || !contiguous || end <= old_end {
            return None;
        }
        let old_granules = heap.granules.len();
        let arena = heap.arena;
        self.set_end(i, new_end);
        let heap = &mut self.map.segments[segment];
        // Top used up, the new memory is a top chunk of its own.
        if !ends_with_top {
            heap.granules[old_granules] |= CHUNK_START;
        }
        self.map.arenas[arena].figures.system_bytes += new_end - old_end;
        Some(self.index[i])
    }

    /// The heap at `self.index[i]` ends at `end` now: what it grew by is top, what it shrank by
    /// gone.
    fn set_end(&mut self, i: usize, end: u64) {
        let (start, _, segment) = self.index[i];
        let heap = &mut self.map.segments[segment];
        heap.end = end;
        let granules = ((end - start) / GRANULE) as usize;
        heap.granules.resize(granules, ChunkState::Top as u8);
        heap.resident
            .resize((end - start).div_ceil(self.page_size) as usize, false);
        let arena = &mut self.map.arenas[heap.arena];
        if let Some(range) = arena.heaps.iter_mut().find(|h| h.start == start) {
            range.end = end;
        }
        self.index[i].1 = end;
    }

    /// Follows arena `arena`'s top as its malloc_state says it is `now`: its heap ends where
    /// top ends (sbrk or malloc_trim moved the main heap's end, grow_heap or shrink_heap a
    /// thread heap's `heap_info.size`), everything from top on is top (what was freed into it,
    /// or trimmed with it), and the arena has the system bytes it says. The events tell none of
    /// this. False, and nothing changed, when the state cannot take it: top in none of the
    /// arena's heaps known (a new heap, taken in by its events), a size that cannot be (read
    /// while it changed), or over a chunk the state has live (an event not yet applied); the
    /// next sample reads it again.
    pub fn follow_top(&mut self, arena: usize, now: ArenaTop) -> bool {
        let ArenaTop {
            top,
            top_size,
            system_mem,
        } = now;
        let alignment = self.map.geometry.alignment;
        let Some(end) = top.checked_add(top_size) else {
            return false;
        };
        // The heap top lies in, or at whose very end it starts (top used up, then grown).
        let Some(i) = (self.index.iter())
            .position(|&(s, e, g)| s < top && top <= e && self.map.segments[g].arena == arena)
        else {
            return false;
        };
        let (start, old_end, segment) = self.index[i];
        let Some(main) = self.map.arenas.get(arena).map(|a| a.main) else {
            return false;
        };
        let next_start = self.index.get(i + 1).map_or(u64::MAX, |s| s.0);
        // (The main heap's end is bounded by its mapping: see Session::arena_tops.)
        let room = if main {
            u64::MAX
        } else {
            self.heap_of(start) + self.map.geometry.heap_max
        };
        let plausible = top_size >= alignment
            && (top - start).is_multiple_of(alignment)
            && top_size.is_multiple_of(alignment)
            && end <= next_start.min(room);
        let first = ((top - start) / GRANULE) as usize;
        let granules = &self.map.segments[segment].granules;
        let live = ChunkState::Live as u8;
        if !plausible
            || granules[first.min(granules.len())..]
                .iter()
                .any(|&g| g & !CHUNK_START == live)
        {
            return false;
        }
        if end != old_end {
            self.set_end(i, end);
        }
        let granules = &mut self.map.segments[segment].granules;
        let len = granules.len();
        mark(granules, first..len, ChunkState::Top);
        self.map.arenas[arena].figures.system_bytes = system_mem;
        true
    }

    /// The thread arena heap `address` would lie in (heaps are aligned to their reservation).
    pub fn heap_of(&self, address: u64) -> u64 {
        address & !(self.map.geometry.heap_max - 1)
    }

    /// Takes in a heap made since the walk, as its `heap_info` at `heap` says it is now: a new
    /// arena's first heap (an arena the walk did not know, holding its malloc_state), or a new
    /// heap of a thread arena linked to a heap known of it. A heap is all top when glibc makes
    /// it, and every chunk handed out of it since has its event to come: what the events tell
    /// is then exact. The arena's heaps known newer than the one it links to were deleted
    /// (glibc deletes an arena's newest heaps once all free), and go, if nothing in them is
    /// live. Anything else (a heap the walk should have known): false, the caller walks again.
    pub fn add_heap(&mut self, heap: u64, info: HeapInfo) -> bool {
        let HeapInfo {
            arena,
            prev,
            first,
            end,
        } = info;
        let HeapGeometry {
            heap_max,
            alignment,
            ..
        } = self.map.geometry;
        let plausible = heap.is_multiple_of(heap_max)
            && heap < first
            && first < end
            && end - heap <= heap_max
            && (first - heap).is_multiple_of(alignment)
            && (end - heap).is_multiple_of(self.page_size);
        if !plausible {
            return false;
        }
        let known = self.map.arenas.iter().position(|a| a.address == arena);
        let gone: Vec<u64> = match known {
            // A new heap of an arena known, after one known (heaps are newest first).
            Some(i) => {
                let heaps = &self.map.arenas[i].heaps;
                let Some(kept) = heaps.iter().position(|h| h.start == prev) else {
                    return false;
                };
                let gone: Vec<u64> = heaps[..kept].iter().map(|h| h.start).collect();
                if self.map.arenas[i].main || gone.iter().any(|&h| self.holds_live(h)) {
                    return false;
                }
                gone
            }
            // A new arena: its malloc_state sits in this, its first heap.
            None if prev == 0 && heap < arena && arena < first => Vec::new(),
            None => return false,
        };
        // A deleted heap's place may be taken by the new one; any other overlap: not sure.
        let overlaps =
            (self.index.iter()).any(|&(s, e, _)| s < end && heap < e && !gone.contains(&s));
        if overlaps {
            return false;
        }
        let index = match known {
            Some(i) => {
                self.drop_heaps(i, &gone);
                i
            }
            None => {
                self.map.arenas.push(Arena {
                    address: arena,
                    main: false,
                    heaps: Vec::new(),
                    figures: HeapFigures::default(),
                });
                self.map.arenas.len() - 1
            }
        };
        let mut segment = Segment::new(heap, end, index, self.page_size);
        let header = ((first - heap) / GRANULE) as usize;
        let granules = segment.granules.len();
        mark(&mut segment.granules, 0..header, ChunkState::Overhead);
        mark(&mut segment.granules, header..granules, ChunkState::Top);
        let arena = &mut self.map.arenas[index];
        arena.heaps.insert(0, AddressRange { start: heap, end });
        arena.figures.system_bytes += end - heap;
        self.map.segments.push(segment);
        let at = self.index.partition_point(|s| s.0 < heap);
        self.index
            .insert(at, (heap, end, self.map.segments.len() - 1));
        true
    }

    /// Whether the segment starting at `start` has a live granule.
    fn holds_live(&self, start: u64) -> bool {
        let live = ChunkState::Live as u8;
        (self.map.segments.iter())
            .filter(|s| s.start == start)
            .any(|s| s.granules.iter().any(|&g| g & !CHUNK_START == live))
    }

    /// Forgets the heaps starting at `starts` of arena `arena`: unmapped.
    fn drop_heaps(&mut self, arena: usize, starts: &[u64]) {
        if starts.is_empty() {
            return;
        }
        let arena_map = &mut self.map.arenas[arena];
        let gone: u64 = (arena_map.heaps.iter())
            .filter(|h| starts.contains(&h.start))
            .map(|h| h.end - h.start)
            .sum();
        arena_map.figures.system_bytes = arena_map.figures.system_bytes.saturating_sub(gone);
        arena_map.heaps.retain(|h| !starts.contains(&h.start));
        (self.map.segments).retain(|s| !(s.arena == arena && starts.contains(&s.start)));
        self.index = index_of(&self.map.segments);
    }

    fn segment_of(&self, address: u64) -> Option<&(u64, u64, usize)> {
        let i = self
            .index
            .partition_point(|s| s.0 <= address)
            .checked_sub(1)?;
        self.index.get(i).filter(|s| address < s.1)
    }
}

/// (start, end, index) of each segment, by start.
fn index_of(segments: &[Segment]) -> Vec<(u64, u64, usize)> {
    let mut index: Vec<(u64, u64, usize)> = (segments.iter().enumerate())
        .map(|(i, s)| (s.start, s.end, i))
        .collect();
    index.sort_unstable();
    index
}

/// Marks the granules `range` as one chunk in `state`; the chunk that follows, if it is not
/// marked as starting there, is the rest of what this chunk was carved from: it starts there.
fn mark(granules: &mut [u8], range: std::ops::Range<usize>, state: ChunkState) {
    if let Some(next) = granules.get_mut(range.end) {
        *next |= CHUNK_START;
    }
    granules[range.start] = state as u8 | CHUNK_START;
    granules[range.start + 1..range.end].fill(state as u8);
}

#[cfg(test)]
pub(super) mod tests {
    use pagealloc_common::{Call, Event, EventKind};

    use super::{Apply, Contradiction, LiveHeap};
    use crate::state::heap::{
        CHUNK_START, ChunkState, HeapFigures, HeapGeometry, HeapMap, Segment,
    };

    pub const HEAP: u64 = 0x10000;

    pub fn heap() -> LiveHeap {
        LiveHeap::new(map(), 0x1000)
    }

    /// A main heap of one page: a live chunk of 0x40 at 0x10, a bin chunk of 0x100 after it,
    /// then top.
    pub fn map() -> HeapMap {
        let mut segment = Segment::new(HEAP, HEAP + 0x1000, 0, 0x1000);
        segment.resident[0] = true;
        let mut put = |at: u64, size: u64, state: ChunkState| {
            let first = ((at - HEAP) / 16) as usize;
            segment.granules[first] = state as u8 | CHUNK_START;
            for g in &mut segment.granules[first + 1..first + (size / 16) as usize] {
                *g = state as u8;
            }
        };
        put(HEAP, 0x10, ChunkState::Overhead);
        put(HEAP + 0x10, 0x40, ChunkState::Live);
        put(HEAP + 0x50, 0x100, ChunkState::Bin);
        put(HEAP + 0x150, 0x1000 - 0x150, ChunkState::Top);
        HeapMap::of_one_segment(segment, 0x1000)
    }

    pub fn event(kind: EventKind, chunk: u64, size: u64, call: Call) -> Event {
        Event {
            time: 0,
            pointer: chunk + HeapGeometry::for_tests().chunk_header,
            size: size | 1,
            tid: 1,
            kind: kind as u8,
            call: call as u8,
            sampled: 0,
        }
    }

    fn figures(live: &mut LiveHeap) -> HeapFigures {
        live.map.recount(0x1000, 48);
        live.map.totals
    }

    #[test]
    fn allocations_and_frees_move_granules_and_figures() {
        let mut live = heap();
        let before = figures(&mut live);
        assert_eq!((before.live_chunks, before.live_bytes), (1, 0x40));
        assert_eq!((before.bin_chunks, before.bin_bytes), (1, 0x100));
        // A malloc carved from the bin chunk: the rest is still a bin chunk of its own.
        let alloc = event(EventKind::Alloc, HEAP + 0x50, 0x30, Call::Malloc);
        live.apply(&alloc, Apply::Strict).unwrap();
        let after = figures(&mut live);
        assert_eq!((after.live_chunks, after.live_bytes), (2, 0x70));
        assert_eq!((after.bin_chunks, after.bin_bytes), (1, 0xd0));
        // The first chunk freed: Freed, not guessed into a bin.
        let free = event(EventKind::Free, HEAP + 0x10, 0x40, Call::Free);
        live.apply(&free, Apply::Strict).unwrap();
        let freed = figures(&mut live);
        assert_eq!((freed.live_chunks, freed.live_bytes), (1, 0x30));
        assert_eq!((freed.freed_chunks, freed.freed_bytes), (1, 0x40));
        // From top: top shrinks.
        let from_top = event(EventKind::Alloc, HEAP + 0x150, 0x200, Call::Calloc);
        live.apply(&from_top, Apply::Strict).unwrap();
        let topped = figures(&mut live);
        assert_eq!(topped.top_bytes, 0x1000 - 0x150 - 0x200);
        assert_eq!(topped.live_bytes, 0x230);
    }

    #[test]
    fn heaps_made_since_the_walk_are_taken_in() {
        use crate::glibc::HeapInfo;
        let mut live = heap();
        let max = live.map.geometry.heap_max;
        let first_heap = 0x7f00_0000_0000u64;
        let arena = first_heap + 0x30;
        let info = |heap: u64, prev: u64, first: u64| HeapInfo {
            arena,
            prev,
            first,
            end: heap + 0x21000,
        };
        // A new arena's first heap: all top past its header; a chunk from it applies.
        let chunk = first_heap + 0x8a0;
        let alloc = event(EventKind::Alloc, chunk, 0x100, Call::Malloc);
        assert!(matches!(
            live.apply(&alloc, Apply::Strict),
            Err(Contradiction::Outside { .. })
        ));
        assert!(live.add_heap(first_heap, info(first_heap, 0, chunk)));
        live.apply(&alloc, Apply::Strict).unwrap();
        let totals = figures(&mut live);
        assert_eq!(live.map.arenas.len(), 2);
        assert_eq!(live.map.arenas[1].figures.system_bytes, 0x21000);
        assert_eq!(
            live.map.arenas[1].figures.top_bytes,
            0x21000 - 0x8a0 - 0x100
        );
        assert_eq!(totals.live_bytes, 0x40 + 0x100);
        // Taken in once: a heap known is not taken again.
        assert!(!live.add_heap(first_heap, info(first_heap, 0, chunk)));
        // Its second heap, after the first; a third after the first again means the second was
        // deleted, which it cannot have been while it holds a live chunk.
        let second = first_heap + max;
        assert!(live.add_heap(second, info(second, first_heap, second + 0x30)));
        let in_second = event(EventKind::Alloc, second + 0x30, 0x40, Call::Malloc);
        live.apply(&in_second, Apply::Strict).unwrap();
        let third = first_heap + 2 * max;
        assert!(!live.add_heap(third, info(third, first_heap, third + 0x30)));
        let freed = event(EventKind::Free, second + 0x30, 0x40, Call::Free);
        live.apply(&freed, Apply::Strict).unwrap();
        assert!(live.add_heap(third, info(third, first_heap, third + 0x30)));
        let heaps: Vec<u64> = live.map.arenas[1].heaps.iter().map(|h| h.start).collect();
        assert_eq!(heaps, vec![third, first_heap]);
        assert_eq!(live.map.arenas[1].figures.system_bytes, 2 * 0x21000);
        assert!(live.map.segments.iter().all(|s| s.start != second));
        assert!(matches!(
            live.apply(&in_second, Apply::Strict),
            Err(Contradiction::Outside { .. })
        ));
        // The third deleted too, and a new heap made in its place.
        assert!(live.add_heap(third, info(third, first_heap, third + 0x30)));
        assert_eq!(
            live.map
                .segments
                .iter()
                .filter(|s| s.start == third)
                .count(),
            1
        );
        assert_eq!(live.map.arenas[1].figures.system_bytes, 2 * 0x21000);
        // A heap linked to one never known, or claiming the main arena: walked instead.
        let fourth = first_heap + 3 * max;
        assert!(!live.add_heap(fourth, info(fourth, first_heap + 9 * max, fourth + 0x30)));
        let main = HeapInfo {
            arena: 0x1,
            ..info(fourth, HEAP, fourth + 0x30)
        };
        assert!(!live.add_heap(fourth, main));
    }

    #[test]
    fn a_thread_arena_heap_is_as_large_as_the_walk_found_it() {
        use crate::glibc::HeapInfo;
        // Under the hugetlb tunable a heap is 4 huge pages, and aligned to that.
        let mut map = map();
        map.geometry.heap_max = 4 << 21;
        let mut live = LiveHeap::new(map, 0x1000);
        let heap = 0x7f00_0080_0000;
        assert_eq!(live.heap_of(heap + 0x1234), heap);
        let info = HeapInfo {
            arena: heap + 0x30,
            prev: 0,
            first: heap + 0x8a0,
            end: heap + 0x21000,
        };
        assert!(live.add_heap(heap, info));
        // It grows up to the end of its reservation, and no further.
        let to_the_end = event(
            EventKind::Alloc,
            heap + 0x8a0,
            (4 << 21) - 0x8a0,
            Call::Malloc,
        );
        live.apply(&to_the_end, Apply::Strict).unwrap();
        assert_eq!(live.map.segments[1].end, heap + (4 << 21));
        let past = event(EventKind::Alloc, heap + (4 << 21), 0x100, Call::Malloc);
        assert!(matches!(
            live.apply(&past, Apply::Strict),
            Err(Contradiction::Outside { .. })
        ));
    }

    #[test]
    fn contradictions_are_errors_when_strict() {
        let mut live = heap();
        let over = event(EventKind::Alloc, HEAP + 0x10, 0x40, Call::Malloc);
        assert!(matches!(
            live.apply(&over, Apply::Strict),
            Err(Contradiction::AllocOverLive { .. })
        ));
        let not_live = event(EventKind::Free, HEAP + 0x50, 0x100, Call::Free);
        assert!(matches!(
            live.apply(&not_live, Apply::Strict),
            Err(Contradiction::FreeOfNotLive { .. })
        ));
        let outside = event(EventKind::Free, HEAP + 0x2000, 0x40, Call::Free);
        assert!(matches!(
            live.apply(&outside, Apply::Strict),
            Err(Contradiction::Outside { .. })
        ));
        // An exiting thread's tcache given back: freed, whatever the walk knew of it.
        let flush = event(EventKind::Free, HEAP + 0x50, 0x100, Call::Flush);
        live.apply(&flush, Apply::Strict).unwrap();
        assert_eq!(figures(&mut live).freed_bytes, 0x100);
    }

    #[test]
    fn a_heap_grows_by_its_top() {
        let mut live = heap();
        // From top, past the end: the heap grew by top to hold it.
        let grown = event(EventKind::Alloc, HEAP + 0x150, 0x1800, Call::Malloc);
        live.apply(&grown, Apply::Strict).unwrap();
        let figures = figures(&mut live);
        assert_eq!(live.map.segments[0].end, HEAP + 0x2000);
        assert_eq!(live.map.arenas[0].heaps[0].end, HEAP + 0x2000);
        assert_eq!(figures.system_bytes, 0x2000);
        assert_eq!(figures.live_bytes, 0x40 + 0x1800);
        assert_eq!(figures.top_bytes, 0x2000 - 0x150 - 0x1800);
        // Top used up to the end, then past the end: grown again, and the chunk that ended the
        // heap can be freed (its end is the new top's start).
        let last = event(EventKind::Alloc, HEAP + 0x1950, 0x6b0, Call::Malloc);
        live.apply(&last, Apply::Strict).unwrap();
        let next = event(EventKind::Alloc, HEAP + 0x2000, 0x800, Call::Malloc);
        live.apply(&next, Apply::Strict).unwrap();
        assert_eq!(live.map.segments[0].end, HEAP + 0x3000);
        let free = event(EventKind::Free, HEAP + 0x1950, 0x6b0, Call::Free);
        live.apply(&free, Apply::Strict).unwrap();
        // Far away: another heap, not this one grown.
        let far = event(EventKind::Alloc, HEAP + (200 << 20), 0x40, Call::Malloc);
        assert!(matches!(
            live.apply(&far, Apply::Strict),
            Err(Contradiction::Outside { .. })
        ));
    }

    #[test]
    fn a_heap_ends_where_its_top_ends_now() {
        use crate::glibc::ArenaTop;
        let top = |at: u64, end: u64, system_mem: u64| ArenaTop {
            top: HEAP + at,
            top_size: end - at,
            system_mem,
        };
        // (chunk handed out from top first, freed after, the top now, followed, then
        // (end, system, top, freed bytes))
        let rows = [
            // sbrk grew it past what the events told.
            (
                None,
                top(0x150, 0x3000, 0x3000),
                true,
                (0x3000, 0x3000, 0x3000 - 0x150, 0),
            ),
            // A chunk freed into top, then malloc_trim gave some of it back.
            (
                Some((0x200, true)),
                top(0x150, 0x800, 0x800),
                true,
                (0x800, 0x800, 0x800 - 0x150, 0),
            ),
            // Over a chunk the state has live (its free not yet applied): not now.
            (
                Some((0x200, false)),
                top(0x150, 0x800, 0x800),
                false,
                (0x1000, 0x1000, 0x1000 - 0x350, 0),
            ),
            // Read while it changed: a misaligned top, a size that runs into the next heap.
            (
                None,
                top(0x158, 0x1000, 0x1000),
                false,
                (0x1000, 0x1000, 0x1000 - 0x150, 0),
            ),
            (
                None,
                top(0x150, 1 << 20, 1 << 20),
                false,
                (0x1000, 0x1000, 0x1000 - 0x150, 0),
            ),
        ];
        for (i, (chunk, now, followed, (end, system, top_bytes, freed))) in
            rows.into_iter().enumerate()
        {
            let mut live = heap();
            // A heap after this one, to run into.
            live.index.push((HEAP + 0x8000, HEAP + 0x9000, 1));
            if let Some((size, freed)) = chunk {
                let alloc = event(EventKind::Alloc, HEAP + 0x150, size, Call::Malloc);
                live.apply(&alloc, Apply::Strict).unwrap();
                if freed {
                    let free = event(EventKind::Free, HEAP + 0x150, size, Call::Free);
                    live.apply(&free, Apply::Strict).unwrap();
                }
            }
            assert_eq!(live.follow_top(0, now), followed, "row {i}");
            let figures = figures(&mut live);
            assert_eq!(live.map.segments[0].end, HEAP + end, "row {i}");
            assert_eq!(live.map.arenas[0].heaps[0].end, HEAP + end, "row {i}");
            let got = (figures.system_bytes, figures.top_bytes, figures.freed_bytes);
            assert_eq!(got, (system, top_bytes, freed), "row {i}");
        }
    }

    #[test]
    fn replay_skips_what_the_walk_saw() {
        let mut live = heap();
        let before = figures(&mut live);
        // The walk saw the live chunk handed out: its malloc replayed changes nothing.
        let seen = event(EventKind::Alloc, HEAP + 0x10, 0x40, Call::Malloc);
        live.apply(&seen, Apply::Replay).unwrap();
        // The walk saw the bin chunk freed: its free replayed changes nothing.
        let freed = event(EventKind::Free, HEAP + 0x50, 0x100, Call::Free);
        live.apply(&freed, Apply::Replay).unwrap();
        assert_eq!(figures(&mut live), before);
        // The walk read the live chunk before it was freed: the free is applied.
        let free = event(EventKind::Free, HEAP + 0x10, 0x40, Call::Free);
        live.apply(&free, Apply::Replay).unwrap();
        assert_eq!(figures(&mut live).live_chunks, 0);
    }
}
