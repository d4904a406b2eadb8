//! malloc's layout derived from this machine's real glibc without its debug info, checked
//! against what its debug info (libc6-dbg) says: the table's entry and every address.
use std::path::Path;

use super::synthetic::*;
use super::walking::WHOLE;
use crate::debuginfo::{DebugOptions, Library};
use crate::glibc::debug::load;
use crate::glibc::derive::{derive, verify};
use crate::glibc::table::{LayoutTable, MallocStructs};
use crate::proc::memory::ImageMemory;

const LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";

fn from_debug_info() -> crate::glibc::debug::MallocLayout {
    let options = DebugOptions {
        use_cache: false,
        debuginfod_urls: Some(Vec::new()),
        ..DebugOptions::default()
    };
    load(Path::new(LIBC), &options)
        .expect("this machine's glibc debug info (libc6-dbg)")
        .layout
}

/// The table names this build, and its entry is what the build's DWARF says (the table is
/// generated, `cargo xtask layouts`: a stale table fails here).
#[test]
fn the_table_entry_of_this_glibc_is_its_dwarf() {
    let table = LayoutTable::builtin().unwrap();
    let build_id = Library::read(Path::new(LIBC)).unwrap().build_id_hex();
    let entry = (table.entries.iter())
        .find(|e| e.builds.iter().any(|b| b.build_id == build_id))
        .unwrap_or_else(|| panic!("build {build_id} is not in the table: cargo xtask layouts"));
    let dwarf = from_debug_info();
    assert_eq!(entry.structs, MallocStructs::of(&dwarf));
    let version = dwarf.glibc_version.unwrap();
    assert!(entry.versions.contains(&version));
    assert_eq!(table.lookup(&version).unwrap(), &entry.structs);
}

/// Every address the code gives is the one the symbol table gives.
#[test]
fn the_code_gives_the_addresses_the_debug_info_gives() {
    let derived = derive(Path::new(LIBC)).unwrap().layout;
    let dwarf = from_debug_info();
    let (d, s) = (&derived.symbols, &dwarf.symbols);
    assert_eq!(d.main_arena, s.main_arena, "main_arena");
    assert_eq!(d.mp_, s.mp_, "mp_");
    assert_eq!(d.tcache_key, s.tcache_key, "tcache_key");
    assert_eq!(d.int_malloc, s.int_malloc, "_int_malloc");
    assert_eq!(d.first_load_vaddr, s.first_load_vaddr);
    assert_eq!(derived.glibc_version, dwarf.glibc_version);
    assert_eq!(MallocStructs::of(&derived), MallocStructs::of(&dwarf));
    // tcache_init's code, inlined: each derived call of _int_malloc lies in one of its ranges.
    assert!(!d.tcache_init.is_empty(), "no tcache_init call found");
    for &(at, next) in &d.tcache_init {
        assert!(
            s.tcache_init.iter().any(|&(lo, hi)| lo <= at && next <= hi),
            "call at {at:#x} is not in tcache_init's code {:x?}",
            s.tcache_init
        );
    }
}

/// A version outside the table is refused by name, with the versions it covers.
#[test]
fn an_unknown_version_is_named() {
    let table = LayoutTable::builtin().unwrap();
    let error = table.lookup("2.99").unwrap_err();
    assert!(
        error.starts_with("glibc 2.99 is not in pagealloc's table") && error.contains("2.36"),
        "{error}"
    );
}

/// A synthetic process with two arenas and an mmapped chunk, walked: what [`verify`] checks.
fn walked() -> (Synthetic, crate::state::heap::HeapMap) {
    let syn = Synthetic::build(Spec {
        seed: 3,
        arena2: true,
        mmapped: true,
        random: false,
    });
    let map = crate::glibc::walk(&syn.libc(), &syn.memory, &syn.mappings, WHOLE).unwrap();
    assert!(map.is_consistent() && map.arenas.len() == 2 && map.mmapped_chunks == 1);
    (syn, map)
}

#[test]
fn a_heap_that_fits_the_derived_facts_passes_the_check() {
    let (syn, map) = walked();
    verify(&syn.libc(), &syn.memory, &syn.mappings, &map).unwrap();
}

/// Each derived fact that is off is caught: an `mp_` one word off, an arena ring that does not
/// come back to `main_arena`, a `main_arena` whose top ends no heap.
#[test]
fn a_heap_that_does_not_fit_fails_the_check_with_the_reason() {
    let (syn, map) = walked();
    let o = &glibc().o;
    let fails = |libc: &crate::glibc::Libc, memory: &ImageMemory, says: &str| {
        let why = verify(libc, memory, &syn.mappings, &map)
            .unwrap_err()
            .to_string();
        assert!(why.contains(says), "{why}");
        assert!(why.contains("the page map alone is shown"), "{why}");
    };
    let mut libc = syn.libc();
    libc.mp += 8;
    fails(&libc, &syn.memory, "mp_");

    let mut memory = syn.memory.clone();
    let arena2 = syn.arenas[1].state;
    poke(&mut memory, arena2 + o.state_next, arena2);
    fails(&syn.libc(), &memory, "does not return to it");

    let mut memory = syn.memory.clone();
    let top = peek(&memory, MAIN_ARENA + o.state_top).unwrap();
    poke(&mut memory, MAIN_ARENA + o.state_top, top - o.alignment);
    fails(&syn.libc(), &memory, "ends none of its heaps");
}
