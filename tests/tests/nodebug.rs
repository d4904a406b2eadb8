//! The heap map without debug info: the search pointed at an empty directory, no debuginfod, no
//! cache. malloc's layout is then derived from the library's code; the figures must be those of
//! the walk with debug info, exact against the fixture's mallinfo2. A library whose code or
//! version pagealloc does not know gets a clear message, exit code 8 and the page map alone.
use std::path::Path;
use std::process::{Command, Output};

use pagealloc::objects::ElfFile;
use pagealloc_tests::*;
use serde_json::Value;

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
const DERIVED: &str = "derived from the code, no debug info";

/// pagealloc with the debug info out of reach (`empty` is an empty directory).
fn without_debug_info(empty: &Path, args: &[&str]) -> Output {
    pagealloc_command(args)
        .args(["--no-cache", "--debug-dir"])
        .arg(empty)
        .env_remove("DEBUGINFOD_URLS")
        .env("RUST_LOG", "pagealloc::glibc::derive=info")
        .output()
        .expect("pagealloc runs")
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "pagealloc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("valid JSON")
}

#[test]
fn root_snapshot_without_debug_info_is_the_snapshot_with_it() {
    require_root();
    let empty = TempDir::new("nodebug-empty");
    let fixture = Fixture::spawn(fixture_path!("HEAP"), &[]);
    let pid = fixture.pid().to_string();
    let with = snapshot_json(fixture.pid(), &["--no-cache"]);
    let without = json(&without_debug_info(
        &empty.0,
        &["snapshot", &pid, "--format", "json"],
    ));
    assert_eq!(with["libc"]["layout"], "debug info");
    let libc = &without["libc"];
    assert_eq!(libc["layout"], DERIVED);
    assert!(libc["debug_file"].is_null());
    assert_eq!(libc["version"], with["libc"]["version"]);
    assert_eq!(libc["build_id"], with["libc"]["build_id"]);
    for doc in [&with, &without] {
        if let Err(why) = heap_matches_mallinfo(&fixture.report, &doc["heap"]) {
            panic!("{why}\n{}", doc["libc"]);
        }
    }
    assert_eq!(with["heap"], without["heap"]);
    assert!(without["heap"]["arenas"].as_array().unwrap().len() >= 5);

    let text = without_debug_info(&empty.0, &["snapshot", &pid, "--heap-only"]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("(glibc 2.36, layout: {DERIVED})")),
        "{stdout}"
    );
}

/// watch's lines in walk mode, and live mode's seed and its events, are exact without debug
/// info as with it.
#[test]
fn root_watch_without_debug_info_follows_the_heap() {
    require_root();
    let empty = TempDir::new("nodebug-watch");
    let fixture = Fixture::spawn(fixture_path!("HEAP"), &[]);
    let pid = fixture.pid().to_string();
    // Live mode is the default.
    for (mode, says) in [("--walk", "walk"), ("--color=never", "live")] {
        let output = without_debug_info(
            &empty.0,
            &[
                "watch",
                &pid,
                mode,
                "--format",
                "json",
                "--interval",
                "100ms",
                "--count",
                "2",
            ],
        );
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert_eq!(output.status.code(), Some(0), "{mode}: {stderr}");
        // A watch line has no libc part: the log says where the layout came from.
        assert!(
            stderr.contains("no debug info, malloc's layout derived from the code"),
            "{mode}: {stderr}"
        );
        let lines: Vec<Value> = (stdout.lines())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{mode}: {stdout}");
        for line in &lines {
            assert_eq!(line["mode"], says, "{line}");
            if let Err(why) = heap_matches_mallinfo(&fixture.report, &line["heap"]) {
                panic!("{mode}: {why}\n{line}");
            }
        }
    }
}

/// A copy of the system's libc in a directory of its own, with its build-id changed (no debug
/// file matches it) and `patch` applied, and a fixture running on it.
fn fixture_on_a_patched_libc(dir: &Path, patch: impl FnOnce(&ElfFile, &mut Vec<u8>)) -> Fixture {
    let elf = ElfFile::read(Path::new(LIBC)).unwrap();
    let mut libc = elf.data().to_vec();
    // Note header: namesz 4, descsz 20, type NT_GNU_BUILD_ID (3), "GNU\0", then the id.
    let header = [4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];
    let note = (libc.windows(16).position(|w| w == header)).expect("build-id note");
    libc[note + 16] ^= 0xff;
    patch(&elf, &mut libc);
    std::fs::write(dir.join("libc.so.6"), &libc).unwrap();
    Fixture::spawn_with(
        Command::new(fixture_path!("MALLOC_CALLS"))
            .arg("1")
            .env("LD_LIBRARY_PATH", dir),
    )
}

/// Replaces the one occurrence of `from` in `bytes` with `to` (as long).
fn replace_once(bytes: &mut [u8], from: &[u8], to: &[u8]) {
    let at: Vec<usize> = (bytes.windows(from.len()).enumerate())
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        at.len(),
        1,
        "{:?} occurs once",
        String::from_utf8_lossy(from)
    );
    bytes[at[0]..at[0] + to.len()].copy_from_slice(to);
}

/// Exit code 8, the reason on stderr, the page map still written and no heap map.
fn refused(fixture: &Fixture, says: &[&str]) {
    let empty = TempDir::new("nodebug-refused");
    let pid = fixture.pid().to_string();
    let output = without_debug_info(&empty.0, &["snapshot", &pid, "--format", "json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(8), "{stderr}");
    for said in says.iter().chain(&["no debug info found", "libc6-dbg"]) {
        assert!(stderr.contains(said), "{said:?} not in: {stderr}");
    }
    let doc: Value = serde_json::from_slice(&output.stdout).expect("the page map is written");
    assert!(doc["mappings"].as_array().unwrap().len() > 5);
    assert!(doc["heap"].is_null());
}

#[test]
fn root_an_unknown_glibc_version_is_refused_by_name() {
    require_root();
    let dir = TempDir::new("nodebug-version");
    let fixture = fixture_on_a_patched_libc(&dir.0, |_, libc| {
        replace_once(libc, b"release version 2.36.", b"release version 2.99.");
    });
    refused(
        &fixture,
        &[
            "glibc 2.99 is not in pagealloc's table",
            "covers glibc 2.36",
        ],
    );
}

#[test]
fn root_code_that_does_not_match_the_pattern_is_refused() {
    require_root();
    let dir = TempDir::new("nodebug-code");
    // malloc_stats (the fixture never calls it) made all int3: its arena walk is gone.
    let fixture = fixture_on_a_patched_libc(&dir.0, |elf, libc| {
        let symbol = elf.dynamic_symbol("malloc_stats").expect("malloc_stats");
        let at = elf.file_offset(symbol.address).unwrap() as usize;
        libc[at..at + symbol.size as usize].fill(0xcc);
    });
    refused(
        &fixture,
        &["the code of malloc_stats does not match the pattern that finds main_arena"],
    );
}

#[test]
fn root_a_libc_without_the_functions_read_is_refused() {
    require_root();
    let dir = TempDir::new("nodebug-stripped");
    // malloc_trim's name gone from the dynamic symbols (the fixture does not call it).
    let fixture = fixture_on_a_patched_libc(&dir.0, |_, libc| {
        replace_once(libc, b"\0malloc_trim\0", b"\0mallox_trim\0");
    });
    refused(&fixture, &["exports no malloc_trim"]);
}
