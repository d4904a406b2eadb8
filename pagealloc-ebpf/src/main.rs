//! pagealloc's probes on glibc's allocation functions, attached to one process. Each allocation
//! and free becomes a 32-byte [`Event`], gathered in the staging area of the CPU the probe ran
//! on and written to that CPU's ring buffer in batches (or at once if another probe of the CPU
//! holds the area; user space has a CPU's batch written early with [`drain`], which marks in
//! the ring how far the events written so far go). Calls
//! that glibc makes on its own from inside realloc or the memalign family (realloc(NULL, n) calls
//! malloc, ...) are not reported twice: the outer call reports what happened, once.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::EbpfContext;
use aya_ebpf::bindings::pt_regs;
use aya_ebpf::bindings::{
    BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
};
use aya_ebpf::btf_maps::{ArrayOfMaps, RingBuf};
use aya_ebpf::helpers::generated::bpf_probe_read_user as probe_read_user_raw;
use aya_ebpf::helpers::{
    bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_smp_processor_id,
    bpf_ktime_get_ns, bpf_probe_read_user, bpf_ringbuf_output, bpf_ringbuf_query,
};
use aya_ebpf::macros::{btf_map, map, raw_tracepoint, uprobe, uretprobe};
use aya_ebpf::maps::{Array, HashMap, PerCpuArray};
use aya_ebpf::programs::{ProbeContext, RawTracePointContext, RetProbeContext};
use pagealloc_common::{
    BATCH_EVENTS, CHUNK_FLAG_BITS, Call, ChunkWords, DRAIN_BUSY, Event, EventKind, IS_MMAPPED,
    LN2_Q16, LOST_COUNT, LOST_LAST, MAX_STACK_BYTES, NO_PAGES, Pending, REMAINDERS, SAMPLED_BYTES,
    SAMPLED_PAGE, STACK_HEADER, STACK_MISSED, Sampling, StackRecord, Staged, cookie_call,
    cookie_depth, page_sampled,
};

/// One ring buffer per CPU, put in place (and sized) by user space at load time: threads on
/// different CPUs never share a lock or a cache line of the rings.
#[btf_map]
static EVENTS: ArrayOfMaps<RingBuf<Event, 4096>, 1> = ArrayOfMaps::new();

/// Per CPU, the events gathered for its ring's next record.
#[map(name = "STAGED")]
static STAGED: PerCpuArray<Staged> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, the bytes left until the byte sampler's next sample (user space seeds them).
#[map(name = "COUNTDOWN")]
static COUNTDOWN: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// One record per CPU (user space sizes it to the possible CPUs), where a sampled allocation's
/// record is put together before it goes to the ring.
#[map(name = "SCRATCH")]
static SCRATCH: Array<StackRecord> = Array::with_max_entries(1, 0);

/// Per CPU, non-zero while a program of the CPU puts a record together in its `SCRATCH`.
#[map(name = "SCRATCH_BUSY")]
static SCRATCH_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "LOST")]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_LAST + 1, 0);

/// Outer calls under way, by thread.
#[map(name = "PENDING")]
static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(1 << 16, 0);

/// Threads giving their tcache back as they exit.
#[map(name = "FLUSHING")]
static FLUSHING: HashMap<u32, u8> = HashMap::with_max_entries(1 << 16, 0);

/// How many entries `PENDING` ([`OUTER_CALLS`]) and `FLUSHING` ([`FLUSHING_THREADS`]) hold, at
/// least (an entry replaced counts twice, which only costs look-ups): while one is 0 (a program
/// that neither reallocates nor ends threads just now), malloc's and free's probes skip that
/// hash look-up, which costs more than the rest of their work. A thread always sees the count
/// of its own entry (its own earlier write); other threads' only make a look-up find nothing.
#[map(name = "GATES")]
static GATES: Array<u64> = Array::with_max_entries(2, 0);
const OUTER_CALLS: u32 = 0;
const FLUSHING_THREADS: u32 = 1;

fn any(gate: u32) -> bool {
    // SAFETY: a word of the map value, read once.
    GATES
        .get_ptr(gate)
        .is_none_or(|count| unsafe { core::ptr::read_volatile(count) } != 0)
}

/// Adds `by` (wrapping: -1 is `u64::MAX`) to a gate's count.
fn count(gate: u32, by: u64) {
    if let Some(count) = GATES.get_ptr_mut(gate) {
        add(count, by);
    }
}

/// Adds `by` to a word of a map value atomically (a program preempted while adding, or one
/// on another CPU, must not lose another's addition).
fn add(word: *mut u64, by: u64) {
    // SAFETY: the word is in a map value the caller's look-up vouched for.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            word, by,
        )
    };
}

fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

fn regs(ctx: &impl EbpfContext) -> &pt_regs {
    // SAFETY: the context of a uprobe is the thread's saved registers.
    unsafe { &*(ctx.as_ptr() as *const pt_regs) }
}

fn stack(ctx: &impl EbpfContext) -> u64 {
    regs(ctx).rsp
}

/// Where a chunk's size and prev_size words are below its user pointer (8 and 16 on LP64): set
/// by user space at load time from glibc's DWARF layout (its name is
/// [`pagealloc_common::CHUNK_WORDS`]).
#[unsafe(no_mangle)]
static CHUNK_WORDS: ChunkWords = ChunkWords {
    size: 0,
    prev_size: 0,
};

/// What an event says of the chunk whose user pointer is `pointer`: (pointer, size word), the
/// size word 0 if unreadable. An mmapped chunk may have been moved up its mapping by memalign
/// (its `prev_size` says how far): it is told as its whole mapping, as glibc counts it.
fn chunk(pointer: u64) -> (u64, u64) {
    // SAFETY: a global of the program's; volatile, or the compiler would fold in its value
    // before user space set it.
    let words = unsafe { core::ptr::read_volatile(&CHUNK_WORDS) };
    // SAFETY: bpf_probe_read_user checks the address; a fault is an error, not a crash.
    let size = unsafe { bpf_probe_read_user((pointer - words.size) as *const u64) }.unwrap_or(0);
    if size & IS_MMAPPED == 0 {
        return (pointer, size);
    }
    // SAFETY: as above.
    let offset =
        unsafe { bpf_probe_read_user((pointer - words.prev_size) as *const u64) }.unwrap_or(0);
    (pointer - offset, size + offset)
}

/// Whether a call of this thread whose probe sees stack pointer `stack` is inside an outer call.
/// An outer call may jump to malloc or free (a tail call) rather than call it: their probes then
/// see the outer call's own stack, at entry, or one word above it at return; `slack` says how far
/// above the outer call's entry stack still counts as inside.
fn nested(tid: u32, stack: u64, slack: u64) -> bool {
    // SAFETY: the value is copied out at once.
    any(OUTER_CALLS)
        && unsafe { PENDING.get(&tid) }.is_some_and(|pending| stack <= pending.stack + slack)
}

/// What the probes sample: set by user space at load time (its name is
/// [`pagealloc_common::SAMPLING`]).
#[unsafe(no_mangle)]
static SAMPLING: Sampling = Sampling {
    mean_bytes: 0,
    page_shift: NO_PAGES,
    page_salt: 0,
    page_bits: 12,
    stack_bytes: 0,
    remainders: [0; REMAINDERS],
};

fn sampling() -> &'static Sampling {
    // SAFETY: a global of the program's, read through a volatile pointer (the compiler would
    // fold in its value before user space set it).
    unsafe { &*core::ptr::read_volatile(&&raw const SAMPLING) }
}

/// Whether (and why: [`SAMPLED_BYTES`], [`SAMPLED_PAGE`]) the allocation of the chunk told
/// by `(pointer, size word)` is sampled.
fn sample_of((pointer, size): (u64, u64)) -> u16 {
    let sampling = sampling();
    // SAFETY: fields of the global, read once each.
    let (mean, shift) = unsafe {
        (
            core::ptr::read_volatile(&sampling.mean_bytes),
            core::ptr::read_volatile(&sampling.page_shift),
        )
    };
    let bytes = size & !CHUNK_FLAG_BITS;
    let mut sampled = 0;
    if mean == 1 || (mean > 1 && byte_sample(bytes, mean, sampling)) {
        sampled |= SAMPLED_BYTES;
    }
    if shift < NO_PAGES && size & IS_MMAPPED == 0 && bytes > 0 {
        // The chunk's first and last pages: a page it covers whole holds no free bytes.
        // SAFETY: as above.
        let (salt, bits, header) = unsafe {
            (
                core::ptr::read_volatile(&sampling.page_salt),
                core::ptr::read_volatile(&sampling.page_bits),
                core::ptr::read_volatile(&CHUNK_WORDS.prev_size),
            )
        };
        let chunk = pointer - header;
        let (first, last) = (chunk >> bits, (chunk + bytes - 1) >> bits);
        if page_sampled(first, salt, shift) || page_sampled(last, salt, shift) {
            sampled |= SAMPLED_PAGE;
        }
    }
    sampled
}

/// The byte sampler: `bytes` more allocated on this CPU; true if a sample point fell in them.
/// Its gaps are exponential, so the points form a Poisson process over the bytes, whichever
/// thread allocates them: each allocation is picked with probability 1 − e^(−bytes/mean).
fn byte_sample(bytes: u64, mean: u64, sampling: &Sampling) -> bool {
    let Some(countdown) = COUNTDOWN.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a word of this CPU's map value. Not atomic (the programs are built for eBPF's
    // first instruction set, without fetching atomics): a probe preempting this one between
    // the read and the write has its bytes counted or not, which only shifts a gap.
    let before = unsafe { core::ptr::read_volatile(countdown) };
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(countdown, before - bytes as i64) };
    if before <= 0 || before > bytes as i64 {
        return false;
    }
    // The points past this allocation are a fresh process (the exponential has no memory).
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(countdown, gap(mean, sampling) as i64) };
    true
}

/// An exponential gap of mean `mean`: k·ln 2 (k geometric) plus a remainder quantile.
fn gap(mean: u64, sampling: &Sampling) -> u64 {
    // SAFETY: helpers without arguments.
    let (halvings, pick) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    let k = trailing_zeros(halvings);
    let remainder = sampling
        .remainders
        .get(pick as usize % REMAINDERS)
        // SAFETY: an element of the global, read once.
        .map_or(0, |r| u64::from(unsafe { core::ptr::read_volatile(r) }));
    (mean.min(1 << 40) * (k * LN2_Q16 + remainder)) >> 16
}

/// The trailing zero bits of `word` (32 for 0), without a loop.
fn trailing_zeros(word: u32) -> u64 {
    if word == 0 {
        return 32;
    }
    let (mut word, mut zeros) = (word, 0);
    for shift in [16, 8, 4, 2, 1] {
        if word & ((1 << shift) - 1) == 0 {
            word >>= shift;
            zeros += shift;
        }
    }
    zeros
}

/// An allocation the program made, told with its stack if it is sampled (`regs`: where the
/// probe stopped the thread).
fn emit_alloc(regs: &pt_regs, call: u8, chunk: (u64, u64), tid: u32) {
    let sampled = sample_of(chunk);
    let stack = (sampled != 0).then_some(regs);
    record(
        unstamped(EventKind::Alloc, call, chunk, tid, sampled),
        stack,
    );
}

/// Puts `event`, the registers and the top of the stack together in this CPU's record and
/// writes it to the ring (a failure counts the event lost). False if the record was taken.
fn write_with_stack(regs: &pt_regs, event: Event) -> bool {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let (Some(busy), Some(record)) = (SCRATCH_BUSY.get_ptr_mut(0), SCRATCH.get_ptr_mut(cpu)) else {
        return false;
    };
    // SAFETY: an atomic exchange on a word of this CPU's map value.
    let was = unsafe {
        core::intrinsics::atomic_xchg::<u64, { core::intrinsics::AtomicOrdering::Acquire }>(busy, 1)
    };
    if was != 0 {
        return false;
    }
    // SAFETY: this CPU's record, held through `busy`.
    let record = unsafe { &mut *record };
    record.event = event;
    record.ip = regs.rip;
    record.sp = regs.rsp;
    record.bp = regs.rbp;
    let copied = copy_stack(regs.rsp, &mut record.stack);
    record.stack_len = copied;
    let written = match this_cpu_ring() {
        Some(ring) => {
            let bytes = STACK_HEADER as u64 + copied;
            // SAFETY: the first `bytes` of the record; the ring is a map the lookup vouched for.
            bytes <= size_of::<StackRecord>() as u64
                && unsafe {
                    bpf_ringbuf_output(
                        ring_pointer(ring),
                        core::ptr::from_mut(record).cast(),
                        bytes,
                        wake_flags(ring),
                    )
                } == 0
        }
        None => false,
    };
    if !written {
        count_lost(1);
    }
    // SAFETY: a word of the map value.
    unsafe { core::ptr::write_volatile(busy, 0) };
    true
}

const PAGE: u64 = 4096;

/// Copies the stack from `sp` up into `stack`, a page at a time (the first up to the end of
/// `sp`'s page), until [`Sampling::stack_bytes`] or the first page that cannot be read (above
/// the top of the stack): how many bytes were copied.
fn copy_stack(sp: u64, stack: &mut [u8; MAX_STACK_BYTES]) -> u64 {
    // SAFETY: a field of the global, read once.
    let limit =
        unsafe { core::ptr::read_volatile(&sampling().stack_bytes) }.min(MAX_STACK_BYTES as u64);
    let mut copied: u64 = 0;
    let mut want = PAGE - (sp & (PAGE - 1));
    for _ in 0..(MAX_STACK_BYTES as u64 / PAGE + 1) {
        want = want.min(limit.saturating_sub(copied));
        if want == 0 || want > PAGE || copied > MAX_STACK_BYTES as u64 - want {
            break;
        }
        // SAFETY: `copied + want` stays within `stack` (checked above); the helper checks the
        // user address, and fails on a fault.
        let failed = unsafe {
            probe_read_user_raw(
                stack.as_mut_ptr().add(copied as usize).cast(),
                want as u32,
                (sp + copied) as *const core::ffi::c_void,
            )
        } != 0;
        if failed {
            break;
        }
        copied += want;
        want = PAGE;
    }
    copied
}

/// At a return the stack is one word (the return address) above what it was at entry.
const AT_RETURN: u64 = 8;
const AT_ENTRY: u64 = 0;

fn emit(kind: EventKind, call: u8, chunk: (u64, u64), tid: u32) {
    record(unstamped(kind, call, chunk, tid, 0), None);
}

/// An event before its stamp (a program's function takes at most five arguments).
fn unstamped(
    kind: EventKind,
    call: u8,
    (pointer, size): (u64, u64),
    tid: u32,
    sampled: u16,
) -> Event {
    Event {
        time: 0,
        pointer,
        size,
        tid,
        kind: kind as u8,
        call,
        sampled,
    }
}

/// Stamps and writes `event`: with `stack` (a sampled allocation's registers), as its own
/// record with the top of the stack; else, or if the CPU's record is taken (by a probe this one
/// preempted), to the staging area, `STACK_MISSED` added to a sampled one.
fn record(event: Event, stack: Option<&pt_regs>) {
    let Some(staged) = STAGED.get_ptr_mut(0) else {
        return count_lost(1);
    };
    // SAFETY: a word of this CPU's map value, changed atomically: programs of this CPU that
    // preempt this one add and take away too.
    let unwritten = unsafe { &raw mut (*staged).unwritten };
    add(unwritten, 1);
    // Stamped after the count: a reader that finds the CPU with no probe under way and nothing
    // gathered has every event stamped before it looked in the ring.
    let event = Event {
        time: now(),
        ..event
    };
    if !stack.is_some_and(|regs| write_with_stack(regs, event)) {
        let sampled = event.sampled;
        let event = Event {
            sampled: if sampled == 0 {
                0
            } else {
                sampled | STACK_MISSED
            },
            ..event
        };
        // SAFETY: this CPU's value; `take_area` keeps other programs of the CPU out of it.
        match take_area(unsafe { &mut *staged }) {
            Some(staged) => {
                gather(staged, event);
                release(staged);
            }
            None => write_now(&event),
        }
    }
    add(unwritten, u64::MAX);
}

/// Adds `event` to the staging area, and writes the area out once it holds a batch.
fn gather(staged: &mut Staged, event: Event) {
    // Volatile writes: the compiler keeps them before `release`'s. Only this CPU's programs
    // come here, so no fence is needed beyond that.
    match staged.events.get_mut(staged.count as usize) {
        Some(slot) => {
            // SAFETY: places in the map value.
            unsafe {
                core::ptr::write_volatile(slot, event);
                core::ptr::write_volatile(&mut staged.count, staged.count + 1);
            }
        }
        None => count_lost(1),
    }
    if staged.count as usize >= BATCH_EVENTS {
        flush(staged);
    }
}

fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// This CPU's staging area, taken, if no other program of the CPU (a preempted probe, a
/// drain from user space) holds it.
fn take_area(staged: &mut Staged) -> Option<&mut Staged> {
    // SAFETY: an atomic exchange on a word of the map value.
    let was = unsafe {
        core::intrinsics::atomic_xchg::<u64, { core::intrinsics::AtomicOrdering::Acquire }>(
            &mut staged.busy,
            1,
        )
    };
    (was == 0).then_some(staged)
}

fn release(staged: &mut Staged) {
    // SAFETY: a word of the map value.
    unsafe { core::ptr::write_volatile(&mut staged.busy, 0) };
}

/// Writes the gathered events to this CPU's ring, as one record.
fn flush(staged: &mut Staged) {
    let count = staged.count as usize;
    // SAFETY: a word of the map value.
    unsafe { core::ptr::write_volatile(&mut staged.count, 0) };
    if count == 0 {
        return;
    }
    if count > BATCH_EVENTS {
        // Cannot happen (only `emit` counts, up to a batch); said, not dropped unseen.
        return count_lost(count as u64);
    }
    let Some(ring) = this_cpu_ring() else {
        return count_lost(count as u64);
    };
    let flags = wake_flags(ring);
    // SAFETY: the first `count` events of the map value; the ring is a map the lookup vouched for.
    let failed = unsafe {
        bpf_ringbuf_output(
            ring_pointer(ring),
            staged.events.as_mut_ptr().cast(),
            (count * size_of::<Event>()) as u64,
            flags,
        )
    } != 0;
    if failed {
        let marked = staged
            .events
            .get(count - 1)
            .is_some_and(|last| last.kind == EventKind::Mark as u8);
        count_lost(count as u64 - u64::from(marked));
    }
}

/// Writes one event straight to this CPU's ring (the staging area is taken).
fn write_now(event: &Event) {
    let Some(ring) = this_cpu_ring() else {
        return count_lost(1);
    };
    let Some(mut entry) = ring.reserve(0) else {
        return count_lost(1);
    };
    entry.write(*event);
    entry.submit(wake_flags(ring));
}

fn this_cpu_ring() -> Option<&'static RingBuf<Event, 4096>> {
    // SAFETY: a helper without arguments.
    EVENTS.get(unsafe { bpf_get_smp_processor_id() })
}

fn ring_pointer(ring: &RingBuf<Event, 4096>) -> *mut core::ffi::c_void {
    core::ptr::from_ref(ring).cast_mut().cast()
}

/// The reader wakes on its own timer; only a ring an eighth full wakes it early.
fn wake_flags(ring: &RingBuf<Event, 4096>) -> u64 {
    // SAFETY: the ring is a map the lookup vouched for.
    let (ring_size, waiting) = unsafe {
        (
            bpf_ringbuf_query(ring_pointer(ring), BPF_RB_RING_SIZE as u64),
            bpf_ringbuf_query(ring_pointer(ring), BPF_RB_AVAIL_DATA as u64),
        )
    };
    (if waiting >= ring_size / 8 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }) as u64
}

fn count_lost(events: u64) {
    if let Some(count) = LOST.get_ptr_mut(LOST_COUNT) {
        add(count, events);
    }
    if let Some(last) = LOST.get_ptr_mut(LOST_LAST) {
        // SAFETY: as above.
        unsafe { *last = now() };
    }
}

/// Run by user space on one CPU: that CPU's gathered events go to its ring now, followed by a
/// mark that vouches for every event the CPU stamped before it. Busy (and no mark) while a
/// probe of the CPU is under way: what it stamped may not be in the ring yet. No probe of the
/// CPU starts while this runs (it runs in an interrupt, or with preemption off).
#[raw_tracepoint]
pub fn drain(_ctx: RawTracePointContext) -> i32 {
    let Some(staged) = STAGED.get_ptr_mut(0) else {
        return DRAIN_BUSY as i32;
    };
    // SAFETY: this CPU's value; `take_area` keeps other programs of the CPU out of it.
    let Some(staged) = take_area(unsafe { &mut *staged }) else {
        return DRAIN_BUSY as i32;
    };
    // SAFETY: a word of the map value, read once.
    let under_way = unsafe { core::ptr::read_volatile(&staged.unwritten) } != 0;
    if !under_way {
        let mark = Event {
            time: now(),
            kind: EventKind::Mark as u8,
            ..Event::default()
        };
        gather(staged, mark);
    }
    flush(staged);
    release(staged);
    if under_way { DRAIN_BUSY as i32 } else { 0 }
}

fn cookie(ctx: &impl EbpfContext) -> u64 {
    // SAFETY: a helper that reads the cookie given at attach time.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

/// malloc and calloc return: the new chunk.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    let pointer: u64 = ctx.ret();
    let tid = tid();
    if pointer != 0 && !nested(tid, stack(&ctx), AT_RETURN) {
        emit_alloc(regs(&ctx), cookie(&ctx) as u8, chunk(pointer), tid);
    }
    0
}

/// malloc and calloc, at an instruction on one of their paths to a `ret` where the result is
/// already final in rax (one trap per call, where `alloc_return` costs two). Each call passes
/// exactly one such probe with its result, or only ones that see 0 (user space proved it). The
/// cookie: the call, and how far below the function's entry stack pointer this probe's is.
#[uprobe]
pub fn alloc_result(ctx: ProbeContext) -> u32 {
    let pointer = regs(&ctx).rax;
    if pointer == 0 {
        return 0;
    }
    let cookie = cookie(&ctx);
    let tid = tid();
    // The stack pointer the function's `ret` will leave (its entry's, plus the return address
    // popped): what `alloc_return` sees, so the same test. A malloc called from inside an outer
    // call returns at or below the outer call's entry stack; one the outer call jumped to
    // (memalign's tail call) returns one word above it, as the outer call itself would.
    let at_return = stack(&ctx) + cookie_depth(cookie) + AT_RETURN;
    if !nested(tid, at_return, AT_RETURN) {
        emit_alloc(regs(&ctx), cookie_call(cookie), chunk(pointer), tid);
    }
    0
}

/// realloc and the memalign family: what they were asked, until they return.
#[uprobe]
pub fn outer_entry(ctx: ProbeContext) -> u32 {
    let call = cookie(&ctx);
    let pointer: u64 = ctx.arg(0).unwrap_or(0);
    let tid = tid();
    let stack = stack(&ctx);
    if nested(tid, stack, AT_ENTRY) {
        return 0; // an outer call made by another: that one reports
    }
    // realloc's old chunk as it is now (realloc changes it); posix_memalign's `memptr`.
    let (pointer, size) = if call == Call::Realloc as u64 && pointer != 0 {
        chunk(pointer)
    } else {
        (pointer, 0)
    };
    let request = ctx.arg(1).unwrap_or(0);
    // realloc frees the old chunk inside, and another thread may be handed it before realloc
    // returns: its free is told now, before that can happen (and taken back if realloc fails).
    if call == Call::Realloc as u64 && pointer != 0 {
        let free = if request == 0 {
            Call::ReallocToZero
        } else {
            Call::Realloc
        };
        emit(EventKind::Free, free as u8, (pointer, size), tid);
    }
    let pending = Pending {
        stack,
        pointer,
        size,
        request,
        call,
    };
    if PENDING.insert(&tid, &pending, 0).is_ok() {
        count(OUTER_CALLS, 1);
    }
    0
}

#[uretprobe]
pub fn outer_return(ctx: RetProbeContext) -> u32 {
    let tid = tid();
    // SAFETY: the value is copied out at once.
    let Some(pending) = (unsafe { PENDING.get(&tid) }).copied() else {
        return 0;
    };
    // The return of a call nested in this one (its stack is deeper): not ours to end.
    if stack(&ctx) <= pending.stack {
        return 0;
    }
    if PENDING.remove(&tid).is_ok() {
        count(OUTER_CALLS, u64::MAX);
    }
    let result: u64 = ctx.ret();
    let call = pending.call as u8;
    if pending.call == Call::Realloc as u64 {
        if result != 0 {
            emit_alloc(regs(&ctx), call, chunk(result), tid);
        } else if pending.pointer != 0 && pending.request != 0 {
            // It failed: the old chunk is the program's again.
            let old = (pending.pointer, pending.size);
            emit(EventKind::Alloc, Call::ReallocFailed as u8, old, tid);
        }
    } else if pending.call == Call::PosixMemalign as u64 {
        if result as u32 == 0 {
            // SAFETY: bpf_probe_read_user checks the address.
            let pointer =
                unsafe { bpf_probe_read_user(pending.pointer as *const u64) }.unwrap_or(0);
            if pointer != 0 {
                emit_alloc(regs(&ctx), call, chunk(pointer), tid);
            }
        }
    } else if result != 0 {
        emit_alloc(regs(&ctx), call, chunk(result), tid);
    }
    0
}

/// free, at its first instruction the kernel emulates (the pointer is still in rdi).
#[uprobe]
pub fn free_entry(ctx: ProbeContext) -> u32 {
    let pointer: u64 = ctx.arg(0).unwrap_or(0);
    let tid = tid();
    if pointer == 0 || nested(tid, stack(&ctx), AT_ENTRY) {
        return 0;
    }
    // SAFETY: the value is copied out at once.
    let call = if any(FLUSHING_THREADS) && unsafe { FLUSHING.get(&tid) }.is_some() {
        Call::Flush
    } else {
        Call::Free
    };
    emit(EventKind::Free, call as u8, chunk(pointer), tid);
    0
}

/// Just after tcache_init's call to _int_malloc: the new tcache is in rax.
#[uprobe]
pub fn tcache_alloc(ctx: ProbeContext) -> u32 {
    let pointer = regs(&ctx).rax;
    if pointer != 0 {
        emit(
            EventKind::Alloc,
            Call::TcacheInit as u8,
            chunk(pointer),
            tid(),
        );
    }
    0
}

#[uprobe]
pub fn flush_entry(_ctx: ProbeContext) -> u32 {
    if FLUSHING.insert(&tid(), &1, 0).is_ok() {
        count(FLUSHING_THREADS, 1);
    }
    0
}

#[uretprobe]
pub fn flush_return(_ctx: RetProbeContext) -> u32 {
    if FLUSHING.remove(&tid()).is_ok() {
        count(FLUSHING_THREADS, u64::MAX);
    }
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
