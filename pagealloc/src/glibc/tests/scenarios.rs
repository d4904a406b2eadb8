//! Processes the walker once got wrong as a whole, laid out from scratch: not corruptions of
//! a valid heap, but states glibc itself leaves.
use super::synthetic::*;
use super::walking::*;
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
