//! The JSON schema: every object `snapshot`, `watch` and `probes` write, field by field.
//!
//! The state derives no `Serialize`: these types are the public names (extend, never rename),
//! borrowed or copied from the state, so that renaming a state field renames nothing here.
use serde::Serialize;

use crate::state::events::Counts;
use crate::state::heap::{AddressRange, Arena, HeapFigures, HeapMap};
use crate::state::pages::{MappingPages, PageCounts};
use crate::state::probes::Placed;
use crate::state::sites::{Frame, Line, SiteFigures, SiteReport, SitesReport};
use crate::state::{LibcInfo, Sample};

/// `snapshot --format json`: one document.
#[derive(Serialize)]
pub(super) struct Document<'a> {
    pid: i32,
    page_size: u64,
    mappings: Vec<MappingJson<'a>>,
    totals: PageCountsJson,
    limitations: Vec<String>,
    libc: Option<LibcJson<'a>>,
    heap: Option<HeapJson<'a>>,
    /// Why there is no heap map, when there is none.
    heap_error: Option<String>,
}

impl<'a> From<&'a Sample> for Document<'a> {
    fn from(sample: &'a Sample) -> Self {
        let pages = &sample.pages;
        Document {
            pid: pages.pid,
            page_size: pages.page_size,
            mappings: pages.mappings.iter().map(MappingJson::from).collect(),
            totals: (&pages.totals).into(),
            limitations: pages.limitations.iter().map(|l| l.to_string()).collect(),
            libc: sample.libc.as_ref().map(LibcJson::from),
            heap: sample.heap_map().map(HeapJson::from),
            heap_error: sample.heap_unavailable().map(|e| e.to_string()),
        }
    }
}

/// A line of `/proc/PID/maps` and its pages.
#[derive(Serialize)]
struct MappingJson<'a> {
    start: u64,
    end: u64,
    perms: &'a str,
    offset: u64,
    /// The pathname column: a file, `[heap]`, `[stack]`, ... or empty for anonymous memory.
    path: &'a str,
    pages: PageCountsJson,
}

impl<'a> From<&'a MappingPages> for MappingJson<'a> {
    fn from(pages: &'a MappingPages) -> Self {
        let mapping = &pages.mapping;
        MappingJson {
            start: mapping.start,
            end: mapping.end,
            perms: &mapping.perms,
            offset: mapping.offset,
            path: &mapping.path,
            pages: (&pages.counts).into(),
        }
    }
}

/// Page counts by state: the mappings', the process's totals and a watch line's `pages`.
#[derive(Serialize)]
pub(crate) struct PageCountsJson {
    anon: u64,
    file: u64,
    thp_anon: u64,
    thp_file: u64,
    swapped: u64,
    absent: u64,
}

impl From<&PageCounts> for PageCountsJson {
    fn from(counts: &PageCounts) -> Self {
        PageCountsJson {
            anon: counts.anon,
            file: counts.file,
            thp_anon: counts.thp_anon,
            thp_file: counts.thp_file,
            swapped: counts.swapped,
            absent: counts.absent,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct LibcJson<'a> {
    path: &'a str,
    build_id: &'a str,
    debug_file: Option<&'a str>,
    version: Option<&'a str>,
    /// "debug info", or "derived from the code, no debug info".
    layout: &'static str,
}

impl<'a> From<&'a LibcInfo> for LibcJson<'a> {
    fn from(info: &'a LibcInfo) -> Self {
        LibcJson {
            path: &info.path,
            build_id: &info.build_id,
            debug_file: info.debug_file.as_deref(),
            version: info.version.as_deref(),
            layout: info.layout_source(),
        }
    }
}

/// The heap map, the same in a snapshot and in a watch line.
#[derive(Serialize)]
pub(crate) struct HeapJson<'a> {
    arenas: Vec<ArenaJson>,
    mmapped_chunks: u64,
    mmapped_bytes: u64,
    totals: FiguresJson,
    notes: Vec<&'a str>,
}

impl<'a> From<&'a HeapMap> for HeapJson<'a> {
    fn from(map: &'a HeapMap) -> Self {
        HeapJson {
            arenas: map.arenas.iter().map(ArenaJson::from).collect(),
            mmapped_chunks: map.mmapped_chunks,
            mmapped_bytes: map.mmapped_bytes,
            totals: (&map.totals).into(),
            notes: map.notes.iter().map(|n| n.message.as_str()).collect(),
        }
    }
}

#[derive(Serialize)]
struct ArenaJson {
    address: u64,
    main: bool,
    heaps: Vec<RangeJson>,
    /// An arena's figures sit beside its address, as its own fields.
    #[serde(flatten)]
    figures: FiguresJson,
}

impl From<&Arena> for ArenaJson {
    fn from(arena: &Arena) -> Self {
        ArenaJson {
            address: arena.address,
            main: arena.main,
            heaps: arena.heaps.iter().map(RangeJson::from).collect(),
            figures: (&arena.figures).into(),
        }
    }
}

#[derive(Serialize)]
struct RangeJson {
    start: u64,
    end: u64,
}

impl From<&AddressRange> for RangeJson {
    fn from(range: &AddressRange) -> Self {
        RangeJson {
            start: range.start,
            end: range.end,
        }
    }
}

/// An arena's figures, and the heap's totals.
#[derive(Serialize)]
pub(crate) struct FiguresJson {
    system_bytes: u64,
    live_chunks: u64,
    live_bytes: u64,
    tcache_chunks: u64,
    tcache_bytes: u64,
    fastbin_chunks: u64,
    fastbin_bytes: u64,
    bin_chunks: u64,
    bin_bytes: u64,
    top_bytes: u64,
    overhead_bytes: u64,
    unknown_bytes: u64,
    /// Live mode only: what the program freed since the last walk (absent when 0, as in walk
    /// mode).
    #[serde(skip_serializing_if = "is_zero")]
    freed_chunks: u64,
    #[serde(skip_serializing_if = "is_zero")]
    freed_bytes: u64,
    free_resident_bytes: u64,
    trimmable_bytes: u64,
    pinned_bytes: u64,
    largest_free_bytes: u64,
    fragmentation: f64,
}

impl From<&HeapFigures> for FiguresJson {
    fn from(figures: &HeapFigures) -> Self {
        FiguresJson {
            system_bytes: figures.system_bytes,
            live_chunks: figures.live_chunks,
            live_bytes: figures.live_bytes,
            tcache_chunks: figures.tcache_chunks,
            tcache_bytes: figures.tcache_bytes,
            fastbin_chunks: figures.fastbin_chunks,
            fastbin_bytes: figures.fastbin_bytes,
            bin_chunks: figures.bin_chunks,
            bin_bytes: figures.bin_bytes,
            top_bytes: figures.top_bytes,
            overhead_bytes: figures.overhead_bytes,
            unknown_bytes: figures.unknown_bytes,
            freed_chunks: figures.freed_chunks,
            freed_bytes: figures.freed_bytes,
            free_resident_bytes: figures.free_resident_bytes,
            trimmable_bytes: figures.trimmable_bytes,
            pinned_bytes: figures.pinned_bytes,
            largest_free_bytes: figures.largest_free_bytes,
            fragmentation: figures.fragmentation,
        }
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// `watch --format json`: one line per sample.
#[derive(Serialize)]
pub(super) struct WatchLine<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    pub pid: i32,
    /// "walk": every sample walks the heap; "live": events keep it current between walks.
    pub mode: &'static str,
    /// Walk mode: why not live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub walk_reason: Option<&'a str>,
    /// Live mode: what the events did since watch started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<EventsJson>,
    /// How long the sample took.
    pub sample_seconds: f64,
    /// Page counts of the whole process, by state (null in the last line, the process gone).
    pub pages: Option<PageCountsJson>,
    pub heap: Option<HeapJson<'a>>,
    pub heap_error: Option<String>,
    /// Live mode with stacks: the top allocation sites.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sites: Option<SitesJson<'a>>,
    /// The last line only: why watch ended ("process exited").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<&'a str>,
}

#[derive(Serialize)]
pub(crate) struct EventsJson {
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

impl From<&Counts> for EventsJson {
    fn from(counts: &Counts) -> Self {
        EventsJson {
            allocs: counts.allocs,
            frees: counts.frees,
            allocated_bytes: counts.allocated_bytes,
            freed_bytes: counts.freed_bytes,
            lost: counts.lost,
            resyncs: counts.resyncs,
            contradictions: counts.contradictions,
            reconciles: counts.reconciles,
            reconcile_mismatch_chunks: counts.reconcile_mismatch.map(|m| m.chunks),
            reconcile_mismatch_bytes: counts.reconcile_mismatch.map(|m| m.bytes),
        }
    }
}

/// One of live mode's probes, in `probes --format json`.
#[derive(Serialize)]
pub(super) struct ProbeJson<'a> {
    program: &'a str,
    function: &'a str,
    offset: u64,
    file_offset: u64,
    emulated: bool,
    returns: bool,
}

impl<'a> From<&'a Placed> for ProbeJson<'a> {
    fn from(placed: &'a Placed) -> Self {
        ProbeJson {
            program: placed.program.name(),
            function: &placed.function,
            offset: placed.offset,
            file_offset: placed.file_offset,
            emulated: placed.emulated,
            returns: placed.returns(),
        }
    }
}

/// How many sites a watch line carries (the heaviest by live bytes, and by pinned bytes).
pub(super) const TOP_SITES: usize = 20;

/// A watch line's `sites`.
#[derive(Serialize)]
pub(crate) struct SitesJson<'a> {
    /// The byte sampler's mean (1: every allocation).
    sample_bytes: u64,
    /// One page in this many is watched for the pinned bytes (1: every page; 0: none).
    pin_pages: u64,
    stacks: u64,
    missed_stacks: u64,
    /// Sites merged into `other` to keep the table bounded.
    merged_sites: u64,
    top: Vec<SiteJson<'a>>,
    before_attach: FiguresOfSiteJson,
    other: FiguresOfSiteJson,
    /// Sampled allocations whose stack could not be copied.
    unknown: FiguresOfSiteJson,
    /// Pinned bytes of live chunks on watched pages with no site (malloc's own).
    unattributed: FiguresOfSiteJson,
}

impl<'a> From<&'a SitesReport> for SitesJson<'a> {
    fn from(report: &'a SitesReport) -> Self {
        SitesJson::with_top(report, TOP_SITES)
    }
}

impl<'a> SitesJson<'a> {
    /// The sites of `report` with its `top` heaviest by live bytes and by pinned bytes.
    pub(crate) fn with_top(report: &'a SitesReport, top: usize) -> Self {
        SitesJson {
            sample_bytes: report.sampling.sample_bytes,
            pin_pages: report.sampling.pin_pages(),
            stacks: report.stacks,
            missed_stacks: report.missed,
            merged_sites: report.merged,
            top: (report.top(top).into_iter()).map(SiteJson::from).collect(),
            before_attach: (&report.before_attach).into(),
            other: (&report.other).into(),
            unknown: (&report.unknown).into(),
            unattributed: (&report.unattributed).into(),
        }
    }
}

/// A site's estimates, rounded.
#[derive(Serialize)]
pub(crate) struct FiguresOfSiteJson {
    inuse_objects: u64,
    inuse_bytes: u64,
    alloc_objects: u64,
    alloc_bytes: u64,
    pinned_bytes: u64,
}

impl From<&SiteFigures> for FiguresOfSiteJson {
    fn from(f: &SiteFigures) -> Self {
        FiguresOfSiteJson {
            inuse_objects: f.inuse_objects.round() as u64,
            inuse_bytes: f.inuse_bytes.round() as u64,
            alloc_objects: f.alloc_objects.round() as u64,
            alloc_bytes: f.alloc_bytes.round() as u64,
            pinned_bytes: f.pinned_bytes.round() as u64,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct SiteJson<'a> {
    #[serde(flatten)]
    figures: FiguresOfSiteJson,
    /// The stack ended before its root (no call-frame information, or past the bytes copied).
    truncated: bool,
    /// Innermost first.
    frames: Vec<FrameJson<'a>>,
}

impl<'a> From<&'a SiteReport> for SiteJson<'a> {
    fn from(site: &'a SiteReport) -> Self {
        SiteJson {
            figures: (&site.figures).into(),
            truncated: site.truncated,
            frames: site.frames.iter().map(|f| FrameJson::from(&**f)).collect(),
        }
    }
}

#[derive(Serialize)]
pub(super) struct FrameJson<'a> {
    address: u64,
    module: Option<&'a str>,
    build_id: Option<&'a str>,
    /// Where the address is in the module's file.
    file_offset: u64,
    /// Innermost (inlined) first; the last is the function whose code it is. Empty if not
    /// symbolised.
    lines: Vec<LineJson<'a>>,
}

impl<'a> From<&'a Frame> for FrameJson<'a> {
    fn from(frame: &'a Frame) -> Self {
        FrameJson {
            address: frame.address,
            module: frame.module.as_ref().map(|m| m.path.as_str()),
            build_id: frame.module.as_ref().and_then(|m| m.build_id.as_deref()),
            file_offset: frame.file_offset,
            lines: frame.lines.iter().map(LineJson::from).collect(),
        }
    }
}

#[derive(Serialize)]
pub(super) struct LineJson<'a> {
    function: &'a str,
    file: Option<&'a str>,
    line: Option<u32>,
}

impl<'a> From<&'a Line> for LineJson<'a> {
    fn from(line: &'a Line) -> Self {
        LineJson {
            function: &line.function,
            file: line.file.as_deref(),
            line: line.line,
        }
    }
}
