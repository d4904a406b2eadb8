//! Live mode: probes on the allocator keep a session's heap map current between walks.
//!
//! The probes attach first; then one walk seeds the state, and the events stamped while it ran
//! are replayed against it (the walk saw each chunk before or after its event: what it already
//! shows is skipped), so that nothing is lost or counted twice. From then on every event is
//! applied as it comes. A lost event, or an event the state says cannot have happened, makes
//! the next sample walk the heap again (a resync, with the same replay); every
//! [`LiveOptions::reconcile`] a walk is compared with the state (the mismatch in live chunks and
//! bytes is reported; 0 on a healthy run) and then replaces it.
pub mod heap;

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use pagealloc_common::{Call, EventKind};

use crate::error::{Error, Result};
use crate::session::Session;
use crate::state::events::{Counts, Mismatch};
use crate::state::heap::HeapMap;
use crate::state::{Heap, Sample};
use crate::trace::{self, Batch, TraceOptions, Tracer};
use heap::{Apply, Contradiction, LiveHeap};

#[derive(Clone, Copy, Debug)]
pub struct LiveOptions {
    pub trace: TraceOptions,
    /// How often a walk checks the state.
    pub reconcile: Duration,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            trace: TraceOptions::default(),
            reconcile: Duration::from_secs(30),
        }
    }
}

/// Why a walk is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    /// The events cannot be trusted: replace the state.
    Resync,
    /// Time to check: compare, then replace.
    Reconcile,
}

pub struct Live {
    tracer: Tracer,
    batches: Receiver<Batch>,
    heap: LiveHeap,
    counts: Counts,
    /// Events stamped before this are in the walk the state comes from (or precede a lost
    /// event: the walk is the truth then).
    replay_from: u64,
    /// Events stamped up to this may be in it already (replayed).
    walked_until: u64,
    needs: Option<Walk>,
    /// Events stamped before this are not replayed against a walk: they may miss a later
    /// event of their chunk. When the last event known to be lost was dropped, or when the
    /// last probe was attached (before that, some calls had their probe and some not yet).
    trusted_from: u64,
    /// When the next reconcile is due.
    next_reconcile: Instant,
    header_bytes: u64,
    options: LiveOptions,
    /// The libc the state's walk read, for samples that only read the page map.
    libc: Option<crate::state::LibcInfo>,
}

/// How long a sample waits for the reader to hand over the events stamped before it.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

impl Live {
    /// Attaches the probes to the session's process and seeds the state with one walk.
    pub fn start(session: &mut Session, options: LiveOptions) -> Result<Live> {
        let site = session.probe_site()?;
        let (tracer, batches) =
            Tracer::attach(session.pid(), &site.libc, &site.internals, options.trace)?;
        let attached = trace::monotonic_now();
        let mut live = Live {
            tracer,
            batches,
            heap: LiveHeap::new(empty_map(), procfs::page_size()),
            counts: Counts::default(),
            replay_from: 0,
            walked_until: 0,
            needs: None,
            trusted_from: attached,
            next_reconcile: Instant::now() + options.reconcile,
            header_bytes: site.header_bytes,
            options,
            libc: None,
        };
        live.walk(session, Walk::Resync)?;
        Ok(live)
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The counts with every event stamped until now applied: once the process has exited,
    /// all it made (the reader still had those since the last sample).
    pub fn counts_until_now(&mut self, session: &mut Session) -> Result<Counts> {
        self.receive(session, trace::monotonic_now(), |_, _| {})?;
        self.check_lost()?;
        Ok(self.counts)
    }

    /// Where each probe went.
    pub fn probes(&self) -> &[trace::Placed] {
        &self.tracer.placed
    }

    /// A sample: the events since the last one applied, the heap walked again if they cannot
    /// be trusted or a reconcile is due, the page map read again.
    pub fn sample(&mut self, session: &mut Session) -> Result<Sample> {
        // Every call made before the sample began is in it; the page map is read later, so
        // the sample's time is this moment, not the page map's.
        let (taken, started) = (std::time::SystemTime::now(), Instant::now());
        self.receive(session, trace::monotonic_now(), |_, _| {})?;
        self.check_lost()?;
        if self.needs.is_none() && Instant::now() >= self.next_reconcile {
            self.needs = Some(Walk::Reconcile);
        }
        let mut sample = match self.needs {
            Some(why) => self.walk(session, why)?,
            None => session.sample_pages()?,
        };
        self.heap.map.update_residency(&sample.pages);
        self.heap.finish_mmapped();
        self.heap
            .map
            .recount(sample.pages.page_size, self.header_bytes);
        sample.heap = Heap::Map(Box::new(self.heap.map.clone()));
        sample.libc = self.libc.clone();
        sample.events = Some(self.counts);
        (sample.taken, sample.duration) = (taken, started.elapsed());
        Ok(sample)
    }

    /// Applies the events the reader has handed over so far, without waiting: between samples,
    /// so that a heap made since the walk is taken in while its `heap_info` is still there
    /// (glibc deletes an emptied heap soon), and the events do not pile up in memory.
    pub fn pump(&mut self, session: &mut Session) {
        while let Ok(batch) = self.batches.try_recv() {
            self.apply_batch(session, &batch);
        }
    }

    /// Walks the heap; the events stamped while it ran are replayed against the walk, and it
    /// becomes the state. A reconcile first compares it with the state; a walk that read the
    /// heap inconsistently (the target busy) says nothing of the state, which a reconcile then
    /// keeps, and a resync takes for lack of better: either looks again at the next sample.
    fn walk(&mut self, session: &mut Session, why: Walk) -> Result<Sample> {
        let from = trace::monotonic_now();
        let mut sample = session.sample()?;
        let until = trace::monotonic_now();
        let walked = match std::mem::replace(&mut sample.heap, Heap::NotRead) {
            Heap::Map(map) => *map,
            Heap::Unavailable(why) => return Err(Error::Heap(why)),
            Heap::NotRead => unreachable!("a session for live mode reads the heap"),
        };
        let consistent = walked.is_consistent();
        let page_size = sample.pages.page_size;
        let old = std::mem::replace(&mut self.heap, LiveHeap::new(walked, page_size));
        let old_window = (self.replay_from, self.walked_until);
        // Events from before a loss, or from while the probes were being attached, are not
        // replayed: a later event of the same chunk may be missing (an allocation replayed
        // whose free was made before free's probe was in place would leave a freed chunk
        // live; a free replayed over the chunk's reuse, its allocation lost, would mark a live
        // chunk free).
        let replay_from = from.saturating_sub(REPLAY_SLACK_NS).max(self.trusted_from);
        (self.replay_from, self.walked_until) = (replay_from, until);
        self.needs = None;
        // The state before, for a reconcile: the same events applied to it.
        let mut old = (why == Walk::Reconcile).then_some((old, false));
        self.receive(
            session,
            until.saturating_add(REPLAY_SLACK_NS),
            |session, batch| {
                if let Some((old, broken)) = &mut old {
                    for event in &batch.events {
                        if let Some(how) = mode(event.time, old_window.0, old_window.1) {
                            *broken |= apply(old, session, event, how, !*broken).is_err();
                        }
                    }
                }
            },
        )?;
        self.next_reconcile = Instant::now() + self.options.reconcile;
        match old {
            Some((old, broken)) if !consistent => {
                self.heap = old;
                (self.replay_from, self.walked_until) = old_window;
                if broken {
                    self.resync();
                } else {
                    // Not a walk every sample on a busy target: again a little later.
                    let retry = self.options.reconcile.min(RECONCILE_RETRY);
                    self.next_reconcile = Instant::now() + retry;
                }
            }
            Some((old, _)) => {
                let (kept, walked) = (old.map.live(), self.heap.map.live());
                self.counts.reconciles += 1;
                self.counts.reconcile_mismatch = Some(Mismatch {
                    chunks: kept.0.abs_diff(walked.0),
                    bytes: kept.1.abs_diff(walked.1),
                });
            }
            // A busy target reads a little inconsistently; the events settle what was unknown.
            // Only a walk that left much of the heap unknown is taken again.
            None if !consistent && mostly_unknown(&self.heap.map) => {
                self.needs.get_or_insert(Walk::Resync);
            }
            None => {}
        }
        self.libc = sample.libc.clone();
        Ok(sample)
    }

    /// Applies the reader's batches until one vouches for every event stamped before `until`;
    /// `also` sees each batch first.
    fn receive(
        &mut self,
        session: &mut Session,
        until: u64,
        mut also: impl FnMut(&mut Session, &Batch),
    ) -> Result<()> {
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            let batch = self
                .batches
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| Error::Ebpf {
                    what: "reading the events".into(),
                    reason: "the event reader stopped handing them over".into(),
                })?;
            also(session, &batch);
            self.apply_batch(session, &batch);
            if batch.complete_before > until {
                return Ok(());
            }
        }
    }

    fn apply_batch(&mut self, session: &mut Session, batch: &Batch) {
        for event in &batch.events {
            self.count(event);
            let Some(how) = mode(event.time, self.replay_from, self.walked_until) else {
                continue; // the walk saw it
            };
            let take_in = self.needs != Some(Walk::Resync);
            match apply(&mut self.heap, session, event, how, take_in) {
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

    /// The events cannot be trusted: walk the heap again at the next sample.
    fn resync(&mut self) {
        if self.needs != Some(Walk::Resync) {
            self.counts.resyncs += 1;
            self.needs = Some(Walk::Resync);
        }
    }

    fn count(&mut self, event: &pagealloc_common::Event) {
        let bytes = event.size & !pagealloc_common::CHUNK_FLAG_BITS;
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

    fn check_lost(&mut self) -> Result<()> {
        let lost = self.tracer.lost()?;
        if lost.count > self.counts.lost {
            log::debug!("resync: {} events lost", lost.count - self.counts.lost);
            self.counts.lost = lost.count;
            self.trusted_from = self.trusted_from.max(lost.last);
            self.resync();
        }
        Ok(())
    }
}

/// Applies `event` to `heap`; with `take_in`, a chunk handed out of a heap made since the walk
/// has the heap taken in first, as it says it is now ([`LiveHeap::add_heap`]). (Without: the
/// state is known to be off already, and a walk will replace it.)
fn apply(
    heap: &mut LiveHeap,
    session: &mut Session,
    event: &pagealloc_common::Event,
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
    let start = LiveHeap::heap_of(address);
    match session.heap_info(start) {
        Some(info) if heap.add_heap(start, info) => {
            log::debug!("a heap made since the walk, taken in: {info:x?}");
            heap.apply(event, how)
        }
        _ => applied,
    }
}

/// A probe stamps a free before the chunk is freed and an allocation after the chunk is handed
/// out, and a thread can be preempted in between: events stamped this close to a walk may be
/// what the walk saw, or not. They are replayed against it.
const REPLAY_SLACK_NS: u64 = 200_000_000;

/// How an event stamped at `time` is applied to a walk that ended at `until` and whose events
/// are replayed from `replay_from`, if at all (None: the walk saw it).
fn mode(time: u64, replay_from: u64, until: u64) -> Option<Apply> {
    if time < replay_from {
        None
    } else if time <= until.saturating_add(REPLAY_SLACK_NS) {
        Some(Apply::Replay)
    } else {
        Some(Apply::Strict)
    }
}

/// A reconcile whose walk read the heap inconsistently is tried again this much later.
const RECONCILE_RETRY: Duration = Duration::from_secs(5);

/// Unknown bytes past this share of the heap make a walk worth taking again.
const UNKNOWN_SHARE_LIMIT: f64 = 0.01;

fn mostly_unknown(map: &HeapMap) -> bool {
    let totals = &map.totals;
    totals.unknown_bytes as f64 > totals.system_bytes as f64 * UNKNOWN_SHARE_LIMIT
}

fn empty_map() -> HeapMap {
    HeapMap {
        arenas: Vec::new(),
        mmapped_chunks: 0,
        mmapped_bytes: 0,
        totals: Default::default(),
        notes: Vec::new(),
        mmapped: Vec::new(),
        segments: Vec::new(),
    }
}
