//! Input the heap walker and the debug info loader once got wrong: a malloc that is not glibc's,
//! mmapped chunks in merged mappings, a main arena that is not contiguous, and debug files or
//! cache directories that are not what they should be.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pagealloc_tests::*;
use serde_json::Value;

/// libc's own internal allocations (the tcache_perthread_struct, ...).
const LIBC_INTERNAL_BYTES: u64 = 64 * 1024;
const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

fn notes(doc: &Value) -> Vec<String> {
    doc["heap"]["notes"]
        .as_array()
        .expect("heap.notes")
        .iter()
        .map(|note| note.as_str().unwrap().to_string())
        .collect()
}

/// `pagealloc snapshot PID --format json EXTRA` with `env` set; the output and its document.
fn snapshot_with(pid: i32, extra: &[&str], env: &[(&str, &Path)]) -> (Output, Value) {
    let pid = pid.to_string();
    let mut args = vec!["snapshot", pid.as_str(), "--format", "json"];
    args.extend_from_slice(extra);
    let mut command = pagealloc_command(&args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("pagealloc runs");
    let doc = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output, doc)
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "pagealloc failed ({:?}): {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The main arena's figures against the fixture's mallinfo2(): what is free to malloc is
/// `fordblks`, the rest of the system memory `uordblks`, every byte read.
fn check_main_arena(fixture: &Fixture, doc: &Value) {
    let totals = &doc["heap"]["totals"];
    assert_eq!(notes(doc), Vec::<String>::new());
    assert_eq!(n(totals, "system_bytes"), fixture.get("arena"));
    assert_eq!(n(totals, "unknown_bytes"), 0);
    assert_eq!(
        n(totals, "top_bytes") + n(totals, "fastbin_bytes") + n(totals, "bin_bytes"),
        fixture.get("fordblks")
    );
    assert_eq!(
        n(totals, "live_bytes") + n(totals, "tcache_bytes") + n(totals, "overhead_bytes"),
        fixture.get("uordblks")
    );
    let (live, held) = (n(totals, "live_bytes"), fixture.get("held_bytes"));
    assert!(
        live >= held && live - held <= LIBC_INTERNAL_BYTES,
        "live {live}, held {held}"
    );
}

// --- Finding 2: malloc not served by glibc --------------------------------------------------

/// A program that never called malloc: glibc never set up its main arena (its bins are zero,
/// not linked to themselves). That is an empty heap, not a corrupt one.
#[test]
fn root_main_arena_never_initialised_is_an_empty_heap() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("NO_MALLOC"), &[]);
    let (output, doc) = snapshot_with(fixture.pid(), &["--no-cache"], &[]);
    assert_success(&output);
    assert_eq!(notes(&doc), Vec::<String>::new());
    let arenas = doc["heap"]["arenas"].as_array().unwrap();
    assert_eq!(arenas.len(), 1);
    assert!(arenas[0]["heaps"].as_array().unwrap().is_empty());
    assert_eq!(n(&doc["heap"]["totals"], "system_bytes"), 0);
    assert_eq!(n(&doc["heap"], "mmapped_chunks"), 0);
}

/// Another allocator preloaded: glibc's arena stays empty, and the map says whose malloc
/// serves the program.
fn check_preloaded(library: &str) {
    require_root();
    assert!(
        Path::new(library).exists(),
        "{library} is missing: `cargo xtask setup` installs it"
    );
    let fixture =
        Fixture::spawn_with(Command::new(fixture_path!("ANY_MALLOC")).env("LD_PRELOAD", library));
    let (output, doc) = snapshot_with(fixture.pid(), &["--no-cache"], &[]);
    assert_success(&output);
    let path = std::fs::canonicalize(library).unwrap();
    assert_eq!(
        notes(&doc),
        vec![format!(
            "malloc is served by {}, not by glibc: the heap map shows glibc's malloc only",
            path.display()
        )]
    );
    assert_eq!(n(&doc["heap"]["totals"], "live_chunks"), 0);
}

#[test]
fn root_jemalloc_preloaded_is_named() {
    check_preloaded("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2");
}

#[test]
fn root_tcmalloc_preloaded_is_named() {
    check_preloaded("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4");
}

// --- Finding 3: mmapped chunks in merged mappings --------------------------------------------

#[test]
fn root_mmapped_chunks_in_merged_mappings_are_found() {
    require_root();
    let fixture = Fixture::spawn_with(
        Command::new(fixture_path!("MMAPPED_MERGED"))
            .env("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096"),
    );
    let merged = fixture.get("merged_chunk");
    let maps = process(fixture.pid()).maps().unwrap();
    let holder = maps
        .iter()
        .find(|m| m.address.0 <= merged && merged < m.address.1)
        .expect("the merged chunk is mapped");
    assert!(
        holder.address.0 < merged,
        "the chunk at {merged:#x} starts its mapping: the kernel did not merge"
    );
    let (output, doc) = snapshot_with(fixture.pid(), &["--no-cache"], &[]);
    assert_success(&output);
    assert_eq!(notes(&doc), Vec::<String>::new());
    let heap = &doc["heap"];
    assert_eq!(n(heap, "mmapped_chunks"), fixture.get("mmapped_chunks"));
    assert_eq!(n(heap, "mmapped_bytes"), fixture.get("mmapped_bytes"));
    assert_eq!(n(heap, "mmapped_chunks"), fixture.get("hblks"));
    assert_eq!(n(heap, "mmapped_bytes"), fixture.get("hblkhd"));
}

// --- Finding 4: a main arena that is not contiguous ------------------------------------------

fn check_noncontiguous(mode: &str, tunables: &str) {
    require_root();
    let fixture = Fixture::spawn_with(
        Command::new(fixture_path!("NONCONTIGUOUS"))
            .arg(mode)
            .env("GLIBC_TUNABLES", tunables),
    );
    assert!(
        fixture.get("outside_brk_chunks") > 0,
        "every chunk is in the brk heap: the main arena stayed contiguous"
    );
    let (output, doc) = snapshot_with(fixture.pid(), &["--no-cache"], &[]);
    assert_success(&output);
    check_main_arena(&fixture, &doc);
    let totals = &doc["heap"]["totals"];
    assert_eq!(n(totals, "fastbin_bytes"), fixture.get("fsmblks"));
    assert_eq!(n(totals, "fastbin_chunks"), fixture.get("smblks"));
    // ordblks counts every bin chunk plus top.
    assert_eq!(n(totals, "bin_chunks") + 1, fixture.get("ordblks"));
    assert!(n(totals, "live_chunks") >= fixture.get("held_chunks"));
    let heaps = doc["heap"]["arenas"][0]["heaps"].as_array().unwrap();
    assert!(heaps.len() >= 2, "{heaps:?}");
}

/// sbrk stops: a mapping lies where the brk heap would grow. The brk heap, fenced off, then
/// regions glibc mapped.
#[test]
fn root_noncontiguous_main_arena_after_sbrk_fails() {
    check_noncontiguous("blocked-brk", "");
}

/// glibc.malloc.hugetlb=2 makes glibc map every region of the main arena (huge pages if the
/// system has them reserved, else ordinary ones).
#[test]
fn root_noncontiguous_main_arena_with_hugetlb_tunable() {
    check_noncontiguous("hugetlb", "glibc.malloc.hugetlb=2");
}

// --- Findings 5, 6 and 9: debug files and the layout cache -----------------------------------

/// Runs `readelf ARGS debug` and hands its lines to `until` up to the first for which it
/// returns true; the rest is not waited for.
fn readelf(debug: &Path, args: &[&str], mut until: impl FnMut(&str) -> bool) {
    let mut child = Command::new("readelf")
        .args(args)
        .arg(debug)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("readelf (binutils) runs");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    for line in stdout.lines() {
        if until(&line.unwrap()) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Where in `debug` (an uncompressed copy of a debug file) the offset of `malloc_state.top` is
/// stored, as readelf places its DIEs and attributes.
fn offset_of_malloc_state_top(debug: &Path) -> usize {
    let hex = |s: &str| usize::from_str_radix(s, 16).unwrap();
    // ` <1><24f372>: Abbrev Number: 87 (DW_TAG_structure_type)`, then `<24f373>   DW_AT_name
    // : (indirect string, offset: 0x1570d): malloc_state`.
    let mut previous = String::new();
    let mut strukt = None;
    readelf(debug, &["--debug-dump=info", "--dwarf-depth=2"], |line| {
        if line.ends_with(": malloc_state") && previous.contains("DW_TAG_structure_type") {
            strukt = Some(hex(previous.split(['<', '>']).nth(3).unwrap()));
        }
        previous = line.to_string();
        strukt.is_some()
    });
    let strukt = strukt.expect("struct malloc_state in the debug info");
    // Its members, up to the next DIE of its level: `<24f3a9>   DW_AT_data_member_location: 96`.
    let (mut in_top, mut attribute, mut level_one) = (false, None, 0);
    let start = format!("--dwarf-start={strukt:#x}");
    readelf(
        debug,
        &["--debug-dump=info", &start, "--dwarf-depth=3"],
        |line| {
            if line.contains("DW_TAG_") {
                level_one += line.trim_start().starts_with("<1>") as u32;
                in_top = false;
            } else if line.ends_with(": top") {
                in_top = true;
            } else if in_top && line.contains("DW_AT_data_member_location") {
                attribute = Some(hex(line.trim().split(['<', '>']).nth(1).unwrap()));
            }
            attribute.is_some() || level_one > 1
        },
    );
    let attribute = attribute.expect("malloc_state.top's DW_AT_data_member_location");
    // `  [64] .debug_info  PROGBITS  0000000000000000 0053a8 ...`: address, then file offset.
    let mut section = None;
    readelf(debug, &["-S", "-W"], |line| {
        if line.contains(" .debug_info ") {
            let fields: Vec<&str> = line.split(']').nth(1).unwrap().split_whitespace().collect();
            section = Some(hex(fields[3]));
        }
        section.is_some()
    });
    section.expect(".debug_info section") + attribute
}

/// The debug file of this machine's libc, from the build-id the snapshot reports.
fn system_debug_file(doc: &Value) -> PathBuf {
    PathBuf::from(doc["libc"]["debug_file"].as_str().expect("libc.debug_file"))
}

#[test]
fn root_debug_file_does_not_poison_the_cache() {
    require_root();
    let cache = TempDir::new("poison-cache");
    let clean = TempDir::new("poison-clean");
    let fixture = Fixture::spawn(fixture_path!("QUIET"), &[]);
    let pid = fixture.pid();
    let (output, reference) = snapshot_with(pid, &["--no-cache"], &[("XDG_CACHE_HOME", &clean.0)]);
    assert_success(&output);
    check_main_arena(&fixture, &reference);

    // A copy of the debug file with malloc_state.top's offset moved by a word: same build-id,
    // wrong layout.
    let tampered = cache.0.join("tampered.debug");
    let status = Command::new("objcopy")
        .arg("--decompress-debug-sections")
        .arg(system_debug_file(&reference))
        .arg(&tampered)
        .status()
        .expect("objcopy (binutils) runs");
    assert!(status.success());
    let at = offset_of_malloc_state_top(&tampered);
    let mut bytes = std::fs::read(&tampered).unwrap();
    bytes[at] += 8;
    std::fs::write(&tampered, &bytes).unwrap();

    let env = [("XDG_CACHE_HOME", cache.0.as_path())];
    let tampered_arg = tampered.to_str().unwrap();
    let (_, with_tampered) = snapshot_with(pid, &["--debug-file", tampered_arg], &env);
    assert_ne!(
        with_tampered["heap"]["totals"], reference["heap"]["totals"],
        "the tampered debug file changes what is read"
    );
    let (output, plain) = snapshot_with(pid, &[], &env);
    assert_success(&output);
    check_main_arena(&fixture, &plain);
    assert_eq!(plain["heap"], reference["heap"]);
}

#[test]
fn debug_file_without_debug_info_is_missing_debug_info() {
    let fixture = Fixture::spawn(fixture_path!("QUIET"), &[]);
    let pid = fixture.pid().to_string();
    let missing = "/nonexistent/libc.debug";
    for (file, says) in [(LIBC, "no debug info"), (missing, "No such file")] {
        let output = pagealloc(&["snapshot", &pid, "--heap-only", "--debug-file", file]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(8), "{file}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("libc6-dbg"),
            "{file}: {stderr}"
        );
    }
}

#[test]
fn root_home_that_does_not_exist_is_not_created() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("QUIET"), &[]);
    let pid = fixture.pid().to_string();
    let home = Path::new("/nonexistent-pagealloc-home/x");
    // Left over by a run of a pagealloc that still created it.
    let _ = std::fs::remove_dir_all(home.parent().unwrap());
    let output = pagealloc_command(&["snapshot", &pid, "--heap-only"])
        .env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .output()
        .unwrap();
    assert_success(&output);
    assert!(
        !home.parent().unwrap().exists(),
        "{} was created",
        home.display()
    );

    let cache = TempDir::new("xdg-cache");
    let output = pagealloc_command(&["snapshot", &pid, "--heap-only", "--format", "json"])
        .env("HOME", home)
        .env("XDG_CACHE_HOME", &cache.0)
        .output()
        .unwrap();
    assert_success(&output);
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    let build_id = doc["libc"]["build_id"].as_str().unwrap();
    let layout = cache
        .0
        .join("pagealloc/layouts")
        .join(format!("{build_id}.json"));
    assert!(layout.is_file(), "{} is missing", layout.display());
    assert!(!home.parent().unwrap().exists());
}

/// A C library deleted since the process started, as a package upgrade leaves long-running
/// processes (maps says `libc.so.6 (deleted)`): still glibc, read through the mapping itself
/// (`/proc/PID/map_files`), the figures exact.
#[test]
fn root_libc_deleted_since_the_process_started() {
    require_root();
    let dir = TempDir::new("deleted-libc");
    std::fs::copy(LIBC, dir.0.join("libc.so.6")).expect("copy libc");
    let fixture =
        Fixture::spawn_with(Command::new(fixture_path!("QUIET")).env("LD_LIBRARY_PATH", &dir.0));
    std::fs::remove_file(dir.0.join("libc.so.6")).expect("delete the copy");
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", fixture.pid())).unwrap();
    assert!(maps.contains("libc.so.6 (deleted)"), "{maps}");
    let (output, doc) = snapshot_with(fixture.pid(), &["--no-cache"], &[]);
    assert_success(&output);
    check_main_arena(&fixture, &doc);
}

/// The note that holds a GNU build-id, up to the id: namesz 4, descsz 20, NT_GNU_BUILD_ID, "GNU".
const BUILD_ID_NOTE: [u8; 16] = [4, 0, 0, 0, 20, 0, 0, 0, 3, 0, 0, 0, b'G', b'N', b'U', 0];

/// `bytes` with the last byte of its build-id changed, and that new id in hex.
fn with_other_build_id(mut bytes: Vec<u8>) -> (Vec<u8>, String) {
    let at = bytes
        .windows(BUILD_ID_NOTE.len())
        .position(|w| w == BUILD_ID_NOTE)
        .expect("a GNU build-id note")
        + BUILD_ID_NOTE.len();
    bytes[at + 19] ^= 0xff;
    let hex = bytes[at..at + 20]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (bytes, hex)
}

/// A container whose C library has a build-id the host has no debug file for, its debug file in
/// the container's own /usr/lib/debug: found there, whether the library is opened through
/// /proc/PID/map_files (root) or through /proc/PID/root.
#[test]
fn root_container_debug_file_in_its_own_root() {
    require_root();
    let root = TempDir::new("container-debug");
    let lib = root.0.join("opt/containerlib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(root.0.join("lib64")).unwrap();
    std::fs::copy(fixture_path!("QUIET"), root.0.join("quiet")).unwrap();
    std::fs::copy(
        "/lib64/ld-linux-x86-64.so.2",
        root.0.join("lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    let (libc, id) = with_other_build_id(std::fs::read(LIBC).unwrap());
    std::fs::write(lib.join("libc.so.6"), libc).unwrap();
    // The host's debug file of its libc, given the container's build-id.
    let host = pagealloc_tests::snapshot_json(std::process::id() as i32, &[]);
    let (debug, debug_id) = with_other_build_id(std::fs::read(system_debug_file(&host)).unwrap());
    assert_eq!(debug_id, id);
    let debug_dir = root.0.join(format!("usr/lib/debug/.build-id/{}", &id[..2]));
    std::fs::create_dir_all(&debug_dir).unwrap();
    std::fs::write(debug_dir.join(format!("{}.debug", &id[2..])), debug).unwrap();
    assert!(
        !Path::new(&format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &id[..2],
            &id[2..]
        ))
        .exists()
    );

    let fixture = Fixture::spawn_with(
        Command::new("chroot")
            .arg(&root.0)
            .arg("/quiet")
            .env("LD_LIBRARY_PATH", "/opt/containerlib"),
    );
    let mut command = pagealloc_command(&[
        "snapshot",
        &fixture.pid().to_string(),
        "--format",
        "json",
        "--no-cache",
    ]);
    let output = command.env_remove("DEBUGINFOD_URLS").output().unwrap();
    assert_success(&output);
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    let debug_file = doc["libc"]["debug_file"].as_str().unwrap_or_default();
    assert!(
        debug_file.starts_with(&format!("/proc/{}/root/usr/lib/debug/", fixture.pid())),
        "{debug_file}"
    );
    check_main_arena(&fixture, &doc);
}

/// `--ring-bytes` beyond what a ring can be worth (2 GiB took 8.4 GB and ~10 s to start on two
/// CPUs; the first power of two above the bound here) is refused at once, saying the bound and why; the bound itself is accepted (watch then
/// fails on the process, not on the option), and `--help` says the bound.
#[test]
fn ring_bytes_are_bounded() {
    for too_many in ["134217728", "2147483648"] {
        let refused = pagealloc(&["watch", "1", "--ring-bytes", too_many]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{too_many}: {stderr}");
        assert!(
            stderr.contains("at most 67108864 (64 MiB)") && stderr.contains("online CPU"),
            "{too_many}: {stderr}"
        );
    }
    let no_process = (i32::MAX).to_string();
    let accepted = pagealloc(&["watch", &no_process, "--ring-bytes", "67108864"]);
    let stderr = String::from_utf8_lossy(&accepted.stderr);
    assert_eq!(accepted.status.code(), Some(3), "{stderr}");
    let help = pagealloc(&["watch", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("at most 64 MiB"), "{help}");
}
