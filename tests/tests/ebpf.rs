//! The probes, loaded in the kernel and attached to a fixture that makes every kind of
//! allocation call on four threads: every call is one event of its kind, with the chunk's exact
//! size, and nothing else is (glibc's own calls from inside realloc and memalign, and the tcache
//! an exiting thread gives back, are not the program's); and to a single-threaded one (glibc's
//! malloc takes a path of its own there). Each run twice: with malloc's results caught at one
//! trap per call where the analysis of its code placed them, and with return probes.
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use pagealloc::session::{Session, SessionOptions};
use pagealloc::trace::{Batch, TraceOptions, Tracer, monotonic_now};
use pagealloc_common::{CHUNK_FLAG_BITS, Call, EventKind, Program};
use pagealloc_tests::*;

/// One traced fixture at a time (the machine has few cores).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn root_probes_report_every_call_once() {
    every_call_once(true);
}

#[test]
fn root_probes_report_every_call_once_with_return_probes() {
    every_call_once(false);
}

#[test]
fn root_single_threaded_mallocs_each_once() {
    single_threaded_mallocs(true);
}

#[test]
fn root_single_threaded_mallocs_each_once_with_return_probes() {
    single_threaded_mallocs(false);
}

/// The probes on `fixture`'s C library, malloc's results caught at one trap per call or not.
fn attach(fixture: &Fixture, one_trap: bool) -> (Tracer, Receiver<Batch>) {
    // The library and the layout facts as live mode takes them (the library opened through
    // the process's map_files).
    let site = Session::open(
        fixture.pid(),
        SessionOptions {
            heap: true,
            ..SessionOptions::default()
        },
    )
    .and_then(|mut session| session.probe_site())
    .expect("the fixture's glibc and its debug info");
    let options = TraceOptions {
        one_trap,
        ..TraceOptions::default()
    };
    let (tracer, events) = Tracer::attach(
        fixture.pid(),
        &site.libc,
        &site.internals,
        site.chunk_words,
        options,
    )
    .expect("the probes attach");
    for function in ["malloc", "calloc"] {
        let on: Vec<_> = tracer
            .placed
            .iter()
            .filter(|p| p.function == function)
            .collect();
        if one_trap {
            // glibc 2.36 here: the result is final in rax at an emulated instruction on each
            // path (calloc's longer clears end in a tail call to memset, which returns it).
            assert!(
                !on.is_empty()
                    && on
                        .iter()
                        .all(|p| p.program == Program::AllocResult && !p.returns()),
                "{function}'s results caught at one trap per call: {on:?}"
            );
        } else {
            assert!(
                on.iter()
                    .all(|p| p.program == Program::AllocReturn && p.returns())
            );
        }
    }
    (tracer, events)
}

/// malloc_calls makes N mallocs of mixed sizes (tcache, bins, mmapped) on its only thread.
fn single_threaded_mallocs(one_trap: bool) {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Not a multiple of a batch: the last events come out only if the reader drains them.
    const CALLS: u64 = 20_003;
    let mut fixture = Fixture::spawn(fixture_path!("MALLOC_CALLS"), &[&CALLS.to_string()]);
    let (tracer, events) = attach(&fixture, one_trap);
    fixture.command("g");
    // Every event stamped before the fixture's report is in the batches that vouch for it.
    let reported = monotonic_now();
    let (mut allocs, mut bytes, mut others) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let batch = events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("events until the report");
        for event in &batch.events {
            if event.kind == EventKind::Alloc as u8 && event.call == Call::Malloc as u8 {
                allocs += 1;
                bytes += event.size & !CHUNK_FLAG_BITS;
            } else {
                others += 1;
            }
        }
        if batch.complete_before > reported {
            break;
        }
    }
    assert_eq!(allocs, fixture.get("calls"), "one event per malloc");
    assert_eq!(
        bytes,
        fixture.get("chunk_bytes"),
        "each with its chunk's size"
    );
    assert_eq!(others, 0, "nothing else");
    assert_eq!(tracer.lost().unwrap().count, 0);
}

fn every_call_once(one_trap: bool) {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const ITERATIONS: u64 = 20_000;
    let mut fixture = Fixture::spawn(fixture_path!("ALL_CALLS"), &[&ITERATIONS.to_string(), "4"]);
    let (tracer, events) = attach(&fixture, one_trap);
    // (The probe on a new thread's tcache sits where _int_malloc returns its result: once a
    // thread, it may be single-stepped.)
    for placed in tracer
        .placed
        .iter()
        .filter(|p| p.program != Program::TcacheAlloc)
    {
        assert!(
            placed.emulated,
            "{placed:?}: every per-call probe here sits on an emulated instruction"
        );
    }
    fixture.command("g");
    let marker = fixture.get("marker");
    // Per call: (allocations, frees, bytes allocated, bytes freed).
    let mut seen: HashMap<u8, (u64, u64, u64, u64)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The four threads' events come from the rings of the CPUs they ran on, merged in the
    // order of their stamps, each batch only with events stamped before what it vouches for.
    let mut last_time = 0;
    'events: loop {
        let batch = events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("events until the marker's free");
        for event in batch.events {
            assert!(
                event.time >= last_time,
                "events in the order of their stamps"
            );
            assert!(
                event.time < batch.complete_before,
                "vouched for by its batch"
            );
            last_time = event.time;
            let bytes = event.size & !CHUNK_FLAG_BITS;
            let entry = seen.entry(event.call).or_default();
            if event.kind == EventKind::Alloc as u8 {
                entry.0 += 1;
                entry.2 += bytes;
            } else {
                entry.1 += 1;
                entry.3 += bytes;
            }
            if event.kind == EventKind::Free as u8 && event.pointer == marker {
                break 'events;
            }
        }
    }
    let get = |call: Call| seen.get(&(call as u8)).copied().unwrap_or_default();
    let calls = |key: &str| fixture.get(key);
    assert_eq!(
        get(Call::Malloc).0,
        calls("malloc") + 1,
        "malloc (+ the marker)"
    );
    assert_eq!(get(Call::Calloc).0, calls("calloc"));
    assert_eq!(get(Call::Realloc).0, calls("realloc"));
    assert_eq!(
        get(Call::Realloc).1 + get(Call::ReallocToZero).1,
        calls("realloc_old"),
        "reallocs free their old chunk"
    );
    assert_eq!(get(Call::ReallocToZero).1, calls("realloc_frees"));
    assert_eq!(get(Call::PosixMemalign).0, calls("posix_memalign"));
    assert_eq!(get(Call::Memalign).0, calls("memalign"));
    assert_eq!(get(Call::Valloc).0, calls("valloc"));
    assert_eq!(get(Call::Pvalloc).0, calls("pvalloc"));
    assert_eq!(get(Call::Free).1, calls("free") + 1, "free (+ the marker)");
    // glibc's own: each thread's tcache, made at its first malloc (the threads had made none).
    assert_eq!(get(Call::TcacheInit).0, 4, "one tcache per thread");
    let program_calls = |c: &u8| *c != Call::Flush as u8 && *c != Call::TcacheInit as u8;
    let allocated: u64 = seen
        .iter()
        .filter(|(c, _)| program_calls(c))
        .map(|(_, s)| s.2)
        .sum();
    let freed: u64 = seen
        .iter()
        .filter(|(c, _)| program_calls(c))
        .map(|(_, s)| s.3)
        .sum();
    let marker_bytes = 32;
    assert_eq!(allocated, calls("alloc_bytes") + marker_bytes);
    assert_eq!(freed, calls("free_bytes") + marker_bytes);
    // The four threads exited: each gave its tcache back, marked as not the program's.
    assert!(
        get(Call::Flush).1 > 0,
        "exiting threads' tcache frees are seen, apart"
    );
    assert_eq!(tracer.lost().unwrap().count, 0);
}
