//! What makes a C library glibc, in one place: its file names, the symbols that tell it from
//! musl, its version banner, and what pagealloc reads from its debug info (the structs and
//! static variables of malloc). The chunk flags are shared with the eBPF programs, so they live
//! in `pagealloc-common` and are re-exported here.
use std::path::{Path, PathBuf};

use object::{Object, ObjectSymbol};

use crate::debuginfo::{Want, Wanted};
use crate::proc::DELETED;
use crate::state::heap::HeapMap;
use crate::state::pages::Mapping;

pub use pagealloc_common::CHUNK_FLAG_BITS as FLAG_BITS;
pub use pagealloc_common::{IS_MMAPPED, NON_MAIN_ARENA, PREV_INUSE};

/// `libc.so.6` (glibc ≥ 2.34 and most distributions before) or `libc-2.NN.so`.
pub fn is_libc_name(path: &str) -> bool {
    let name = file_name(path);
    name == "libc.so.6" || (name.starts_with("libc-2.") && name.ends_with(".so"))
}

/// The file name of a mapping's path; a file deleted since it was mapped (a library upgraded
/// under a running process) is still the library it was.
fn file_name(path: &str) -> &str {
    let path = path.strip_suffix(DELETED).unwrap_or(path);
    path.rsplit('/').next().unwrap_or(path)
}

/// glibc's dynamic loader: `ld-linux-x86-64.so.2` and the like, `ld.so.1`, `ld-2.NN.so`.
fn is_loader_name(path: &str) -> bool {
    let name = file_name(path);
    name.starts_with("ld-linux") || name.starts_with("ld.so") || name.starts_with("ld-2.")
}

/// The ELF object mapped in the target, other than glibc's libc and loader, that defines (as
/// dynamic symbols) both `malloc` and `free`, the main executable included: the allocator that
/// serves the program's mallocs instead of glibc's. `host_path` turns a path as the target sees
/// it into one this process can open (through `/proc/PID/root`).
pub fn interposing_allocator(
    mappings: &[Mapping],
    host_path: impl Fn(&Path) -> PathBuf,
) -> Option<String> {
    let mut seen: Vec<&str> = Vec::new();
    for m in mappings {
        let path = m.path.as_str();
        if !path.starts_with('/') || is_libc_name(path) || is_loader_name(path) {
            continue;
        }
        if seen.contains(&path) {
            continue;
        }
        seen.push(path);
        let Ok(file) = std::fs::File::open(host_path(Path::new(path))) else {
            continue; // deleted, or not ours to read: nothing to tell
        };
        // Only the headers and the dynamic symbols are read, not the whole file.
        let cache = object::ReadCache::new(file);
        let Ok(obj) = object::File::parse(&cache) else {
            continue;
        };
        if defines(&obj, [b"malloc", b"free"]) == Some([true, true]) {
            return Some(path.to_string());
        }
    }
    None
}

/// `heap`, with a note that names the allocator serving the program if it is not glibc's
/// (see [`interposing_allocator`]).
pub fn note_interposer(
    mut heap: HeapMap,
    mappings: &[Mapping],
    host_path: impl Fn(&Path) -> PathBuf,
) -> HeapMap {
    if let Some(path) = interposing_allocator(mappings, host_path) {
        heap.note_limitation(format!(
            "malloc is served by {path}, not by glibc: the heap map shows glibc's malloc only"
        ));
    }
    heap
}

/// Which of `names` `obj` defines as dynamic symbols; None if it has no dynamic symbols.
fn defines<'d, const N: usize>(
    obj: &object::File<'d, impl object::ReadRef<'d>>,
    names: [&[u8]; N],
) -> Option<[bool; N]> {
    let mut any_dynamic = false;
    let mut found = [false; N];
    for sym in obj.dynamic_symbols() {
        any_dynamic = true;
        if sym.is_undefined() {
            continue;
        }
        if let Some(i) = sym
            .name_bytes()
            .ok()
            .and_then(|n| names.iter().position(|w| *w == n))
        {
            found[i] = true;
        }
    }
    any_dynamic.then_some(found)
}

/// The structs of malloc read from the debug info, found first in the unit of malloc.c.
pub const WANTED: Wanted = Wanted {
    structs: MALLOC_STRUCTS,
    home_unit: is_malloc_unit_name,
};

const MALLOC_STRUCTS: &[Want] = &[
    Want {
        canonical: "malloc_state",
        structs: &["malloc_state"],
        typedefs: &[],
        required: true,
    },
    Want {
        canonical: "malloc_chunk",
        structs: &["malloc_chunk"],
        typedefs: &[],
        required: true,
    },
    Want {
        canonical: "heap_info",
        structs: &["_heap_info", "heap_info"],
        typedefs: &["heap_info"],
        required: true,
    },
    Want {
        canonical: "malloc_par",
        structs: &["malloc_par"],
        typedefs: &[],
        required: true,
    },
    Want {
        canonical: "tcache_perthread_struct",
        structs: &["tcache_perthread_struct"],
        typedefs: &["tcache_perthread_struct"],
        required: false,
    },
    Want {
        canonical: "tcache_entry",
        structs: &["tcache_entry"],
        typedefs: &["tcache_entry"],
        required: false,
    },
];

/// The static symbols read from `.symtab`: `main_arena` and `mp_` (required), `tcache_key`
/// (glibc ≥ 2.34), `__libc_version` (a fallback for the version banner), and
/// `__malloc_arena_thread_freeres` (where an exiting thread gives its tcache back) and
/// `_int_malloc` (which [`TCACHE_INIT`] calls for a new thread's tcache): probed in live mode.
pub const SYMBOLS: [&[u8]; 6] = [
    b"main_arena",
    b"mp_",
    b"tcache_key",
    b"__libc_version",
    b"__malloc_arena_thread_freeres",
    b"_int_malloc",
];

/// The static function (inlined into malloc) that allocates a thread's tcache with
/// `_int_malloc`, out of sight of the public functions' probes.
pub const TCACHE_INIT: &[u8] = b"tcache_init";

/// The compilation unit that defines malloc's structs (it includes `arena.c`).
pub fn is_malloc_unit_name(name: &[u8]) -> bool {
    name == b"malloc.c" || name.ends_with(b"/malloc.c")
}

/// Whether `obj` is glibc's shared C library, or why not.
pub fn check_elf(obj: &object::File<'_>) -> Result<(), String> {
    let Some([defines_malloc, defines_glibc_marker]) =
        defines(obj, [b"malloc", b"gnu_get_libc_version"])
    else {
        return Err(
            "it has no dynamic symbol table: it is a statically linked program (or not a \
             library at all), not a shared C library. pagealloc reads heaps through glibc's \
             shared libc.so.6; a static binary (glibc or musl) carries its own malloc and is \
             not supported"
                .into(),
        );
    };
    if !defines_malloc {
        return Err(
            "it does not define malloc: it is a program or library that uses a C library, \
             not the C library itself"
                .into(),
        );
    }
    if !defines_glibc_marker {
        return Err(
            "it defines malloc but not gnu_get_libc_version: it looks like musl or another \
             C library, whose heap pagealloc cannot read"
                .into(),
        );
    }
    Ok(())
}

/// "2.36" from glibc's banner "GNU C Library (...) stable release version 2.36.".
pub fn banner_version(rodata: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"GNU C Library";
    const VERSION: &[u8] = b"version ";
    let start = rodata.windows(BANNER.len()).position(|w| w == BANNER)?;
    let banner = &rodata[start..];
    let banner = &banner[..banner.iter().position(|&b| b == 0).unwrap_or(banner.len())];
    let at = banner.windows(VERSION.len()).position(|w| w == VERSION)? + VERSION.len();
    let version: String = banner[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|&b| char::from(b))
        .collect();
    let version = version.trim_end_matches('.');
    (!version.is_empty() && version.contains('.')).then(|| version.to_string())
}
