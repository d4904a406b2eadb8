//! Each CPU's probes gather events in a staging area and write them to the CPU's ring in
//! batches ([`pagealloc_common::Staged`]): one ring lock and commit per batch instead of per
//! event. Before each read of the rings the reader runs the `drain` program on every CPU
//! (`BPF_PROG_TEST_RUN` on that CPU): it writes out what the CPU gathered, then a mark
//! ([`pagealloc_common::EventKind::Mark`]) stamped when no probe of the CPU was under way. The reader vouches
//! for a CPU's events up to the last mark it has read from that CPU's ring: a fact of the
//! ring's own order, whatever a probe's preemption or the ring's commits took.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use aya::maps::{MapData, PerCpuArray};
use aya_obj::generated::{BPF_F_TEST_RUN_ON_CPU, bpf_attr, bpf_cmd};
use pagealloc_common::{DRAIN_BUSY, Staged};

/// How often a drain is tried on a CPU whose probe is in the middle of an event (it takes
/// nanoseconds unless the thread was preempted there) before the round goes on without that
/// CPU's mark.
const DRAIN_TRIES: usize = 3;

pub(super) struct Drains {
    program: aya::programs::ProgramFd,
    staged: PerCpuArray<MapData, Staged>,
    /// Per CPU: every event it stamped before this (CLOCK_MONOTONIC, ns) has been read.
    vouched: Vec<u64>,
    /// Per CPU taken offline with events gathered: the first one's stamp, once counted lost.
    stranded: Vec<Option<u64>>,
    /// Per CPU: offline at its last drain (a VM may list hundreds of possible CPUs).
    offline: Vec<bool>,
}

impl Drains {
    /// The drain program and the staging areas; the program is run once on `cpu`, so that a
    /// kernel that will not run it is said at once.
    pub(super) fn new(
        program: aya::programs::ProgramFd,
        staged: PerCpuArray<MapData, Staged>,
        cpu: u32,
    ) -> io::Result<Self> {
        let drains = Drains {
            program,
            staged,
            vouched: Vec::new(),
            stranded: Vec::new(),
            offline: Vec::new(),
        };
        drains.drain(cpu)?;
        Ok(drains)
    }

    /// Has every CPU write out what it gathered, and a mark. Returns how many events were
    /// found stranded on CPUs taken offline (lost: they cannot be read); an offline CPU makes
    /// no more events, so it vouches for everything before `now`.
    pub(super) fn run(&mut self, now: u64) -> io::Result<u64> {
        let areas = self.staged.get(&0, 0).map_err(io::Error::other)?;
        self.vouched.resize(areas.len(), 0);
        self.stranded.resize(areas.len(), None);
        self.offline.resize(areas.len(), false);
        let mut stranded_events = 0;
        for (cpu, area) in areas.iter().enumerate() {
            // Still offline, as far as its idle area tells (one that comes back and writes to
            // its ring before it is drained again makes late events: counted lost).
            if self.offline[cpu] && area.unwritten == 0 && area.count == 0 {
                self.vouched[cpu] = self.vouched[cpu].max(now);
                continue;
            }
            self.offline[cpu] = false;
            match self.drain(cpu as u32) {
                Ok(true) => {}
                Ok(false) => log::debug!("CPU {cpu}: a probe under way, drained next round"),
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    // Offline: what it gathered comes out only if it comes back, too late.
                    let first = area.events[0].time;
                    if area.count > 0 && self.stranded[cpu] != Some(first) {
                        self.stranded[cpu] = Some(first);
                        stranded_events += area.count.min(area.events.len() as u64);
                    }
                    self.vouched[cpu] = self.vouched[cpu].max(now);
                    self.offline[cpu] = true;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(stranded_events)
    }

    /// A mark stamped at `time` was read from `cpu`'s ring.
    pub(super) fn mark_read(&mut self, cpu: usize, time: u64) {
        if let Some(vouched) = self.vouched.get_mut(cpu) {
            *vouched = (*vouched).max(time);
        }
    }

    /// The time before which every CPU's events have been read.
    pub(super) fn vouched_before(&self) -> u64 {
        self.vouched.iter().copied().min().unwrap_or(0)
    }

    /// Whether an event of `cpu`'s stamped at `time` was among those found stranded there (and
    /// counted lost then): it comes out if the CPU comes back, too late to be used.
    pub(super) fn was_stranded(&self, cpu: usize, time: u64) -> bool {
        self.stranded
            .get(cpu)
            .copied()
            .flatten()
            .is_some_and(|first| time >= first)
    }

    /// Runs `drain` on `cpu`: true if it wrote the gathered events out, and its mark.
    fn drain(&self, cpu: u32) -> io::Result<bool> {
        for _ in 0..DRAIN_TRIES {
            if run_on_cpu(self.program.as_fd(), cpu)? != DRAIN_BUSY {
                return Ok(true);
            }
            std::thread::yield_now();
        }
        Ok(false)
    }
}

/// Runs a raw tracepoint program once on `cpu` (`BPF_PROG_TEST_RUN`, which aya does not offer)
/// and returns what it returned.
fn run_on_cpu(program: BorrowedFd, cpu: u32) -> io::Result<u32> {
    // SAFETY: an all-zero bpf_attr is the kernel's "nothing asked".
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `test` is the union's member for this command.
    let test = unsafe { &mut attr.test };
    test.prog_fd = program.as_raw_fd() as u32;
    test.flags = BPF_F_TEST_RUN_ON_CPU;
    test.cpu = cpu;
    // SAFETY: the bpf system call reads and writes `attr`, which outlives it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_PROG_TEST_RUN as libc::c_int,
            &mut attr as *mut bpf_attr,
            size_of::<bpf_attr>() as libc::c_uint,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { attr.test.retval })
}
