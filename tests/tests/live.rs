//! `pagealloc watch` in live mode, against what a fixture knows it did: probes in the kernel,
//! events applied to the heap map, walks only to seed, resync and reconcile.
use std::time::SystemTime;

use pagealloc_tests::*;
use serde_json::Value;

/// Four threads make over a million random allocation calls while watch follows them: the
/// change in live chunks and bytes it reports is the fixture's own, every call is counted, no
/// event is lost, no walk was needed, and a reconcile afterwards finds the state exact.
#[test]
fn root_live_mode_is_exact_under_churn() {
    exact_under_churn(300_000, 4, false);
}

/// The same, with chunks passed between threads (one freed or reallocated by another thread
/// than the one that made it, often on another CPU within microseconds), and more threads than
/// glibc makes arenas on this machine (8 per core): threads share arenas, and chunks change
/// hands and CPUs between events.
#[test]
fn root_live_mode_is_exact_when_threads_pass_chunks_around() {
    let threads = 8 * std::thread::available_parallelism().map_or(2, |n| n.get()) + 4;
    let threads = threads.min(32) as u64;
    exact_under_churn(1_000_000 / threads + 1, threads, true);
}

fn exact_under_churn(calls_per_thread: u64, threads: u64, shared: bool) {
    require_root();
    let mut arguments = vec![calls_per_thread.to_string(), threads.to_string()];
    if shared {
        arguments.push("shared".into());
    }
    let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
    let mut fixture = Fixture::spawn(fixture_path!("CHURN_CALLS"), &arguments);
    let mut watch = Watch::json(fixture.pid(), &["--interval", "200ms", "--reconcile", "4s"]);
    let quiet = SystemTime::now();
    let before = watch.line_after(quiet, |_| true);
    assert_eq!(before["mode"], "live", "{before}");
    let calls_before = (fixture.get("allocs"), fixture.get("frees"));
    let held_before = (fixture.get("held_chunks"), fixture.get("held_bytes"));
    fixture.command("g");
    let quiet = SystemTime::now();
    let after = watch.line_after(quiet, |_| true);
    let allocs = fixture.get("allocs") - calls_before.0;
    let frees = fixture.get("frees") - calls_before.1;
    assert!(allocs + frees >= 1_000_000, "{allocs} + {frees} calls");
    assert_eq!(events(&after, "allocs") - events(&before, "allocs"), allocs);
    assert_eq!(events(&after, "frees") - events(&before, "frees"), frees);
    assert_eq!(events(&after, "lost"), 0);
    assert_eq!(events(&after, "resyncs"), 0, "no walk was needed");
    assert_eq!(events(&after, "contradictions"), 0);
    let change = |key: &str| heap_total(&after, key) as i64 - heap_total(&before, key) as i64;
    assert_eq!(
        change("live_chunks"),
        fixture.get("held_chunks") as i64 - held_before.0 as i64
    );
    assert_eq!(
        change("live_bytes"),
        fixture.get("held_bytes") as i64 - held_before.1 as i64
    );
    assert_eq!(
        n(&after["heap"], "mmapped_chunks"),
        fixture.get("mmapped_chunks")
    );
    assert_eq!(
        n(&after["heap"], "mmapped_bytes"),
        fixture.get("mmapped_bytes")
    );
    // A reconcile after the churn: a fresh walk agrees with the state to the byte.
    let reconciles = events(&after, "reconciles");
    let reconciled = watch.line_after(quiet, |l| events(l, "reconciles") > reconciles);
    assert_eq!(
        events(&reconciled, "reconcile_mismatch_chunks"),
        0,
        "{reconciled}"
    );
    assert_eq!(
        events(&reconciled, "reconcile_mismatch_bytes"),
        0,
        "{reconciled}"
    );
}

/// Attaching to a process in the middle of its churn loses nothing (the rings are in place
/// before the first probe fires) and replays nothing from while the probes were being
/// attached (some calls had their probe then and some not: an allocation replayed whose free
/// had no probe yet left a phantom live chunk, which a later allocation contradicted).
#[test]
fn root_attaching_to_a_busy_process_loses_nothing() {
    require_root();
    // Far more calls than the test waits for: the churn runs throughout.
    let mut fixture = Fixture::spawn(fixture_path!("CHURN_CALLS"), &["50000000", "4"]);
    fixture.send("g");
    let mut watch = Watch::json(fixture.pid(), &["--interval", "200ms"]);
    let first = watch.line_after(SystemTime::now(), |_| true);
    assert_eq!(first["mode"], "live", "{first}");
    assert!(events(&first, "allocs") > 0, "the churn ran: {first}");
    assert_eq!(events(&first, "lost"), 0, "{}", first["events"]);
    // A second on: a phantom from the seed's replay is met within that (0.2–1 s after it).
    let later = watch.line_after(started(&first) + std::time::Duration::from_secs(1), |_| {
        true
    });
    assert_eq!(events(&later, "contradictions"), 0, "{}", later["events"]);
}

/// With `--stop`, walks hold the threads still: a process churning without pause (whose heap
/// no running walk reads consistently) is reconciled all the same, and the state its events
/// kept matches each fresh walk exactly. (A loss or contradiction met on the way has made a
/// walk of its own, which the reconcile then checks: each is counted, none asserted here.)
#[test]
fn root_stopped_reconciles_find_a_churning_state_exact() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("CHURN_CALLS"), &["50000000", "4"]);
    fixture.send("g");
    // Rings of 64 MiB: four threads churning flat out on this machine's cores can outrun a
    // reader the scheduler leaves waiting; this test is about the reconciles.
    let mut watch = Watch::json(
        fixture.pid(),
        &[
            "--interval",
            "200ms",
            "--reconcile",
            "1s",
            "--stop",
            "--ring-bytes",
            "67108864",
            "--max-lost",
            "100",
        ],
    );
    let first = watch.line_after(SystemTime::now(), |_| true);
    assert_eq!(first["mode"], "live", "{first}");
    for _ in 0..3 {
        let line = reconciled_after(&mut watch, SystemTime::now());
        let context = format!("{}", line["events"]);
        assert!(
            events(&line, "allocs") > events(&first, "allocs"),
            "{context}"
        );
        assert_eq!(events(&line, "reconcile_mismatch_chunks"), 0, "{context}");
        assert_eq!(events(&line, "reconcile_mismatch_bytes"), 0, "{context}");
    }
}

/// A ring buffer too small for the churn: the losses are counted, a resync walks the heap, and
/// the figures are exact again afterwards (the overhead guard's limit on losses out of reach).
#[test]
fn root_lost_events_are_counted_and_resynced() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("CHURN_CALLS"), &["100000", "4"]);
    let mut watch = Watch::json(
        fixture.pid(),
        &[
            "--interval",
            "300ms",
            "--ring-bytes",
            "4096",
            "--reconcile",
            "1h",
            "--max-lost",
            "100",
        ],
    );
    let before = watch.line_after(SystemTime::now(), |_| true);
    assert_eq!(events(&before, "lost"), 0);
    fixture.command("g");
    let quiet = SystemTime::now();
    let after = watch.line_after(quiet, |l| events(l, "lost") > 0 && events(l, "resyncs") > 0);
    // Once resynced from a walk taken while the fixture is quiet, exact again.
    let settled = watch.line_after(SystemTime::now(), |l| {
        events(l, "resyncs") == events(&after, "resyncs")
            && events(l, "lost") == events(&after, "lost")
    });
    if let Err(why) = heap_against_holdings(&fixture, &settled) {
        panic!("{why}\n{settled}");
    }
}

/// The heap's live figures against what the fixture holds (its own chunks, plus libc's few).
fn heap_against_holdings(fixture: &Fixture, line: &Value) -> Result<(), String> {
    let (live_bytes, held) = (heap_total(line, "live_bytes"), fixture.get("held_bytes"));
    if live_bytes < held || live_bytes - held > LIBC_INTERNAL_BYTES {
        return Err(format!("live_bytes {live_bytes}, held {held}"));
    }
    if n(&line["heap"], "mmapped_chunks") != fixture.get("mmapped_chunks") {
        return Err("mmapped chunks".into());
    }
    Ok(())
}

#[test]
fn root_watch_says_why_it_walks() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("CHURN_CALLS"), &["10", "1"]);
    let mut watch = Watch::json(
        fixture.pid(),
        &["--interval", "100ms", "--walk", "--count", "1"],
    );
    let line = watch.line();
    assert_eq!(line["mode"], "walk");
    assert!(line.get("events").is_none());
    assert!(
        line["walk_reason"].as_str().unwrap().contains("--walk"),
        "{line}"
    );
}

/// Above `--max-rate` calls a second the probes come off and watch walks, saying why; the
/// process keeps being shown.
#[test]
fn root_overhead_guard_takes_the_probes_off_a_busy_process() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("CHURN_CALLS"), &["300000", "4"]);
    let mut watch = Watch::json(
        fixture.pid(),
        &["--interval", "100ms", "--max-rate", "1000"],
    );
    let first = watch.line();
    assert_eq!(first["mode"], "live");
    fixture.send("g");
    let guarded = watch.line_after(SystemTime::now(), |l| l["mode"] == "walk");
    let why = guarded["walk_reason"].as_str().unwrap_or_default();
    assert!(why.contains("--max-rate 1000"), "{guarded}");
    assert!(guarded["heap"]["totals"]["live_chunks"].as_u64().is_some());
}

/// The next line whose reconcile began after `after`.
fn reconciled_after(watch: &mut Watch, after: SystemTime) -> Value {
    let first = watch.line_after(after, |_| true);
    let counted = events(&first, "reconciles");
    watch.line_after(after, |l| events(l, "reconciles") > counted)
}

/// Threads and arenas made after watch attached, an arena growing past its first 64 MiB heap
/// into a second, and threads ending (their tcache given back): after each, a reconcile finds
/// the state the events kept equal to a fresh walk, with no event lost or contradicting it.
#[test]
fn root_live_follows_threads_arenas_and_growing_heaps() {
    require_root();
    follows_threads_arenas_and_heaps(&mut Fixture::spawn(fixture_path!("THREADS"), &[]));
}

/// The same with glibc's heaps on huge pages (`glibc.malloc.hugetlb=2`): a thread arena's
/// heaps are 4 huge pages (8 MiB), not 64 MiB, and live mode takes them in and grows them by
/// that size, as the walk reads them.
#[test]
fn root_live_follows_heaps_on_huge_pages() {
    require_root();
    let _reserved = HugePages::reserve(256);
    let mut fixture = Fixture::spawn_with(
        std::process::Command::new(fixture_path!("THREADS"))
            .env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=2"),
    );
    follows_threads_arenas_and_heaps(&mut fixture);
    // The threads' heaps were on huge pages indeed (the last command left threads holding).
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", fixture.pid())).unwrap();
    let huge = smaps.lines().filter(|l| {
        l.starts_with("KernelPageSize:") && l.split_whitespace().nth(1) == Some("2048")
    });
    assert!(
        huge.count() >= 4,
        "the threads' heaps are not on huge pages"
    );
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Huge pages reserved (`vm.nr_hugepages`) for one test, given back however it ends.
struct HugePages {
    before: u64,
}

impl HugePages {
    /// Reserves `pages` more huge pages than the system had.
    fn reserve(pages: u64) -> HugePages {
        let read = || -> u64 {
            let text = std::fs::read_to_string(NR_HUGEPAGES).expect(NR_HUGEPAGES);
            text.trim().parse().expect(NR_HUGEPAGES)
        };
        let reserved = HugePages { before: read() };
        let wanted = reserved.before + pages;
        std::fs::write(NR_HUGEPAGES, wanted.to_string()).expect(NR_HUGEPAGES);
        // The kernel reserves what it can find contiguous, maybe fewer.
        assert_eq!(
            read(),
            wanted,
            "the kernel could not reserve {pages} huge pages"
        );
        reserved
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, self.before.to_string());
    }
}

fn follows_threads_arenas_and_heaps(fixture: &mut Fixture) {
    let mut watch = Watch::json(fixture.pid(), &["--interval", "200ms", "--reconcile", "1s"]);
    let before = watch.line_after(SystemTime::now(), |_| true);
    assert_eq!(before["mode"], "live");
    for command in ["n", "b", "n", "x", "n"] {
        fixture.command(command);
        let line = reconciled_after(&mut watch, SystemTime::now());
        let context = format!("after {command:?}: {}", line["events"]);
        assert_eq!(events(&line, "reconcile_mismatch_chunks"), 0, "{context}");
        assert_eq!(events(&line, "reconcile_mismatch_bytes"), 0, "{context}");
        assert_eq!(events(&line, "contradictions"), 0, "{context}");
        assert_eq!(events(&line, "lost"), 0, "{context}");
        // New arenas and heaps are taken in from the events: no walk was needed.
        assert_eq!(events(&line, "resyncs"), 0, "{context}");
        // What the fixture's threads hold is live, and little besides (libc's own).
        let (live_bytes, held) = (heap_total(&line, "live_bytes"), fixture.get("held_bytes"));
        assert!(
            live_bytes >= held && live_bytes - held <= LIBC_INTERNAL_BYTES,
            "{context}: live {live_bytes}, held {held}"
        );
        // The state, the reconcile's walk now, agrees with glibc's own count to the byte.
        if let Err(why) = heap_matches_mallinfo(&fixture.report, &line["heap"]) {
            panic!("{context}: {why}");
        }
        assert_eq!(
            n(&line["heap"], "mmapped_chunks"),
            fixture.get("mmapped_chunks"),
            "{context}"
        );
        if command == "b" {
            let heaps = line["heap"]["arenas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["heaps"].as_array().unwrap().len())
                .max();
            assert!(
                heaps >= Some(2),
                "{context}: an arena grew into a second heap"
            );
        }
    }
}

/// The target exec'ing (a new program image under the same pid) ends watch cleanly.
#[test]
fn root_watch_ends_when_the_target_execs() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("THREADS"), &[]);
    let mut watch = Watch::json(fixture.pid(), &["--interval", "100ms"]);
    watch.line();
    fixture.command("e");
    assert!(
        exits_within(watch.child.id() as i32, std::time::Duration::from_secs(60)),
        "watch outlived the program it watched"
    );
    let stderr = watch.child.wait_with_output_stderr();
    let status = watch.child.try_wait().unwrap().expect("exited");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("exec"), "{stderr}");
}

/// A process in a container-style root of its own (here a chroot with a copy of the C library,
/// at a path the host does not have): its libc is read and probed through `/proc/PID/root`,
/// and live mode is exact there too.
#[test]
fn root_live_mode_through_the_process_root() {
    require_root();
    let root = std::env::temp_dir().join(format!("pagealloc-root-{}", std::process::id()));
    let lib = root.join("opt/containerlib");
    std::fs::create_dir_all(&lib).unwrap();
    let fixture_binary = fixture_path!("CHURN_CALLS");
    std::fs::copy(fixture_binary, root.join("churn_calls")).unwrap();
    // The loader finds the C library where the container keeps it, not where the host does.
    for (from, to) in [
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", lib.join("libc.so.6")),
        (
            "/lib64/ld-linux-x86-64.so.2",
            root.join("lib64/ld-linux-x86-64.so.2"),
        ),
    ] {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
    let mut fixture = Fixture::spawn_with(
        std::process::Command::new("chroot")
            .arg(&root)
            .args(["/churn_calls", "50000", "2"])
            .env("LD_LIBRARY_PATH", "/opt/containerlib"),
    );
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", fixture.pid())).unwrap();
    assert!(maps.contains("/opt/containerlib/libc.so.6"), "{maps}");
    let mut watch = Watch::json(fixture.pid(), &["--interval", "200ms", "--reconcile", "1h"]);
    let before = watch.line_after(SystemTime::now(), |_| true);
    assert_eq!(before["mode"], "live", "{before}");
    let held_before = fixture.get("held_bytes");
    let calls_before = fixture.get("allocs") + fixture.get("frees");
    fixture.command("g");
    let after = watch.line_after(SystemTime::now(), |_| true);
    let calls = fixture.get("allocs") + fixture.get("frees") - calls_before;
    assert_eq!(
        events(&after, "allocs") + events(&after, "frees")
            - events(&before, "allocs")
            - events(&before, "frees"),
        calls
    );
    assert_eq!(
        heap_total(&after, "live_bytes") as i64 - heap_total(&before, "live_bytes") as i64,
        fixture.get("held_bytes") as i64 - held_before as i64
    );
    assert_eq!(events(&after, "lost"), 0);
    drop(watch);
    drop(fixture);
    let _ = std::fs::remove_dir_all(&root);
}

/// A ring buffer far too small for a process churning flat out (`--ring-bytes 4096`): most
/// events are lost, each loss costs a resync walk, and the few counted kept the rate far under
/// `--max-rate`, so the probes stayed on. The losses count against the overhead guard: the
/// probes come off within a few samples of the first loss, and the reason says events were
/// lost; under the default `--max-rate` (each lost event paid its trap: a call in the rate)
/// and under one out of reach (the share of the events lost alone).
#[test]
fn root_overhead_guard_counts_lost_events() {
    require_root();
    /// Samples in live mode from the first that lost events to the probes off, at most.
    const BOUND: usize = 3;
    for max_rate in ["250000", "1000000000000"] {
        // Two threads: enough to overrun a page of ring, and less load on the tests beside.
        let mut fixture = Fixture::spawn(fixture_path!("CHURN_CALLS"), &["50000000", "2"]);
        let mut watch = Watch::json(
            fixture.pid(),
            &[
                "--interval",
                "200ms",
                "--ring-bytes",
                "4096",
                "--max-rate",
                max_rate,
                "--reconcile",
                "1h",
            ],
        );
        let first = watch.line();
        assert_eq!(first["mode"], "live", "{first}");
        let churning = SystemTime::now();
        fixture.send("g");
        // The first line with losses, or the first walk if the probes came off before a line
        // begun since showed any.
        let lossy = watch.line_after(churning, |l| l["mode"] == "walk" || events(l, "lost") > 0);
        let mut line = lossy.clone();
        for _ in 0..BOUND {
            if line["mode"] == "walk" {
                break;
            }
            line = watch.line();
        }
        assert_eq!(
            line["mode"], "walk",
            "--max-rate {max_rate}: still live {BOUND} samples after the first loss: {}",
            line["events"]
        );
        let why = line["walk_reason"].as_str().unwrap_or_default();
        assert!(why.contains("lost"), "--max-rate {max_rate}: {why}");
    }
}
