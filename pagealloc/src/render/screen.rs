//! One screen of `watch`: a header with the heap's totals, their changes and their history, the
//! arena table, then the heap maps at a scale that fits them all on the screen (and the page
//! map below them with `--pages`).
use std::time::Duration;

use super::canvas::{Canvas, flow};
use super::heap::{self, Narrow, pixel_size, size};
use super::{LABEL_WIDTH, Style, pages};
use crate::state::Sample;
use crate::state::heap::{GRANULE, Segment};
use crate::state::history::{History, Totals, sparkline};

/// What a watch screen shows and how much room it has.
#[derive(Clone, Debug)]
pub struct ScreenOptions {
    pub style: Style,
    /// Lines the frame must fit in (the terminal's height).
    pub rows: usize,
    /// Draw only this arena's heaps.
    pub arena: Option<usize>,
    /// Draw the page map below the heaps.
    pub pages: bool,
    /// Granules per pixel, fixed by `--scale`; None: the finest that fits.
    pub granules_per_pixel: Option<u64>,
    /// The interval asked for.
    pub interval: Duration,
    /// The process's name.
    pub name: String,
    /// Why the samples walk the heap rather than follow events, if they do.
    pub walk_reason: Option<String>,
}

/// The whole frame, one line per screen row (the caller may cut it at `rows`).
pub fn frame(sample: &Sample, history: &History, options: &ScreenOptions) -> String {
    let style = &options.style;
    let mut canvas = Canvas::new(style);
    match (sample.heap_map(), sample.heap_unavailable()) {
        (Some(heap), _) => {
            let mut above = Canvas::new(style);
            above.text(&heap::table(heap, style.columns, Narrow::Drop));
            for note in heap::note_lines(&heap.notes, style.columns) {
                above.text(&note);
            }
            if let Some(report) = &sample.sites {
                above.text("");
                let first = history.first_sites.as_deref();
                for line in super::sites::panel(report, first, style.columns) {
                    above.text(&line);
                }
            }
            above.text("");
            heap::legend(&mut above, heap);
            let above = above.finish();
            let drawn: Vec<&Segment> = (heap.segments.iter())
                .filter(|s| options.arena.is_none_or(|a| a == s.arena))
                .collect();
            // Room for the widest pixel size, in the header and above each picture.
            let widest = header(sample, history, options, WIDEST_PIXEL);
            let picture_header_rows = (drawn.iter())
                .map(|s| {
                    flow(
                        &heap::picture_header(heap, s, WIDEST_PIXEL),
                        " ",
                        style.columns,
                    )
                })
                .map(|lines| lines.len())
                .max()
                .unwrap_or(1);
            // The header yields rows to the pictures, down to a line of each heap.
            let least = drawn.len() * (picture_header_rows + 2);
            let kept = kept_yield(
                &widest,
                options.rows.saturating_sub(above.lines().count() + least),
            );
            let used = rows(&widest, kept) + above.lines().count();
            let granules = options.granules_per_pixel.unwrap_or_else(|| {
                fit(
                    &drawn
                        .iter()
                        .map(|s| (s.end - s.start) / GRANULE)
                        .collect::<Vec<_>>(),
                    picture_header_rows as u64,
                    pixels_per_line(style),
                    options.rows.saturating_sub(used),
                )
            });
            let pixel = pixel_size(GRANULE * granules);
            for part in header(sample, history, options, &pixel) {
                if part.yields <= kept {
                    for line in &part.lines {
                        canvas.text(line);
                    }
                }
            }
            canvas.text(above.trim_end_matches('\n'));
            heap::pictures(
                &mut canvas,
                heap,
                sample.pages.page_size,
                options.arena,
                granules,
            );
        }
        (None, why) => {
            for line in header(sample, history, options, "")
                .iter()
                .flat_map(|p| &p.lines)
            {
                canvas.text(line);
            }
            if let Some(why) = why {
                canvas.flow(&[why.to_string()], "");
            }
        }
    }
    let mut text = canvas.finish();
    if options.pages {
        text.push('\n');
        text.push_str(&pages::render(&sample.pages, style));
    }
    text
}

/// The widest a pixel's size is said: in bytes below 1 MiB ([`pixel_size`]).
const WIDEST_PIXEL: &str = "1048560 bytes";

/// A line of the header, flowed to the columns.
struct HeaderPart {
    /// Where rows are short, the parts that yield most go first (0: never).
    yields: u8,
    lines: Vec<String>,
}

/// The most a kept part of `header` yields, for it to take at most `room` rows.
fn kept_yield(header: &[HeaderPart], room: usize) -> u8 {
    let most = header.iter().map(|p| p.yields).max().unwrap_or(0);
    (0..=most)
        .rev()
        .find(|&kept| rows(header, kept) <= room)
        .unwrap_or(0)
}

/// The rows of the parts of `header` that yield at most `kept`.
fn rows(header: &[HeaderPart], kept: u8) -> usize {
    (header.iter())
        .filter(|p| p.yields <= kept)
        .map(|p| p.lines.len())
        .sum()
}

/// The header's parts, fitting the style's columns; `pixel` is a pixel's size in the pictures
/// (none without pictures). Where rows are short, the history line yields first, then the
/// events, the totals, the residency figures, the reason for walk mode.
fn header(
    sample: &Sample,
    history: &History,
    options: &ScreenOptions,
    pixel: &str,
) -> Vec<HeaderPart> {
    let columns = options.style.columns;
    let time = humantime::format_rfc3339_seconds(sample.taken);
    let achieved = history
        .achieved_interval()
        .map_or("first sample".to_string(), |d| {
            format!("{:.2} s since the last", d.as_secs_f64())
        });
    let first: Vec<String> = [
        format!("process {} ({})", sample.pid, options.name),
        format!("one pixel = {pixel}"),
        format!("sample {} at {time}", history.samples),
        format!(
            "{achieved} (every {} asked)",
            humantime::format_duration(options.interval)
        ),
        format!("took {:.3} s", sample.duration.as_secs_f64()),
    ]
    .into_iter()
    .filter(|piece| !pixel.is_empty() || !piece.starts_with("one pixel"))
    .collect();
    let part = |yields, pieces: &[String], separator| HeaderPart {
        yields,
        lines: flow(pieces, separator, columns),
    };
    let mut parts = vec![part(0, &first, " — ")];
    if let Some(why) = &options.walk_reason {
        parts.push(part(1, &[format!("walk mode: {why}")], ""));
    }
    let (Some(now), Some(first)) = (history.current, history.first) else {
        return parts;
    };
    let previous = history.previous.unwrap_or(now);
    let change = |name: &str, pick: fn(&Totals) -> u64| {
        format!(
            "{name} {} ({} / {} since start)",
            size(pick(&now)),
            delta(pick(&now), pick(&previous)),
            delta(pick(&now), pick(&first))
        )
    };
    let totals = [
        change("live", |t| t.live),
        change("cached", |t| t.cached),
        change("free", |t| t.free),
        change("top", |t| t.top),
    ];
    parts.push(part(3, &totals, "   "));
    let residency = [
        change("free but resident", |t| t.free_resident),
        format!("malloc_trim(0) could return {}", size(now.trimmable)),
        format!("largest free chunk {}", size(now.largest_free)),
    ];
    parts.push(part(2, &residency, "; "));
    if let Some(events) = events_line(history) {
        parts.push(part(4, &events, "; "));
    }
    // As many samples as a line has room for, after the name of what they show.
    let shown = history
        .series
        .len()
        .min(columns.saturating_sub(SERIES_NAME).max(1));
    let recent = || history.series.iter().skip(history.series.len() - shown);
    let series = [
        format!("last {shown} samples:"),
        format!("live {}", sparkline(recent().map(|s| s.0))),
        format!("free+res {}", sparkline(recent().map(|s| s.1))),
    ];
    parts.push(part(5, &series, "  "));
    parts
}

/// Room for the name of a series in front of it, indented ("  free+res ").
const SERIES_NAME: usize = 11;

/// Live mode: the rates of calls since the last sample (the counts, at the first sample, which
/// has no interval to divide by), and whether the events can be trusted: the pieces of a line
/// joined by "; ".
fn events_line(history: &History) -> Option<[String; 3]> {
    let now = history.current_events?;
    let mismatch = now.reconcile_mismatch.map_or("none yet".to_string(), |m| {
        format!("{} chunks, {}", m.chunks, size(m.bytes))
    });
    let calls = match (history.previous_events, history.achieved_interval()) {
        (Some(previous), Some(interval)) if !interval.is_zero() => {
            let rate =
                |now: u64, then: u64| now.saturating_sub(then) as f64 / interval.as_secs_f64();
            format!(
                "{:.0} allocs/s ({}/s), {:.0} frees/s ({}/s)",
                rate(now.allocs, previous.allocs),
                size(rate(now.allocated_bytes, previous.allocated_bytes) as u64),
                rate(now.frees, previous.frees),
                size(rate(now.freed_bytes, previous.freed_bytes) as u64),
            )
        }
        _ => format!(
            "{} allocs ({}), {} frees ({}) since attach",
            now.allocs,
            size(now.allocated_bytes),
            now.frees,
            size(now.freed_bytes),
        ),
    };
    Some([
        format!("live: {calls}"),
        format!("lost {}, resyncs {}", now.lost, now.resyncs),
        format!("last reconcile off by {mismatch}"),
    ])
}

/// A signed change in bytes: "+1.2M", "-16B", "±0".
fn delta(now: u64, then: u64) -> String {
    match now.cmp(&then) {
        std::cmp::Ordering::Greater => format!("+{}", size(now - then)),
        std::cmp::Ordering::Less => format!("-{}", size(then - now)),
        std::cmp::Ordering::Equal => "±0".into(),
    }
}

/// Pixels on one line of a picture: two rows of them per line in colour.
fn pixels_per_line(style: &Style) -> u64 {
    style.width as u64 * if style.color { 2 } else { 1 }
}

/// The width of a picture that uses a terminal of `columns`.
pub fn picture_width(columns: usize) -> usize {
    columns.saturating_sub(LABEL_WIDTH).max(16)
}

/// The fewest granules per pixel (1, 2, 3, 4, 6, 8, 12, ...) with which heaps of `segments`
/// granules, each drawn from a new line under a blank line and `header_rows` rows of header,
/// take at most `lines` lines; when nothing fits, the finest scale that gives each heap one line.
pub fn fit(segments: &[u64], header_rows: u64, pixels_per_line: u64, lines: usize) -> u64 {
    let pixels_per_line = pixels_per_line.max(1);
    let needed = |granules_per_pixel: u64| -> u64 {
        segments
            .iter()
            .map(|&g| 1 + header_rows + g.div_ceil(granules_per_pixel).div_ceil(pixels_per_line))
            .sum()
    };
    let fewest = (2 + header_rows) * segments.len() as u64;
    let mut scale = 1u64;
    // Bounded: the scale grows by a third at least each step.
    while needed(scale) > (lines as u64).max(fewest) {
        scale = if scale.is_power_of_two() && scale >= 2 {
            scale / 2 * 3
        } else if scale.is_power_of_two() {
            2
        } else {
            scale / 3 * 4
        };
    }
    scale
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{HeaderPart, events_line, fit, kept_yield, rows};
    use crate::state::events::Counts;
    use crate::state::history::History;
    use crate::state::pages::{PageCounts, PageMap};
    use crate::state::sample::{Heap, Sample};

    fn live_sample(taken: SystemTime, allocs: u64, frees: u64) -> Sample {
        Sample {
            pid: 1,
            taken,
            duration: Duration::ZERO,
            pages: PageMap {
                pid: 1,
                page_size: 4096,
                mappings: Vec::new(),
                totals: PageCounts::default(),
                limitations: Vec::new(),
            },
            libc: None,
            heap: Heap::NotRead,
            events: Some(Counts {
                allocs,
                frees,
                allocated_bytes: allocs * 32,
                freed_bytes: frees * 32,
                ..Counts::default()
            }),
            sites: None,
        }
    }

    /// The first live sample has no interval to make rates of: it says the counts.
    #[test]
    fn events_line_counts_then_rates() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut history = History::default();
        history.push(&live_sample(start, 12, 3));
        let [first, ..] = events_line(&history).unwrap();
        assert_eq!(first, "live: 12 allocs (384B), 3 frees (96B) since attach");
        history.push(&live_sample(start + Duration::from_secs(2), 2012, 1003));
        let [second, ..] = events_line(&history).unwrap();
        assert_eq!(
            second,
            "live: 1000 allocs/s (31.2K/s), 500 frees/s (15.6K/s)"
        );
    }

    /// Where rows are short, the parts that yield most go first, the first line never.
    #[test]
    fn the_header_yields_rows_in_order() {
        let part = |yields, rows| HeaderPart {
            yields,
            lines: vec![String::new(); rows],
        };
        let header = [part(0, 2), part(5, 3), part(2, 1)];
        // (room, rows kept): all; without the part that yields most; the first line only.
        for (room, kept) in [(6, 6), (5, 3), (3, 3), (2, 2), (0, 2)] {
            assert_eq!(
                rows(&header, kept_yield(&header, room)),
                kept,
                "room {room}"
            );
        }
    }

    #[test]
    fn the_finest_scale_that_fits() {
        // One heap of 1000 granules, 100 pixels a line: 10 lines at one granule per pixel.
        assert_eq!(fit(&[1000], 1, 100, 12), 1);
        assert_eq!(fit(&[1000], 1, 100, 11), 2);
        assert_eq!(fit(&[1000], 1, 100, 7), 2);
        assert_eq!(fit(&[1000], 1, 100, 6), 3);
        // A header of two rows: one line fewer for the picture.
        assert_eq!(fit(&[1000], 2, 100, 13), 1);
        assert_eq!(fit(&[1000], 2, 100, 12), 2);
        // Two heaps: their header lines count too.
        let scale = fit(&[64 << 20, 1 << 20], 1, 160, 40);
        let lines = |g: u64| {
            4 + (64u64 << 20).div_ceil(g).div_ceil(160) + (1u64 << 20).div_ceil(g).div_ceil(160)
        };
        assert!(lines(scale) <= 40, "scale {scale}");
        // Nothing finer fits: the scale before it in the series needs more lines.
        assert!(
            lines(scale * 2 / 3) > 40 || lines(scale / 2) > 40,
            "scale {scale}"
        );
        // No room: each heap on one line.
        assert_eq!(fit(&[5000, 100], 1, 100, 0), 64);
        assert_eq!(fit(&[], 1, 100, 10), 1);
    }
}
