//! Walking an image in the child process: once whole, once in parts, and what every walk must satisfy.
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use super::synthetic::*;
use crate::glibc::{Split, walk};
use crate::proc::memory::ImageMemory;
use crate::state::heap::{CHUNK_START, ChunkState, GRANULE, HeapFigures, HeapMap, NoteKind};

// --- Walking, in the child process -------------------------------------------------------------

/// Panics seen by the hook while a walk runs: the walker's own threads are joined with
/// `unwrap_or`, so their panics never reach the caller.
pub(super) static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// The longest walk of the current case.
pub(super) static WALK_TIME: Mutex<Duration> = Mutex::new(Duration::ZERO);

pub(super) fn lock<T>(m: &'static Mutex<T>) -> MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| lock(&PANICS).push(info.to_string())));
    });
}

pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// One walk: the map or the walker's error; or why not: "panic: ..." (the walk's or one of
/// its threads'), "slow: ...", "split: ..." (walked in parts on several threads, the heap
/// gave another map than walked whole on one).
pub(super) fn run_walk(
    syn: &Synthetic,
    memory: &ImageMemory,
) -> Result<Result<HeapMap, String>, String> {
    let whole = walk_once(syn, memory, WHOLE)?;
    let parts = walk_once(syn, memory, IN_PARTS)?;
    match (&whole, &parts) {
        (Ok(a), Ok(b)) => same_map(a, b).map_err(|why| format!("split: {why}"))?,
        (Err(a), Err(b)) if a == b => {}
        _ => return Err(format!("split: whole {whole:?}, in parts {parts:?}")),
    }
    Ok(whole)
}

/// One thread, every heap in one part.
pub(super) const WHOLE: Split = Split {
    threads: 1,
    min_part: u64::MAX,
};
/// Parts of a page on four threads: the synthetic heaps are a few pages each.
pub(super) const IN_PARTS: Split = Split {
    threads: 4,
    min_part: 1,
};

pub(super) fn walk_once(
    syn: &Synthetic,
    memory: &ImageMemory,
    split: Split,
) -> Result<Result<HeapMap, String>, String> {
    lock(&PANICS).clear();
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| {
        walk(&syn.libc(), memory, &syn.mappings, split)
    }));
    let elapsed = started.elapsed();
    let mut slowest = lock(&WALK_TIME);
    *slowest = (*slowest).max(elapsed);
    drop(slowest);
    let panics = std::mem::take(&mut *lock(&PANICS));
    if !panics.is_empty() {
        return Err(format!("panic: {}", panics.join(" / ")));
    }
    let result = result.map_err(|p| format!("panic: {}", panic_message(&*p)))?;
    if elapsed > CASE_BUDGET {
        return Err(format!("slow: the walk took {elapsed:?}"));
    }
    Ok(result.map_err(|e| e.to_string()))
}

/// Two walks of one image found the same: figures, notes, every granule.
pub(super) fn same_map(a: &HeapMap, b: &HeapMap) -> Result<(), String> {
    let arenas = |m: &HeapMap| -> Vec<_> {
        (m.arenas.iter())
            .map(|a| (a.address, a.heaps.clone(), a.figures))
            .collect()
    };
    ensure!(
        arenas(a) == arenas(b),
        "arenas {:?} and {:?}",
        arenas(a),
        arenas(b)
    );
    let notes = |m: &HeapMap| m.notes.iter().cloned().collect::<BTreeSet<_>>();
    ensure!(
        notes(a) == notes(b),
        "notes {:?} and {:?}",
        notes(a),
        notes(b)
    );
    ensure!(a.mmapped == b.mmapped, "mmapped chunks differ");
    ensure!(
        a.segments.len() == b.segments.len(),
        "{} and {} segments",
        a.segments.len(),
        b.segments.len()
    );
    for (x, y) in a.segments.iter().zip(&b.segments) {
        ensure!(
            (x.start, x.end, x.arena, &x.resident) == (y.start, y.end, y.arena, &y.resident),
            "segments {:#x}..{:#x} and {:#x}..{:#x}",
            x.start,
            x.end,
            y.start,
            y.end
        );
        if let Some(i) = (0..x.granules.len()).find(|&i| x.granules[i] != y.granules[i]) {
            return Err(format!(
                "granule {:#x}: {:#x} and {:#x}",
                x.start + i as u64 * GRANULE,
                x.granules[i],
                y.granules[i]
            ));
        }
    }
    Ok(())
}

/// What holds for any map, whatever the image: every byte of every heap segment is counted
/// exactly once, in its arena, and mmapped chunks lie in anonymous mappings outside the heaps.
pub(super) fn check_accounting(map: &HeapMap) -> Result<(), String> {
    for (index, arena) in map.arenas.iter().enumerate() {
        let f = &arena.figures;
        let counted: u128 = [
            f.live_bytes,
            f.tcache_bytes,
            f.fastbin_bytes,
            f.bin_bytes,
            f.top_bytes,
            f.overhead_bytes,
            f.unknown_bytes,
        ]
        .iter()
        .map(|&b| u128::from(b))
        .sum();
        let segments: Vec<_> = map.segments.iter().filter(|s| s.arena == index).collect();
        let spanned: u128 = segments.iter().map(|s| u128::from(s.end - s.start)).sum();
        // What the main arena got from the system beyond its heaps found is unknown too.
        let unwalked = if arena.main && map.notes.iter().any(|n| n.kind == NoteKind::Incomplete) {
            u128::from(f.system_bytes).saturating_sub(spanned)
        } else {
            0
        };
        ensure!(
            counted == spanned + unwalked,
            "arena {:#x} counts {counted} bytes in segments of {spanned} bytes ({f:?}, segments {:x?})",
            arena.address,
            segments
                .iter()
                .map(|s| (s.start, s.end))
                .collect::<Vec<_>>()
        );
        let heaps: Vec<_> = arena.heaps.iter().map(|h| (h.start, h.end)).collect();
        let spans: Vec<_> = segments.iter().map(|s| (s.start, s.end)).collect();
        ensure!(
            heaps == spans,
            "arena {index}: heaps {heaps:x?}, segments {spans:x?}"
        );
    }
    let mut spans: Vec<(u64, u64)> = map.segments.iter().map(|s| (s.start, s.end)).collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        ensure!(
            pair[0].1 <= pair[1].0,
            "double counting: heap segments {:#x}..{:#x} and {:#x}..{:#x} overlap ({} segments)",
            pair[0].0,
            pair[0].1,
            pair[1].0,
            pair[1].1,
            spans.len()
        );
    }
    let bytes: u128 = map.mmapped.iter().map(|c| u128::from(c.bytes)).sum();
    ensure!(
        map.mmapped_chunks == map.mmapped.len() as u64 && u128::from(map.mmapped_bytes) == bytes,
        "mmapped totals {}/{} for {:x?}",
        map.mmapped_chunks,
        map.mmapped_bytes,
        map.mmapped
    );
    for c in &map.mmapped {
        let end = c.address.checked_add(c.bytes);
        ensure!(
            end.is_some_and(|end| !spans.iter().any(|&(s, e)| c.address < e && s < end)),
            "mmapped chunk {c:x?} overlaps a heap"
        );
    }
    // What live mode counts from the granules is what the walk counted, figure for figure, for
    // heaps that start on a page and chunks of whole granules (as glibc makes them; only a
    // corrupt sbrk_base or size makes others, and granules cannot tell bytes apart within 16).
    let granular = |f: &HeapFigures| {
        [f.top_bytes, f.overhead_bytes, f.unknown_bytes]
            .iter()
            .all(|b| b % 16 == 0)
    };
    // (Memory a walk could not find at all is unknown outside every heap: no granule for it.)
    if map.segments.iter().any(|s| s.start % 4096 != 0)
        || map.arenas.iter().any(|a| !granular(&a.figures))
        || map.incomplete().is_some()
    {
        return Ok(());
    }
    let mut recounted = map.clone();
    recounted.recount(4096, glibc().o.chunk_struct_size);
    for (walked, counted) in map.arenas.iter().zip(&recounted.arenas) {
        ensure!(
            walked.figures == counted.figures,
            "arena {:#x}: the walk counted {:?}, the granules {:?}",
            walked.address,
            walked.figures,
            counted.figures
        );
    }
    Ok(())
}

/// The walker's figures on an intact heap are exactly what was laid out.
pub(super) fn check_exact(syn: &Synthetic, map: &HeapMap) -> Result<(), String> {
    ensure!(
        map.notes.is_empty(),
        "notes on a valid heap: {:?}",
        map.notes
    );
    ensure!(
        map.arenas.len() == syn.arenas.len(),
        "{} arenas, {} laid out",
        map.arenas.len(),
        syn.arenas.len()
    );
    let mut totals = HeapFigures::default();
    for (index, (arena, truth)) in map.arenas.iter().zip(&syn.arenas).enumerate() {
        ensure!(
            arena.address == truth.state && arena.main == (index == 0),
            "arena {index}"
        );
        ensure!(
            arena.figures == truth.figures,
            "arena {index}:\n walked {:?}\n laid out {:?}",
            arena.figures,
            truth.figures
        );
        totals.add(&truth.figures);
        let segments: Vec<_> = map.segments.iter().filter(|s| s.arena == index).collect();
        ensure!(
            segments.len() == 1 && segments[0].start == truth.start && segments[0].end == truth.end,
            "arena {index}: segments {:x?}",
            segments
                .iter()
                .map(|s| (s.start, s.end))
                .collect::<Vec<_>>()
        );
        let segment = segments[0];
        ensure!(segment.resident.iter().all(|&r| r), "a page not resident");
        // Every granule: the overhead, then each chunk with its first granule marked.
        let granule = |addr: u64| segment.granules[((addr - segment.start) / GRANULE) as usize];
        for addr in (truth.start..truth.first).step_by(GRANULE as usize) {
            let state = ChunkState::from_granule(granule(addr));
            ensure!(
                state == ChunkState::Overhead,
                "granule {addr:#x} is {state:?}"
            );
        }
        for c in &truth.chunks {
            let state = c.kind.state();
            ensure!(
                granule(c.addr) == CHUNK_START | state as u8,
                "chunk {:#x} ({:?}) starts with granule {:#x}",
                c.addr,
                c.kind,
                granule(c.addr)
            );
            for addr in (c.addr + GRANULE..c.addr + c.size).step_by(GRANULE as usize) {
                ensure!(
                    granule(addr) == state as u8,
                    "granule {addr:#x} of chunk {c:x?}"
                );
            }
        }
    }
    let f = &map.totals;
    ensure!(
        (f.live_bytes, f.bin_bytes, f.top_bytes, f.system_bytes)
            == (
                totals.live_bytes,
                totals.bin_bytes,
                totals.top_bytes,
                totals.system_bytes
            ),
        "totals {f:?}"
    );
    ensure!(map.mmapped == syn.mmapped, "mmapped {:x?}", map.mmapped);
    check_accounting(map)
}
