//! eBPF probes on the target's C library, scoped to one process (`UProbeScope::OneProcess`:
//! other processes pay nothing), and the stream of allocation events they produce.
//!
//! The probes (see `pagealloc-ebpf`): the results of malloc and calloc; entry and return of
//! realloc and the memalign family (they may call malloc or free themselves: the outer call
//! reports, once); free's entry; and the function with which an exiting thread gives its tcache
//! back (its frees are marked so). Each probe sits on the first instruction of its function the
//! kernel emulates ([`points`]). malloc's and calloc's results are caught with one trap per call
//! where the analysis of their code finds, on each path to a `ret`, an emulated instruction at
//! which the result is final in rax ([`points::result_points`]); else by a return probe (two).
//! Each CPU has a ring buffer of its own, written in batches ([`drain`]); a thread of ours reads
//! them all, waking on a short timer or when a ring fills, and hands the events over in batches
//! in the order of their stamps.
mod drain;
pub mod points;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{ArrayOfMaps, MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::{RawTracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use object::{Object, ObjectSegment, ObjectSymbol, ObjectSymbolTable, RelocationTarget};
use pagealloc_common::{
    Call, EVENTS_MAP, Event, LOST_COUNT, LOST_LAST, LOST_MAP, STAGED_MAP, programs, result_cookie,
};

use crate::error::{Error, Result};
use drain::Drains;
use points::Needs;

/// The compiled programs of `pagealloc-ebpf`, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pagealloc"));

/// What the reader hands over each time it wakes.
#[derive(Debug, Default)]
pub struct Batch {
    /// In the order of their stamps (across batches too), all stamped before `complete_before`.
    pub events: Vec<Event>,
    /// Every event stamped before this (CLOCK_MONOTONIC, ns) is in this batch or an earlier one.
    pub complete_before: u64,
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

/// How long after being stamped an event may still be in the middle of being written to the
/// ring (a probe stamps, then commits): batches vouch only for events older than this.
const COMMIT_SLACK_NS: u64 = 1_000_000;

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
    /// code is sure how ([`points::result_points`]); else (or when false) with return probes.
    pub one_trap: bool,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            ring_bytes: None,
            poll: Duration::from_millis(10),
            one_trap: true,
        }
    }
}

/// Each CPU's ring buffer when not asked for: a CPU's traps make at most a few million events a
/// second, and the reader is woken when an eighth of a ring waits.
fn default_ring_bytes(cpus: u32) -> u32 {
    let share = ((8u32 << 20) / cpus.max(1)).max(1);
    (1 << share.ilog2()).clamp(256 << 10, 4 << 20)
}

/// One probe: which program, on which function, what it needs to see there, and the cookie.
struct Probe {
    program: &'static str,
    function: &'static str,
    needs: Needs,
    call: Call,
}

const ENTRY: Needs = Needs {
    arguments: 2,
    stack: true,
};
const RETURN: Needs = Needs {
    arguments: 0,
    stack: true,
};

/// The exported functions probed. (`aligned_alloc` is `memalign`, `cfree` is `free`: one
/// address each, one probe.)
const PROBES: &[Probe] = &[
    Probe {
        program: programs::ALLOC_RETURN,
        function: "malloc",
        needs: RETURN,
        call: Call::Malloc,
    },
    Probe {
        program: programs::ALLOC_RETURN,
        function: "calloc",
        needs: RETURN,
        call: Call::Calloc,
    },
    Probe {
        program: programs::OUTER_ENTRY,
        function: "realloc",
        needs: ENTRY,
        call: Call::Realloc,
    },
    Probe {
        program: programs::OUTER_RETURN,
        function: "realloc",
        needs: RETURN,
        call: Call::Realloc,
    },
    Probe {
        program: programs::OUTER_ENTRY,
        function: "memalign",
        needs: ENTRY,
        call: Call::Memalign,
    },
    Probe {
        program: programs::OUTER_RETURN,
        function: "memalign",
        needs: RETURN,
        call: Call::Memalign,
    },
    Probe {
        program: programs::OUTER_ENTRY,
        function: "valloc",
        needs: ENTRY,
        call: Call::Valloc,
    },
    Probe {
        program: programs::OUTER_RETURN,
        function: "valloc",
        needs: RETURN,
        call: Call::Valloc,
    },
    Probe {
        program: programs::OUTER_ENTRY,
        function: "pvalloc",
        needs: ENTRY,
        call: Call::Pvalloc,
    },
    Probe {
        program: programs::OUTER_RETURN,
        function: "pvalloc",
        needs: RETURN,
        call: Call::Pvalloc,
    },
    Probe {
        program: programs::OUTER_ENTRY,
        function: "posix_memalign",
        needs: ENTRY,
        call: Call::PosixMemalign,
    },
    Probe {
        program: programs::OUTER_RETURN,
        function: "posix_memalign",
        needs: RETURN,
        call: Call::PosixMemalign,
    },
    Probe {
        program: programs::FREE_ENTRY,
        function: "free",
        needs: Needs {
            arguments: 1,
            stack: true,
        },
        call: Call::Free,
    },
];

/// Where a probe goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub program: &'static str,
    pub function: String,
    /// Bytes from the function's start.
    pub offset: u64,
    /// Where that is in the library's file (what uprobes are attached by).
    pub file_offset: u64,
    /// Whether the instruction there is emulated (one trap) or single-stepped.
    pub emulated: bool,
    /// The attach cookie: the call the program reports.
    pub call: Option<Call>,
    /// A return probe (the kernel takes the return address where it sits).
    pub returns: bool,
    /// `alloc_result`: how far below its value at the function's entry the stack pointer is
    /// there, in bytes (the program works out from it where the call returns to); else 0.
    pub depth: u64,
}

impl Placed {
    /// What the program is attached with.
    pub fn cookie(&self) -> Option<u64> {
        let call = self.call?;
        Some(if self.program == programs::ALLOC_RESULT {
            result_cookie(call, self.depth)
        } else {
            call as u64
        })
    }
}

/// glibc's internal functions probed, by their link-time addresses (from the debug info).
#[derive(Clone, Debug, Default)]
pub struct Internals {
    /// `__malloc_arena_thread_freeres`: an exiting thread gives its tcache back in it.
    pub thread_freeres: Option<u64>,
    /// `_int_malloc`, and the code of `tcache_init` that calls it for a new thread's tcache.
    pub int_malloc: Option<u64>,
    pub tcache_init: Vec<(u64, u64)>,
}

/// Where each probe goes in `libc` (see [`points`]), malloc's and calloc's results caught with
/// one trap per call where the analysis is sure how.
pub fn plan(libc: &Path, internals: &Internals) -> Result<Vec<Placed>> {
    plan_with(libc, internals, true)
}

/// [`plan`], with `one_trap` false: return probes for malloc's and calloc's results.
pub fn plan_with(libc: &Path, internals: &Internals, one_trap: bool) -> Result<Vec<Placed>> {
    let code = Code::read(libc)?;
    let file_offset = |address: u64, function: &str| {
        code.file_offset(address).ok_or_else(|| {
            ebpf_error(
                &format!("placing a probe on {function}"),
                "its address is not in a loaded segment of the library",
            )
        })
    };
    let place = |program: &'static str,
                 function: &str,
                 address: u64,
                 needs: Needs,
                 call: Option<Call>|
     -> Result<Placed> {
        let (offset, emulated) = points::placement(code.at(address), address, needs);
        let file_offset = file_offset(address + offset, function)?;
        Ok(Placed {
            program,
            function: function.to_string(),
            offset,
            file_offset,
            emulated,
            call,
            returns: matches!(
                program,
                programs::ALLOC_RETURN | programs::OUTER_RETURN | programs::FLUSH_RETURN
            ),
            depth: 0,
        })
    };
    let mut placed = Vec::new();
    for probe in PROBES {
        let (address, size) = code.symbol(probe.function).ok_or_else(|| {
            ebpf_error(
                &format!("placing a probe on {}", probe.function),
                format!("{} does not export it", libc.display()),
            )
        })?;
        if one_trap && probe.program == programs::ALLOC_RETURN {
            let returns_first_argument = |at| code.returns_first_argument(at);
            match points::result_points(&|at| code.at(at), &returns_first_argument, address, size) {
                Ok(points) => {
                    for point in points {
                        placed.push(Placed {
                            program: programs::ALLOC_RESULT,
                            function: probe.function.to_string(),
                            offset: point.offset,
                            file_offset: file_offset(address + point.offset, probe.function)?,
                            emulated: true,
                            call: Some(probe.call),
                            returns: false,
                            depth: point.depth,
                        });
                    }
                    continue;
                }
                Err(why) => log::info!(
                    "{}'s result caught by a return probe (two traps a call): {why}",
                    probe.function
                ),
            }
        }
        placed.push(place(
            probe.program,
            probe.function,
            address,
            probe.needs,
            Some(probe.call),
        )?);
    }
    // After each call of tcache_init's to _int_malloc: a new thread's tcache, in rax.
    if let Some(int_malloc) = internals.int_malloc {
        for &(start, end) in &internals.tcache_init {
            let bytes = code.at(start);
            let bytes = &bytes[..bytes.len().min(end.saturating_sub(start) as usize)];
            for after in points::after_calls_to(bytes, start, int_malloc) {
                let file_offset = file_offset(after, "tcache_init")?;
                placed.push(Placed {
                    program: programs::TCACHE_ALLOC,
                    function: "tcache_init".into(),
                    offset: after - start,
                    file_offset,
                    emulated: false,
                    call: Some(Call::TcacheInit),
                    returns: false,
                    depth: 0,
                });
            }
        }
    }
    if let Some(flush) = internals.thread_freeres {
        let function = "__malloc_arena_thread_freeres";
        placed.push(place(programs::FLUSH_ENTRY, function, flush, RETURN, None)?);
        placed.push(place(
            programs::FLUSH_RETURN,
            function,
            flush,
            RETURN,
            None,
        )?);
    }
    Ok(placed)
}

/// The probes on one process's allocator, while this lives.
pub struct Tracer {
    ebpf: Ebpf,
    /// Events the reader found it could not hand over in order (see [`ReaderLosses`]).
    reader_losses: Arc<ReaderLosses>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    pub placed: Vec<Placed>,
}

impl Tracer {
    /// Loads the programs and attaches them to `libc` (a path this process can open: through
    /// `/proc/PID/root`) for process `pid` only, with the probes on glibc's `internals` the
    /// debug info could locate. Batches of events
    /// arrive on the receiver returned, one each time the reader wakes (empty ones too).
    pub fn attach(
        pid: i32,
        libc: &Path,
        internals: &Internals,
        options: TraceOptions,
    ) -> Result<(Tracer, Receiver<Batch>)> {
        let pid = u32::try_from(pid)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or(Error::NoSuchProcess { pid })?;
        let cpus_error = |(file, e)| Error::io(format!("reading {file}"), e);
        let possible = aya::util::nr_cpus().map_err(cpus_error)? as u32;
        let online = aya::util::online_cpus().map_err(cpus_error)?;
        let ring_bytes = options
            .ring_bytes
            .unwrap_or(default_ring_bytes(online.len() as u32));
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, possible)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                ebpf_error(
                    "loading the eBPF programs",
                    format!(
                        "{e} (this needs root, or CAP_BPF and CAP_PERFMON, and CAP_SYS_ADMIN to \
                         attach uprobes on kernels since 6.16)"
                    ),
                )
            })?;
        for name in [
            programs::TCACHE_ALLOC,
            programs::ALLOC_RETURN,
            programs::ALLOC_RESULT,
            programs::OUTER_ENTRY,
            programs::OUTER_RETURN,
            programs::FREE_ENTRY,
            programs::FLUSH_ENTRY,
            programs::FLUSH_RETURN,
        ] {
            program::<UProbe>(&mut ebpf, name)?
                .load()
                .map_err(|e| ebpf_error(&format!("loading {name}"), e))?;
        }
        // The rings in place before the first probe fires: an event with nowhere to go counts
        // as lost.
        let rings = rings(&mut ebpf, possible, &online, ring_bytes)?;
        let wake_ups = wake_ups(&rings)?;
        let drains = drains(&mut ebpf, online.first().copied().unwrap_or(0))?;
        let placed = plan_with(libc, internals, options.one_trap)?;
        for p in &placed {
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(p.file_offset),
                cookie: p.cookie(),
            };
            program::<UProbe>(&mut ebpf, p.program)?
                .attach(point, libc, UProbeScope::OneProcess(pid))
                .map_err(|e| {
                    ebpf_error(
                        &format!("attaching {} to {}+{}", p.program, p.function, p.offset),
                        e,
                    )
                })?;
            log::debug!(
                "probe {} on {}+{} ({})",
                p.program,
                p.function,
                p.offset,
                if p.emulated {
                    "emulated"
                } else {
                    "single-stepped"
                }
            );
        }
        let (send, receive) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let reader_losses = Arc::new(ReaderLosses::default());
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
                .map_err(|e| Error::io("starting the event reader", e))?
        };
        Ok((
            Tracer {
                ebpf,
                reader_losses,
                stop,
                reader: Some(reader),
                placed,
            },
            receive,
        ))
    }

    /// Events lost so far (the ring buffers had no room for them, or the reader could not hand
    /// them over in their place: [`ReaderLosses`]), and when the last of them was (the
    /// probes' clock, 0 if none).
    pub fn lost(&self) -> Result<Losses> {
        let map = self
            .ebpf
            .map(LOST_MAP)
            .ok_or_else(|| ebpf_error(LOST_MAP, "missing from the eBPF object"))?;
        let lost = PerCpuArray::<_, u64>::try_from(map).map_err(|e| ebpf_error(LOST_MAP, e))?;
        let per_cpu = |index| {
            lost.get(&index, 0)
                .map_err(|e| ebpf_error(&format!("reading {LOST_MAP}"), e))
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

/// Events the probes wrote but the reader could not hand over in their place: stranded on a
/// CPU taken offline, or arriving after a batch that vouched for their time (their probe
/// preempted for longer than [`COMMIT_SLACK_NS`]). They count as lost.
#[derive(Debug, Default)]
struct ReaderLosses {
    count: AtomicU64,
    /// When the last was found (CLOCK_MONOTONIC, ns).
    last: AtomicU64,
}

impl ReaderLosses {
    fn add(&self, events: u64) {
        if events > 0 {
            // The time first: whoever sees the count grow sees when, or later.
            self.last.store(monotonic_now(), Ordering::Relaxed);
            self.count.fetch_add(events, Ordering::Release);
        }
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
    }
}

/// A ring buffer for each possible CPU, put in the programs' array of rings: `bytes` for the
/// online ones, a page for the others (a VM may list far more CPUs than it has; one brought
/// online later still reports, and what its small ring loses is counted).
fn rings(
    ebpf: &mut Ebpf,
    possible: u32,
    online: &[u32],
    bytes: u32,
) -> Result<Vec<RingBuf<MapData>>> {
    let mut array: ArrayOfMaps<_> = ebpf
        .map_mut(EVENTS_MAP)
        .ok_or_else(|| ebpf_error(EVENTS_MAP, "missing from the eBPF object"))?
        .try_into()
        .map_err(|e| ebpf_error(EVENTS_MAP, e))?;
    (0..possible)
        .map(|cpu| {
            let size = if online.contains(&cpu) {
                bytes
            } else {
                procfs::page_size() as u32
            };
            let definition =
                aya_obj::Map::new_from_params(aya::maps::MapType::RingBuf as u32, 0, 0, size, 0);
            let ring = MapData::create(definition, &format!("events{cpu}"), None)
                .map_err(|e| ebpf_error(&format!("making CPU {cpu}'s ring buffer"), e))?;
            array
                .set(cpu, &ring, 0)
                .map_err(|e| ebpf_error(&format!("putting CPU {cpu}'s ring buffer in place"), e))?;
            RingBuf::try_from(aya::maps::Map::RingBuf(ring)).map_err(|e| ebpf_error(EVENTS_MAP, e))
        })
        .collect()
}

/// Wakes the reader when a program forces it (a ring an eighth full). Edge-triggered: a ring
/// with events in it does not wake the reader by itself, or it would wake for nearly every event
/// of a busy process.
fn wake_ups(rings: &[RingBuf<MapData>]) -> Result<Epoll> {
    let failed = |e: nix::Error| Error::io("waiting for the ring buffers", e.into());
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(failed)?;
    for ring in rings {
        let wanted = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0);
        epoll.add(ring, wanted).map_err(failed)?;
    }
    Ok(epoll)
}

/// The drain program, loaded (run through `BPF_PROG_TEST_RUN`, never attached), and the staging
/// areas.
fn drains(ebpf: &mut Ebpf, cpu: u32) -> Result<Drains> {
    let program: &mut RawTracePoint = program(ebpf, programs::DRAIN)?;
    program
        .load()
        .map_err(|e| ebpf_error(&format!("loading {}", programs::DRAIN), e))?;
    let fd = program
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .map_err(|e| ebpf_error(programs::DRAIN, e))?;
    let staged = ebpf
        .take_map(STAGED_MAP)
        .ok_or_else(|| ebpf_error(STAGED_MAP, "missing from the eBPF object"))?
        .try_into()
        .map_err(|e| ebpf_error(STAGED_MAP, e))?;
    Drains::new(fd, staged, cpu)
        .map_err(|e| ebpf_error(&format!("running {} on CPU {cpu}", programs::DRAIN), e))
}

/// The thread that reads the ring buffers.
struct Reader {
    rings: Vec<RingBuf<MapData>>,
    wake_ups: Epoll,
    drains: Drains,
    losses: Arc<ReaderLosses>,
}

impl Reader {
    /// Reads the ring buffers until `stop`: waits for a wake-up or `poll`, has every CPU write
    /// out what it gathered, then takes everything there is. Each ring is in its CPU's order
    /// (but for an event written past a staging area another probe held); the events of all
    /// are handed over in the order of their stamps, as far as every CPU vouches for them (the
    /// rest wait for the next round).
    fn run(mut self, send: mpsc::Sender<Batch>, stop: &AtomicBool, poll: Duration) {
        let timeout = EpollTimeout::try_from(poll).unwrap_or(EpollTimeout::MAX);
        let mut woken = [EpollEvent::empty(); 8];
        let mut waiting: Vec<Event> = Vec::new();
        let mut handed_before = 0;
        while !stop.load(Ordering::Relaxed) {
            let _ = self.wake_ups.wait(&mut woken, timeout);
            let (emptied, stranded) = match self.drains.run(monotonic_now()) {
                Ok(drained) => drained,
                Err(e) => {
                    // Events would wait unseen: stop, and live mode says the reader stopped.
                    log::error!("draining the probes' staging areas: {e}");
                    return;
                }
            };
            self.losses.add(stranded);
            let complete_before = emptied.saturating_sub(COMMIT_SLACK_NS).max(handed_before);
            let mut events = std::mem::take(&mut waiting);
            let mut late = 0;
            for (cpu, ring) in self.rings.iter_mut().enumerate() {
                while let Some(record) = ring.next() {
                    for bytes in record.chunks_exact(size_of::<Event>()) {
                        // SAFETY: the programs write whole `Event`s; the copy is unaligned-safe.
                        let event =
                            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
                        if event.time >= handed_before {
                            events.push(event);
                        } else if !self.drains.was_stranded(cpu, event.time) {
                            late += 1;
                        }
                    }
                }
            }
            if late > 0 {
                log::debug!("{late} events arrived after their time was vouched for: lost");
            }
            self.losses.add(late);
            // Runs already in order, merged (a stable sort finds them).
            events.sort_by_key(|event| event.time);
            let vouched = events.partition_point(|event| event.time < complete_before);
            waiting = events.split_off(vouched);
            handed_before = complete_before;
            let batch = Batch {
                events,
                complete_before,
            };
            if send.send(batch).is_err() {
                return;
            }
        }
    }
}

/// The program `name`, as the kind `P` it is.
fn program<'e, P>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut P>
where
    &'e mut P: TryFrom<&'e mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| ebpf_error(name, "missing from the eBPF object"))?
        .try_into()
        .map_err(|e| ebpf_error(name, e))
}

/// Functions that return their first argument (C11 7.24.2, 7.24.6.1): a tail call of one
/// returns what the caller passed it.
const RETURN_FIRST_ARGUMENT: [&str; 3] = ["memset", "memcpy", "memmove"];

/// The library's code: its exported functions and its loaded segments.
struct Code {
    path: PathBuf,
    data: Vec<u8>,
    /// (name, address, size) of each exported symbol.
    symbols: Vec<(String, u64, u64)>,
    /// (address, file offset, size) of each loaded segment.
    segments: Vec<(u64, u64, u64)>,
}

impl Code {
    fn read(path: &Path) -> Result<Code> {
        let data =
            std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let file = object::File::parse(&*data)
            .map_err(|e| ebpf_error(&format!("reading {}", path.display()), e))?;
        let symbols = file
            .dynamic_symbols()
            .filter(|s| !s.is_undefined() && s.address() != 0)
            .filter_map(|s| Some((s.name().ok()?.to_string(), s.address(), s.size())))
            .collect();
        let segments = file
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (s.address(), offset, size)
            })
            .collect();
        Ok(Code {
            path: path.to_path_buf(),
            data,
            symbols,
            segments,
        })
    }

    /// The address and size of the exported symbol `name`.
    fn symbol(&self, name: &str) -> Option<(u64, u64)> {
        self.symbols
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|&(_, address, size)| (address, size))
    }

    /// Whether the function at `address`, or the one its PLT entry there jumps to, returns its
    /// first argument.
    fn returns_first_argument(&self, address: u64) -> bool {
        let named = |at: u64| {
            self.symbols
                .iter()
                .any(|(name, a, _)| *a == at && RETURN_FIRST_ARGUMENT.contains(&name.as_str()))
        };
        if named(address) {
            return true;
        }
        let Some(slot) = points::jump_slot(self.at(address), address) else {
            return false;
        };
        let Ok(file) = object::File::parse(&*self.data) else {
            return false;
        };
        let symbols = file.dynamic_symbol_table();
        let mut filling = file.dynamic_relocations().into_iter().flatten();
        filling.any(|(at, relocation)| {
            at == slot
                && match relocation.target() {
                    RelocationTarget::Symbol(index) => symbols
                        .as_ref()
                        .and_then(|table| table.symbol_by_index(index).ok())
                        .and_then(|symbol| symbol.name().ok())
                        .is_some_and(|name| RETURN_FIRST_ARGUMENT.contains(&name)),
                    // RELATIVE: that address; IRELATIVE: a variant of the IFUNC there.
                    RelocationTarget::Absolute => named(relocation.addend() as u64),
                    _ => false,
                }
        })
    }

    fn file_offset(&self, address: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(start, _, size)| address >= start && address < start + size)
            .map(|&(start, offset, _)| address - start + offset)
    }

    /// The code from `address` to the end of its segment (empty if it is not in the file).
    fn at(&self, address: u64) -> &[u8] {
        self.segments
            .iter()
            .find(|&&(start, _, size)| address >= start && address < start + size)
            .and_then(|&(start, offset, size)| {
                let from = (address - start + offset) as usize;
                self.data.get(from..(offset + size) as usize)
            })
            .unwrap_or_else(|| {
                log::debug!("{:#x} is not in {}", address, self.path.display());
                &[]
            })
    }
}

fn ebpf_error(what: &str, reason: impl std::fmt::Display) -> Error {
    Error::Ebpf {
        what: what.to_string(),
        reason: reason.to_string(),
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
