//! Machine-readable output: the JSON document of a snapshot and the NDJSON line of a watch.
//!
//! These are wire types of their own, borrowed from the state: the field names are public
//! (extend, never rename) while the state may change shape. The plain records whose field names
//! are the schema (page counts, heap figures, a mapping, an address range) serialise as they
//! are.
use serde::Serialize;

use crate::state::events::Counts;
use crate::state::heap::{AddressRange, HeapFigures, HeapMap};
use crate::state::pages::{Mapping, PageCounts};
use crate::state::{LibcInfo, Sample};

/// `snapshot --format json`: one document.
#[derive(Serialize)]
struct Document<'a> {
    pid: i32,
    page_size: u64,
    mappings: Vec<MappingJson<'a>>,
    totals: &'a PageCounts,
    limitations: Vec<String>,
    libc: Option<LibcJson<'a>>,
    heap: Option<HeapJson<'a>>,
    /// Why there is no heap map, when there is none.
    heap_error: Option<String>,
}

#[derive(Serialize)]
struct MappingJson<'a> {
    #[serde(flatten)]
    mapping: &'a Mapping,
    pages: &'a PageCounts,
}

#[derive(Serialize)]
struct LibcJson<'a> {
    path: &'a str,
    build_id: &'a str,
    debug_file: &'a str,
    version: Option<&'a str>,
}

#[derive(Serialize)]
struct HeapJson<'a> {
    arenas: Vec<ArenaJson<'a>>,
    mmapped_chunks: u64,
    mmapped_bytes: u64,
    totals: &'a HeapFigures,
    notes: Vec<&'a str>,
}

#[derive(Serialize)]
struct ArenaJson<'a> {
    address: u64,
    main: bool,
    heaps: &'a [AddressRange],
    #[serde(flatten)]
    figures: &'a HeapFigures,
}

/// `watch --format json`: one line per sample.
#[derive(Serialize)]
struct WatchLine<'a> {
    /// RFC 3339, UTC.
    time: String,
    pid: i32,
    /// "walk": every sample walks the heap; "live": events keep it current between walks.
    mode: &'static str,
    /// Walk mode: why not live.
    #[serde(skip_serializing_if = "Option::is_none")]
    walk_reason: Option<&'a str>,
    /// Live mode: what the events did since watch started.
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<EventsJson>,
    /// How long the sample took.
    sample_seconds: f64,
    /// Page counts of the whole process, by state (null in the last line, the process gone).
    pages: Option<&'a PageCounts>,
    heap: Option<HeapJson<'a>>,
    heap_error: Option<String>,
    /// The last line only: why watch ended ("process exited").
    #[serde(skip_serializing_if = "Option::is_none")]
    ended: Option<&'a str>,
}

#[derive(Serialize)]
struct EventsJson {
    allocs: u64,
    frees: u64,
    allocated_bytes: u64,
    freed_bytes: u64,
    lost: u64,
    resyncs: u64,
    contradictions: u64,
    reconciles: u64,
    /// The last reconcile's difference from a fresh walk (null before the first).
    reconcile_mismatch_chunks: Option<u64>,
    reconcile_mismatch_bytes: Option<u64>,
}

/// The snapshot document, pretty-printed.
pub fn snapshot(sample: &Sample) -> String {
    let pages = &sample.pages;
    let document = Document {
        pid: pages.pid,
        page_size: pages.page_size,
        mappings: (pages.mappings.iter())
            .map(|m| MappingJson {
                mapping: &m.mapping,
                pages: &m.counts,
            })
            .collect(),
        totals: &pages.totals,
        limitations: pages.limitations.iter().map(|l| l.to_string()).collect(),
        libc: sample.libc.as_ref().map(libc),
        heap: sample.heap_map().map(heap),
        heap_error: sample.heap_unavailable().map(|e| e.to_string()),
    };
    serde_json::to_string_pretty(&document).expect("plain data always serialises")
}

/// One watch sample as one line of JSON (no newline); `walk_reason` says why it is not live.
pub fn watch_line(sample: &Sample, walk_reason: Option<&str>) -> String {
    let line = WatchLine {
        time: humantime::format_rfc3339_millis(sample.taken).to_string(),
        pid: sample.pid,
        mode: mode(&sample.events),
        walk_reason: walk_reason.filter(|_| sample.events.is_none()),
        events: sample.events.as_ref().map(events),
        sample_seconds: sample.duration.as_secs_f64(),
        pages: Some(&sample.pages.totals),
        heap: sample.heap_map().map(heap),
        heap_error: sample.heap_unavailable().map(|e| e.to_string()),
        ended: None,
    };
    serde_json::to_string(&line).expect("plain data always serialises")
}

/// Watch's last line when the process is gone (`ended` says how): the events up to its end
/// in live mode (they took `seconds` to gather), no pages and no heap.
pub fn watch_end(
    pid: i32,
    counts: Option<Counts>,
    walk_reason: Option<&str>,
    seconds: f64,
    ended: &str,
) -> String {
    let line = WatchLine {
        time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        pid,
        mode: mode(&counts),
        walk_reason: walk_reason.filter(|_| counts.is_none()),
        events: counts.as_ref().map(events),
        sample_seconds: seconds,
        pages: None,
        heap: None,
        heap_error: Some(ended.to_string()),
        ended: Some(ended),
    };
    serde_json::to_string(&line).expect("plain data always serialises")
}

/// "live" where events are counted, "walk" otherwise.
fn mode(events: &Option<Counts>) -> &'static str {
    if events.is_some() { "live" } else { "walk" }
}

fn events(e: &Counts) -> EventsJson {
    EventsJson {
        allocs: e.allocs,
        frees: e.frees,
        allocated_bytes: e.allocated_bytes,
        freed_bytes: e.freed_bytes,
        lost: e.lost,
        resyncs: e.resyncs,
        contradictions: e.contradictions,
        reconciles: e.reconciles,
        reconcile_mismatch_chunks: e.reconcile_mismatch.map(|m| m.chunks),
        reconcile_mismatch_bytes: e.reconcile_mismatch.map(|m| m.bytes),
    }
}

fn libc(info: &LibcInfo) -> LibcJson<'_> {
    LibcJson {
        path: &info.path,
        build_id: &info.build_id,
        debug_file: &info.debug_file,
        version: info.version.as_deref(),
    }
}

fn heap(map: &HeapMap) -> HeapJson<'_> {
    HeapJson {
        arenas: (map.arenas.iter())
            .map(|arena| ArenaJson {
                address: arena.address,
                main: arena.main,
                heaps: &arena.heaps,
                figures: &arena.figures,
            })
            .collect(),
        mmapped_chunks: map.mmapped_chunks,
        mmapped_bytes: map.mmapped_bytes,
        totals: &map.totals,
        notes: map.notes.iter().map(|n| n.message.as_str()).collect(),
    }
}

#[derive(Serialize)]
struct ProbeJson<'a> {
    program: &'a str,
    function: &'a str,
    offset: u64,
    file_offset: u64,
    emulated: bool,
    returns: bool,
}

/// Where live mode's probes go, as JSON: `{"libc": PATH, "probes": [...]}`.
pub fn probes(libc: &std::path::Path, placed: &[crate::state::probes::Placed]) -> String {
    let probes: Vec<ProbeJson> = placed
        .iter()
        .map(|p| ProbeJson {
            program: p.program.name(),
            function: &p.function,
            offset: p.offset,
            file_offset: p.file_offset,
            emulated: p.emulated,
            returns: p.returns(),
        })
        .collect();
    let document = serde_json::json!({ "libc": libc.display().to_string(), "probes": probes });
    serde_json::to_string_pretty(&document).expect("plain data always serialises")
}
