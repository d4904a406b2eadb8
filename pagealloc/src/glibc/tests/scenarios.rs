//! Processes the walker once got wrong as a whole, laid out from scratch: not corruptions of
//! a valid heap, but states glibc itself leaves.
use super::synthetic::*;
use super::walking::*;
use crate::glibc::IS_MMAPPED;
use crate::proc::memory::ImageMemory;
use crate::state::heap::{HeapFigures, HeapMap};

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
