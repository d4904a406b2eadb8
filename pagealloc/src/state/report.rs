//! What one sample tells an exporter, without the granules: small enough to keep for every
//! process watched and to read at every scrape.
use std::time::{Duration, SystemTime};

use super::Sample;
use super::events::Counts;
use super::heap::HeapFigures;
use super::pages::PageCounts;
use super::resident::Resident;

/// How a process's heap is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Kept current by allocation events between walks.
    Live,
    /// Walked at every sample; why not live, as a short key (the log has the whole reason).
    Walk(&'static str),
    /// No heap map, only pages; why, as a short key.
    Pages(&'static str),
}

impl Mode {
    /// The label values: the mode and a short reason.
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Mode::Live => ("live", "live"),
            Mode::Walk(key) => ("walk", key),
            Mode::Pages(key) => ("pages", key),
        }
    }
}

/// The figures of one heap, whole or of one arena.
#[derive(Clone, Debug, PartialEq)]
pub struct HeapReport {
    pub totals: HeapFigures,
    /// Each arena's, in the order of the heap map (0: the main arena).
    pub arenas: Vec<HeapFigures>,
    pub mmapped_chunks: u64,
    pub mmapped_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub pid: i32,
    pub comm: String,
    pub mode: Mode,
    pub taken: SystemTime,
    pub duration: Duration,
    pub pages: PageCounts,
    pub heap: Option<HeapReport>,
    pub resident: Resident,
    /// Live mode: what the events did.
    pub events: Option<Counts>,
    /// Live mode with stacks: who holds the memory (shared with the sample).
    pub sites: Option<std::sync::Arc<super::sites::SitesReport>>,
}

impl Report {
    pub fn of(sample: &Sample, comm: &str, mode: Mode) -> Report {
        let heap = sample.heap_map().map(|map| HeapReport {
            totals: map.totals,
            arenas: map.arenas.iter().map(|a| a.figures).collect(),
            mmapped_chunks: map.mmapped_chunks,
            mmapped_bytes: map.mmapped_bytes,
        });
        Report {
            pid: sample.pid,
            comm: comm.to_string(),
            mode,
            taken: sample.taken,
            duration: sample.duration,
            pages: sample.pages.totals,
            heap,
            resident: Resident::of(sample),
            events: sample.events,
            sites: sample.sites.clone(),
        }
    }
}
