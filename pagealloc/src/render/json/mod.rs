//! Machine-readable output: the JSON document of a snapshot, the NDJSON line of a watch, and
//! where live mode's probes go.
//!
//! What goes out is [`wire`]'s types, made from the state: their field names are the schema.
#[cfg(test)]
mod tests;
pub(crate) mod wire;

use crate::state::Sample;
use crate::state::events::Counts;
use crate::state::probes::Placed;
use wire::{Document, EventsJson, HeapJson, ProbeJson, SitesJson, WatchLine};

/// The snapshot document, pretty-printed.
pub fn snapshot(sample: &Sample) -> String {
    serde_json::to_string_pretty(&Document::from(sample)).expect("plain data always serialises")
}

/// One watch sample as one line of JSON (no newline); `walk_reason` says why it is not live.
pub fn watch_line(sample: &Sample, walk_reason: Option<&str>) -> String {
    let line = WatchLine {
        time: humantime::format_rfc3339_millis(sample.taken).to_string(),
        pid: sample.pid,
        mode: mode(&sample.events),
        walk_reason: walk_reason.filter(|_| sample.events.is_none()),
        events: sample.events.as_ref().map(EventsJson::from),
        sample_seconds: sample.duration.as_secs_f64(),
        pages: Some((&sample.pages.totals).into()),
        heap: sample.heap_map().map(HeapJson::from),
        heap_error: sample.heap_unavailable().map(|e| e.to_string()),
        sites: sample.sites.as_deref().map(SitesJson::from),
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
        events: counts.as_ref().map(EventsJson::from),
        sample_seconds: seconds,
        pages: None,
        heap: None,
        heap_error: Some(ended.to_string()),
        sites: None,
        ended: Some(ended),
    };
    serde_json::to_string(&line).expect("plain data always serialises")
}

/// "live" where events are counted, "walk" otherwise.
fn mode(events: &Option<Counts>) -> &'static str {
    if events.is_some() { "live" } else { "walk" }
}

/// Where live mode's probes go, as JSON: `{"libc": PATH, "probes": [...]}`.
pub fn probes(libc: &std::path::Path, placed: &[Placed]) -> String {
    let probes: Vec<ProbeJson> = placed.iter().map(ProbeJson::from).collect();
    // Through a JSON value, whose objects keep their keys sorted: the probes' fields too.
    let document = serde_json::json!({ "libc": libc.display().to_string(), "probes": probes });
    serde_json::to_string_pretty(&document).expect("plain data always serialises")
}
