//! The heap map: an arena summary table, then one picture per heap where a pixel is 8 granules
//! (128 bytes on x86-64): grey by how many of them are live, coloured by the kind of free memory
//! where none is, and dark where the page is not resident.
use std::fmt::Write as _;

use super::Style;
use super::canvas::{Canvas, Pixel};
use crate::state::Sample;
use crate::state::heap::{ChunkState, GRANULE, HeapFigures, HeapMap, HeapNote, Segment};

/// Granules per pixel in a snapshot, as in the original tool.
pub const GRANULES_PER_PIXEL: u64 = 8;

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
            HeapPixel::Free(ChunkState::Freed) => 211,
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
            HeapPixel::Free(ChunkState::Freed) => 'x',
            HeapPixel::NotResident => '~',
        }
    }
}

const LEGEND: [(HeapPixel, &str); 10] = [
    (HeapPixel::Live(8), "live 8/8"),
    (HeapPixel::Live(4), "live 4/8"),
    (HeapPixel::Live(1), "live 1/8"),
    (HeapPixel::Free(ChunkState::Tcache), "tcache"),
    (HeapPixel::Free(ChunkState::Fastbin), "fastbin"),
    (HeapPixel::Free(ChunkState::Bin), "bin"),
    (HeapPixel::Free(ChunkState::Top), "top"),
    (HeapPixel::Free(ChunkState::Overhead), "overhead"),
    (HeapPixel::NotResident, "not resident"),
    (HeapPixel::Free(ChunkState::Freed), "freed since the walk"),
];

/// The heap part of a snapshot: headline, arena table, notes, legend and one picture per heap
/// (of arena `arena` only, if given) at 8 granules per pixel.
pub fn render(sample: &Sample, heap: &HeapMap, arena: Option<usize>, style: &Style) -> String {
    let mut canvas = Canvas::new(style);
    canvas.text("");
    if let Some(libc) = &sample.libc {
        canvas.text(&format!(
            "heap of process {} (glibc {}, debug info {})",
            sample.pid,
            libc.version.as_deref().unwrap_or("?"),
            libc.debug_file
        ));
    }
    canvas.text(&headline(&heap.totals));
    canvas.text(&table(heap));
    for line in note_lines(&heap.notes) {
        canvas.text(&line);
    }
    canvas.text("");
    pictures(
        &mut canvas,
        heap,
        sample.pages.page_size,
        arena,
        GRANULES_PER_PIXEL,
    );
    canvas.finish()
}

/// The residency figures of the whole heap in one line.
/// The notes shown above the pictures, at most; the JSON has every one.
const NOTES_SHOWN: usize = 4;

/// The map's notes as lines: the first few, and how many more (a walk of a busy heap can note
/// hundreds of lists that changed while it read them).
pub fn note_lines(notes: &[HeapNote]) -> Vec<String> {
    let mut lines: Vec<String> = (notes.iter().take(NOTES_SHOWN))
        .map(|note| format!("note: {note}"))
        .collect();
    if notes.len() > NOTES_SHOWN {
        lines.push(format!(
            "note: … and {} more (--format json lists them all)",
            notes.len() - NOTES_SHOWN
        ));
    }
    lines
}

pub fn headline(t: &HeapFigures) -> String {
    format!(
        "free but resident: {} of {} — malloc_trim(0) could return {}; largest free chunk {}, \
         fragmentation {:.1}%",
        size(t.free_resident_bytes),
        size(t.system_bytes),
        size(t.trimmable_bytes),
        size(t.largest_free_bytes),
        t.fragmentation * 100.0
    )
}

/// The legend, then one picture per heap (of arena `arena` only, if given), each pixel
/// `granules_per_pixel` granules.
pub fn pictures(
    canvas: &mut Canvas,
    heap: &HeapMap,
    page_size: u64,
    arena: Option<usize>,
    granules_per_pixel: u64,
) {
    // Freed chunks are live mode's: the legend names them only there.
    let legend = if heap.totals.freed_chunks > 0 {
        &LEGEND[..]
    } else {
        &LEGEND[..LEGEND.len() - 1]
    };
    canvas.legend(legend);
    for segment in &heap.segments {
        if arena.is_some_and(|a| a != segment.arena) {
            continue;
        }
        let owner = &heap.arenas[segment.arena];
        canvas.text("");
        canvas.text(&format!(
            "{:x}-{:x} arena {} ({:#x}{}): one pixel = {}",
            segment.start,
            segment.end,
            segment.arena,
            owner.address,
            if owner.main { ", main" } else { "" },
            pixel_size(GRANULE * granules_per_pixel)
        ));
        canvas.draw(
            segment.start,
            GRANULE * granules_per_pixel,
            pixel_runs(segment, page_size, granules_per_pixel as usize),
        );
    }
}

/// The segment's pixels, as runs of equal pixels.
fn pixel_runs(
    segment: &Segment,
    page_size: u64,
    granules_per_pixel: usize,
) -> Vec<(HeapPixel, u64)> {
    let granules_per_page = (page_size / GRANULE).max(1) as usize;
    let mut runs: Vec<(HeapPixel, u64)> = Vec::new();
    for (index, granules) in segment.granules.chunks(granules_per_pixel).enumerate() {
        let first = index * granules_per_pixel;
        let pixel = pixel(granules, |g| {
            segment.resident[(first + g) / granules_per_page]
        });
        match runs.last_mut() {
            Some((last, n)) if *last == pixel => *n += 1,
            _ => runs.push((pixel, 1)),
        }
    }
    runs
}

/// A pixel of `granules`: grey by the share of them live, else the colour of the state most of
/// them are in; granules on pages that are not resident cost nothing and count for none.
fn pixel(granules: &[u8], resident: impl Fn(usize) -> bool) -> HeapPixel {
    let mut counts = [0usize; 8];
    let mut not_resident = 0;
    for (g, &granule) in granules.iter().enumerate() {
        if resident(g) {
            counts[ChunkState::from_granule(granule) as usize] += 1;
        } else {
            not_resident += 1;
        }
    }
    let live = counts[ChunkState::Live as usize];
    if live > 0 {
        // Eight shades whatever the pixel's size: one per eighth of it live, at least one.
        let level = (live * 8).div_ceil(granules.len()).clamp(1, 8);
        return HeapPixel::Live(level as u8);
    }
    let dominant = ChunkState::ALL
        .into_iter()
        .max_by_key(|&s| counts[s as usize])
        .unwrap_or(ChunkState::Unknown);
    if not_resident > counts[dominant as usize] {
        return HeapPixel::NotResident;
    }
    HeapPixel::Free(dominant)
}

/// The arena table: a row of figures per arena, their totals, the mmapped chunks. Live mode
/// adds a column of the chunks freed since the last walk.
pub fn table(heap: &HeapMap) -> String {
    let freed = heap.totals.freed_chunks > 0;
    let mut out = String::new();
    let mut header = format!(
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
    if freed {
        let _ = write!(header, " {:>16}", "freed");
    }
    let _ = writeln!(out, "{header}");
    for (i, arena) in heap.arenas.iter().enumerate() {
        row(
            &mut out,
            &i.to_string(),
            arena.address,
            arena.heaps.len(),
            &arena.figures,
            freed,
        );
    }
    row(&mut out, "all", 0, heap.segments.len(), &heap.totals, freed);
    let _ = write!(
        out,
        "mmapped chunks: {} ({})",
        heap.mmapped_chunks,
        size(heap.mmapped_bytes)
    );
    out
}

fn row(out: &mut String, name: &str, address: u64, heaps: usize, f: &HeapFigures, freed: bool) {
    let address = if address == 0 {
        String::new()
    } else {
        format!("{address:#x}")
    };
    let _ = write!(
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
    if freed {
        let _ = write!(out, " {:>16}", count(f.freed_chunks, f.freed_bytes));
    }
    out.push('\n');
}

fn count(chunks: u64, bytes: u64) -> String {
    format!("{chunks}/{}", size(bytes))
}

/// A pixel's size: exact in bytes while that is short.
pub fn pixel_size(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{bytes} bytes")
    } else {
        size(bytes)
    }
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

#[cfg(test)]
mod tests {
    use super::{NOTES_SHOWN, note_lines};
    use crate::state::heap::HeapNote;

    #[test]
    fn a_few_notes_are_shown_and_the_rest_counted() {
        let notes = |n: usize| -> Vec<HeapNote> {
            (0..n)
                .map(|i| HeapNote::inconsistent(format!("list {i} changed")))
                .collect()
        };
        assert_eq!(
            note_lines(&notes(2)),
            ["note: list 0 changed", "note: list 1 changed"]
        );
        let many = note_lines(&notes(NOTES_SHOWN + 57));
        assert_eq!(many.len(), NOTES_SHOWN + 1);
        assert_eq!(many[0], "note: list 0 changed");
        assert!(many[NOTES_SHOWN].contains("57 more"), "{many:?}");
    }
}
