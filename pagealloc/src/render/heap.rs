//! The heap map: an arena summary table, then one picture per heap where a pixel is 8 granules
//! (128 bytes on x86-64): grey by how many of them are live, coloured by the kind of free memory
//! where none is, and dark where the page is not resident.
use std::fmt::Write as _;

use super::Style;
use super::canvas::{Canvas, Pixel};
use crate::Snapshot;
use crate::state::heap::{ChunkState, GRANULE, HeapFigures, HeapMap, Segment};

/// Granules per pixel, as in the original tool.
const GRANULES_PER_PIXEL: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapPixel {
    /// 1 to 8 live granules.
    Live(u8),
    /// No live granule: the state most of the pixel is in.
    Free(ChunkState),
    /// The page is not resident: costs nothing, whatever malloc thinks of it.
    NotResident,
}

impl Pixel for HeapPixel {
    fn color(self) -> u8 {
        match self {
            // The original's grey scale: more live granules, brighter.
            HeapPixel::Live(n) => 239 + 2 * n,
            HeapPixel::Free(ChunkState::Tcache) => 220,
            HeapPixel::Free(ChunkState::Fastbin) => 208,
            HeapPixel::Free(ChunkState::Bin) => 33,
            HeapPixel::Free(ChunkState::Top) => 25,
            HeapPixel::Free(ChunkState::Overhead) => 127,
            HeapPixel::Free(ChunkState::Unknown) => 196,
            HeapPixel::Free(ChunkState::Live) => 255,
            HeapPixel::NotResident => 234,
        }
    }

    fn glyph(self) -> char {
        match self {
            HeapPixel::Live(n) => [' ', '.', ':', '-', '=', '+', '*', '#', '@'][n as usize],
            HeapPixel::Free(ChunkState::Tcache) => 't',
            HeapPixel::Free(ChunkState::Fastbin) => 'f',
            HeapPixel::Free(ChunkState::Bin) => 'b',
            HeapPixel::Free(ChunkState::Top) => '_',
            HeapPixel::Free(ChunkState::Overhead) => 'o',
            HeapPixel::Free(ChunkState::Unknown) => '?',
            HeapPixel::Free(ChunkState::Live) => '@',
            HeapPixel::NotResident => '~',
        }
    }
}

const LEGEND: [(HeapPixel, &str); 9] = [
    (HeapPixel::Live(8), "live 8/8"),
    (HeapPixel::Live(4), "live 4/8"),
    (HeapPixel::Live(1), "live 1/8"),
    (HeapPixel::Free(ChunkState::Tcache), "tcache"),
    (HeapPixel::Free(ChunkState::Fastbin), "fastbin"),
    (HeapPixel::Free(ChunkState::Bin), "bin"),
    (HeapPixel::Free(ChunkState::Top), "top"),
    (HeapPixel::Free(ChunkState::Overhead), "overhead"),
    (HeapPixel::NotResident, "not resident"),
];

pub fn render(heap: &HeapMap, snapshot: &Snapshot, arena: Option<usize>, style: &Style) -> String {
    let mut canvas = Canvas::new(style);
    canvas.text("");
    if let Some(libc) = &snapshot.libc {
        canvas.text(&format!(
            "heap of process {} (glibc {}, debug info {})",
            snapshot.pages.pid,
            libc.version.as_deref().unwrap_or("?"),
            libc.debug_file
        ));
    }
    let t = &heap.totals;
    canvas.text(&format!(
        "free but resident: {} of {} — malloc_trim(0) could return {}; largest free chunk {}, \
         fragmentation {:.1}%",
        size(t.free_resident_bytes),
        size(t.system_bytes),
        size(t.trimmable_bytes),
        size(t.largest_free_bytes),
        t.fragmentation * 100.0
    ));
    canvas.text(&table(heap));
    for note in &heap.notes {
        canvas.text(&format!("note: {note}"));
    }
    canvas.text("");
    canvas.legend(&LEGEND);
    for segment in &heap.segments {
        if arena.is_some_and(|a| a != segment.arena) {
            continue;
        }
        let owner = &heap.arenas[segment.arena];
        canvas.text("");
        canvas.text(&format!(
            "{:x}-{:x} arena {} ({:#x}{}): one pixel = {} bytes",
            segment.start,
            segment.end,
            segment.arena,
            owner.address,
            if owner.main { ", main" } else { "" },
            GRANULE as usize * GRANULES_PER_PIXEL
        ));
        canvas.draw(
            segment.start,
            GRANULE * GRANULES_PER_PIXEL as u64,
            pixel_runs(segment, snapshot.pages.page_size),
        );
    }
    canvas.finish()
}

/// The segment's pixels, as runs of equal pixels.
fn pixel_runs(segment: &Segment, page_size: u64) -> Vec<(HeapPixel, u64)> {
    let pixels_per_page = (page_size / GRANULE) as usize / GRANULES_PER_PIXEL;
    let mut runs: Vec<(HeapPixel, u64)> = Vec::new();
    for (index, granules) in segment.granules.chunks(GRANULES_PER_PIXEL).enumerate() {
        let resident = segment.resident[index / pixels_per_page.max(1)];
        let pixel = if !resident {
            HeapPixel::NotResident
        } else {
            pixel(granules)
        };
        match runs.last_mut() {
            Some((last, n)) if *last == pixel => *n += 1,
            _ => runs.push((pixel, 1)),
        }
    }
    runs
}

fn pixel(granules: &[u8]) -> HeapPixel {
    let mut counts = [0u8; 7];
    for &g in granules {
        counts[ChunkState::from_granule(g) as usize] += 1;
    }
    let live = counts[ChunkState::Live as usize];
    if live > 0 {
        return HeapPixel::Live(live);
    }
    let dominant = ChunkState::ALL
        .into_iter()
        .max_by_key(|&s| counts[s as usize])
        .unwrap_or(ChunkState::Unknown);
    HeapPixel::Free(dominant)
}

fn table(heap: &HeapMap) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<5} {:>14} {:>5} {:>9} {:>18} {:>16} {:>16} {:>16} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "arena",
        "address",
        "heaps",
        "system",
        "live",
        "tcache",
        "fastbin",
        "bin",
        "top",
        "overhead",
        "free+res",
        "trimmable",
        "unknown"
    );
    for (i, arena) in heap.arenas.iter().enumerate() {
        row(
            &mut out,
            &i.to_string(),
            arena.address,
            arena.heaps.len(),
            &arena.figures,
        );
    }
    row(&mut out, "all", 0, heap.segments.len(), &heap.totals);
    let _ = write!(
        out,
        "mmapped chunks: {} ({})",
        heap.mmapped_chunks,
        size(heap.mmapped_bytes)
    );
    out
}

fn row(out: &mut String, name: &str, address: u64, heaps: usize, f: &HeapFigures) {
    let address = if address == 0 {
        String::new()
    } else {
        format!("{address:#x}")
    };
    let _ = writeln!(
        out,
        "{name:<5} {address:>14} {heaps:>5} {:>9} {:>18} {:>16} {:>16} {:>16} {:>9} {:>9} {:>9} {:>9} {:>9}",
        size(f.system_bytes),
        count(f.live_chunks, f.live_bytes),
        count(f.tcache_chunks, f.tcache_bytes),
        count(f.fastbin_chunks, f.fastbin_bytes),
        count(f.bin_chunks, f.bin_bytes),
        size(f.top_bytes),
        size(f.overhead_bytes),
        size(f.free_resident_bytes),
        size(f.trimmable_bytes),
        size(f.unknown_bytes),
    );
}

fn count(chunks: u64, bytes: u64) -> String {
    format!("{chunks}/{}", size(bytes))
}

/// Bytes in a short human form.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}
