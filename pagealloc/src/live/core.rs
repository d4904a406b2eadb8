//! Live mode's decisions, without I/O: events and walks in, the state and what walk is needed
//! out. The clocks are passed in (event stamps and walk stamps in CLOCK_MONOTONIC ns, the
//! reconcile clock as an [`Instant`]), never read here; so is a way to read a new heap's
//! `heap_info`. [`super::Live`] is the shell that feeds it from the probes and the session.
use std::time::{Duration, Instant};

use pagealloc_common::{
    CHUNK_FLAG_BITS, Call, Event, EventKind, SAMPLED_BYTES, SAMPLED_PAGE, STACK_MISSED,
};

use super::compare;
use super::heap::{Apply, Contradiction, LiveHeap};
use crate::glibc::{ArenaTop, HeapInfo};
use crate::state::events::Counts;
use crate::state::heap::HeapMap;
use crate::state::pages::PageMap;
use crate::state::sites::{SiteTable, Stack};

/// A sampled event's stack, unwound: the event's stamp and thread, and the stack (None if
/// nothing could be unwound).
pub type Unwound = (u64, u32, Option<Stack>);

/// Why a walk is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// The events cannot be trusted: replace the state.
    Resync,
    /// Time to check: compare, then replace.
    Reconcile,
}

/// A walk of the heap, and the stamps read just before and just after it.
pub struct Walked {
    pub map: HeapMap,
    pub page_size: u64,
    pub from: u64,
    pub until: u64,
}

/// What a state's walk already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    /// Events stamped before this are in the walk the state comes from (or precede a lost
    /// event, or the probes' attach: the walk is the truth then).
    replay_from: u64,
    /// Events stamped up to this may be in it already (replayed).
    walked_until: u64,
}

impl Window {
    /// How an event stamped at `time` is applied to the walk, if at all (None: the walk saw
    /// it).
    fn mode(&self, time: u64) -> Option<Apply> {
        if time < self.replay_from {
            None
        } else if time <= self.walked_until.saturating_add(REPLAY_SLACK_NS) {
            Some(Apply::Replay)
        } else {
            Some(Apply::Strict)
        }
    }
}

/// A walk whose events are being replayed, until [`LiveCore::settle`].
struct Settling {
    consistent: bool,
    /// For a reconcile: the state before the walk with the same events applied to it, its
    /// window, and whether one of them contradicted it.
    before: Option<(LiveHeap, Window, bool)>,
}

pub struct LiveCore {
    heap: LiveHeap,
    counts: Counts,
    window: Window,
    needs: Option<Walk>,
    /// Events stamped before this are not replayed against a walk: they may miss a later
    /// event of their chunk. When the last event known to be lost was dropped, or when the
    /// last probe was attached (before that, some calls had their probe and some not yet).
    trusted_from: u64,
    next_reconcile: Instant,
    reconcile_every: Duration,
    settling: Option<Settling>,
    /// The sampled allocations' sites, if stacks are taken.
    sites: Option<SiteTable>,
}

/// A probe stamps a free before the chunk is freed and an allocation after the chunk is handed
/// out, and a thread can be preempted in between: events stamped this close to a walk may be
/// what the walk saw, or not. They are replayed against it.
const REPLAY_SLACK_NS: u64 = 200_000_000;

/// Unknown bytes past this share of the heap make a walk worth taking again.
const UNKNOWN_SHARE_LIMIT: f64 = 0.01;

impl LiveCore {
    /// The state seeded from the first walk, taken once the last probe was `attached`; its
    /// events are to be applied, then it is [`LiveCore::settle`]d, like any walk.
    /// `sites`: the table the sampled allocations go to, if stacks are taken (seeded from the
    /// same walk: its live chunks are those from before attach).
    pub fn seed(
        walked: Walked,
        attached: u64,
        reconcile_every: Duration,
        now: Instant,
        sites: Option<SiteTable>,
    ) -> Self {
        let consistent = walked.map.is_consistent();
        let mut core = LiveCore {
            sites,
            heap: LiveHeap::new(walked.map, walked.page_size),
            counts: Counts::default(),
            window: Window {
                replay_from: 0,
                walked_until: 0,
            },
            needs: None,
            trusted_from: attached,
            next_reconcile: now + reconcile_every,
            reconcile_every,
            settling: None,
        };
        core.replay_against(walked.from, walked.until, consistent, None);
        core
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The walk the next sample needs, if any: a resync asked for, or a reconcile due.
    pub fn walk_needed(&mut self, now: Instant) -> Option<Walk> {
        if self.needs.is_none() && now >= self.next_reconcile {
            self.needs = Some(Walk::Reconcile);
        }
        self.needs
    }

    /// The walk taken for `why` becomes the state; the events up to
    /// [`LiveCore::replaying_until`] are then to be applied before it is [`LiveCore::settle`]d.
    pub fn begin_walk(&mut self, walked: Walked, why: Walk) {
        let consistent = walked.map.is_consistent();
        let new = LiveHeap::new(walked.map, walked.page_size);
        let old = std::mem::replace(&mut self.heap, new);
        let before = (why == Walk::Reconcile).then_some((old, self.window, false));
        self.replay_against(walked.from, walked.until, consistent, before);
    }

    /// While a walk is settling: the events stamped up to this are to be applied first.
    pub fn replaying_until(&self) -> Option<u64> {
        (self.settling.as_ref()).map(|_| self.window.walked_until.saturating_add(REPLAY_SLACK_NS))
    }

    /// The window of a walk made between the stamps `from` and `until`, whose events are now
    /// replayed.
    fn replay_against(
        &mut self,
        from: u64,
        until: u64,
        consistent: bool,
        before: Option<(LiveHeap, Window, bool)>,
    ) {
        // Events from before a loss, or from while the probes were being attached, are not
        // replayed: a later event of the same chunk may be missing (an allocation replayed
        // whose free was made before free's probe was in place would leave a freed chunk
        // live; a free replayed over the chunk's reuse, its allocation lost, would mark a live
        // chunk free).
        self.window = Window {
            replay_from: from.saturating_sub(REPLAY_SLACK_NS).max(self.trusted_from),
            walked_until: until,
        };
        self.needs = None;
        self.settling = Some(Settling { consistent, before });
    }

    /// Once the walk's events are applied: a reconcile compares the state before it with the
    /// walk chunk by chunk, and the walk replaces it (taking the state's chunks where it read
    /// them inconsistently: [`compare::reconcile`]). A resync's walk that read the heap
    /// inconsistently (the target busy) is taken for lack of better, and again later if it
    /// left much of the heap unknown.
    pub fn settle(&mut self, now: Instant) {
        let Some(Settling { consistent, before }) = self.settling.take() else {
            return;
        };
        self.next_reconcile = now + self.reconcile_every;
        match before {
            // The events contradicted the state and the walk read inconsistently: neither is
            // to be trusted; the next walk is taken for lack of better.
            Some((old, window, true)) if !consistent => {
                self.heap = old;
                self.window = window;
                self.resync();
            }
            Some((old, ..)) => {
                self.counts.reconciles += 1;
                let mismatch = compare::reconcile(&old.map, &mut self.heap.map);
                self.counts.reconcile_mismatch = Some(mismatch);
                self.verify_sites();
            }
            // A busy target reads a little inconsistently; the events settle what was unknown.
            // Only a walk that left much of the heap unknown is taken again.
            None if !consistent && mostly_unknown(&self.heap.map) => {
                self.needs.get_or_insert(Walk::Resync);
            }
            None => self.verify_sites(),
        }
    }

    /// After a walk replaced the state: sampled chunks it does not have live are dropped from
    /// their sites (after lost events, their frees may be among them). Not while a resync is
    /// due: the state is known to be off then (a heap it does not know grew under the events
    /// the sites took in), and the resync's own walk checks them.
    fn verify_sites(&mut self) {
        if self.needs == Some(Walk::Resync) {
            return;
        }
        if let Some(sites) = &mut self.sites {
            let dropped = sites.verify(&self.heap.map);
            if dropped > 0 {
                log::debug!("{dropped} sampled chunks were no longer live at the walk");
            }
        }
    }

    pub fn sites(&self) -> Option<&SiteTable> {
        self.sites.as_ref()
    }

    /// Counts and applies `events` (in the order of their stamps); during a reconcile, to the
    /// state before its walk too. `heap_info` reads what the `heap_info` at an address says.
    /// `stacks`: those of the sampled events among them, in the same order.
    pub fn apply(
        &mut self,
        events: &[Event],
        stacks: &[Unwound],
        heap_info: &mut impl FnMut(u64) -> Option<HeapInfo>,
    ) {
        if let Some(sites) = &mut self.sites {
            take_into_sites(sites, events, stacks);
        }
        if let Some(Settling {
            before: Some((old, window, broken)),
            ..
        }) = &mut self.settling
        {
            for event in events {
                if let Some(how) = window.mode(event.time) {
                    *broken |= apply(old, heap_info, event, how, !*broken).is_err();
                }
            }
        }
        for event in events {
            self.count(event);
            let Some(how) = self.window.mode(event.time) else {
                continue; // the walk saw it
            };
            let take_in = self.needs != Some(Walk::Resync);
            match apply(&mut self.heap, heap_info, event, how, take_in) {
                Ok(()) => {}
                // Past the first, the state is known to be off: they say nothing more.
                Err(_) if self.needs == Some(Walk::Resync) => {}
                Err(contradiction) => {
                    if !matches!(contradiction, Contradiction::Outside { .. }) {
                        self.counts.contradictions += 1;
                    }
                    log::debug!("resync: {contradiction}");
                    self.resync();
                }
            }
        }
    }

    /// The reader's loss count is `count`, the last loss dropped an event stamped at `last`.
    pub fn lost(&mut self, count: u64, last: u64) {
        if count > self.counts.lost {
            log::debug!("resync: {} events lost", count - self.counts.lost);
            self.counts.lost = count;
            self.trusted_from = self.trusted_from.max(last);
            self.resync();
        }
    }

    /// The `malloc_state` of each arena the state knows, in its order.
    pub fn arenas(&self) -> Vec<u64> {
        self.heap.map.arenas.iter().map(|a| a.address).collect()
    }

    /// The arenas' tops as they are now (each of [`LiveCore::arenas`], if it read): the events
    /// do not tell where a heap ends ([`LiveHeap::follow_top`]). Not while the state is known
    /// to be off: a walk replaces it.
    pub fn follow_tops(&mut self, tops: &[Option<ArenaTop>]) {
        if self.needs == Some(Walk::Resync) {
            return;
        }
        for (arena, top) in tops.iter().enumerate() {
            if let Some(top) = top
                && !self.heap.follow_top(arena, *top)
            {
                log::debug!("arena {arena}'s top not followed this sample: {top:x?}");
            }
        }
    }

    /// The state as a heap map, its residency from `pages` and its figures counted again;
    /// `chunk_struct_size` is what malloc_trim keeps of a free chunk.
    pub fn map(&mut self, pages: &PageMap, chunk_struct_size: u64) -> HeapMap {
        self.heap.map.update_residency(pages);
        self.heap.finish_mmapped();
        self.heap.map.recount(pages.page_size, chunk_struct_size);
        if let Some(sites) = &mut self.sites {
            sites.pin(&self.heap.map);
        }
        self.heap.map.clone()
    }

    /// The events cannot be trusted: walk the heap again at the next sample.
    fn resync(&mut self) {
        if self.needs != Some(Walk::Resync) {
            self.counts.resyncs += 1;
            self.needs = Some(Walk::Resync);
        }
    }

    fn count(&mut self, event: &Event) {
        let bytes = event.size & !CHUNK_FLAG_BITS;
        let call = Call::from_u8(event.call);
        if event.kind == EventKind::Alloc as u8
            && !matches!(call, Some(Call::ReallocFailed | Call::TcacheInit))
        {
            self.counts.allocated(bytes);
        } else if matches!(call, Some(Call::Free | Call::ReallocToZero)) {
            self.counts.frees += 1;
            self.counts.freed_bytes += bytes;
        } else if call == Some(Call::Realloc) {
            self.counts.freed_bytes += bytes;
        }
    }
}

/// Applies `event` to `heap`; with `take_in`, a chunk handed out of a heap made since the walk
/// has the heap taken in first, as its `heap_info` says it is now ([`LiveHeap::add_heap`]).
/// (Without: the state is known to be off already, and a walk will replace it.)
fn apply(
    heap: &mut LiveHeap,
    heap_info: &mut impl FnMut(u64) -> Option<HeapInfo>,
    event: &Event,
    how: Apply,
    take_in: bool,
) -> Result<(), Contradiction> {
    let applied = heap.apply(event, how);
    let Err(Contradiction::Outside { address }) = applied else {
        return applied;
    };
    if !take_in || event.kind != EventKind::Alloc as u8 {
        return applied;
    }
    let start = heap.heap_of(address);
    match heap_info(start) {
        Some(info) if heap.add_heap(start, info) => {
            log::debug!("a heap made since the walk, taken in: {info:x?}");
            heap.apply(event, how)
        }
        _ => applied,
    }
}

/// The program's allocations and frees among `events`, to the sites: every one, whatever the
/// walks saw (the table follows chunks from attach on; walks only check it).
fn take_into_sites(sites: &mut SiteTable, events: &[Event], stacks: &[Unwound]) {
    let mut stacks = stacks.iter().peekable();
    for event in events {
        let bytes = event.size & !CHUNK_FLAG_BITS;
        match (EventKind::from_u8(event.kind), Call::from_u8(event.call)) {
            (_, Some(Call::TcacheInit | Call::Flush)) | (None, _) | (_, None) => {}
            (Some(EventKind::Alloc), Some(_)) => {
                let mut stack = None;
                let sampled = event.sampled & (SAMPLED_BYTES | SAMPLED_PAGE) != 0;
                if sampled && event.sampled & STACK_MISSED == 0 {
                    while stacks.next_if(|s| s.0 < event.time).is_some() {}
                    // Stamps may tie across CPUs: the thread tells them apart.
                    let mut ties = stacks.clone();
                    while let Some(candidate) = ties.next_if(|s| s.0 == event.time) {
                        if candidate.1 == event.tid {
                            stack = candidate.2.clone();
                            break;
                        }
                    }
                }
                sites.allocated(event.pointer, bytes, event.sampled, stack);
            }
            (Some(EventKind::Free), Some(_)) => sites.freed(event.pointer),
            (Some(EventKind::Mark), _) => {}
        }
    }
}

fn mostly_unknown(map: &HeapMap) -> bool {
    let totals = &map.totals;
    totals.unknown_bytes as f64 > totals.system_bytes as f64 * UNKNOWN_SHARE_LIMIT
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use pagealloc_common::{Call, Event, EventKind};

    use super::super::heap::Apply;
    use super::super::heap::tests::{HEAP, event, map};
    use super::{LiveCore, REPLAY_SLACK_NS, Walk, Walked, Window};
    use crate::glibc::HeapInfo;
    use crate::state::heap::{CHUNK_START, ChunkState, HeapMap, HeapNote};

    const S: u64 = 1_000_000_000;
    const RECONCILE: Duration = Duration::from_secs(30);

    /// The map's live chunk (0x40 at HEAP + 0x10) handed out again.
    fn over_live(time: u64) -> Event {
        stamped(
            time,
            event(EventKind::Alloc, HEAP + 0x10, 0x40, Call::Malloc),
        )
    }

    /// A new chunk from the map's top.
    fn from_top(time: u64) -> Event {
        stamped(
            time,
            event(EventKind::Alloc, HEAP + 0x150, 0x40, Call::Malloc),
        )
    }

    fn stamped(time: u64, event: Event) -> Event {
        Event { time, ..event }
    }

    fn walked(map: HeapMap, from: u64, until: u64) -> Walked {
        Walked {
            map,
            page_size: 0x1000,
            from,
            until,
        }
    }

    fn inconsistent(mut map: HeapMap) -> HeapMap {
        map.notes
            .push(HeapNote::inconsistent("read while it changed".into()));
        map
    }

    /// The map with its live chunk freed since.
    fn freed_since(mut map: HeapMap) -> HeapMap {
        let granules = &mut map.segments[0].granules;
        granules[1] = ChunkState::Bin as u8 | CHUNK_START;
        granules[2..5].fill(ChunkState::Bin as u8);
        map
    }

    fn no_heap_info(_: u64) -> Option<HeapInfo> {
        None
    }

    /// Seeded from a walk between 10 s and 11 s, the probes attached at `attached`, settled.
    fn seeded(attached: u64, now: Instant) -> LiveCore {
        let mut core = LiveCore::seed(
            walked(map(), 10 * S, 11 * S),
            attached,
            RECONCILE,
            now,
            None,
        );
        core.settle(now);
        core
    }

    fn live(core: &LiveCore) -> (u64, u64) {
        core.heap.map.live()
    }

    #[test]
    fn an_event_is_skipped_before_the_window_replayed_in_it_and_strict_after() {
        let window = Window {
            replay_from: 10 * S,
            walked_until: 11 * S,
        };
        for (time, mode) in [
            (10 * S - 1, None),
            (10 * S, Some(Apply::Replay)),
            (11 * S + REPLAY_SLACK_NS, Some(Apply::Replay)),
            (11 * S + REPLAY_SLACK_NS + 1, Some(Apply::Strict)),
        ] {
            assert_eq!(window.mode(time), mode, "at {time}");
        }
    }

    #[test]
    fn the_seed_replays_from_its_walk_and_never_from_before_the_probes_were_attached() {
        // (when the probes were attached, the event, whether it was applied, contradictions)
        let before_window = 10 * S - REPLAY_SLACK_NS - 1;
        let in_slack = 10 * S - REPLAY_SLACK_NS / 2;
        let after_window = 11 * S + REPLAY_SLACK_NS + 1;
        let rows = [
            // Before the walk's window: the walk saw it.
            (S, from_top(before_window), false, 0),
            (S, over_live(before_window), false, 0),
            // Just before the walk began: replayed, what the walk shows skipped.
            (S, from_top(in_slack), true, 0),
            (S, over_live(in_slack), false, 0),
            (S, over_live(10 * S + S / 2), false, 0),
            // After: applied as it is, a contradiction if it cannot have happened.
            (S, from_top(after_window), true, 0),
            (S, over_live(after_window), false, 1),
            // The probes attached after the window began: nothing before that is replayed.
            (10 * S, from_top(in_slack), false, 0),
            (10 * S, from_top(10 * S + 1), true, 0),
        ];
        for (attached, event, applied, contradictions) in rows {
            let mut core = seeded(attached, Instant::now());
            let before = live(&core);
            core.apply(&[event], &[], &mut no_heap_info);
            let context = format!("attached {attached}, event at {}", event.time);
            assert_eq!(live(&core) != before, applied, "{context}");
            assert_eq!(core.counts.contradictions, contradictions, "{context}");
            assert_eq!(core.counts.resyncs, contradictions, "{context}");
        }
    }

    #[test]
    fn a_loss_resyncs_once_and_its_walk_replays_nothing_from_before_it() {
        let now = Instant::now();
        let mut core = seeded(S, now);
        core.lost(3, 20 * S);
        assert_eq!(core.walk_needed(now), Some(Walk::Resync));
        core.lost(3, 20 * S);
        core.lost(5, 20 * S + 1);
        assert_eq!((core.counts.lost, core.counts.resyncs), (5, 1));
        // The resync's walk began just after the loss: what came before it is not replayed.
        core.begin_walk(walked(map(), 20 * S + 2, 21 * S), Walk::Resync);
        let before = live(&core);
        core.apply(&[from_top(20 * S)], &[], &mut no_heap_info);
        assert_eq!(live(&core), before);
        core.apply(&[from_top(20 * S + 1)], &[], &mut no_heap_info);
        assert_ne!(live(&core), before);
        core.settle(now);
        assert_eq!(core.walk_needed(now), None);
        // The same count again is no new loss.
        core.lost(5, 20 * S + 1);
        assert_eq!(core.walk_needed(now), None);
    }

    #[test]
    fn a_resync_and_a_contradiction_are_counted_once_until_the_walk() {
        let mut core = seeded(S, Instant::now());
        let late = 20 * S;
        let free_of_bin = stamped(late, event(EventKind::Free, HEAP + 0x50, 0x100, Call::Free));
        core.apply(&[over_live(late), free_of_bin], &[], &mut no_heap_info);
        core.lost(1, late);
        assert_eq!(core.counts.contradictions, 1);
        assert_eq!(core.counts.resyncs, 1);
    }

    /// A sampled chunk of a heap the state does not know yet (it grew under the events) stays
    /// with its site while the resync is due: the state is known to be off, and only the
    /// resync's walk checks the sites.
    #[test]
    fn the_sites_are_not_checked_against_a_state_known_to_be_off() {
        use crate::state::sites::{Sampling, SiteTable, Stack};
        let every = Sampling {
            sample_bytes: 1,
            page_shift: 0,
            page_salt: 0,
            page_size: 0x1000,
        };
        let now = Instant::now();
        let table = SiteTable::new(every, 8, &map());
        let mut core = LiveCore::seed(
            walked(map(), 10 * S, 11 * S),
            S,
            RECONCILE,
            now,
            Some(table),
        );
        let far = Event {
            sampled: pagealloc_common::SAMPLED_BYTES,
            ..stamped(
                12 * S,
                event(EventKind::Alloc, 0x7f00_0000_08a0, 0x100, Call::Malloc),
            )
        };
        let stack = Stack {
            frames: std::sync::Arc::from([0x1234u64]),
            truncated: false,
        };
        core.apply(
            &[far],
            &[(far.time, far.tid, Some(stack))],
            &mut no_heap_info,
        );
        assert_eq!(core.walk_needed(now), Some(Walk::Resync));
        core.settle(now);
        let report = core.sites().unwrap().report(None, |_| Default::default());
        let held: f64 = report.sites.iter().map(|s| s.figures.inuse_bytes).sum();
        assert_eq!(held, 256.0);
    }

    #[test]
    fn a_chunk_outside_the_heaps_known_resyncs_without_being_a_contradiction() {
        let mut core = seeded(S, Instant::now());
        let far = event(EventKind::Alloc, 0x7f00_0000_08a0, 0x100, Call::Malloc);
        core.apply(&[stamped(20 * S, far)], &[], &mut no_heap_info);
        assert_eq!((core.counts.contradictions, core.counts.resyncs), (0, 1));
    }

    #[test]
    fn a_heap_made_since_the_walk_is_taken_in_from_its_heap_info_unless_a_resync_is_due() {
        let heap = 0x7f00_0000_0000;
        let far = stamped(
            20 * S,
            event(EventKind::Alloc, heap + 0x8a0, 0x100, Call::Malloc),
        );
        let mut asked = Vec::new();
        let mut heap_info = |at: u64| {
            asked.push(at);
            Some(HeapInfo {
                arena: heap + 0x30,
                prev: 0,
                first: heap + 0x8a0,
                end: heap + 0x21000,
            })
        };
        let mut core = seeded(S, Instant::now());
        core.apply(&[far], &[], &mut heap_info);
        assert_eq!(core.counts.resyncs, 0);
        assert_eq!(core.heap.map.arenas.len(), 2);
        assert_eq!(live(&core), (2, 0x40 + 0x100));
        // A resync due: the state will be replaced, no heap is read for it.
        let mut core = seeded(S, Instant::now());
        core.lost(1, 19 * S);
        core.apply(&[far], &[], &mut heap_info);
        assert_eq!(core.heap.map.arenas.len(), 1);
        assert_eq!(asked, vec![heap]);
    }

    #[test]
    fn a_reconcile_is_due_every_interval_and_compares_the_state_with_its_walk() {
        let start = Instant::now();
        let mut core = seeded(S, start);
        assert_eq!(
            core.walk_needed(start + RECONCILE - Duration::from_millis(1)),
            None
        );
        let due = start + RECONCILE;
        assert_eq!(core.walk_needed(due), Some(Walk::Reconcile));
        // The state holds one more chunk than the walk: one handed out since, in neither.
        core.apply(&[from_top(20 * S)], &[], &mut no_heap_info);
        core.begin_walk(walked(map(), 40 * S, 41 * S), Walk::Reconcile);
        core.settle(due);
        let mismatch = core.counts.reconcile_mismatch.unwrap();
        assert_eq!((mismatch.chunks, mismatch.bytes), (1, 0x40));
        assert_eq!(core.counts.reconciles, 1);
        assert_eq!(live(&core), (1, 0x40), "the walk replaced the state");
        assert_eq!(core.walk_needed(due + RECONCILE / 2), None);
        assert_eq!(core.walk_needed(due + RECONCILE), Some(Walk::Reconcile));
    }

    #[test]
    fn an_inconsistent_reconcile_compares_what_it_read_and_replaces_the_state() {
        // The walk read the chunk the state has freed as in use (its list broke): taken from
        // the state, no mismatch, and the walk's notes of its reading go.
        let start = Instant::now();
        let mut core = seeded(S, start);
        let free = stamped(
            20 * S,
            event(EventKind::Free, HEAP + 0x10, 0x40, Call::Free),
        );
        core.apply(&[free], &[], &mut no_heap_info);
        core.begin_walk(walked(inconsistent(map()), 40 * S, 41 * S), Walk::Reconcile);
        core.apply(&[from_top(41 * S)], &[], &mut no_heap_info);
        let settled = start + RECONCILE;
        core.settle(settled);
        let mismatch = core.counts.reconcile_mismatch.unwrap();
        assert_eq!((mismatch.chunks, mismatch.bytes), (0, 0));
        assert_eq!((core.counts.reconciles, core.counts.resyncs), (1, 0));
        assert_eq!(live(&core), (1, 0x40), "the chunk from the top only");
        assert_eq!(core.heap.map.notes, []);
        assert_eq!(core.walk_needed(settled + RECONCILE), Some(Walk::Reconcile));
        // A chunk the walk read free where the state has it live is a mismatch; the state is
        // kept there (the walk read inconsistently).
        let mut core = seeded(S, start);
        core.begin_walk(
            walked(inconsistent(freed_since(map())), 40 * S, 41 * S),
            Walk::Reconcile,
        );
        core.settle(settled);
        let mismatch = core.counts.reconcile_mismatch.unwrap();
        assert_eq!((mismatch.chunks, mismatch.bytes), (1, 0x40));
        assert_eq!(live(&core), (1, 0x40));
    }

    #[test]
    fn an_inconsistent_reconcile_whose_events_contradict_the_state_resyncs() {
        let start = Instant::now();
        let mut core = seeded(S, start);
        core.begin_walk(
            walked(inconsistent(freed_since(map())), 40 * S, 41 * S),
            Walk::Reconcile,
        );
        // Replayed against the walk (which saw the chunk freed) but strict against the state.
        core.apply(&[over_live(40 * S)], &[], &mut no_heap_info);
        core.settle(start);
        assert_eq!(core.walk_needed(start), Some(Walk::Resync));
        assert_eq!((core.counts.resyncs, core.counts.contradictions), (1, 0));
    }

    #[test]
    fn a_resync_walk_mostly_unknown_is_taken_again_uncounted() {
        for (unknown, again) in [(0x100, true), (0x10, false)] {
            let mut map = inconsistent(map());
            map.totals.system_bytes = 0x1000;
            map.totals.unknown_bytes = unknown;
            let now = Instant::now();
            let mut core = LiveCore::seed(walked(map, 10 * S, 11 * S), S, RECONCILE, now, None);
            core.settle(now);
            let needed = core.walk_needed(now);
            assert_eq!(needed, again.then_some(Walk::Resync), "{unknown} unknown");
            assert_eq!(core.counts.resyncs, 0);
        }
    }

    #[test]
    fn the_calls_are_counted_as_the_program_made_them() {
        // (kind, call, allocs, frees, freed bytes)
        let rows = [
            (EventKind::Alloc, Call::Malloc, 1, 0, 0),
            (EventKind::Alloc, Call::ReallocFailed, 0, 0, 0),
            (EventKind::Alloc, Call::TcacheInit, 0, 0, 0),
            (EventKind::Free, Call::Free, 0, 1, 0x40),
            (EventKind::Free, Call::ReallocToZero, 0, 1, 0x40),
            (EventKind::Free, Call::Realloc, 0, 0, 0x40),
            (EventKind::Free, Call::Flush, 0, 0, 0),
        ];
        for (kind, call, allocs, frees, freed_bytes) in rows {
            let mut core = seeded(S, Instant::now());
            // Before the window: counted, not applied.
            let event = stamped(0, event(kind, HEAP + 0x10, 0x40, call));
            core.apply(&[event], &[], &mut no_heap_info);
            let counts = core.counts();
            let got = (counts.allocs, counts.frees, counts.freed_bytes);
            assert_eq!(got, (allocs, frees, freed_bytes), "{call:?}");
        }
    }
}
