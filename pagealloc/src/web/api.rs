//! The JSON documents of the web view: what `serve` answers at `/api/...` and what an HTML
//! report carries inline. Made from the state alone (never a walk), and each bounded in size
//! whatever the heap: pictures come at the scale asked for, at most [`MAX_PIXELS`] pixels.
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::render::canvas::{Pixel, css_color};
use crate::render::heap::{HeapPixel, pixel};
use crate::render::json::wire::{HeapJson, LibcJson, PageCountsJson, SiteJson, SitesJson};
use crate::state::Sample;
use crate::state::heap::{CHUNK_START, ChunkState, GRANULE, Segment};
use crate::state::pages::{MappingPages, PageState};
use crate::state::report::Report;
use crate::state::resident::{Part, Resident};
use crate::state::timeline::Timeline;

/// The most pixels one picture answer holds.
pub const MAX_PIXELS: u64 = 1 << 22;
/// The pixels a picture gets when no scale is asked for: a screen's worth.
pub const DEFAULT_PIXELS: u64 = 1 << 20;
/// The sites a sites answer lists by default, and at most.
const DEFAULT_SITES: usize = 200;
const MAX_SITES: usize = 4096;

/// Why a request cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// What it names is not there (HTTP 404).
    #[error("{0}")]
    NotFound(String),
}

/// A request's query string, `name=value&...`.
pub struct Query<'q>(Vec<(&'q str, &'q str)>);

impl<'q> Query<'q> {
    pub fn parse(raw: Option<&'q str>) -> Query<'q> {
        let pairs = (raw.unwrap_or_default().split('&'))
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .collect();
        Query(pairs)
    }

    /// A number, decimal or `0x` hex (addresses), if given.
    pub fn number(&self, name: &str) -> Result<Option<u64>, ApiError> {
        let Some(&(_, text)) = self.0.iter().find(|(n, _)| *n == name) else {
            return Ok(None);
        };
        let parsed = match text.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => text.parse(),
        };
        parsed
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("{name}={text}: not a number")))
    }
}

/// The summary of one process, as the list of processes shows it.
#[derive(Serialize)]
struct ProcessJson<'a> {
    pid: i32,
    comm: &'a str,
    /// "live", "walk" or "pages" (no heap map), and why.
    mode: &'static str,
    why: &'static str,
    /// When the sample was taken, in seconds since the epoch.
    taken: f64,
    sample_seconds: f64,
    rss_bytes: u64,
    /// The resident bytes by part (`pagealloc_resident_bytes`'s parts).
    resident: Map<String, Value>,
    /// The heap's totals (null when there is no heap map).
    heap: Option<HeapTotalsJson>,
    /// Whether allocation sites are known (live mode with stacks).
    sites: bool,
}

#[derive(Serialize)]
struct HeapTotalsJson {
    system_bytes: u64,
    live_bytes: u64,
    free_resident_bytes: u64,
    trimmable_bytes: u64,
    pinned_bytes: u64,
}

impl<'a> From<&'a Report> for ProcessJson<'a> {
    fn from(report: &'a Report) -> Self {
        let (mode, why) = report.mode.labels();
        ProcessJson {
            pid: report.pid,
            comm: &report.comm,
            mode,
            why,
            taken: seconds_since_epoch(report.taken),
            sample_seconds: report.duration.as_secs_f64(),
            rss_bytes: report.resident.total(),
            resident: resident_json(&report.resident),
            heap: report.heap.as_ref().map(|h| HeapTotalsJson {
                system_bytes: h.totals.system_bytes,
                live_bytes: h.totals.live_bytes,
                free_resident_bytes: h.totals.free_resident_bytes,
                trimmable_bytes: h.totals.trimmable_bytes,
                pinned_bytes: h.totals.pinned_bytes,
            }),
            sites: report.sites.is_some(),
        }
    }
}

fn resident_json(resident: &Resident) -> Map<String, Value> {
    (Part::ALL.into_iter())
        .map(|part| (part.key().to_string(), resident.get(part).into()))
        .collect()
}

fn seconds_since_epoch(time: std::time::SystemTime) -> f64 {
    (time.duration_since(std::time::UNIX_EPOCH)).map_or(0.0, |d| d.as_secs_f64())
}

/// `/api/processes`: every process followed, and how often they are sampled.
pub fn processes<'r>(
    reports: impl Iterator<Item = &'r Report>,
    interval: Duration,
    generation: u64,
) -> String {
    let processes: Vec<ProcessJson> = reports.map(ProcessJson::from).collect();
    to_string(&json!({
        "generation": generation,
        "interval_seconds": interval.as_secs_f64(),
        "processes": processes,
    }))
}

/// One heap of the process: where it is and whose.
#[derive(Serialize)]
struct SegmentJson {
    index: usize,
    start: u64,
    end: u64,
    arena: usize,
    arena_address: u64,
    main: bool,
}

/// What a picture's glyph stands for.
#[derive(Serialize)]
struct PaletteJson {
    glyph: char,
    color: String,
    name: String,
}

fn palette<P: Pixel>(pixels: impl Iterator<Item = (P, String)>) -> Vec<PaletteJson> {
    pixels
        .map(|(pixel, name)| PaletteJson {
            glyph: pixel.glyph(),
            color: css_color(pixel.color()),
            name,
        })
        .collect()
}

/// `/api/process?pid=`: the latest sample's figures (the snapshot's, without the pictures),
/// its heaps, and the palette of the pictures.
pub fn process(report: &Report, sample: &Sample) -> String {
    let heap = sample.heap_map();
    let segments: Vec<SegmentJson> = heap.map_or(Vec::new(), |heap| {
        (heap.segments.iter().enumerate())
            .map(|(index, s)| SegmentJson {
                index,
                start: s.start,
                end: s.end,
                arena: s.arena,
                arena_address: heap.arenas.get(s.arena).map_or(0, |a| a.address),
                main: heap.arenas.get(s.arena).is_some_and(|a| a.main),
            })
            .collect()
    });
    let page_states = PageState::ALL.into_iter().map(|s| (s, s.key().to_string()));
    let mut document = serde_json::to_value(ProcessJson::from(report)).unwrap_or_default();
    let extra = json!({
        "page_size": sample.pages.page_size,
        "mappings": sample.pages.mappings.len(),
        "pages": PageCountsJson::from(&sample.pages.totals),
        "limitations": sample.pages.limitations.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        "libc": sample.libc.as_ref().map(LibcJson::from),
        "heap": heap.map(HeapJson::from),
        "heap_error": sample.heap_unavailable().map(|e| e.to_string()),
        "segments": segments,
        "palette": {
            "heap": palette(HeapPixel::all()),
            "pages": palette(page_states),
        },
    });
    if let (Value::Object(document), Value::Object(extra)) = (&mut document, extra) {
        document.extend(extra);
    }
    to_string(&document)
}

/// The smallest scale (a power of two times `unit`) at which `units` units fit `pixels`.
fn fitting_scale(units: u64, unit: u64, pixels: u64) -> u64 {
    let mut scale = unit;
    while units.div_ceil(scale / unit) > pixels {
        scale *= 2;
    }
    scale
}

fn checked_pixels(pixels: u64) -> Result<(), ApiError> {
    if pixels > MAX_PIXELS {
        return Err(ApiError::BadRequest(format!(
            "{pixels} pixels asked for, at most {MAX_PIXELS} are drawn at once: ask for a \
             larger scale or a smaller range"
        )));
    }
    Ok(())
}

/// The heap map of a sample that has one, else why not.
fn heap_of(sample: &Sample) -> Result<&crate::state::heap::HeapMap, ApiError> {
    sample.heap_map().ok_or_else(|| {
        ApiError::NotFound(format!(
            "process {} has no heap map: {}",
            sample.pid,
            sample
                .heap_unavailable()
                .map_or("not sampled yet".to_string(), |e| e.to_string())
        ))
    })
}

/// `/api/heap-map?pid=[&segment=I&from=A&to=B][&scale=S]`: the heaps as pixels of `scale`
/// bytes (a multiple of 16; by default the smallest power of two that fits a screen), each
/// pixel the glyph of `snapshot --color never` (the palette of `/api/process` colours them).
/// With `segment`, that heap alone, from `from` to `to` (addresses).
pub fn heap_map(sample: &Sample, query: &Query) -> Result<String, ApiError> {
    let heap = heap_of(sample)?;
    let page_size = sample.pages.page_size;
    let segment = query.number("segment")?;
    let chosen: Vec<(usize, &Segment)> = match segment {
        Some(index) => {
            let segment = heap.segments.get(index as usize).ok_or_else(|| {
                ApiError::NotFound(format!("segment={index}: the heap has no such segment"))
            })?;
            vec![(index as usize, segment)]
        }
        None => heap.segments.iter().enumerate().collect(),
    };
    let ranges: Vec<(usize, &Segment, u64, u64)> = (chosen.into_iter())
        .map(|(index, s)| {
            let from = query
                .number("from")?
                .unwrap_or(s.start)
                .clamp(s.start, s.end);
            let to = query.number("to")?.unwrap_or(s.end).clamp(from, s.end);
            Ok((index, s, from, to))
        })
        .collect::<Result<_, ApiError>>()?;
    let bytes: u64 = ranges.iter().map(|r| r.3 - r.2).sum();
    let scale = match query.number("scale")? {
        Some(scale) if scale == 0 || scale % GRANULE != 0 => {
            return Err(ApiError::BadRequest(format!(
                "scale={scale}: bytes per pixel, a multiple of {GRANULE}"
            )));
        }
        Some(scale) => scale,
        None => fitting_scale(bytes.div_ceil(GRANULE), GRANULE, DEFAULT_PIXELS),
    };
    checked_pixels(ranges.iter().map(|r| (r.3 - r.2).div_ceil(scale)).sum())?;
    let per_pixel = (scale / GRANULE) as usize;
    let segments: Vec<Value> = (ranges.into_iter())
        .map(|(index, segment, from, to)| {
            // Pixels start at the segment's start and every `scale` bytes after.
            let from = segment.start + (from - segment.start) / scale * scale;
            let (first, last) = (granule(segment, from), granule(segment, to));
            let pixels: String = (first..last)
                .step_by(per_pixel)
                .map(|g| pixel(segment, page_size, g, per_pixel).glyph())
                .collect();
            json!({
                "index": index,
                "start": segment.start,
                "end": segment.end,
                "from": from,
                "to": (from + pixels.len() as u64 * scale).min(segment.end),
                "pixels": pixels,
            })
        })
        .collect();
    Ok(to_string(&json!({ "scale": scale, "segments": segments })))
}

fn granule(segment: &Segment, address: u64) -> usize {
    ((address.saturating_sub(segment.start)) / GRANULE) as usize
}

/// `/api/heap-map/at?pid=&address=A[&scale=S]`: what lies in the pixel of `scale` bytes
/// (default 16) that holds `address`: its range, the bytes of each state in it, how many of its
/// pages are resident, the chunk at `address` and, where a stack was sampled for it, its site.
pub fn heap_at(sample: &Sample, query: &Query) -> Result<String, ApiError> {
    let heap = heap_of(sample)?;
    let address = (query.number("address")?)
        .ok_or_else(|| ApiError::BadRequest("address=ADDRESS: which address".into()))?;
    let scale = query.number("scale")?.unwrap_or(GRANULE).max(GRANULE) / GRANULE * GRANULE;
    let (index, segment) = (heap.segments.iter().enumerate())
        .find(|(_, s)| s.start <= address && address < s.end)
        .ok_or_else(|| ApiError::NotFound(format!("no heap at {address:#x}")))?;
    let from = segment.start + (address - segment.start) / scale * scale;
    let to = (from + scale).min(segment.end);
    let page_size = sample.pages.page_size;
    let per_page = (page_size / GRANULE).max(1) as usize;
    let (first, last) = (granule(segment, from), granule(segment, to));
    let mut bytes = [0u64; 8];
    for &g in &segment.granules[first..last] {
        bytes[ChunkState::from_granule(g) as usize] += GRANULE;
    }
    let states: Map<String, Value> = (ChunkState::ALL.into_iter())
        .filter(|&s| bytes[s as usize] > 0)
        .map(|s| (s.key().to_string(), bytes[s as usize].into()))
        .collect();
    let pages = (first / per_page)..last.div_ceil(per_page);
    let resident_pages = (pages.clone())
        .filter(|&p| segment.resident.get(p).copied().unwrap_or(false))
        .count();
    let at = granule(segment, address);
    let chunk_first = segment.chunk_start(at);
    let chunk_end = (segment.granules[at + 1..].iter())
        .position(|&g| g & CHUNK_START != 0)
        .map_or(segment.granules.len(), |p| at + 1 + p);
    let chunk_address = segment.start + chunk_first as u64 * GRANULE;
    let state = ChunkState::from_granule(segment.granules[chunk_first]);
    let pointer = chunk_address + heap.geometry.chunk_header;
    let site = (state == ChunkState::Live)
        .then(|| sample.sites.as_ref()?.site_of_chunk(pointer))
        .flatten()
        .map(SiteJson::from);
    Ok(to_string(&json!({
        "segment": index,
        "arena": segment.arena,
        "from": from,
        "to": to,
        "states": states,
        "pages": pages.len(),
        "resident_pages": resident_pages,
        "chunk": {
            "address": chunk_address,
            "user_pointer": pointer,
            "bytes": (chunk_end - chunk_first) as u64 * GRANULE,
            "state": state.key(),
        },
        "site": site,
    })))
}

/// `/api/pages?pid=[&scale=P]`: every mapping's pages as pixels of `scale` pages (by default
/// the smallest power of two that fits a screen), each the glyph of the state most of its pages
/// are in.
pub fn pages(sample: &Sample, query: &Query) -> Result<String, ApiError> {
    let map = &sample.pages;
    let page_count = |m: &MappingPages| (m.mapping.end - m.mapping.start) / map.page_size;
    let total: u64 = map.mappings.iter().map(page_count).sum();
    let scale = match query.number("scale")? {
        Some(0) => {
            return Err(ApiError::BadRequest(
                "scale=0: pages per pixel, 1 or more".into(),
            ));
        }
        Some(scale) => scale,
        None => fitting_scale(total, 1, DEFAULT_PIXELS),
    };
    checked_pixels(
        map.mappings
            .iter()
            .map(|m| page_count(m).div_ceil(scale))
            .sum(),
    )?;
    let mappings: Vec<Value> = (map.mappings.iter())
        .map(|m| {
            json!({
                "start": m.mapping.start,
                "end": m.mapping.end,
                "perms": m.mapping.perms,
                "path": m.mapping.path,
                "pages": PageCountsJson::from(&m.counts),
                "pixels": page_pixels(m, scale),
            })
        })
        .collect();
    Ok(to_string(&json!({
        "page_size": map.page_size,
        "scale": scale,
        "mappings": mappings,
    })))
}

/// The pixels of one mapping, `scale` pages each: the glyph of the state most of them are in.
fn page_pixels(pages: &MappingPages, scale: u64) -> String {
    let mut pixels = String::new();
    let mut counts = [0u64; PageState::ALL.len()];
    let mut filled = 0;
    for run in &pages.runs {
        let index = PageState::ALL
            .iter()
            .position(|&s| s == run.state)
            .unwrap_or(0);
        let mut left = run.pages;
        // The pixel under way first.
        if filled > 0 {
            let taken = left.min(scale - filled);
            counts[index] += taken;
            filled += taken;
            left -= taken;
            if filled == scale {
                pixels.push(dominant_page_state(&counts).glyph());
                (counts, filled) = ([0; PageState::ALL.len()], 0);
            }
        }
        // The run's whole pixels at once: a huge mapping never touched costs little.
        let whole = left / scale;
        pixels.extend(std::iter::repeat_n(run.state.glyph(), whole as usize));
        left -= whole * scale;
        if left > 0 {
            counts[index] += left;
            filled += left;
        }
    }
    if filled > 0 {
        pixels.push(dominant_page_state(&counts).glyph());
    }
    pixels
}

fn dominant_page_state(counts: &[u64; PageState::ALL.len()]) -> PageState {
    (PageState::ALL.into_iter().zip(counts))
        .max_by_key(|&(_, &n)| n)
        .map_or(PageState::Absent, |(s, _)| s)
}

/// `/api/history?pid=`: the figures of the samples of the last hour, as columns: `t` (seconds
/// since the epoch), the resident bytes by part and the heap's bytes by state.
pub fn history(timeline: &Timeline, interval: Duration) -> String {
    let t: Vec<f64> = timeline
        .points()
        .map(|p| seconds_since_epoch(p.taken))
        .collect();
    let resident: Map<String, Value> = (Part::ALL.into_iter())
        .map(|part| {
            let column: Vec<u64> = timeline.points().map(|p| p.part(part)).collect();
            (part.key().to_string(), column.into())
        })
        .collect();
    let heap: Map<String, Value> = (ChunkState::ALL.into_iter())
        .map(|state| {
            let column: Vec<u64> = timeline.points().map(|p| p.state(state)).collect();
            (state.key().to_string(), column.into())
        })
        .collect();
    to_string(&json!({
        "interval_seconds": interval.as_secs_f64(),
        "t": t,
        "resident": resident,
        "heap": heap,
    }))
}

/// `/api/sites?pid=[&top=N]`: the allocation sites (the `top` heaviest by live bytes and by
/// pinned bytes, 200 by default), as a watch line's `sites`.
pub fn sites(sample: &Sample, query: &Query) -> Result<String, ApiError> {
    let sites = sample.sites.as_deref().ok_or_else(|| {
        ApiError::NotFound(format!(
            "process {} has no allocation stacks: they need serve --live with --sample-bytes \
             above 0",
            sample.pid
        ))
    })?;
    let top = (query.number("top")?)
        .map_or(DEFAULT_SITES, |n| n as usize)
        .min(MAX_SITES);
    Ok(to_string(&SitesJson::with_top(sites, top)))
}

fn to_string(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain data always serialises")
}
