#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{map, uretprobe},
    maps::PerCpuArray,
    programs::RetProbeContext,
};
use pagealloc_common::{CHUNK_FLAG_BITS, CallStats};

#[map(name = "MALLOC_STATS")]
static MALLOC_STATS: PerCpuArray<CallStats> = PerCpuArray::with_max_entries(1, 0);

/// Counts `malloc` returns and the size of the chunk each one handed out.
#[uretprobe]
pub fn malloc_return(ctx: RetProbeContext) -> u32 {
    let ptr: u64 = ctx.ret();
    let Some(stats) = MALLOC_STATS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU slot is ours for the duration of this program.
    let stats = unsafe { &mut *stats };
    if ptr == 0 {
        stats.failures += 1;
        return 0;
    }
    // The chunk header's size word sits just below the user pointer.
    // SAFETY: bpf_probe_read_user checks the address; a fault yields an error, not a crash.
    let size = unsafe { bpf_probe_read_user((ptr - 8) as *const u64) }.unwrap_or(0);
    stats.calls += 1;
    stats.chunk_bytes += size & !CHUNK_FLAG_BITS;
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
