//! A reconcile's comparison of the state with a fresh walk, chunk by chunk. A walk of a busy
//! heap reads the tcache and fastbin lists while they change: a chunk such a list held may be
//! read as in use (the list broke before it), though the events say it was freed. Such a walk
//! is still compared wherever it read what the state can be checked against, so a busy heap is
//! verified as well as a quiet one; where it disagrees with the state, the state (which the
//! events keep exact) is kept rather than a reading known to be unreliable.
use crate::state::events::Mismatch;
use crate::state::heap::{CHUNK_START, ChunkState, GRANULE, HeapMap, NoteKind, Segment};

/// How the state (`kept`) differs from the walk: the live chunks of either that the other does
/// not have live with the same extent (a chunk of another extent counts in each), and the bytes
/// live in one and not the other. A walk that read inconsistently does not count, as a
/// difference, a chunk it read in use where the state has it cached or freed.
///
/// The walk becomes the next state, stretch by stretch between the chunk boundaries both
/// share: a consistent walk as it is (but where it could not read); an inconsistent one where
/// it agrees with the state on which bytes are live (it then says what the state's freed
/// chunks became), the state's stretch where it does not. The notes of an inconsistent reading
/// go: the comparison settled them.
pub fn reconcile(kept: &HeapMap, walked: &mut HeapMap) -> Mismatch {
    let consistent = walked.is_consistent();
    let mut mismatch = Mismatch::default();
    for segment in &mut walked.segments {
        // A heap made since has nothing to compare with.
        if let Some(old) = kept.segments.iter().find(|s| s.start == segment.start) {
            settle_segment(old, segment, consistent, &mut mismatch);
        }
    }
    walked
        .notes
        .retain(|note| note.kind != NoteKind::Inconsistent);
    mismatch
}

fn settle_segment(old: &Segment, walked: &mut Segment, consistent: bool, out: &mut Mismatch) {
    let length = walked.granules.len().min(old.granules.len());
    let mut start = 0;
    while start < length {
        let end = shared_boundary(&walked.granules, &old.granules, start, length);
        let (new, was) = (&walked.granules[start..end], &old.granules[start..end]);
        let mut agree = true;
        for (&n, &w) in new.iter().zip(was) {
            let (n, w) = (ChunkState::from_granule(n), ChunkState::from_granule(w));
            if n == ChunkState::Unknown || w == ChunkState::Unknown {
                continue;
            }
            let differ = (n == ChunkState::Live) != (w == ChunkState::Live);
            let misread = !consistent
                && n == ChunkState::Live
                && matches!(
                    w,
                    ChunkState::Tcache | ChunkState::Fastbin | ChunkState::Freed
                );
            agree &= !differ;
            out.bytes += u64::from(differ && !misread) * GRANULE;
        }
        out.chunks +=
            live_chunks_missing(new, was, consistent) + live_chunks_missing(was, new, true);
        let unread = new
            .iter()
            .any(|&g| ChunkState::from_granule(g) == ChunkState::Unknown);
        if unread || (!consistent && !agree) {
            walked.granules[start..end].copy_from_slice(&old.granules[start..end]);
        }
        start = end;
    }
}

/// The first place after `start` (up to `length`) where both maps have a chunk begin.
fn shared_boundary(one: &[u8], other: &[u8], start: usize, length: usize) -> usize {
    (start + 1..length)
        .find(|&i| one[i] & CHUNK_START != 0 && other[i] & CHUNK_START != 0)
        .unwrap_or(length)
}

/// How many live chunks of `one` the `other` does not have live with the same extent, both
/// being the same stretch of a heap (where `other` is unknown, or, unless `strict`, cached or
/// freed, nothing is counted: an inconsistent walk's misreading).
fn live_chunks_missing(one: &[u8], other: &[u8], strict: bool) -> u64 {
    let live = ChunkState::Live as u8 | CHUNK_START;
    let mut missing = 0;
    let mut start = 0;
    while start < one.len() {
        let end = chunk_end(one, start);
        let theirs = ChunkState::from_granule(other[start]);
        let excused = theirs == ChunkState::Unknown
            || (!strict
                && matches!(
                    theirs,
                    ChunkState::Tcache | ChunkState::Fastbin | ChunkState::Freed
                ));
        if one[start] == live
            && !excused
            && (other[start] != live || chunk_end(other, start) != end)
        {
            missing += 1;
        }
        start = end;
    }
    missing
}

/// Where the chunk whose first granule is at `start` ends (the next chunk's first granule, or
/// the end of the stretch).
fn chunk_end(granules: &[u8], start: usize) -> usize {
    granules[start + 1..]
        .iter()
        .position(|&g| g & CHUNK_START != 0)
        .map_or(granules.len(), |offset| start + 1 + offset)
}

#[cfg(test)]
mod tests {
    use super::super::heap::tests::map;
    use super::reconcile;
    use crate::state::events::Mismatch;
    use crate::state::heap::{CHUNK_START, ChunkState, GRANULE, HeapMap, HeapNote, Segment};

    const START: u64 = 0x10000;

    /// One heap of chunks of `granules` granules each, in these states.
    fn heap(chunks: &[(usize, ChunkState)]) -> HeapMap {
        let length: usize = chunks.iter().map(|(g, _)| g).sum();
        let mut segment = Segment::new(START, START + length as u64 * GRANULE, 0, 4096);
        let mut first = 0;
        for &(granules, state) in chunks {
            segment.granules[first..first + granules].fill(state as u8);
            segment.granules[first] |= CHUNK_START;
            first += granules;
        }
        HeapMap {
            segments: vec![segment],
            notes: Vec::new(),
            ..map()
        }
    }

    fn states(map: &HeapMap) -> Vec<ChunkState> {
        let granules = &map.segments[0].granules;
        (0..granules.len())
            .filter(|&i| granules[i] & CHUNK_START != 0)
            .map(|i| ChunkState::from_granule(granules[i]))
            .collect()
    }

    use ChunkState::*;

    #[test]
    fn chunks_live_in_one_and_not_the_other_are_the_mismatch() {
        let kept = heap(&[(2, Live), (4, Bin), (2, Live), (8, Top)]);
        let mut walked = heap(&[(2, Live), (4, Live), (2, Bin), (8, Top)]);
        let mismatch = reconcile(&kept, &mut walked);
        assert_eq!(
            mismatch,
            Mismatch {
                chunks: 2,
                bytes: 6 * GRANULE
            }
        );
        // The walk is the truth where it is certain.
        assert_eq!(states(&walked), [Live, Live, Bin, Top]);
    }

    #[test]
    fn live_chunks_of_other_extents_are_a_mismatch() {
        let kept = heap(&[(4, Live), (4, Top)]);
        let mut walked = heap(&[(2, Live), (2, Live), (4, Top)]);
        let mismatch = reconcile(&kept, &mut walked);
        // The state's chunk, and the walk's two.
        assert_eq!(
            mismatch,
            Mismatch {
                chunks: 3,
                bytes: 0
            }
        );
    }

    #[test]
    fn an_inconsistent_walk_takes_cached_and_freed_chunks_it_read_in_use_from_the_state() {
        let kept = heap(&[(2, Fastbin), (2, Tcache), (2, Freed), (2, Live), (4, Top)]);
        let read = heap(&[(2, Live), (2, Live), (2, Live), (2, Live), (4, Top)]);
        let mut walked = read.clone();
        walked
            .notes
            .push(HeapNote::inconsistent("fastbin 2 broke".into()));
        assert_eq!(reconcile(&kept, &mut walked), Mismatch::default());
        assert_eq!(states(&walked), [Fastbin, Tcache, Freed, Live, Top]);
        assert!(walked.notes.is_empty(), "{:?}", walked.notes);
        // A consistent walk is believed: those three chunks are the mismatch.
        let mut walked = read;
        assert_eq!(reconcile(&kept, &mut walked).chunks, 3);
        assert_eq!(states(&walked), [Live, Live, Live, Live, Top]);
    }

    #[test]
    fn what_the_walk_could_not_read_is_taken_from_the_state() {
        let kept = heap(&[(2, Live), (2, Bin), (4, Top)]);
        let mut walked = heap(&[(2, Unknown), (2, Bin), (4, Top)]);
        assert_eq!(reconcile(&kept, &mut walked), Mismatch::default());
        assert_eq!(states(&walked), [Live, Bin, Top]);
    }

    #[test]
    fn a_free_chunk_the_state_has_live_is_a_mismatch_even_in_an_inconsistent_walk() {
        let kept = heap(&[(2, Live), (6, Top)]);
        let mut walked = heap(&[(2, Fastbin), (6, Top)]);
        walked.notes.push(HeapNote::inconsistent("changed".into()));
        assert_eq!(reconcile(&kept, &mut walked).chunks, 1);
        assert_eq!(
            states(&walked),
            [Live, Top],
            "the state kept where the walk is unsure"
        );
    }

    #[test]
    fn an_inconsistent_walk_that_agrees_on_what_is_live_says_what_freed_chunks_became() {
        let kept = heap(&[(2, Freed), (2, Live), (2, Freed), (2, Freed), (4, Top)]);
        let mut walked = heap(&[(2, Tcache), (2, Live), (4, Bin), (4, Top)]);
        walked.notes.push(HeapNote::inconsistent("changed".into()));
        assert_eq!(reconcile(&kept, &mut walked), Mismatch::default());
        assert_eq!(states(&walked), [Tcache, Live, Bin, Top]);
    }
}
