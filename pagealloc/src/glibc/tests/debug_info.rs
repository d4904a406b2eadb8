//! malloc's layout from the debug info of this machine's real glibc (Debian 12 with
//! `libc6-dbg`), found every way the search knows: no mocks.
use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object::Object;

use crate::debuginfo::{DebugInfoError, DebugOptions, Field, Library, StructLayout, dwarf, locate};
use crate::glibc::debug::{MallocLayout, MallocReader, load, load_uncached};
use crate::glibc::identity::WANTED;

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "pagealloc-debuginfo-{tag}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The build-id as `readelf -n` prints it.
fn readelf_build_id(path: &str) -> String {
    run("readelf", &["-n", path])
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .expect("readelf -n shows a build-id")
}

/// Name -> (value, size) of the symbols `readelf -sW` lists.
fn readelf_symbols(path: &Path) -> HashMap<String, (u64, u64)> {
    let mut out = HashMap::new();
    for line in run("readelf", &["-sW", path.to_str().unwrap()]).lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // Num: Value Size Type Bind Vis Ndx Name
        if cols.len() == 8
            && cols[0].ends_with(':')
            && let (Ok(value), Ok(size)) =
                (u64::from_str_radix(cols[1], 16), cols[2].parse::<u64>())
        {
            out.entry(cols[7].to_string()).or_insert((value, size));
        }
    }
    out
}

/// The debug file libc6-dbg installs for the system libc.
fn system_debug_file() -> PathBuf {
    let id = readelf_build_id(LIBC);
    let path = PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &id[..2],
        &id[2..]
    ));
    assert!(
        path.is_file(),
        "{} is missing: these tests need libc6-dbg (apt-get install libc6-dbg)",
        path.display()
    );
    path
}

fn options(cache: &Path) -> DebugOptions {
    DebugOptions {
        cache_dir: Some(cache.to_path_buf()),
        use_cache: true,
        debuginfod_urls: Some(Vec::new()),
        ..DebugOptions::default()
    }
}

/// Byte range of the build-id note's descriptor in an ELF file.
fn build_id_range(data: &[u8]) -> std::ops::Range<usize> {
    let obj = object::File::parse(data).unwrap();
    let id = obj.build_id().unwrap().expect("file has a build-id");
    let start = id.as_ptr() as usize - data.as_ptr() as usize;
    start..start + id.len()
}

/// Copies `src` to `dst` with every build-id byte XORed with `xor`; returns the new build-id.
/// The same `xor` on a libc and its debug file gives them the same new build-id.
fn copy_with_build_id(src: &Path, dst: &Path, xor: u8) -> String {
    let mut data = fs::read(src).unwrap();
    let range = build_id_range(&data);
    for b in &mut data[range.clone()] {
        *b ^= xor;
    }
    fs::write(dst, &data).unwrap();
    data[range].iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `src` to `dst` with the build-id note's type changed, so that it has no build-id.
fn copy_without_build_id(src: &Path, dst: &Path) {
    let mut data = fs::read(src).unwrap();
    let desc = build_id_range(&data).start;
    // Note header: namesz, descsz, type (4 bytes each), then "GNU\0", then the descriptor.
    data[desc - 8..desc - 4].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    fs::write(dst, &data).unwrap();
}

fn build_id_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]))
}

fn copy_into(src: &Path, dst: &Path) {
    fs::create_dir_all(dst.parent().unwrap()).unwrap();
    fs::copy(src, dst).unwrap();
}

fn assert_array(layout: &StructLayout, name: &str, len: u64) {
    let f = layout.field(name).unwrap();
    assert_eq!(f.array_len, Some(len), "{}.{name}", layout.name);
    assert_eq!(f.size, f.element_size * len, "{}.{name}", layout.name);
}

fn assert_glibc_2_36_layout(layout: &MallocLayout, debug_file: &Path) {
    let ms = &layout.malloc_state;
    assert_eq!(ms.name, "malloc_state");
    for f in [
        "mutex",
        "flags",
        "fastbinsY",
        "top",
        "last_remainder",
        "bins",
        "binmap",
        "next",
        "next_free",
        "attached_threads",
        "system_mem",
        "max_system_mem",
    ] {
        assert!(ms.has(f), "malloc_state.{f} in {:?}", ms.fields);
    }
    assert_array(ms, "fastbinsY", 10);
    assert_eq!(ms.field("fastbinsY").unwrap().element_size, 8);
    assert_array(ms, "bins", 254);
    assert_eq!(ms.field("top").unwrap().size, 8);
    assert_eq!(ms.field("top").unwrap().array_len, None);
    // Declaration order means increasing offsets here (no unions in malloc_state).
    assert!(ms.fields.windows(2).all(|w| w[0].offset < w[1].offset));

    let mc = &layout.malloc_chunk;
    let names: Vec<&str> = mc.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "mchunk_prev_size",
            "mchunk_size",
            "fd",
            "bk",
            "fd_nextsize",
            "bk_nextsize"
        ]
    );
    let offsets: Vec<u64> = mc.fields.iter().map(|f| f.offset).collect();
    assert_eq!(offsets, [0, 8, 16, 24, 32, 40]);
    assert_eq!(mc.size, 48);

    let hi = &layout.heap_info;
    assert_eq!(hi.name, "heap_info");
    for f in ["ar_ptr", "prev", "size", "mprotect_size"] {
        assert!(hi.has(f), "heap_info.{f} in {:?}", hi.fields);
    }
    assert_eq!(hi.offset("ar_ptr").unwrap(), 0);
    assert_eq!(hi.size % 16, 0, "heap_info is padded to MALLOC_ALIGNMENT");

    let mp = &layout.malloc_par;
    for f in [
        "sbrk_base",
        "n_mmaps",
        "mmapped_mem",
        "tcache_count",
        "tcache_bins",
        "mmap_threshold",
    ] {
        assert!(mp.has(f), "malloc_par.{f} in {:?}", mp.fields);
    }

    let tps = layout
        .tcache_perthread_struct
        .as_ref()
        .expect("2.36 has tcache");
    assert_array(tps, "counts", 64);
    assert_array(tps, "entries", 64);
    assert_eq!(tps.field("entries").unwrap().element_size, 8);
    let te = layout.tcache_entry.as_ref().expect("2.36 has tcache");
    assert_eq!(te.offset("next").unwrap(), 0);
    assert_eq!(te.offset("key").unwrap(), 8);

    // Independent check: symbols and struct sizes against readelf's view of the debug file.
    let syms = readelf_symbols(debug_file);
    let s = &layout.symbols;
    assert_ne!(s.main_arena, 0);
    assert_ne!(s.mp_, 0);
    assert_eq!(syms["main_arena"], (s.main_arena, ms.size));
    assert_eq!(syms["mp_"], (s.mp_, mp.size));
    let tcache_key = s.tcache_key.expect("2.36 has tcache_key");
    assert_ne!(tcache_key, 0);
    assert_eq!(syms["tcache_key"].0, tcache_key);
    assert_eq!(s.first_load_vaddr, 0);

    // `getconf GNU_LIBC_VERSION` says "glibc 2.36".
    let getconf = run("getconf", &["GNU_LIBC_VERSION"]);
    let expected = getconf.trim().strip_prefix("glibc ").unwrap();
    assert_eq!(layout.glibc_version.as_deref(), Some(expected));
}

#[test]
fn real_libc_layout_and_cache() {
    let debug_file = system_debug_file();
    let cache = TempDir::new("cache");
    let opts = options(cache.path());

    let start = Instant::now();
    let first = load(Path::new(LIBC), &opts).unwrap();
    let uncached = start.elapsed();
    assert!(!first.from_cache);
    assert_eq!(first.build_id, readelf_build_id(LIBC));
    // The debug file was found by build-id: its path spells the build-id.
    assert_eq!(first.debug_file, debug_file);
    let spelled = format!(
        "{}{}",
        debug_file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap(),
        debug_file.file_stem().unwrap().to_str().unwrap()
    );
    assert_eq!(first.build_id, spelled);
    assert_glibc_2_36_layout(&first.layout, &debug_file);

    let cache_file = cache
        .path()
        .join("layouts")
        .join(format!("{}.json", first.build_id));
    assert!(cache_file.is_file());

    let start = Instant::now();
    let second = load(Path::new(LIBC), &opts).unwrap();
    let cached = start.elapsed();
    assert!(second.from_cache);
    assert_eq!(second.layout, first.layout);
    assert_eq!(second.debug_file, first.debug_file);
    assert_eq!(second.build_id, first.build_id);
    println!("load: {uncached:?} parsing DWARF, {cached:?} from the cache");

    // The cache file parses as a MallocLayout by itself.
    let text = fs::read_to_string(&cache_file).unwrap();
    let plain: MallocLayout = serde_json::from_str(&text).unwrap();
    assert_eq!(plain, first.layout);

    // use_cache = false neither reads nor writes.
    let no_cache = TempDir::new("nocache");
    let opts = DebugOptions {
        use_cache: false,
        ..options(no_cache.path())
    };
    let third = load(Path::new(LIBC), &opts).unwrap();
    assert!(!third.from_cache);
    assert!(!no_cache.path().join("layouts").exists());
}

#[test]
fn extraction_time() {
    let debug_file = system_debug_file();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let layout = load_uncached(Path::new(LIBC), &debug_file).unwrap();
        best = best.min(start.elapsed());
        assert_eq!(layout.malloc_state.name, "malloc_state");
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("full extraction (read + decompress + DWARF + symbols): {best:?} ({profile} build)");
    if !cfg!(debug_assertions) {
        assert!(best < Duration::from_secs(1), "extraction took {best:?}");
    }
}

#[test]
fn field_errors_name_struct_and_field() {
    let layout = load_uncached(Path::new(LIBC), &system_debug_file()).unwrap();
    let err = layout.malloc_state.field("no_such_member").unwrap_err();
    assert!(matches!(err, DebugInfoError::MissingField { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("malloc_state") && msg.contains("no_such_member"),
        "{msg}"
    );
    assert!(!layout.malloc_state.has("no_such_member"));
}

#[test]
fn program_that_is_not_a_libc() {
    let err = load(Path::new("/bin/true"), &DebugOptions::default()).unwrap_err();
    assert!(matches!(err, DebugInfoError::NotGlibc { .. }), "{err:?}");
    assert!(err.to_string().contains("does not define malloc"), "{err}");
    assert!(!err.is_missing_debug_info());
}

#[test]
fn not_an_elf_file() {
    let dir = TempDir::new("notelf");
    let path = dir.path().join("libc.so.6");
    fs::write(&path, b"#!/bin/sh\necho not a library\n").unwrap();
    let err = load(&path, &DebugOptions::default()).unwrap_err();
    assert!(matches!(err, DebugInfoError::NotElf { .. }), "{err:?}");
    let err = load(&dir.path().join("absent"), &DebugOptions::default()).unwrap_err();
    assert!(matches!(err, DebugInfoError::Io { .. }), "{err:?}");
}

#[test]
fn static_binary_is_not_glibc() {
    let dir = TempDir::new("static");
    let src = dir.path().join("main.c");
    let exe = dir.path().join("main");
    fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let status = Command::new("gcc")
        .arg("-static")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            println!("skipped: gcc -static unavailable ({other:?})");
            return;
        }
    }
    let err = load(&exe, &DebugOptions::default()).unwrap_err();
    assert!(matches!(err, DebugInfoError::NotGlibc { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("statically linked"), "{msg}");
    println!("{msg}");
}

#[test]
fn unknown_build_id_is_no_debug_info() {
    let dir = TempDir::new("nodebug");
    let libc = dir.path().join("libc.so.6");
    let id = copy_with_build_id(Path::new(LIBC), &libc, 0x5a);
    let opts = DebugOptions {
        use_cache: false,
        debuginfod_urls: Some(Vec::new()),
        ..DebugOptions::default()
    };
    let err = load(&libc, &opts).unwrap_err();
    assert!(err.is_missing_debug_info(), "{err:?}");
    let DebugInfoError::NoDebugInfo {
        build_id, tried, ..
    } = &err
    else {
        panic!("expected NoDebugInfo, got {err:?}");
    };
    assert_eq!(*build_id, id);
    assert!(
        tried.contains(&build_id_path(Path::new("/usr/lib/debug"), &id)),
        "{tried:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("libc6-dbg"), "{msg}");
    assert!(msg.contains("DEBUGINFOD_URLS"), "{msg}");
    assert!(msg.contains("debuginfo-install glibc"), "{msg}");
    println!("{msg}");
}

/// A layout read from `--debug-file` is never cached: the file may carry the libc's build-id
/// and still not be its debug file.
#[test]
fn explicit_debug_file_is_not_cached() {
    let cache = TempDir::new("explicit-cache");
    let opts = DebugOptions {
        debug_file: Some(system_debug_file()),
        ..options(cache.path())
    };
    let explicit = load(Path::new(LIBC), &opts).unwrap();
    assert!(!explicit.from_cache);
    assert!(!cache.path().join("layouts").exists());
}

/// A `--debug-file` that is missing, not ELF or stripped is missing debug info, not a libc
/// that is not glibc.
#[test]
fn explicit_debug_file_without_debug_info() {
    let dir = TempDir::new("explicit-unusable");
    let not_elf = dir.path().join("not-elf.debug");
    fs::write(&not_elf, b"not a debug file").unwrap();
    for (file, says) in [
        (PathBuf::from(LIBC), "no debug info"),
        (dir.path().join("absent.debug"), "No such file"),
        (not_elf, "no ELF magic"),
    ] {
        let opts = DebugOptions {
            debug_file: Some(file.clone()),
            ..options(dir.path())
        };
        let err = load(Path::new(LIBC), &opts).unwrap_err();
        assert!(
            matches!(err, DebugInfoError::UnusableDebugFile { .. }),
            "{file:?}: {err:?}"
        );
        assert!(err.is_missing_debug_info());
        assert!(err.to_string().contains(says), "{err}");
    }
}

#[test]
fn debug_file_of_another_build_is_rejected() {
    let debug_file = system_debug_file();
    let dir = TempDir::new("mismatch");
    let libc = dir.path().join("libc.so.6");
    let id = copy_with_build_id(Path::new(LIBC), &libc, 0x33);
    // The real debug file, planted where the patched build-id points: its own build-id differs.
    let extra = dir.path().join("debug");
    let planted = build_id_path(&extra, &id);
    copy_into(&debug_file, &planted);
    let opts = DebugOptions {
        use_cache: false,
        extra_debug_dirs: vec![extra],
        debuginfod_urls: Some(Vec::new()),
        ..DebugOptions::default()
    };
    let err = load(&libc, &opts).unwrap_err();
    let DebugInfoError::NoDebugInfo { tried, notes, .. } = &err else {
        panic!("expected NoDebugInfo, got {err:?}");
    };
    assert_eq!(tried.first(), Some(&planted));
    assert!(
        notes.iter().any(|n| n.contains("belongs to another build")),
        "{notes:?}"
    );

    // The same file given explicitly is refused too, naming both build-ids.
    let opts = DebugOptions {
        debug_file: Some(debug_file.clone()),
        ..opts
    };
    let err = load(&libc, &opts).unwrap_err();
    assert!(
        matches!(err, DebugInfoError::BuildIdMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&id), "{err}");
}

#[test]
fn extra_debug_dirs_come_first_and_explicit_file_works() {
    let debug_file = system_debug_file();
    let dir = TempDir::new("extra");
    let id = readelf_build_id(LIBC);
    let extra = dir.path().join("debug");
    let copy = build_id_path(&extra, &id);
    copy_into(&debug_file, &copy);
    let opts = DebugOptions {
        use_cache: false,
        extra_debug_dirs: vec![extra],
        debuginfod_urls: Some(Vec::new()),
        ..DebugOptions::default()
    };
    let found = load(Path::new(LIBC), &opts).unwrap();
    assert_eq!(found.debug_file, copy);

    let opts = DebugOptions {
        debug_file: Some(debug_file.clone()),
        use_cache: false,
        ..DebugOptions::default()
    };
    let explicit = load(Path::new(LIBC), &opts).unwrap();
    assert_eq!(explicit.debug_file, debug_file);
    assert_eq!(explicit.layout, found.layout);
}

#[test]
fn gnu_debuglink_with_crc() {
    let debug_file = system_debug_file();
    let dir = TempDir::new("debuglink");
    let libc = dir.path().join("libc.so.6");
    copy_without_build_id(Path::new(LIBC), &libc);
    let obj_data = fs::read(&libc).unwrap();
    let obj = object::File::parse(&*obj_data).unwrap();
    assert_eq!(obj.build_id().unwrap(), None);
    let (name, _crc) = obj
        .gnu_debuglink()
        .unwrap()
        .expect("libc has .gnu_debuglink");
    let linked = dir
        .path()
        .join(".debug")
        .join(std::str::from_utf8(name).unwrap());
    copy_into(&debug_file, &linked);

    let cache = TempDir::new("debuglink-cache");
    let found = load(&libc, &options(cache.path())).unwrap();
    assert_eq!(found.debug_file, linked);
    assert_eq!(found.build_id, "");
    assert!(
        !cache.path().join("layouts").exists(),
        "no build-id, no cache"
    );

    // Another file under that name fails the CRC check.
    fs::copy("/bin/true", &linked).unwrap();
    let err = load(&libc, &options(cache.path())).unwrap_err();
    assert!(matches!(err, DebugInfoError::NoBuildId { .. }), "{err:?}");
    assert!(err.to_string().contains("--debug-file"), "{err}");
}

#[test]
fn corrupt_cache_is_ignored_and_rewritten() {
    system_debug_file();
    let cache = TempDir::new("corrupt");
    let id = readelf_build_id(LIBC);
    let cache_file = cache.path().join("layouts").join(format!("{id}.json"));
    fs::create_dir_all(cache_file.parent().unwrap()).unwrap();
    let opts = options(cache.path());
    for junk in [
        &b"{ this is not json"[..],
        b"",
        b"{\"cache_format\": 1}",
        b"\xff\xfe\x00garbage",
    ] {
        fs::write(&cache_file, junk).unwrap();
        let info = load(Path::new(LIBC), &opts).unwrap();
        assert!(!info.from_cache);
        let again = load(Path::new(LIBC), &opts).unwrap();
        assert!(again.from_cache, "rewritten after {junk:?}");
        assert_eq!(again.layout, info.layout);
    }
}

/// `python3 -m http.server` on 127.0.0.1, stopped when dropped.
struct HttpServer {
    child: Child,
    url: String,
}

impl HttpServer {
    fn start(root: &Path) -> Option<Self> {
        let mut child = match Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                println!("skipped: cannot run python3 ({e})");
                return None;
            }
        };
        // "Serving HTTP on 127.0.0.1 port 40211 (http://127.0.0.1:40211/) ..."
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse::<u16>().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            println!("skipped: python3 http.server did not start ({line:?})");
            return None;
        };
        Some(HttpServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn debuginfod_download_over_loopback() {
    let debug_file = system_debug_file();
    let dir = TempDir::new("debuginfod");
    // A libc whose build-id no local file has, and its debug file with the same change.
    let libc = dir.path().join("libc.so.6");
    let id = copy_with_build_id(Path::new(LIBC), &libc, 0xc3);
    let served = dir.path().join("srv/buildid").join(&id).join("debuginfo");
    fs::create_dir_all(served.parent().unwrap()).unwrap();
    assert_eq!(copy_with_build_id(&debug_file, &served, 0xc3), id);

    let Some(server) = HttpServer::start(&dir.path().join("srv")) else {
        return;
    };
    let cache = dir.path().join("cache");
    let opts = DebugOptions {
        debuginfod_urls: Some(vec![format!("{}/", server.url)]),
        debuginfod_timeout: Some(Duration::from_secs(10)),
        ..options(&cache)
    };
    let found = load(&libc, &opts).unwrap();
    let stored = cache.join("debuginfod").join(format!("{id}.debug"));
    assert_eq!(found.debug_file, stored);
    assert_eq!(fs::read(&stored).unwrap(), fs::read(&served).unwrap());
    let reference = load_uncached(Path::new(LIBC), &debug_file).unwrap();
    assert_eq!(found.layout, reference);

    // Later runs reuse the download, with the server gone and the layout cache off.
    drop(server);
    let opts = DebugOptions {
        use_cache: false,
        ..opts
    };
    let again = load(&libc, &opts).unwrap();
    assert_eq!(again.debug_file, stored);
    assert!(!again.from_cache);
}

#[test]
fn debuginfod_not_found_and_timeout() {
    let dir = TempDir::new("debuginfod-errors");
    let libc = dir.path().join("libc.so.6");
    let id = copy_with_build_id(Path::new(LIBC), &libc, 0x77);
    fs::create_dir_all(dir.path().join("srv")).unwrap();
    let cache = dir.path().join("cache");

    if let Some(server) = HttpServer::start(&dir.path().join("srv")) {
        let opts = DebugOptions {
            debuginfod_urls: Some(vec![server.url.clone()]),
            debuginfod_timeout: Some(Duration::from_secs(10)),
            ..options(&cache)
        };
        let err = load(&libc, &opts).unwrap_err();
        let DebugInfoError::NoDebugInfo { notes, .. } = &err else {
            panic!("expected NoDebugInfo, got {err:?}");
        };
        assert!(notes.iter().any(|n| n.contains("404")), "{notes:?}");
        assert!(
            !cache
                .join("debuginfod")
                .join(format!("{id}.debug"))
                .exists()
        );
    }

    // A server that accepts connections and never answers: a clean timeout.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let opts = DebugOptions {
        debuginfod_urls: Some(vec![url.clone()]),
        debuginfod_timeout: Some(Duration::from_secs(1)),
        ..options(&cache)
    };
    let start = Instant::now();
    let err = load(&libc, &opts).unwrap_err();
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    let DebugInfoError::Debuginfod {
        url: failed_url,
        build_id,
        ..
    } = &err
    else {
        panic!("expected Debuginfod, got {err:?}");
    };
    assert!(failed_url.starts_with(&url), "{failed_url}");
    assert_eq!(*build_id, id);
    assert!(err.is_missing_debug_info());
    let msg = err.to_string();
    assert!(msg.contains("libc6-dbg"), "{msg}");
    println!("{msg} (after {elapsed:?})");
    assert!(
        !cache
            .join("debuginfod")
            .join(format!("{id}.debug"))
            .exists()
    );
    drop(listener);
}

/// A C program whose structs carry the names the extractor looks for, with the member kinds
/// glibc does not use today (anonymous members, multi-dimensional, zero-length and flexible
/// arrays, qualified typedefs, enums, atomics). It prints what the compiler says about each
/// member (`offsetof`, `sizeof`), which the extraction from its DWARF must reproduce.
const SYNTHETIC_C: &str = r#"
#include <stddef.h>
#include <stdio.h>
typedef const volatile long cvlong;
typedef struct inner { short s; char c[3]; } inner_t;
struct malloc_chunk {
  long a;
  char zero[0];
  char big[300];
  int m[2][3];
  struct { int x; int y; };
  union { long u1; char u2; };
  cvlong cv;
  inner_t in[4];
  void (*fp)(void);
  enum { E1, E2 } e;
  _Atomic int at;
  char flex[];
};
typedef struct _heap_info { struct _heap_info *prev; size_t size; char pad[8]; } heap_info;
typedef struct { int only_by_typedef; } tcache_entry;
struct malloc_chunk *chunk; heap_info *heap; tcache_entry *entry;
#define S(t) printf("S %s %zu\n", #t, sizeof(t));
#define F(t, n) printf("F %s %s %zu %zu\n", #t, #n, offsetof(t, n), sizeof(((t *)0)->n));
#define A(t, n) printf("A %s %s %zu %zu %zu %zu\n", #t, #n, offsetof(t, n), \
  sizeof(((t *)0)->n), sizeof(((t *)0)->n) / sizeof(((t *)0)->n[0]), sizeof(((t *)0)->n[0]));
#define MC struct malloc_chunk
int main(void) {
  S(MC) F(MC, a) A(MC, zero) A(MC, big) A(MC, m) F(MC, x) F(MC, y) F(MC, u1) F(MC, u2)
  F(MC, cv) A(MC, in) F(MC, fp) F(MC, e) F(MC, at)
  printf("A MC flex %zu 0 0 1\n", offsetof(MC, flex));
  S(heap_info) F(heap_info, prev) F(heap_info, size) A(heap_info, pad)
  S(tcache_entry) F(tcache_entry, only_by_typedef)
  return 0;
}
"#;

#[test]
fn synthetic_structs_match_the_compiler() {
    let dir = TempDir::new("synthetic");
    let variants: [(&str, &[&str]); 5] = [
        ("malloc.c", &["-gdwarf-5"]),
        ("malloc.c", &["-gdwarf-5", "-O2", "-gz=zlib"]),
        ("other.c", &["-gdwarf-4"]),
        ("other.c", &["-gdwarf-2", "-gstrict-dwarf"]),
        ("malloc.c", &["-gdwarf-3", "-gz=zlib-gnu"]),
    ];
    for (i, (file, flags)) in variants.iter().enumerate() {
        let sub = dir.path().join(i.to_string());
        fs::create_dir_all(&sub).unwrap();
        let src = sub.join(file);
        let exe = sub.join("prog");
        fs::write(&src, SYNTHETIC_C).unwrap();
        let out = Command::new("gcc")
            .args(*flags)
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            other => {
                println!("skipped {flags:?}: gcc failed ({other:?})");
                continue;
            }
        }
        let printed = run(exe.to_str().unwrap(), &[]);
        let data = fs::read(&exe).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let structs = dwarf::extract_structs(&obj, None, &WANTED)
            .unwrap_or_else(|e| panic!("{flags:?}: {}", e.0));
        let by_c_name = |t: &str| match t {
            "MC" => &structs["malloc_chunk"],
            "heap_info" => &structs["heap_info"],
            "tcache_entry" => &structs["tcache_entry"],
            other => panic!("unknown struct {other}"),
        };
        let mut expected_fields: HashMap<&str, usize> = HashMap::new();
        for line in printed.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let n = |i: usize| w[i].parse::<u64>().unwrap();
            match w[0] {
                "S" => assert_eq!(by_c_name(w[1]).size, n(2), "{flags:?} sizeof {}", w[1]),
                "F" | "A" => {
                    let layout = by_c_name(w[1]);
                    let field = layout.field(w[2]).unwrap();
                    let want = Field {
                        name: w[2].to_string(),
                        offset: n(3),
                        size: n(4),
                        array_len: (w[0] == "A").then(|| n(5)),
                        element_size: if w[0] == "A" { n(6) } else { n(4) },
                    };
                    assert_eq!(*field, want, "{flags:?}");
                    *expected_fields.entry(w[1]).or_default() += 1;
                }
                _ => panic!("unexpected output {line}"),
            }
        }
        // Every member, and no other, in declaration order.
        assert_eq!(structs["malloc_chunk"].fields.len(), expected_fields["MC"]);
        assert_eq!(
            structs["heap_info"].fields.len(),
            expected_fields["heap_info"]
        );
        assert_eq!(structs["heap_info"].name, "heap_info");
        let names: Vec<&str> = structs["malloc_chunk"]
            .fields
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "a", "zero", "big", "m", "x", "y", "u1", "u2", "cv", "in", "fp", "e", "at", "flex"
            ]
        );
        assert!(!structs.contains_key("malloc_state"));
    }
}

const DWZ_COMMON_H: &str = r#"
typedef unsigned long INTERNAL_SIZE_T;
struct malloc_chunk {
  INTERNAL_SIZE_T mchunk_prev_size;
  INTERNAL_SIZE_T mchunk_size;
  struct malloc_chunk *fd;
  struct malloc_chunk *bk;
};
struct shared { int a[5]; struct malloc_chunk *c; };
"#;

const DWZ_MAIN_C: &str = r#"
#include "common.h"
struct malloc_state { int mutex; struct malloc_chunk *top; struct shared s; INTERNAL_SIZE_T bins[7]; };
struct malloc_state ms; struct malloc_chunk ch; struct shared sh;
int main(void) { return 0; }
"#;

/// Fedora's debug files keep the types several files share in a dwz supplementary file: the
/// DWARF of a program `dwz -m` processed points into it (`DW_FORM_GNU_ref_alt`,
/// `DW_FORM_GNU_strp_alt`).
#[test]
fn dwz_supplementary_file() {
    if Command::new("dwz").arg("--version").output().is_err() {
        println!("skipped: dwz is not installed (apt-get install dwz)");
        return;
    }
    let dir = TempDir::new("dwz");
    let d = dir.path();
    fs::write(d.join("common.h"), DWZ_COMMON_H).unwrap();
    fs::write(d.join("a.c"), DWZ_MAIN_C).unwrap();
    fs::write(
        d.join("b.c"),
        DWZ_MAIN_C.replace("malloc_state", "other_state"),
    )
    .unwrap();
    for name in ["a", "b"] {
        let src = d.join(format!("{name}.c"));
        run(
            "gcc",
            &[
                "-g",
                "-o",
                d.join(name).to_str().unwrap(),
                src.to_str().unwrap(),
            ],
        );
    }
    fs::copy(d.join("a"), d.join("a.orig")).unwrap();
    let sup = d.join("common.dwz");
    let out = Command::new("dwz")
        .arg("-m")
        .arg(&sup)
        .arg("-M")
        .arg(&sup)
        .arg(d.join("a"))
        .arg(d.join("b"))
        .output()
        .unwrap();
    assert!(out.status.success(), "dwz: {out:?}");

    let a = fs::read(d.join("a")).unwrap();
    let a_obj = object::File::parse(&*a).unwrap();
    let (link_name, sup_id) = a_obj
        .gnu_debugaltlink()
        .unwrap()
        .expect("dwz added an altlink");
    assert_eq!(link_name, sup.as_os_str().as_encoded_bytes());
    let sup_data = fs::read(&sup).unwrap();
    let sup_obj = object::File::parse(&*sup_data).unwrap();

    // With the supplementary file, the same layouts as before dwz.
    let orig = fs::read(d.join("a.orig")).unwrap();
    let want =
        dwarf::extract_structs(&object::File::parse(&*orig).unwrap(), None, &WANTED).unwrap();
    let got = dwarf::extract_structs(&a_obj, Some(&sup_obj), &WANTED).unwrap();
    for name in ["malloc_state", "malloc_chunk"] {
        assert_eq!(got[name], want[name], "{name}");
    }
    assert_array(&got["malloc_state"], "bins", 7);
    // Without it, no guessing.
    assert!(dwarf::extract_structs(&a_obj, None, &WANTED).map_or(true, |s| s.is_empty()));

    // Finding it: at the name the link gives, by build-id in a debug dir, from debuginfod.
    let facts = Library::read(Path::new(LIBC)).unwrap();
    let extra = d.join("debug");
    let cache = d.join("cache");
    let opts = DebugOptions {
        extra_debug_dirs: vec![extra.clone()],
        debuginfod_urls: Some(Vec::new()),
        ..options(&cache)
    };
    let mut finder = locate::Finder::new(&facts, &MallocReader, &opts, Some(&cache));
    let (found, _) = finder.find_sup(&d.join("a"), link_name, sup_id).unwrap();
    assert_eq!(found, sup);

    let sup_hex: String = sup_id.iter().map(|b| format!("{b:02x}")).collect();
    let by_id = build_id_path(&extra, &sup_hex);
    copy_into(&sup, &by_id);
    fs::rename(&sup, d.join("moved.dwz")).unwrap();
    let mut finder = locate::Finder::new(&facts, &MallocReader, &opts, Some(&cache));
    let (found, _) = finder.find_sup(&d.join("a"), link_name, sup_id).unwrap();
    assert_eq!(found, by_id);

    fs::remove_file(&by_id).unwrap();
    let mut finder = locate::Finder::new(&facts, &MallocReader, &opts, Some(&cache));
    let err = finder
        .find_sup(&d.join("a"), link_name, sup_id)
        .unwrap_err();
    assert!(err.is_missing_debug_info(), "{err:?}");
    assert!(err.to_string().contains("dwz supplementary file"), "{err}");

    let served = d.join("srv/buildid").join(&sup_hex).join("debuginfo");
    copy_into(&d.join("moved.dwz"), &served);
    let Some(server) = HttpServer::start(&d.join("srv")) else {
        return;
    };
    let opts = DebugOptions {
        debuginfod_urls: Some(vec![server.url.clone()]),
        ..opts
    };
    let mut finder = locate::Finder::new(&facts, &MallocReader, &opts, Some(&cache));
    let (found, data) = finder.find_sup(&d.join("a"), link_name, sup_id).unwrap();
    assert_eq!(
        found,
        cache.join("debuginfod").join(format!("{sup_hex}.debug"))
    );
    assert_eq!(data, sup_data);
}
