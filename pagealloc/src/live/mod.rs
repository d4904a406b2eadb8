//! Live mode: probes on the allocator keep a session's heap map current between walks.
//!
//! The probes attach first; then one walk seeds the state, and the events stamped while it ran
//! are replayed against it (the walk saw each chunk before or after its event: what it already
//! shows is skipped), so that nothing is lost or counted twice. From then on every event is
//! applied as it comes. A lost event, or an event the state says cannot have happened, makes
//! the next sample walk the heap again (a resync, with the same replay); every
//! [`LiveOptions::reconcile`] a walk is compared with the state (the mismatch in live chunks and
//! bytes is reported; 0 on a healthy run) and then replaces it.
mod compare;
mod core;
pub mod heap;

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use self::core::{LiveCore, Unwound, Walked};
use crate::error::{Error, Result};
use crate::session::Session;
use crate::stacks::{Symbols, Unwinder};
use crate::state::events::Counts;
use crate::state::sites::{self, SiteTable};
use crate::state::{Heap, Sample};
use crate::trace::{self, Batch, TraceError, TraceOptions, Tracer};

#[derive(Clone, Copy, Debug)]
pub struct LiveOptions {
    pub trace: TraceOptions,
    /// How often a walk checks the state.
    pub reconcile: Duration,
    /// The share of an interval's events that may be lost before the overhead guard takes the
    /// probes off (0.01: 1 %).
    pub max_lost: f64,
    /// The most allocation sites kept (the lightest merge into one "other" site past it).
    pub max_sites: usize,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions {
            trace: TraceOptions::default(),
            reconcile: Duration::from_secs(30),
            max_lost: 0.01,
            max_sites: sites::DEFAULT_MAX_SITES,
        }
    }
}

/// The shell around [`LiveCore`]: the probes' events and the session's walks fed to it.
pub struct Live {
    tracer: Tracer,
    batches: Receiver<Batch>,
    core: LiveCore,
    /// What malloc_trim keeps of a free chunk, for the figures.
    chunk_struct_size: u64,
    /// The libc the state's walk read, for samples that only read the page map.
    libc: Option<crate::state::LibcInfo>,
    /// The sampled allocations' stacks: unwound as they come, symbolised at each sample.
    stacks: Option<(Unwinder, Symbols)>,
    /// When the probes attached.
    attached_at: std::time::SystemTime,
}

/// How long a sample waits for the reader to hand over the events stamped before it.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

impl Live {
    /// Attaches the probes to the session's process and seeds the state with one walk.
    pub fn start(session: &mut Session, options: LiveOptions) -> Result<Live> {
        let site = session.probe_site()?;
        let (tracer, batches) = Tracer::attach(
            session.pid(),
            &site.libc,
            &site.internals,
            site.chunk_words,
            options.trace,
        )?;
        let attached = trace::monotonic_now();
        let attached_at = std::time::SystemTime::now();
        let (walked, sample) = walk(session)?;
        let sampling = tracer.sampling;
        let sites = sampling.any().then(|| {
            let sampling = sites::Sampling {
                sample_bytes: sampling.sample_bytes,
                page_shift: sampling.page_shift(),
                page_salt: tracer.page_salt,
                page_size: walked.page_size,
            };
            SiteTable::new(sampling, options.max_sites, &walked.map)
        });
        let stacks = sites
            .is_some()
            .then(|| (Unwinder::new(session.pid()), Symbols::new(session.pid())));
        let core = LiveCore::seed(walked, attached, options.reconcile, Instant::now(), sites);
        let mut live = Live {
            tracer,
            batches,
            core,
            chunk_struct_size: site.chunk_struct_size,
            libc: None,
            stacks,
            attached_at,
        };
        live.settle(session, &sample)?;
        Ok(live)
    }

    pub fn counts(&self) -> Counts {
        self.core.counts()
    }

    /// The counts with every event stamped until now applied: once the process has exited,
    /// all it made (the reader still had those since the last sample).
    pub fn counts_until_now(&mut self, session: &mut Session) -> Result<Counts> {
        self.take_in_until_now(session)?;
        Ok(self.counts())
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
        self.take_in_until_now(session)?;
        let mut sample = match self.core.walk_needed(Instant::now()) {
            Some(why) => {
                let (walked, sample) = walk(session)?;
                self.core.begin_walk(walked, why);
                self.settle(session, &sample)?;
                sample
            }
            None => session.sample_pages()?,
        };
        let tops = session.arena_tops(&sample.pages, &self.core.arenas());
        self.core.follow_tops(&tops);
        let map = self.core.map(&sample.pages, self.chunk_struct_size);
        sample.heap = Heap::Map(Box::new(map));
        sample.sites = self.sites_report();
        sample.libc = self.libc.clone();
        sample.events = Some(self.counts());
        (sample.taken, sample.duration) = (taken, started.elapsed());
        Ok(sample)
    }

    /// Applies the events the reader has handed over so far, without waiting: between samples,
    /// so that a heap made since the walk is taken in while its `heap_info` is still there
    /// (glibc deletes an emptied heap soon), and the events do not pile up in memory.
    pub fn pump(&mut self, session: &mut Session) {
        while let Ok(batch) = self.batches.try_recv() {
            self.apply(&batch, session);
        }
    }

    /// Applies a batch of the reader's, its stacks unwound.
    fn apply(&mut self, batch: &Batch, session: &mut Session) {
        let unwound: Vec<Unwound> = match &mut self.stacks {
            Some((unwinder, _)) => (batch.stacks.iter())
                .map(|raw| (raw.time, raw.tid, unwinder.unwind(raw)))
                .collect(),
            None => Vec::new(),
        };
        self.core
            .apply(&batch.events, &unwound, &mut |heap| session.heap_info(heap));
    }

    /// The sites as they are now, their new addresses symbolised.
    fn sites_report(&mut self) -> Option<Arc<sites::SitesReport>> {
        let (unwinder, symbols) = self.stacks.as_mut()?;
        let table = self.core.sites()?;
        symbols.resolve(table.addresses(), unwinder);
        let report = table.report(Some(self.attached_at), |address| symbols.frame(address));
        Some(Arc::new(report))
    }

    /// Every event stamped until now applied, and the events lost so far told to the core.
    fn take_in_until_now(&mut self, session: &mut Session) -> Result<()> {
        self.receive(session, trace::monotonic_now())?;
        let lost = self.tracer.lost()?;
        self.core.lost(lost.count, lost.last);
        Ok(())
    }

    /// The events that may be in the walk of `sample`, just begun, applied to it; then it is
    /// settled.
    fn settle(&mut self, session: &mut Session, sample: &Sample) -> Result<()> {
        if let Some(until) = self.core.replaying_until() {
            self.receive(session, until)?;
        }
        self.core.settle(Instant::now());
        self.libc = sample.libc.clone();
        Ok(())
    }

    /// Applies the reader's batches until one vouches for every event stamped before `until`.
    fn receive(&mut self, session: &mut Session, until: u64) -> Result<()> {
        let deadline = Instant::now() + DRAIN_LIMIT;
        loop {
            let batch = self
                .batches
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| TraceError::ReaderStopped)?;
            self.apply(&batch, session);
            if batch.complete_before > until {
                return Ok(());
            }
        }
    }
}

/// Walks the heap, between two stamps; the sample without its heap map.
fn walk(session: &mut Session) -> Result<(Walked, Sample)> {
    let from = trace::monotonic_now();
    let mut sample = session.sample()?;
    let until = trace::monotonic_now();
    let map = match std::mem::replace(&mut sample.heap, Heap::NotRead) {
        Heap::Map(map) => *map,
        Heap::Unavailable(why) => return Err(Error::Heap(why)),
        Heap::NotRead => unreachable!("a session for live mode reads the heap"),
    };
    let page_size = sample.pages.page_size;
    let walked = Walked {
        map,
        page_size,
        from,
        until,
    };
    Ok((walked, sample))
}
