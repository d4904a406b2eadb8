//! The heap map: an arena summary table, then one picture per heap where a pixel is 8 granules
//! (128 bytes on x86-64): grey by how many of them are live, coloured by the kind of free memory
//! where none is, and dark where the page is not resident.
use std::fmt::Write as _;

use super::Style;
use super::canvas::{Canvas, Pixel, flow};
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

impl HeapPixel {
    /// Every pixel there is, and what it stands for: the web view's palette.
    pub fn all() -> impl Iterator<Item = (HeapPixel, String)> {
        let live = (1..=8).map(|n| (HeapPixel::Live(n), format!("live {n}/8")));
        let free = (ChunkState::ALL.into_iter())
            .filter(|&s| s != ChunkState::Live)
            .map(|s| (HeapPixel::Free(s), s.key().to_string()));
        live.chain(free)
            .chain([(HeapPixel::NotResident, "not resident".to_string())])
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
        let source = match &libc.debug_file {
            Some(file) => format!("debug info {file}"),
            None => format!("layout: {}", libc.layout_source()),
        };
        canvas.flow(
            &[format!(
                "heap of process {} (glibc {}, {source})",
                sample.pid,
                libc.version.as_deref().unwrap_or("?"),
            )],
            "",
        );
    }
    canvas.flow(&headline(&heap.totals), "; ");
    // Nothing left out of a snapshot: it has all the lines it needs.
    canvas.text(&table(heap, style.columns, Narrow::Stack));
    for line in note_lines(&heap.notes, style.columns) {
        canvas.text(&line);
    }
    canvas.text("");
    legend(&mut canvas, heap);
    pictures(
        &mut canvas,
        heap,
        sample.pages.page_size,
        arena,
        GRANULES_PER_PIXEL,
    );
    canvas.finish()
}

/// The notes shown above the pictures, at most; the JSON has every one.
const NOTES_SHOWN: usize = 4;

/// The map's notes as lines of `columns`: the first few, and how many more (a walk of a busy
/// heap can note hundreds of lists that changed while it read them).
pub fn note_lines(notes: &[HeapNote], columns: usize) -> Vec<String> {
    let more = (notes.len() > NOTES_SHOWN).then(|| {
        format!(
            "note: … and {} more (--format json lists them all)",
            notes.len() - NOTES_SHOWN
        )
    });
    (notes.iter().take(NOTES_SHOWN))
        .map(|note| format!("note: {note}"))
        .chain(more)
        .flat_map(|note| flow(&[note], "", columns))
        .collect()
}

/// The residency figures of the whole heap, as the pieces of a line joined by "; ".
pub fn headline(t: &HeapFigures) -> [String; 4] {
    [
        format!(
            "free but resident: {} of {}",
            size(t.free_resident_bytes),
            size(t.system_bytes)
        ),
        format!("malloc_trim(0) could return {}", size(t.trimmable_bytes)),
        format!("largest free chunk {}", size(t.largest_free_bytes)),
        format!("fragmentation {:.1}%", t.fragmentation * 100.0),
    ]
}

/// What the pictures' colours (or glyphs) stand for.
pub fn legend(canvas: &mut Canvas, heap: &HeapMap) {
    // Freed chunks are live mode's: the legend names them only there.
    let legend = if heap.totals.freed_chunks > 0 {
        &LEGEND[..]
    } else {
        &LEGEND[..LEGEND.len() - 1]
    };
    canvas.legend(legend);
}

/// One picture per heap (of arena `arena` only, if given), each pixel `granules_per_pixel`
/// granules.
pub fn pictures(
    canvas: &mut Canvas,
    heap: &HeapMap,
    page_size: u64,
    arena: Option<usize>,
    granules_per_pixel: u64,
) {
    for segment in &heap.segments {
        if arena.is_some_and(|a| a != segment.arena) {
            continue;
        }
        canvas.text("");
        canvas.flow(
            &picture_header(heap, segment, &pixel_size(GRANULE * granules_per_pixel)),
            " ",
        );
        canvas.draw(
            segment.start,
            GRANULE * granules_per_pixel,
            pixel_runs(segment, page_size, granules_per_pixel as usize),
        );
    }
}

/// The line above a heap's picture, in pieces joined by a space: where the heap is, whose, and
/// `pixel`, the size of a pixel.
pub fn picture_header(heap: &HeapMap, segment: &Segment, pixel: &str) -> [String; 2] {
    let owner = &heap.arenas[segment.arena];
    [
        format!(
            "{:x}-{:x} arena {} ({:#x}{}):",
            segment.start,
            segment.end,
            segment.arena,
            owner.address,
            if owner.main { ", main" } else { "" },
        ),
        format!("one pixel = {pixel}"),
    ]
}

/// The segment's pixels, as runs of equal pixels.
fn pixel_runs(
    segment: &Segment,
    page_size: u64,
    granules_per_pixel: usize,
) -> Vec<(HeapPixel, u64)> {
    let mut runs: Vec<(HeapPixel, u64)> = Vec::new();
    let pixels = segment.granules.len().div_ceil(granules_per_pixel);
    for index in 0..pixels {
        let pixel = pixel(
            segment,
            page_size,
            index * granules_per_pixel,
            granules_per_pixel,
        );
        match runs.last_mut() {
            Some((last, n)) if *last == pixel => *n += 1,
            _ => runs.push((pixel, 1)),
        }
    }
    runs
}

/// The pixel of `count` granules of `segment` from granule `first`: grey by the share of them
/// live, else the colour of the state most of them are in; granules on pages that are not
/// resident cost nothing and count for none. Counts eight granules at a time: the web view
/// draws a gigabyte of heap within a request.
pub fn pixel(segment: &Segment, page_size: u64, first: usize, count: usize) -> HeapPixel {
    let end = (first + count).min(segment.granules.len());
    let (mut live, mut resident_granules) = (0usize, 0usize);
    for_resident_runs(segment, page_size, first..end, |run| {
        live += count_live(run);
        resident_granules += run.len();
    });
    let count = end.saturating_sub(first).max(1);
    if live > 0 {
        // Eight shades whatever the pixel's size: one per eighth of it live, at least one.
        let level = (live * 8).div_ceil(count).clamp(1, 8);
        return HeapPixel::Live(level as u8);
    }
    let mut counts = [0usize; 8];
    for_resident_runs(segment, page_size, first..end, |run| {
        count_states(run, &mut counts)
    });
    let dominant = ChunkState::ALL
        .into_iter()
        .max_by_key(|&s| counts[s as usize])
        .unwrap_or(ChunkState::Unknown);
    if count - resident_granules > counts[dominant as usize] {
        return HeapPixel::NotResident;
    }
    HeapPixel::Free(dominant)
}

/// Calls `run` with each stretch of `granules` (a range of `segment`'s) that lies on one
/// resident page.
fn for_resident_runs(
    segment: &Segment,
    page_size: u64,
    granules: std::ops::Range<usize>,
    mut run: impl FnMut(&[u8]),
) {
    let per_page = (page_size / GRANULE).max(1) as usize;
    let mut at = granules.start;
    while at < granules.end {
        let page_end = ((at / per_page + 1) * per_page).min(granules.end);
        if segment
            .resident
            .get(at / per_page)
            .copied()
            .unwrap_or(false)
        {
            run(&segment.granules[at..page_end]);
        }
        at = page_end;
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW_SEVEN: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The live granules of `granules`, eight at a time: a byte is live when its value without
/// [`CHUNK_START`](crate::state::heap::CHUNK_START) is 1.
fn count_live(granules: &[u8]) -> usize {
    let mut words = granules.chunks_exact(8);
    let mut live = 0;
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        // Live bytes become zero; a byte's high bit is then set in `zero` exactly when it is.
        let x = (word & LOW_SEVEN) ^ ONES;
        let zero = !(((x & LOW_SEVEN) + LOW_SEVEN) | x | LOW_SEVEN);
        live += zero.count_ones() as usize;
    }
    let live_value = ChunkState::Live as u8;
    live + (words.remainder().iter())
        .filter(|&&g| g & LOW_SEVEN as u8 == live_value)
        .count()
}

/// Adds the granules of `granules` to `counts` by state; a word of one state at once.
fn count_states(granules: &[u8], counts: &mut [usize; 8]) {
    let mut words = granules.chunks_exact(8);
    for word in &mut words {
        let value = u64::from_le_bytes(word.try_into().unwrap_or_default()) & LOW_SEVEN;
        if value == (value & 0x7f) * ONES {
            counts[ChunkState::from_granule(value as u8) as usize] += 8;
            continue;
        }
        for &g in word {
            counts[ChunkState::from_granule(g) as usize] += 1;
        }
    }
    for &g in words.remainder() {
        counts[ChunkState::from_granule(g) as usize] += 1;
    }
}

/// What the arena table does with the columns a line has no room for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Narrow {
    /// Leaves them out, named below the table (watch: the screen's rows go to the pictures).
    Drop,
    /// Shows them in another table below, each row under its arena's name again.
    Stack,
}

/// A row of the arena table.
struct Row<'a> {
    name: String,
    address: Option<u64>,
    heaps: usize,
    figures: &'a HeapFigures,
}

/// A column of the arena table; `keep` orders them by how much they are wanted where not all
/// fit (0 first).
struct Column {
    title: &'static str,
    keep: u8,
    cell: fn(&Row) -> String,
}

/// The arena table's columns, in the order shown; the arena's name first, always.
const COLUMNS: [Column; 14] = [
    Column {
        title: "arena",
        keep: 0,
        cell: |r| r.name.clone(),
    },
    Column {
        title: "address",
        keep: 13,
        cell: |r| r.address.map_or(String::new(), |a| format!("{a:#x}")),
    },
    Column {
        title: "heaps",
        keep: 10,
        cell: |r| r.heaps.to_string(),
    },
    Column {
        title: "system",
        keep: 3,
        cell: |r| size(r.figures.system_bytes),
    },
    Column {
        title: "live",
        keep: 1,
        cell: |r| count(r.figures.live_chunks, r.figures.live_bytes),
    },
    Column {
        title: "tcache",
        keep: 8,
        cell: |r| count(r.figures.tcache_chunks, r.figures.tcache_bytes),
    },
    Column {
        title: "fastbin",
        keep: 9,
        cell: |r| count(r.figures.fastbin_chunks, r.figures.fastbin_bytes),
    },
    Column {
        title: "bin",
        keep: 7,
        cell: |r| count(r.figures.bin_chunks, r.figures.bin_bytes),
    },
    Column {
        title: "top",
        keep: 6,
        cell: |r| size(r.figures.top_bytes),
    },
    Column {
        title: "overhead",
        keep: 11,
        cell: |r| size(r.figures.overhead_bytes),
    },
    Column {
        title: "free+res",
        keep: 2,
        cell: |r| size(r.figures.free_resident_bytes),
    },
    Column {
        title: "trimmable",
        keep: 4,
        cell: |r| size(r.figures.trimmable_bytes),
    },
    Column {
        title: "unknown",
        keep: 12,
        cell: |r| size(r.figures.unknown_bytes),
    },
    Column {
        title: "freed",
        keep: 5,
        cell: |r| count(r.figures.freed_chunks, r.figures.freed_bytes),
    },
];

/// Between two columns of the table.
const GAP: &str = "  ";

/// The arena table in `columns`: a row of figures per arena, their totals, the mmapped chunks.
/// Live mode adds a column of the chunks freed since the last walk. The columns a line has no
/// room for go by [`Column::keep`], least wanted first, and `narrow` says where.
pub fn table(heap: &HeapMap, columns: usize, narrow: Narrow) -> String {
    let freed = heap.totals.freed_chunks > 0;
    let mut rows: Vec<Row> = (heap.arenas.iter().enumerate())
        .map(|(i, arena)| Row {
            name: i.to_string(),
            address: Some(arena.address),
            heaps: arena.heaps.len(),
            figures: &arena.figures,
        })
        .collect();
    rows.push(Row {
        name: "all".into(),
        address: None,
        heaps: heap.segments.len(),
        figures: &heap.totals,
    });
    let shown: Vec<&Column> = (COLUMNS.iter())
        .filter(|c| freed || c.title != "freed")
        .collect();
    // A row of cells per row of figures, the titles' first.
    let cells: Vec<Vec<String>> = std::iter::once(shown.iter().map(|c| c.title.into()).collect())
        .chain(
            rows.iter()
                .map(|r| shown.iter().map(|c| (c.cell)(r)).collect()),
        )
        .collect();
    let widths: Vec<usize> = (0..shown.len())
        .map(|i| cells.iter().map(|row| row[i].len()).max().unwrap_or(0))
        .collect();
    // The arena's name heads every line; the others by how much they are wanted.
    let mut left: Vec<usize> = (1..shown.len()).collect();
    left.sort_by_key(|&i| shown[i].keep);
    let mut out = String::new();
    // Bounded: each block takes at least one column.
    while !left.is_empty() {
        let mut room = columns.saturating_sub(widths[0]);
        let mut block = vec![0];
        left.retain(|&i| {
            let fits = widths[i] + GAP.len() <= room;
            // The most wanted one even where nothing fits: each block shows one.
            if fits || block.len() == 1 {
                room = room.saturating_sub(widths[i] + GAP.len());
                block.push(i);
                return false;
            }
            true
        });
        block.sort_unstable();
        for row in &cells {
            let _ = write!(out, "{:<1$}", row[0], widths[0]);
            for &i in &block[1..] {
                let _ = write!(out, "{GAP}{:>1$}", row[i], widths[i]);
            }
            out.push('\n');
        }
        if narrow == Narrow::Drop {
            break;
        }
    }
    let mut mmapped = vec![format!(
        "mmapped chunks: {} ({})",
        heap.mmapped_chunks,
        size(heap.mmapped_bytes)
    )];
    if !left.is_empty() {
        left.sort_unstable();
        let names: Vec<&str> = left.iter().map(|&i| shown[i].title).collect();
        mmapped.push(format!("no room for {}", names.join(", ")));
    }
    out.push_str(&flow(&mmapped, "; ", columns).join("\n"));
    out
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

/// Bytes in a short human form, in binary units (K is 1024 bytes): "512B", "12.3M".
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
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
    use super::{NOTES_SHOWN, Narrow, note_lines, table};
    use crate::state::heap::{Arena, HeapFigures, HeapMap, HeapNote};

    /// Four arenas of big figures, chunks freed since the walk among them.
    fn busy_heap() -> HeapMap {
        let figures = HeapFigures {
            system_bytes: 635 << 20,
            live_chunks: 226_518,
            live_bytes: 616 << 20,
            tcache_chunks: 1066,
            tcache_bytes: 342 << 10,
            bin_chunks: 77_580,
            bin_bytes: 441 << 20,
            free_resident_bytes: 180 << 20,
            trimmable_bytes: 4 << 20,
            freed_chunks: 155_000,
            freed_bytes: 439 << 20,
            ..HeapFigures::default()
        };
        HeapMap {
            arenas: (0..4)
                .map(|i| Arena {
                    address: 0x7f4d_1000_0000 + i,
                    main: i == 0,
                    heaps: Vec::new(),
                    figures,
                })
                .collect(),
            geometry: crate::state::heap::HeapGeometry::for_tests(),
            mmapped_chunks: 0,
            mmapped_bytes: 0,
            totals: figures,
            notes: Vec::new(),
            mmapped: Vec::new(),
            segments: Vec::new(),
        }
    }

    #[test]
    fn the_table_fits_keeping_the_most_wanted_columns() {
        let heap = busy_heap();
        let wide = table(&heap, 200, Narrow::Drop);
        assert!(!wide.contains("no room"), "{wide}");
        for columns in [80, 100, 160] {
            let text = table(&heap, columns, Narrow::Drop);
            let lines: Vec<&str> = text.lines().collect();
            assert!(
                lines.iter().all(|l| l.chars().count() <= columns),
                "{columns}:\n{text}"
            );
            // A row per arena and their totals, under one title line.
            let mmapped = lines.iter().position(|l| l.starts_with("mmapped chunks: "));
            assert_eq!(mmapped, Some(1 + 4 + 1), "{text}");
            for title in ["live", "free+res", "system", "trimmable", "freed"] {
                assert!(
                    lines[0].split_whitespace().any(|t| t == title),
                    "{columns}: {text}"
                );
            }
            // Every figure under its title.
            let arena: Vec<&str> = lines[4].split_whitespace().collect();
            assert_eq!(arena.len(), lines[0].split_whitespace().count(), "{text}");
            assert!(lines[5].contains(" 226518/616.0M "), "{text}");
        }
        let narrow = table(&heap, 80, Narrow::Drop);
        assert!(narrow.contains("no room for address"), "{narrow}");
    }

    #[test]
    fn a_stacked_table_shows_every_column() {
        let text = table(&busy_heap(), 80, Narrow::Stack);
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
        assert!(!text.contains("no room"), "{text}");
        let titles: Vec<&str> = (text.lines())
            .filter(|l| l.starts_with("arena "))
            .flat_map(|l| l.split_whitespace().skip(1))
            .collect();
        assert_eq!(titles.len(), 13, "{text}");
        // Every block has each arena's row and the totals' under its own name.
        let blocks = text.lines().filter(|l| l.starts_with("arena ")).count();
        assert!(blocks >= 2, "{text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("all ")).count(),
            blocks
        );
    }

    #[test]
    fn a_few_notes_are_shown_and_the_rest_counted() {
        let notes = |n: usize| -> Vec<HeapNote> {
            (0..n)
                .map(|i| HeapNote::inconsistent(format!("list {i} changed")))
                .collect()
        };
        assert_eq!(
            note_lines(&notes(2), 100),
            ["note: list 0 changed", "note: list 1 changed"]
        );
        let many = note_lines(&notes(NOTES_SHOWN + 57), 100);
        assert_eq!(many.len(), NOTES_SHOWN + 1);
        assert_eq!(many[0], "note: list 0 changed");
        assert!(many[NOTES_SHOWN].contains("57 more"), "{many:?}");
    }
}
