//! The heap walk against the fixture's own mallinfo2() and the chunks it knows it holds.
use std::path::Path;
use std::process::Command;

use pagealloc_tests::*;
use serde_json::Value;

fn check_against_mallinfo(fixture: &Fixture, doc: &Value) {
    let heap = &doc["heap"];
    if let Err(why) = heap_matches_mallinfo(&fixture.report, heap) {
        panic!("{why}\n{heap}");
    }
    let arenas = heap["arenas"].as_array().expect("heap.arenas");
    let totals = &heap["totals"];
    assert!(
        arenas.len() >= 5,
        "main + 4 thread arenas, got {}",
        arenas.len()
    );
    assert!(
        arenas
            .iter()
            .any(|a| a["heaps"].as_array().unwrap().len() >= 2),
        "one thread arena grew past 64 MiB into several heaps"
    );
    assert!(n(totals, "live_chunks") >= fixture.get("held_chunks"));
    assert!(fixture.get("held_chunks") >= 80_000);
    assert!(
        n(totals, "live_chunks") + n(totals, "bin_chunks") + n(totals, "tcache_chunks") >= 100_000
    );
    for key in ["tcache_chunks", "fastbin_chunks", "bin_chunks"] {
        assert!(n(totals, key) > 0, "the fixture's frees reach {key}");
    }
    // Half of the big chunks were never written: free pages that cost nothing are not counted.
    assert!(n(totals, "trimmable_bytes") > 0);
    assert!(n(totals, "free_resident_bytes") >= n(totals, "trimmable_bytes"));
    assert!(
        n(totals, "free_resident_bytes")
            < n(totals, "fastbin_bytes")
                + n(totals, "bin_bytes")
                + n(totals, "top_bytes")
                + n(totals, "tcache_bytes")
    );
    assert!(n(totals, "largest_free_bytes") >= 60_000);

    let libc = &doc["libc"];
    assert!(libc["path"].as_str().unwrap().ends_with("libc.so.6"));
    assert_eq!(libc["build_id"].as_str().unwrap().len(), 40);
    assert!(Path::new(libc["debug_file"].as_str().unwrap()).exists());
}

#[test]
fn root_heap_walk_matches_mallinfo() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("HEAP"), &[]);
    check_against_mallinfo(&fixture, &snapshot_json(fixture.pid(), &[]));
}

#[test]
fn root_heap_walk_matches_mallinfo_with_stop() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("HEAP"), &[]);
    check_against_mallinfo(&fixture, &snapshot_json(fixture.pid(), &["--stop"]));
    assert_ne!(
        state(fixture.pid()),
        't',
        "the target is no longer traced-stopped"
    );
}

/// Resident pages of the target by its own pagemap, independently of pagealloc.
fn present_pages(pid: i32) -> u64 {
    let process = process(pid);
    let mut pagemap = process.pagemap().unwrap();
    let mut present = 0;
    for map in process.maps().unwrap() {
        if map.pathname == procfs::process::MMapPath::Vsyscall {
            continue;
        }
        let (start, end) = (map.address.0 / 4096, map.address.1 / 4096);
        for info in pagemap
            .get_range_info(start as usize..end as usize)
            .unwrap()
        {
            if let procfs::process::PageInfo::MemoryPage(f) = info {
                present += f.contains(procfs::process::MemoryPageFlags::PRESENT) as u64;
            }
        }
    }
    present
}

fn vm_rss(pid: i32) -> u64 {
    process(pid).status().unwrap().vmrss.unwrap()
}

#[test]
fn root_snapshot_leaves_residency_unchanged() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("HEAP"), &[]);
    let pid = fixture.pid();
    let before = (present_pages(pid), vm_rss(pid));
    let doc = snapshot_json(pid, &[]);
    // The heap has never-touched pages inside (half of the big chunks): they were not read.
    let absent_in_heaps: u64 = doc["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            doc["heap"]["arenas"].as_array().unwrap().iter().any(|a| {
                a["heaps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|h| n(h, "start") < n(m, "end") && n(m, "start") < n(h, "end"))
            })
        })
        .map(|m| n(&m["pages"], "absent"))
        .sum();
    assert!(
        absent_in_heaps > 1000,
        "heaps hold untouched pages ({absent_in_heaps})"
    );
    let after = (present_pages(pid), vm_rss(pid));
    assert_eq!(before, after, "(present pages, VmRSS kB) before and after");
}

#[test]
fn root_heap_text_shows_summary_and_maps() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("HEAP"), &[]);
    let pid = fixture.pid().to_string();
    let output = pagealloc(&[
        "snapshot",
        &pid,
        "--heap-only",
        "--color",
        "never",
        "--arena",
        "1",
    ]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("free but resident:"));
    assert!(text.contains("malloc_trim(0) could return"));
    assert!(
        !text.contains("one pixel = one 4 KiB page"),
        "--heap-only hides the page map"
    );
    let drawn: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" arena ") && l.contains("one pixel = 128 bytes"))
        .collect();
    assert!(
        !drawn.is_empty() && drawn.iter().all(|l| l.contains("arena 1 ")),
        "{drawn:?}"
    );
    let pages_only = pagealloc(&["snapshot", &pid, "--pages-only", "--color", "never"]);
    let pages_only = String::from_utf8(pages_only.stdout).unwrap();
    assert!(!pages_only.contains("free but resident:"));
}

#[test]
fn static_binary_has_no_heap_map_but_a_page_map() {
    let fixture = Fixture::spawn(
        fixture_path!("PAGES_STATIC"),
        &[std::env::temp_dir().to_str().unwrap()],
    );
    let output = pagealloc(&["snapshot", &fixture.pid().to_string(), "--color", "never"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(9), "{stderr}");
    assert!(stderr.contains("static or musl"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("# anonymous"),
        "page map shown"
    );
}

#[test]
fn root_missing_debug_info_is_derived_from_the_code() {
    require_root();
    // A copy of libc whose build-id matches no debug file.
    let dir = std::env::temp_dir().join(format!("pagealloc-nodebug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut libc = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
    // Note header: namesz 4, descsz 20, type NT_GNU_BUILD_ID (3), "GNU\0", then the id.
    let header = [4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    let note = libc
        .windows(16)
        .position(|w| w == header)
        .expect("build-id note");
    libc[note + 16] ^= 0xff;
    std::fs::write(dir.join("libc.so.6"), &libc).unwrap();
    let fixture = Fixture::spawn_with(
        Command::new(fixture_path!("MALLOC_CALLS"))
            .arg("1")
            .env("LD_LIBRARY_PATH", &dir),
    );
    let output = pagealloc(&[
        "snapshot",
        &fixture.pid().to_string(),
        "--format",
        "json",
        "--no-cache",
    ]);
    // No debug file has its build-id: malloc's layout is derived from its code (what a library
    // the derivation refuses gets is in nodebug.rs).
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        doc["libc"]["layout"],
        "derived from the code, no debug info"
    );
    assert!(!doc["heap"]["arenas"].as_array().unwrap().is_empty());
    drop(fixture);
    let _ = std::fs::remove_dir_all(&dir);
}

fn state(pid: i32) -> char {
    process(pid).stat().unwrap().state
}

/// `--stop` holds the target with ptrace: when pagealloc dies in any way, the kernel lets go.
#[test]
fn root_stop_resumes_the_target_when_pagealloc_is_killed() {
    require_root();
    for signal in [libc::SIGINT, libc::SIGKILL] {
        let fixture = Fixture::spawn(fixture_path!("HEAP"), &[]);
        let pid = fixture.pid();
        let mut snapshot = pagealloc_command(&["snapshot", &pid.to_string(), "--stop"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait (bounded) until the walk holds the target in a tracing stop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while state(pid) != 't' {
            assert!(
                snapshot.try_wait().unwrap().is_none(),
                "the snapshot ended first"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the target was never stopped"
            );
            std::thread::yield_now();
        }
        unsafe { libc::kill(snapshot.id() as i32, signal) };
        snapshot.wait().unwrap();
        let after = state(pid);
        assert!(
            after != 't' && after != 'T',
            "signal {signal}: target left in state {after}"
        );
    }
}

/// A heap that changes while it is read: the snapshot still succeeds, accounts for every byte of
/// every heap exactly once (what it could not read consistently as `unknown`), and says so.
#[test]
fn root_heap_under_churn_is_accounted_for() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("CHURN"), &[]);
    let mut largest_heap = 0;
    for _ in 0..5 {
        let doc = snapshot_json(fixture.pid(), &[]);
        for arena in doc["heap"]["arenas"].as_array().unwrap() {
            let heap_bytes: u64 = arena["heaps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| n(h, "end") - n(h, "start"))
                .sum();
            for heap in arena["heaps"].as_array().unwrap() {
                largest_heap = largest_heap.max(n(heap, "end") - n(heap, "start"));
            }
            let accounted: u64 = [
                "live_bytes",
                "tcache_bytes",
                "fastbin_bytes",
                "bin_bytes",
                "top_bytes",
                "overhead_bytes",
                "unknown_bytes",
            ]
            .iter()
            .map(|key| n(arena, key))
            .sum();
            assert_eq!(accounted, heap_bytes, "arena {}", arena["address"]);
        }
    }
    // Heaps of 32 MiB and more are walked in parts, each but the first from a guess.
    assert!(
        largest_heap >= 32 << 20,
        "largest heap {largest_heap} bytes"
    );
    // With --stop the same heap is read consistently.
    let doc = snapshot_json(fixture.pid(), &["--stop"]);
    assert_eq!(
        n(&doc["heap"]["totals"], "unknown_bytes"),
        0,
        "{}",
        doc["heap"]["notes"]
    );
}

#[test]
fn root_arena_out_of_range_is_an_error() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("HEAP"), &[]);
    let output = pagealloc(&["snapshot", &fixture.pid().to_string(), "--arena", "99"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--arena 99") && stderr.contains("arenas (0 to"),
        "{stderr}"
    );
}

/// Threads that ended gave their tcache back to the fastbins, the chunks still carrying the
/// tcache key: they are fastbin chunks, not tcache ones, and no list looks corrupt.
#[test]
fn root_tcache_given_back_by_ended_threads_is_in_the_fastbins() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("THREADS"), &[]);
    fixture.command("n");
    fixture.command("x");
    let doc = snapshot_json(fixture.pid(), &[]);
    if let Err(why) = heap_matches_mallinfo(&fixture.report, &doc["heap"]) {
        panic!("{why}\n{}", doc["heap"]);
    }
    assert!(n(&doc["heap"]["totals"], "fastbin_chunks") > 0);
}

/// memalign(2 MiB) and posix_memalign(64 KiB) chunks, mmapped with the chunk moved up its
/// mapping, then reallocated (mremap: bigger, smaller, moved) round after round, some freed:
/// the header at the start of each mapping keeps its first size, and a stopped snapshot still
/// finds every chunk the fixture holds, to the byte.
#[test]
fn root_aligned_mmapped_chunks_reallocated_are_all_found() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("MMAPPED_REALLOC"), &[]);
    for round in 1..=3 {
        fixture.command("g");
        if round > 1 {
            assert!(fixture.get("stale_headers") > 0, "{:?}", fixture.report);
        }
        assert!(fixture.get("deep_chunks") > 0, "{:?}", fixture.report);
        let output = pagealloc(&[
            "snapshot",
            &fixture.pid().to_string(),
            "--stop",
            "--format",
            "json",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let doc: Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
        let heap = &doc["heap"];
        let found = (n(heap, "mmapped_chunks"), n(heap, "mmapped_bytes"));
        let held = (fixture.get("mmapped_chunks"), fixture.get("mmapped_bytes"));
        assert_eq!(found, held, "round {round}: {}", heap["notes"]);
        if let Err(why) = heap_matches_mallinfo(&fixture.report, heap) {
            panic!("round {round}: {why}\n{}", heap["notes"]);
        }
        assert_eq!(output.status.code(), Some(0), "{stderr}");
    }
}

/// An mmapped chunk whose first page the kernel took back (its header gone, glibc still counting
/// it) cannot be found: the target is quiet, so the mmapped figures are known to be short. The
/// snapshot says so and ends with the partial-walk code, the map still written.
#[test]
fn root_mmapped_figures_known_short_end_with_the_partial_walk_code() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("MMAPPED_REALLOC"), &[]);
    fixture.command("g");
    fixture.command("z");
    for stop in [false, true] {
        let pid = fixture.pid().to_string();
        let mut args = vec!["snapshot", pid.as_str(), "--format", "json"];
        args.extend(stop.then_some("--stop"));
        let output = pagealloc(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(10), "--stop {stop}: {stderr}");
        assert!(stderr.contains("incomplete"), "{stderr}");
        let doc: Value = serde_json::from_slice(&output.stdout).expect("the map is still written");
        let heap = &doc["heap"];
        assert_eq!(n(heap, "mmapped_chunks"), fixture.get("mmapped_chunks"));
        assert_eq!(n(heap, "mmapped_chunks") + 1, fixture.get("hblks"));
        let notes = heap["notes"].as_array().unwrap();
        assert!(
            notes.len() == 1 && notes[0].as_str().unwrap().contains("incomplete"),
            "{}",
            heap["notes"]
        );
    }
}
