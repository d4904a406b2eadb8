//! eBPF probes on the target's C library, scoped to one process.
use std::num::NonZeroU32;
use std::path::Path;

use aya::Ebpf;
use aya::maps::PerCpuArray;
use aya::programs::UProbe;
use aya::programs::uprobe::UProbeScope;
use pagealloc_common::{CallStats, MALLOC_RETURN_PROGRAM, MALLOC_STATS_MAP};

use crate::error::{Error, Result};

/// The compiled programs of `pagealloc-ebpf`, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pagealloc"));

/// Counts `malloc` returns of one process (all its threads) in the kernel.
pub struct MallocCounter {
    ebpf: Ebpf,
}

impl MallocCounter {
    /// Loads the programs and attaches a uretprobe to `malloc` in `libc`, for `pid` only.
    pub fn attach(pid: i32, libc: &Path) -> Result<Self> {
        let pid = u32::try_from(pid)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or(Error::NoSuchProcess { pid })?;
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| {
            ebpf_error(
                "loading the eBPF programs",
                format!("{e} (this needs root, or CAP_BPF and CAP_PERFMON)"),
            )
        })?;
        let program: &mut UProbe = ebpf
            .program_mut(MALLOC_RETURN_PROGRAM)
            .ok_or_else(|| ebpf_error(MALLOC_RETURN_PROGRAM, "missing from the eBPF object"))?
            .try_into()
            .map_err(|e| ebpf_error(MALLOC_RETURN_PROGRAM, e))?;
        program
            .load()
            .map_err(|e| ebpf_error(&format!("loading {MALLOC_RETURN_PROGRAM}"), e))?;
        program
            .attach("malloc", libc, UProbeScope::OneProcess(pid))
            .map_err(|e| ebpf_error(&format!("attaching to malloc in {}", libc.display()), e))?;
        Ok(MallocCounter { ebpf })
    }

    /// The totals so far, summed over CPUs.
    pub fn stats(&self) -> Result<CallStats> {
        let map = self
            .ebpf
            .map(MALLOC_STATS_MAP)
            .ok_or_else(|| ebpf_error(MALLOC_STATS_MAP, "missing from the eBPF object"))?;
        let array = PerCpuArray::<_, CallStats>::try_from(map)
            .map_err(|e| ebpf_error(MALLOC_STATS_MAP, e))?;
        let per_cpu = array
            .get(&0, 0)
            .map_err(|e| ebpf_error(&format!("reading {MALLOC_STATS_MAP}"), e))?;
        let mut total = CallStats::default();
        for stats in per_cpu.iter() {
            total.add(stats);
        }
        Ok(total)
    }
}

fn ebpf_error(what: &str, reason: impl std::fmt::Display) -> Error {
    Error::Ebpf {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}
