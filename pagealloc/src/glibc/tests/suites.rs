//! The suites and their cases.

use super::corruptions::*;
use super::synthetic::*;
use super::walking::*;
use crate::glibc::IS_MMAPPED;
use crate::proc::memory::ImageMemory;

// --- The suites --------------------------------------------------------------------------------

pub(super) struct Suite {
    pub(super) name: &'static str,
    pub(super) cases: usize,
    pub(super) run: fn(usize) -> Verdict,
}

pub(super) const SUITES: &[Suite] = &[
    Suite {
        name: "valid",
        cases: 64,
        run: valid_case,
    },
    Suite {
        name: "random_words",
        cases: 3000,
        run: random_words_case,
    },
    Suite {
        name: "targeted",
        cases: 3000,
        run: targeted_case,
    },
    Suite {
        name: "whole_segment",
        cases: 200,
        run: whole_segment_case,
    },
    Suite {
        name: "holes",
        cases: 400,
        run: hole_case,
    },
    Suite {
        name: "reread_after_a_bad_chunk",
        cases: 1,
        run: |_| corrupted(|m| m.main_size(2, |size| size + 8)),
    },
    Suite {
        name: "fencepost_then_garbage",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let c = m.main_size(2, |_| 2 * glibc().o.size_sz);
                m.set(c + 3 * glibc().o.size_sz, 0x1234_5678_9abc_def1, "after it");
            })
        },
    },
    Suite {
        name: "zero_size",
        cases: 1,
        // The chunk before top: no free list passes over what follows it.
        run: |_| corrupted(|m| m.main_size(m.syn.arenas[0].chunks.len() - 2, |_| 0)),
    },
    Suite {
        name: "heap_info_size_past_the_heap",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let at = ARENA2_HEAP + glibc().o.heap_info_size_field;
                m.set(at, HEAP_LEN + glibc().page, "heap_info.size");
            })
        },
    },
    Suite {
        name: "heap_info_size_below_the_first_chunk",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let o = &glibc().o;
                m.set(
                    ARENA2_HEAP + o.heap_info_size_field,
                    o.heap_info_size,
                    "heap_info.size",
                );
            })
        },
    },
    Suite {
        name: "heap_info_prev_cycle",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let at = ARENA2_HEAP + glibc().o.heap_info_prev;
                m.set(at, ARENA2_HEAP, "heap_info.prev (itself)");
            })
        },
    },
    Suite {
        name: "top_near_the_end_of_the_address_space",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                m.set(
                    MAIN_ARENA + glibc().o.state_top,
                    u64::MAX - 7,
                    "main_arena.top",
                )
            })
        },
    },
    Suite {
        name: "huge_hp_pagesize",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let at = MP + glibc().o.mp_hp_pagesize.unwrap();
                m.set(at, 1 << 62, "mp_.hp_pagesize");
            })
        },
    },
    Suite {
        name: "huge_mmapped_size",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let value = (u64::MAX - glibc().page + 1) | IS_MMAPPED;
                m.set(MMAP_CHUNK + glibc().o.chunk_size, value, "mmapped size");
            })
        },
    },
    Suite {
        name: "top_past_the_heap_mapping",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let n = m.syn.arenas[0].chunks.len() - 1;
                m.main_size(n, |size| size + (1 << 20));
                let claim = "top runs 1 MiB past the [heap] mapping, over unreadable pages";
                m.claims.push((0, claim.into()));
            })
        },
    },
    Suite {
        name: "top_on_a_tcache_link",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                // The last entry of a tcache list links to NULL, stored as `&next >> 12`: a
                // "size" of some 20 GiB to a top pointed (unaligned) just below it.
                let o = &glibc().o;
                let arena = &m.syn.arenas[0];
                let c = (arena.chunks.iter())
                    .find(|c| {
                        c.kind == Kind::Tcache && {
                            let at = c.addr + 2 * o.size_sz + glibc().tcache_next;
                            peek(&m.syn.memory, at) == Some(protect(at, 0))
                        }
                    })
                    .unwrap();
                let top = c.addr + 2 * o.size_sz + glibc().tcache_next - o.chunk_size;
                m.set(MAIN_ARENA + o.state_top, top, "main_arena.top");
            })
        },
    },
    Suite {
        name: "arena_top_short_of_its_heap_end",
        cases: 1,
        run: |_| {
            corrupted(|m| {
                let o = &glibc().o;
                let arena = &m.syn.arenas[1];
                let at = arena.top + o.chunk_size;
                let value = m.old(at) - glibc().page;
                m.set(at, value, "arena 2's top size");
            })
        },
    },
];

/// One corruption of the fixed heap (two arenas, an mmapped chunk), judged as the fuzz suites
/// judge theirs.
pub(super) fn corrupted<T>(edit: impl FnOnce(&mut Mutator) -> T) -> Verdict {
    let syn = Synthetic::build(Spec {
        seed: 7,
        arena2: true,
        mmapped: true,
        random: false,
    });
    let mut m = Mutator::new(&syn, 7);
    edit(&mut m);
    let expect = expect(&syn, &m.memory, &m.claims);
    judge(&syn, &m.memory, &expect, &m.done)
}

/// Intact heaps of every layout: the figures are what was laid out.
pub(super) fn valid_case(case: usize) -> Verdict {
    let syn = Synthetic::build(Spec::nth(case));
    if !syn.spec.random {
        let f = &syn.arenas[0].figures;
        ensure!(
            f.fastbin_chunks > 1
                && f.tcache_chunks > 1
                && f.bin_chunks > 1
                && f.trimmable_bytes > 0,
            "test bug: the fixed program lacks a kind of chunk: {f:?}"
        );
    }
    match run_walk(&syn, &syn.memory) {
        Err(why) => Err(format!("{why} [{:?}]", syn.spec)),
        Ok(Err(error)) => Err(format!("error: {error} [{:?}]", syn.spec)),
        Ok(Ok(map)) => check_exact(&syn, &map).map_err(|e| format!("wrong: {e} [{:?}]", syn.spec)),
    }
}

/// One to four corruptions: random bytes, or interesting values in random words.
pub(super) fn random_words_case(case: usize) -> Verdict {
    let syn = Synthetic::build(Spec::nth(case));
    let mut m = Mutator::new(&syn, 0x5eed_0000 + case as u64);
    let n = if m.rng.percent(80) {
        1
    } else {
        2 + m.rng.below(3)
    };
    for _ in 0..n {
        match m.rng.below(3) {
            0 => m.random_bytes(),
            1 => m.key_word(),
            _ => m.any_word(),
        }
    }
    let expect = expect(&syn, &m.memory, &m.claims);
    judge(&syn, &m.memory, &expect, &m.done)
}

/// Sizes, cycles, list heads, the ring, heap_info, mp_, top, the mmapped header.
pub(super) fn targeted_case(case: usize) -> Verdict {
    let syn = Synthetic::build(Spec::nth(case));
    let mut m = Mutator::new(&syn, 0x7a46_0000 + case as u64);
    let n = if m.rng.percent(85) { 1 } else { 2 };
    for _ in 0..n {
        m.targeted();
    }
    let expect = expect(&syn, &m.memory, &m.claims);
    judge(&syn, &m.memory, &expect, &m.done)
}

pub(super) fn whole_segment_case(case: usize) -> Verdict {
    let syn = Synthetic::build(Spec::nth(case));
    let mut m = Mutator::new(&syn, 0x3e6e_0000 + case as u64);
    m.whole_segment();
    let expect = expect(&syn, &m.memory, &m.claims);
    judge(&syn, &m.memory, &expect, &m.done)
}

/// `memory` without the pages at `holes` (as if they were not resident).
pub(super) fn without_pages(memory: &ImageMemory, holes: &[u64]) -> ImageMemory {
    let page = glibc().page;
    let mut regions = Vec::new();
    for (base, bytes) in &memory.regions {
        let mut start = *base;
        let end = base + bytes.len() as u64;
        let mut cuts: Vec<u64> = holes
            .iter()
            .copied()
            .filter(|&h| h >= *base && h < end)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        for cut in cuts.into_iter().chain([end]) {
            if cut > start {
                let piece = bytes[(start - base) as usize..(cut - base) as usize].to_vec();
                regions.push((start, piece));
            }
            start = cut + page;
        }
    }
    ImageMemory { regions }
}

/// Non-resident pages in the heaps. Cases 0-3 of each layout are chosen: a page of chunk
/// headers, a page inside a free chunk (nothing to report), top's header, a page of arena 2;
/// the others 1 to 3 random pages.
pub(super) fn hole_case(case: usize) -> Verdict {
    let g = glibc();
    let o = &g.o;
    let syn = Synthetic::build(Spec::nth(case / 4 * 4 + case % 2));
    let main = &syn.arenas[0];
    let page_of = |addr: u64| addr & !(g.page - 1);
    let header_page = |c: &Chunk| page_of(c.addr + o.chunk_size);
    let mut rng = Rng::new(0x401e_0000 + case as u64);
    // A page with chunk headers, after the first page and before top's.
    let middle = (main.chunks.iter())
        .map(header_page)
        .find(|&p| p > MAIN_HEAP + g.page && p < header_page(main.chunks.last().unwrap()))
        .unwrap();
    // A page inside a free chunk whose headers (and the next chunk's) are elsewhere.
    let inside = (main.chunks.iter())
        .filter(|c| matches!(c.kind, Kind::Bin(_)))
        .find_map(|c| {
            let page = (c.addr + o.chunk_struct_size).next_multiple_of(g.page);
            (page + g.page <= c.addr + c.size).then_some(page)
        });
    let holes: Vec<u64> = match (case % 4, inside) {
        (0, _) => vec![middle],
        (1, Some(inside)) => vec![inside],
        (2, _) => vec![header_page(main.chunks.last().unwrap())],
        (3, _) if syn.arenas.len() > 1 => vec![ARENA2_HEAP + g.page * (1 + rng.below(14))],
        _ => {
            let n = 1 + rng.below(3);
            let heaps: Vec<u64> = syn.arenas.iter().map(|a| a.start).collect();
            (0..n)
                .map(|_| rng.pick(&heaps) + g.page * rng.below(HEAP_LEN / g.page))
                .collect()
        }
    };
    let memory = without_pages(&syn.memory, &holes);
    let on_hole = |addr: u64| holes.contains(&page_of(addr));
    let context = || format!("[{:?}; pages {holes:x?} not resident]", syn.spec);

    // An unreadable malloc_state is an error (the walker cannot go on); a header on a hole
    // must be reported.
    let state_lost = (syn.arenas.iter()).any(|a| {
        (a.state..a.state + o.state_size)
            .step_by(g.page as usize)
            .chain([a.state + o.state_size - 1])
            .any(on_hole)
    });
    let header_lost = (syn.arenas.iter())
        .flat_map(|a| a.chunks.iter())
        .any(|c| on_hole(c.addr + o.chunk_size));
    let heap_info_lost = syn.arenas.len() > 1 && on_hole(ARENA2_HEAP);
    let expect = Expect {
        must_report: if header_lost || heap_info_lost {
            vec!["a chunk header is not resident".into()]
        } else {
            Vec::new()
        },
        error_ok: state_lost,
    };
    let Some(map) = judged_walk(&syn, &memory, &expect, &context())? else {
        return Ok(());
    };
    for segment in &map.segments {
        for (i, &resident) in segment.resident.iter().enumerate() {
            let page = page_of(segment.start) + i as u64 * g.page;
            ensure!(
                resident != on_hole(page),
                "residency: page {page:#x} resident = {resident} {}",
                context()
            );
        }
    }
    // The first main-heap chunk whose header, or whose successor's header, is on a hole
    // cannot be classified: its bytes are unknown.
    let unreadable = main
        .chunks
        .windows(2)
        .find(|w| on_hole(w[0].addr + o.chunk_size) || on_hole(w[1].addr + o.chunk_size));
    let top_lost = on_hole(main.top + o.chunk_size);
    if let (Some(w), false) = (unreadable, top_lost) {
        let f = &map.arenas[0].figures;
        ensure!(
            f.unknown_bytes >= w[0].size && !map.notes.is_empty(),
            "unknown: chunk {:#x} of {} bytes has a header on a hole, yet {} bytes are \
             unknown (notes {:?}) {}",
            w[0].addr,
            w[0].size,
            f.unknown_bytes,
            map.notes,
            context()
        );
    }
    if case % 4 == 1 && inside.is_some() && holes.len() == 1 {
        // Nothing unreadable: the figures are exact but for the missing page's residency.
        let mut figures = main.figures;
        figures.free_resident_bytes -= g.page;
        figures.trimmable_bytes -= g.page;
        ensure!(
            map.notes.is_empty() && map.arenas[0].figures == figures,
            "a hole inside a free chunk: {:?} (notes {:?}), expected {figures:?} {}",
            map.arenas[0].figures,
            map.notes,
            context()
        );
    }
    Ok(())
}
