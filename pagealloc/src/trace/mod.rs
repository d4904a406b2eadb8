//! eBPF probes on the target's C library, scoped to one process (`UProbeScope::OneProcess`:
//! other processes pay nothing), and the stream of allocation events they produce.
//!
//! The probes (see `pagealloc-ebpf`): the results of malloc and calloc; entry and return of
//! realloc and the memalign family (they may call malloc or free themselves: the outer call
//! reports, once); free's entry; and the function with which an exiting thread gives its tcache
//! back (its frees are marked so). Each probe sits on the first instruction of its function the
//! kernel emulates ([`place`]). malloc's and calloc's results are caught with one trap per call
//! where the analysis of their code finds, on each path to a `ret`, an emulated instruction at
//! which the result is final in rax (`place::result_points`); else by a return probe (two).
//! Each CPU has a ring buffer of its own, written in batches ([`drain`]); a thread of ours reads
//! them all, waking on a short timer or when a ring fills, and hands the events over in batches
//! in the order of their stamps.
mod detach;
mod drain;
mod error;
mod load;
pub mod place;
mod probes;
mod read;
pub mod sampling;

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::PerCpuArray;
use pagealloc_common::{Event, LOST_COUNT, LOST_LAST, LOST_MAP};

pub use detach::detaching;
pub use error::TraceError;
pub use pagealloc_common::ChunkWords;
pub use probes::{Internals, Placed, plan, plan_with};
use read::{Reader, ReaderLosses};
pub use sampling::SampleOptions;

/// What the reader hands over each time it wakes.
#[derive(Debug, Default)]
pub struct Batch {
    /// In the order of their stamps (across batches too), all stamped before `complete_before`.
    pub events: Vec<Event>,
    /// The stacks of the sampled events among them (those with `SAMPLED_BYTES` or
    /// `SAMPLED_PAGE`), in the same order.
    pub stacks: Vec<RawStack>,
    /// Every event stamped before this (CLOCK_MONOTONIC, ns) is in this batch or an earlier one.
    pub complete_before: u64,
}

/// A sampled allocation's registers and the top of its thread's stack, as the probe copied
/// them: unwound in user space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawStack {
    /// The event's stamp and thread, which it is matched with.
    pub time: u64,
    pub tid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// From `sp` up.
    pub stack: Vec<u8>,
}

/// Now, on the clock the probes stamp events with (CLOCK_MONOTONIC), in ns.
pub fn monotonic_now() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// How the ring buffers are read.
#[derive(Clone, Copy, Debug)]
pub struct TraceOptions {
    /// Each online CPU's ring buffer (a power of two, a multiple of the page size); by default
    /// 8 MiB shared out among them, 256 KiB to 4 MiB each. The reader is woken early when an
    /// eighth of a ring waits.
    pub ring_bytes: Option<u32>,
    /// ...and otherwise reads every this often.
    pub poll: Duration,
    /// Catch malloc's and calloc's results with one trap per call where the analysis of their
    /// code is sure how (`place::result_points`); else (or when false) with return probes.
    pub one_trap: bool,
    /// Which allocations come with their stacks.
    pub sampling: SampleOptions,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            ring_bytes: None,
            poll: Duration::from_millis(10),
            one_trap: true,
            sampling: SampleOptions::default(),
        }
    }
}

/// Each CPU's ring buffer when not asked for: a CPU's traps make at most a few million events a
/// second, and the reader is woken when an eighth of a ring waits.
fn default_ring_bytes(cpus: u32) -> u32 {
    let share = ((8u32 << 20) / cpus.max(1)).max(1);
    (1 << share.ilog2()).clamp(256 << 10, 4 << 20)
}

/// The probes on one process's allocator, while this lives.
pub struct Tracer {
    attached: detach::Attached,
    ebpf: Ebpf,
    /// Events the reader found it could not hand over in order (see [`ReaderLosses`]).
    reader_losses: Arc<ReaderLosses>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    pub placed: Vec<Placed>,
    /// What the probes sample, and the salt that picked the pinning set of pages.
    pub sampling: SampleOptions,
    pub page_salt: u64,
}

impl Tracer {
    /// Loads the programs, with `chunk_words` (where a chunk's header words are below its user
    /// pointer, from glibc's layout), and attaches them to `libc` (a path this process can
    /// open: through `/proc/PID/root`) for process `pid` only, with the probes on glibc's
    /// `internals` the debug info could locate. Batches of events arrive on the receiver
    /// returned, one each time the reader wakes (empty ones too).
    pub fn attach(
        pid: i32,
        libc: &Path,
        internals: &Internals,
        chunk_words: ChunkWords,
        options: TraceOptions,
    ) -> Result<(Tracer, Receiver<Batch>), TraceError> {
        let pid = u32::try_from(pid)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or(TraceError::NoSuchProcess { pid })?;
        let cpus_error = |(file, e)| TraceError::io(format!("reading {file}"))(e);
        let possible = aya::util::nr_cpus().map_err(cpus_error)? as u32;
        let online = aya::util::online_cpus().map_err(cpus_error)?;
        let ring_bytes = options
            .ring_bytes
            .unwrap_or(default_ring_bytes(online.len() as u32));
        let page_salt = sampling::random_u64();
        let page_size = procfs::page_size();
        let programs_sampling = options.sampling.for_programs(page_salt, page_size);
        let mut ebpf = load::load(chunk_words, &programs_sampling, possible)?;
        load::seed_countdowns(&mut ebpf, possible, || {
            sampling::first_gap(&options.sampling)
        })?;
        // The rings in place before the first probe fires: an event with nowhere to go counts
        // as lost.
        let rings = load::rings(&mut ebpf, possible, &online, ring_bytes)?;
        let wake_ups = load::wake_ups(&rings)?;
        let drains = load::drains(&mut ebpf, online.first().copied().unwrap_or(0))?;
        let placed = plan_with(libc, internals, options.one_trap)?;
        let (send, receive) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader_losses = Arc::new(ReaderLosses::default());
        // The reader runs before the first probe is attached: a busy process fills the rings
        // in tens of milliseconds, and attaching every probe can take longer than that.
        let reader = {
            let (stop, losses) = (stop.clone(), reader_losses.clone());
            let reader = Reader {
                rings,
                wake_ups,
                drains,
                losses,
            };
            std::thread::Builder::new()
                .name("pagealloc-events".into())
                .spawn(move || reader.run(send, &stop, options.poll))
                .map_err(TraceError::io("starting the event reader"))?
        };
        let attached = match load::attach(&mut ebpf, &placed, libc, pid) {
            Ok(attached) => attached,
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                let _ = reader.join();
                return Err(e);
            }
        };
        Ok((
            Tracer {
                attached,
                ebpf,
                reader_losses,
                stop,
                reader: Some(reader),
                placed,
                sampling: options.sampling,
                page_salt,
            },
            receive,
        ))
    }

    /// Events lost so far (the ring buffers had no room for them, or the reader could not hand
    /// them over in their place: [`ReaderLosses`]), and when the last of them was (the
    /// probes' clock, 0 if none).
    pub fn lost(&self) -> Result<Losses, TraceError> {
        let map = self
            .ebpf
            .map(LOST_MAP)
            .ok_or(TraceError::Missing { name: LOST_MAP })?;
        let lost = PerCpuArray::<_, u64>::try_from(map).map_err(TraceError::map(LOST_MAP))?;
        let per_cpu = |index| {
            lost.get(&index, 0)
                .map_err(TraceError::map(format!("reading {LOST_MAP}")))
        };
        let reader = &self.reader_losses;
        Ok(Losses {
            count: per_cpu(LOST_COUNT)?.iter().sum::<u64>() + reader.count.load(Ordering::Acquire),
            last: per_cpu(LOST_LAST)?
                .iter()
                .copied()
                .chain([reader.last.load(Ordering::Relaxed)])
                .max()
                .unwrap_or(0),
        })
    }
}

/// Events lost so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Losses {
    pub count: u64,
    /// When the last was lost (CLOCK_MONOTONIC, ns; 0 if none).
    pub last: u64,
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        // The probes off before the programs they run are unloaded.
        drop(std::mem::take(&mut self.attached));
    }
}

#[cfg(test)]
mod tests {
    use super::default_ring_bytes;

    /// Each CPU's ring is a power of two the kernel takes, 256 KiB to 4 MiB, and together they
    /// stay within 8 MiB wherever the 256 KiB floor allows.
    #[test]
    fn default_rings_share_out_8_mib() {
        for cpus in [1, 2, 3, 4, 6, 8, 12, 32, 33, 64, 256, 4096] {
            let bytes = default_ring_bytes(cpus);
            assert!(bytes.is_power_of_two(), "{cpus} CPUs: {bytes}");
            assert!(
                (256 << 10..=4 << 20).contains(&bytes),
                "{cpus} CPUs: {bytes}"
            );
            let total = u64::from(bytes) * u64::from(cpus);
            assert!(
                total <= 8 << 20 || bytes == 256 << 10,
                "{cpus} CPUs: {total} bytes in all"
            );
        }
        assert_eq!(default_ring_bytes(2), 4 << 20);
        assert_eq!(default_ring_bytes(0), 4 << 20);
    }
}
