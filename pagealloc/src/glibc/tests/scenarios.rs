//! Processes the walker once got wrong as a whole, laid out from scratch: not corruptions of
//! a valid heap, but states glibc itself leaves.
use super::synthetic::*;
use super::walking::*;
use crate::glibc::{IS_MMAPPED, PREV_INUSE};
use crate::proc::memory::ImageMemory;
use crate::state::heap::{HeapFigures, HeapMap, NoteKind};

/// The fixed heap of one arena, without mmapped chunks.
fn one_arena() -> Synthetic {
    Synthetic::build(Spec {
        seed: 3,
        arena2: false,
        mmapped: false,
        random: false,
    })
}

/// Walks `memory` as `syn`'s, whole and in parts; a walk that fails is a test failure.
fn walked(syn: &Synthetic, memory: &ImageMemory) -> HeapMap {
    run_walk(syn, memory)
        .unwrap_or_else(|why| panic!("{why}"))
        .unwrap_or_else(|e| panic!("the walk failed: {e}"))
}

/// glibc never ran malloc_init_state on the main arena (the program never called malloc, or
/// another allocator serves it): everything but `next` is zero. An empty heap, no notes.
#[test]
fn main_arena_never_initialised_is_an_empty_heap() {
    let o = &glibc().o;
    let mut syn = one_arena();
    let mut memory = syn.memory.clone();
    poke_bytes(&mut memory, MAIN_ARENA, &vec![0; o.state_size as usize]);
    poke(&mut memory, MAIN_ARENA + o.state_next, MAIN_ARENA);
    poke(&mut memory, MP + o.mp_sbrk_base, 0);
    syn.mappings.retain(|m| m.path != "[heap]");
    let map = walked(&syn, &memory);
    assert!(map.notes.is_empty(), "{:?}", map.notes);
    assert_eq!(map.arenas.len(), 1);
    assert!(map.arenas[0].heaps.is_empty() && map.segments.is_empty());
    assert_eq!(map.totals, HeapFigures::default());
}

/// The kernel merged the mappings of two mmapped chunks with a page of other anonymous memory
/// below them: the chunks lie inside the mapping, not at its start. The second was moved up by
/// memalign (its prev_size says how far) and keeps the header of its whole mapping in place.
#[test]
fn mmapped_chunks_inside_a_merged_mapping() {
    let o = &glibc().o;
    let page = glibc().page;
    let mut syn = one_arena();
    let base = MMAP_CHUNK;
    let mut bytes = vec![0u8; 5 * page as usize];
    put_word(&mut bytes, 0, 0x1234);
    put_word(&mut bytes, o.chunk_size, 0x5678);
    let first = page;
    put_word(&mut bytes, first + o.chunk_size, (2 * page) | IS_MMAPPED);
    let second = 3 * page;
    put_word(&mut bytes, second + o.chunk_size, (2 * page) | IS_MMAPPED);
    let moved = second + 0x100;
    put_word(&mut bytes, moved + o.chunk_size - o.size_sz, 0x100);
    put_word(
        &mut bytes,
        moved + o.chunk_size,
        (2 * page - 0x100) | IS_MMAPPED,
    );
    syn.memory.regions.push((base, bytes));
    syn.mappings.push(mapping(base, 5 * page, ""));
    let mut memory = syn.memory.clone();
    poke(&mut memory, MP + o.mp_n_mmaps, 2);
    poke(&mut memory, MP + o.mp_mmapped_mem, 4 * page);
    let map = walked(&syn, &memory);
    assert!(map.notes.is_empty(), "{:?}", map.notes);
    let expected = [(base + first, 2 * page), (base + second, 2 * page)];
    let found: Vec<(u64, u64)> = map.mmapped.iter().map(|c| (c.address, c.bytes)).collect();
    assert_eq!(found, expected);
}

/// Where the main arena's second region lies in [`noncontiguous`]: below the brk heap, in
/// anonymous memory of its own.
const REGION: u64 = 0x1400_0000_0000;

/// The main arena after sbrk failed: sysmalloc mapped a region of two pages and moved top
/// there; the old top keeps its bytes less two fenceposts at the end of the brk heap (here it
/// stays in use, as when it was just allocated from). Returns the process, its memory and the
/// figures the walk must find.
fn noncontiguous() -> (Synthetic, ImageMemory, HeapFigures) {
    let o = &glibc().o;
    let page = glibc().page;
    let mut syn = one_arena();
    let main = &syn.arenas[0];
    let (old_top, old_size) = (main.top, main.end - main.top);
    let fencepost = 2 * o.size_sz;
    let mut memory = syn.memory.clone();
    poke(
        &mut memory,
        old_top + o.chunk_size,
        (old_size - 2 * fencepost) | PREV_INUSE,
    );
    for at in [main.end - 2 * fencepost, main.end - fencepost] {
        poke(&mut memory, at + o.chunk_size, fencepost | PREV_INUSE);
    }
    let mut region = vec![0u8; 2 * page as usize];
    put_word(&mut region, o.chunk_size, (2 * page) | PREV_INUSE);
    memory.regions.push((REGION, region));
    syn.mappings.push(mapping(REGION, 2 * page, ""));
    poke(&mut memory, MAIN_ARENA + o.state_top, REGION);
    let system = main.end - main.start + 2 * page;
    poke(&mut memory, MAIN_ARENA + o.state_system_mem, system);

    let mut figures = main.figures;
    figures.system_bytes = system;
    figures.top_bytes = 2 * page;
    figures.live_chunks += 1;
    figures.live_bytes += old_size - 2 * fencepost;
    figures.overhead_bytes += 2 * fencepost;
    (syn, memory, figures)
}

/// Both regions are walked: the brk heap up to its fenceposts, and the mapped one with top.
#[test]
fn noncontiguous_main_arena_is_walked_region_by_region() {
    let (syn, memory, figures) = noncontiguous();
    let map = walked(&syn, &memory);
    assert!(map.notes.is_empty(), "{:?}", map.notes);
    let heaps: Vec<(u64, u64)> = (map.arenas[0].heaps.iter())
        .map(|h| (h.start, h.end))
        .collect();
    let main = &syn.arenas[0];
    assert_eq!(
        heaps,
        [(REGION, REGION + figures.top_bytes), (main.start, main.end)]
    );
    let f = &map.arenas[0].figures;
    let states = |f: &HeapFigures| {
        let counts = (f.live_chunks, f.live_bytes, f.tcache_bytes, f.fastbin_bytes);
        (
            counts,
            f.bin_bytes,
            f.top_bytes,
            f.overhead_bytes,
            f.unknown_bytes,
            f.system_bytes,
        )
    };
    assert_eq!(states(f), states(&figures));
    check_accounting(&map).unwrap();
}

/// A region that cannot be found (the first page of the brk heap is not resident) is not
/// dropped: its bytes are unknown, and a note says the map is incomplete.
#[test]
fn noncontiguous_main_arena_with_a_region_not_found() {
    let (syn, mut memory, figures) = noncontiguous();
    let page = glibc().page as usize;
    let main = &syn.arenas[0];
    let brk_heap = memory
        .regions
        .iter_mut()
        .find(|r| r.0 == main.start)
        .unwrap();
    brk_heap.0 += page as u64;
    brk_heap.1.drain(..page);
    let map = walked(&syn, &memory);
    let incomplete: Vec<_> = (map.notes.iter())
        .filter(|n| n.kind == NoteKind::Incomplete)
        .collect();
    assert_eq!(incomplete.len(), 1, "{:?}", map.notes);
    let f = &map.arenas[0].figures;
    assert_eq!(f.unknown_bytes, main.end - main.start);
    assert_eq!(f.top_bytes, figures.top_bytes);
    assert_eq!(f.system_bytes, figures.system_bytes);
    check_accounting(&map).unwrap();
}

/// memalign moved chunks up 48 bytes in their mappings (`aligned_alloc(32)`,
/// `posix_memalign(64)`), then realloc mremapped them: glibc rewrote the moved chunk's header,
/// not the one at the start of the mapping, which keeps the old size. A chunk shrunk to one
/// page alone in its mapping (its old size does not fit there), and in a mapping the kernel
/// merged: one shrunk (its old size covers the next chunk), a plain chunk, one grown.
#[test]
fn mmapped_chunks_memaligned_then_remapped() {
    let o = &glibc().o;
    let page = glibc().page;
    let lead = 64 - 2 * o.size_sz;
    let mut syn = one_arena();
    // The header at the start of a mapping, and the header of the chunk moved up `lead`.
    let memaligned = |bytes: &mut Vec<u8>, at: u64, stale: u64, current: u64| {
        put_word(bytes, at + o.chunk_size, stale | IS_MMAPPED);
        put_word(bytes, at + lead + o.chunk_size - o.size_sz, lead);
        put_word(
            bytes,
            at + lead + o.chunk_size,
            (current - lead) | IS_MMAPPED,
        );
    };
    let alone = MMAP_CHUNK;
    let mut bytes = vec![0u8; page as usize];
    memaligned(&mut bytes, 0, 60 * page, page);
    syn.memory.regions.push((alone, bytes));
    syn.mappings.push(mapping(alone, page, ""));

    let merged = MMAP_CHUNK + 16 * page;
    let mut bytes = vec![0u8; 5 * page as usize];
    memaligned(&mut bytes, 0, 3 * page, page);
    put_word(&mut bytes, page + o.chunk_size, (2 * page) | IS_MMAPPED);
    memaligned(&mut bytes, 3 * page, page, 2 * page);
    syn.memory.regions.push((merged, bytes));
    syn.mappings.push(mapping(merged, 5 * page, ""));

    let mut memory = syn.memory.clone();
    poke(&mut memory, MP + o.mp_n_mmaps, 4);
    poke(&mut memory, MP + o.mp_mmapped_mem, 6 * page);
    let map = walked(&syn, &memory);
    assert!(map.notes.is_empty(), "{:?}", map.notes);
    let expected = [
        (alone, page),
        (merged, page),
        (merged + page, 2 * page),
        (merged + 3 * page, 2 * page),
    ];
    let found: Vec<(u64, u64)> = map.mmapped.iter().map(|c| (c.address, c.bytes)).collect();
    assert_eq!(found, expected);
}

/// memalign moved chunks up more than a page (aligned to 64 KiB or 2 MiB: the moved header ends
/// a page past the first, the pages between never written), then realloc mremapped them. One
/// shrunk, whose old size covers the plain chunk after it; one grown, the page between its
/// headers resident with zeros (a transparent huge page).
#[test]
fn mmapped_chunks_aligned_past_a_page_then_remapped() {
    let o = &glibc().o;
    let page = glibc().page;
    let lead = 3 * page - 2 * o.size_sz;
    let mut syn = one_arena();
    // The first page of a mapping, its header of `stale` bytes; the page whose end holds the
    // header of the chunk moved up `lead`, the mapping now `current` bytes.
    let memaligned = |syn: &mut Synthetic, at: u64, stale: u64, current: u64, zeros: bool| {
        let mut first = vec![0u8; page as usize];
        put_word(&mut first, o.chunk_size, stale | IS_MMAPPED);
        let mut moved = vec![0u8; page as usize];
        put_word(&mut moved, page - 2 * o.size_sz, lead);
        put_word(
            &mut moved,
            page - 2 * o.size_sz + o.size_sz,
            (current - lead) | IS_MMAPPED,
        );
        moved.extend(vec![0x5a; page as usize]);
        if zeros {
            first.extend(vec![0u8; page as usize]);
        }
        syn.memory.regions.push((at, first));
        syn.memory.regions.push((at + 2 * page, moved));
    };
    let shrunk = MMAP_CHUNK;
    memaligned(&mut syn, shrunk, 40 * page, 5 * page, false);
    let plain = shrunk + 5 * page;
    let mut bytes = vec![0x5au8; 2 * page as usize];
    put_word(&mut bytes, 0, 0);
    put_word(&mut bytes, o.chunk_size, (2 * page) | IS_MMAPPED);
    syn.memory.regions.push((plain, bytes));
    syn.mappings.push(mapping(shrunk, 7 * page, ""));
    let grown = MMAP_CHUNK + 64 * page;
    memaligned(&mut syn, grown, 4 * page, 6 * page, true);
    syn.mappings.push(mapping(grown, 6 * page, ""));

    let mut memory = syn.memory.clone();
    poke(&mut memory, MP + o.mp_n_mmaps, 3);
    poke(&mut memory, MP + o.mp_mmapped_mem, 13 * page);
    let map = walked(&syn, &memory);
    assert!(map.notes.is_empty(), "{:?}", map.notes);
    let expected = [(shrunk, 5 * page), (plain, 2 * page), (grown, 6 * page)];
    let found: Vec<(u64, u64)> = map.mmapped.iter().map(|c| (c.address, c.bytes)).collect();
    assert_eq!(found, expected);
}
