//! The Prometheus exposition of what `serve` keeps: families built from the processes' latest
//! reports (never from a walk; serve makes them once per change of the reports), and the
//! agent's own figures.
//! Base units, `pagealloc_` prefix, labels `pid` and `comm` on every process's series, `arena`
//! only on the per-arena family; never an address or a per-page series.
pub mod openmetrics;

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use crate::state::events::{Counts, SIZE_BOUNDS};
use crate::state::heap::ChunkState;
use crate::state::pages::PageState;
use crate::state::report::{HeapReport, Report};
use crate::state::resident::Part;

/// What the agent itself did, for its own metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentFigures {
    /// Samples taken, and failed.
    pub samples: u64,
    pub sample_errors: u64,
    /// Samples taken later than due to keep within the CPU budget.
    pub samples_delayed: u64,
    /// The CPU budget, in cores.
    pub cpu_budget: f64,
}

/// The families of every process's report and the agent's figures.
pub fn families(reports: &[&Report], agent: &AgentFigures, per_arena: bool) -> Vec<MetricFamily> {
    let mut out = Exposition {
        reports,
        families: Vec::new(),
    };
    heap_families(&mut out, per_arena);
    memory_families(&mut out);
    event_families(&mut out);
    sample_families(&mut out);
    agent_families(&mut out, agent);
    out.families
}

/// A per-process figure of a part of the report: name, help, value.
type Figure<T> = (&'static str, &'static str, fn(&T) -> u64);

/// What the heap walk (or live mode's state) holds: bytes and chunks by state, each arena's
/// bytes if asked, and the figures of the whole heap.
fn heap_families(out: &mut Exposition, per_arena: bool) {
    out.by_key(
        "pagealloc_heap_bytes",
        "Bytes of glibc malloc's heaps (arenas) by chunk state; freed = freed since the last walk (live mode).",
        |r, state: ChunkState| r.heap.as_ref().map(|h| h.totals.get(state).1),
    );
    out.by_key(
        "pagealloc_heap_chunks",
        "Chunks of glibc malloc's heaps by state (the states whose chunks are counted).",
        |r, state: ChunkState| r.heap.as_ref().and_then(|h| h.totals.get(state).0),
    );
    if per_arena {
        out.each(
            "pagealloc_arena_heap_bytes",
            "Bytes of each malloc arena by chunk state (arena 0 is the main arena).",
            MetricType::GAUGE,
            |r, s| {
                let arenas = r.heap.iter().flat_map(|h| h.arenas.iter().enumerate());
                for (index, arena) in arenas {
                    let index = index.to_string();
                    for state in ChunkState::ALL {
                        let labels = [("arena", index.as_str()), ("state", state.key())];
                        s.add(&labels, arena.get(state).1);
                    }
                }
            },
        );
    }
    let heap_figures: [Figure<HeapReport>; 6] = [
        (
            "pagealloc_free_resident_bytes",
            "Bytes of free and cached chunk interiors on resident pages: paid for, not used.",
            |h| h.totals.free_resident_bytes,
        ),
        (
            "pagealloc_pinned_bytes",
            "Bytes of free_resident on pages that also hold live bytes: kept resident by the live chunks beside them, which no malloc_trim gives back.",
            |h| h.totals.pinned_bytes,
        ),
        (
            "pagealloc_trimmable_bytes",
            "Bytes of whole resident pages inside free chunks that malloc_trim(0) could give back.",
            |h| h.totals.trimmable_bytes,
        ),
        (
            "pagealloc_largest_free_bytes",
            "Bytes of the largest chunk in malloc's bins or fastbins (top excluded).",
            |h| h.totals.largest_free_bytes,
        ),
        (
            "pagealloc_mmapped_bytes",
            "Bytes of the chunks malloc mapped on their own (as glibc accounts them).",
            |h| h.mmapped_bytes,
        ),
        (
            "pagealloc_mmapped_chunks",
            "Chunks malloc mapped on their own.",
            |h| h.mmapped_chunks,
        ),
    ];
    out.figures(MetricType::GAUGE, &heap_figures, |r| r.heap.as_ref());
}

/// The process's memory as the page map and smaps show it: pages by state, resident bytes by
/// part, huge pages.
fn memory_families(out: &mut Exposition) {
    out.by_key(
        "pagealloc_pages",
        "Pages of the process's mappings by state, as the page map shows them.",
        |r, state: PageState| Some(r.pages.get(state)),
    );
    out.by_key(
        "pagealloc_resident_bytes",
        "The process's resident memory by part; the parts sum to its RSS.",
        |r, part: Part| Some(r.resident.get(part)),
    );
    out.each_value(
        "pagealloc_resident_huge_bytes",
        "Bytes of the process's resident memory in transparent huge pages or large folios.",
        MetricType::GAUGE,
        |r| Some(r.resident.huge_bytes),
    );
}

/// What live mode's events did: counters, the last reconcile's mismatch, the allocation sizes.
fn event_families(out: &mut Exposition) {
    let event_counters: [Figure<Counts>; 5] = [
        (
            "pagealloc_allocations_total",
            "Allocation calls that returned memory (malloc, calloc, realloc, the memalign family), live mode.",
            |c| c.allocs,
        ),
        (
            "pagealloc_frees_total",
            "Frees of a chunk (free, realloc to 0 bytes), live mode.",
            |c| c.frees,
        ),
        (
            "pagealloc_allocated_bytes_total",
            "Bytes of the chunks allocated (chunk sizes), live mode.",
            |c| c.allocated_bytes,
        ),
        (
            "pagealloc_events_lost_total",
            "Allocation events lost: no room in the ring buffer, or not read in time (each triggers a resync), live mode.",
            |c| c.lost,
        ),
        (
            "pagealloc_resyncs_total",
            "Heap walks taken because the events could not be trusted, live mode.",
            |c| c.resyncs,
        ),
    ];
    out.figures(MetricType::COUNTER, &event_counters, |r| r.events.as_ref());
    out.each_value(
        "pagealloc_stacks_total",
        "Sampled allocations whose stack was taken, live mode with stacks (the stacks themselves are at /debug/pprof/heap: their number has no bound).",
        MetricType::COUNTER,
        |r| r.sites.as_ref().map(|s| s.stacks),
    );
    out.each_value(
        "pagealloc_reconcile_mismatch_bytes",
        "Live bytes by which the last reconcile's fresh walk differed from the state kept from events.",
        MetricType::GAUGE,
        |r| r.events.and_then(|e| e.reconcile_mismatch).map(|m| m.bytes),
    );
    out.each(
        "pagealloc_allocation_size_bytes",
        "Chunk sizes of the allocations, live mode.",
        MetricType::HISTOGRAM,
        |r, s| {
            if let Some(events) = &r.events {
                s.histogram(events);
            }
        },
    );
}

/// Each process's last sample: how long it took, when, and in which mode.
fn sample_families(out: &mut Exposition) {
    out.each_value(
        "pagealloc_sample_duration_seconds",
        "How long the process's last sample took.",
        MetricType::GAUGE,
        |r| Some(r.duration.as_secs_f64()),
    );
    out.each_value(
        "pagealloc_sample_timestamp_seconds",
        "When the process's last sample began (Unix time).",
        MetricType::GAUGE,
        |r| {
            let at = r.taken.duration_since(std::time::UNIX_EPOCH);
            Some(at.map_or(0.0, |d| d.as_secs_f64()))
        },
    );
    out.each(
        "pagealloc_mode",
        "1 for the mode a process is sampled in: live (events), walk (a heap walk at each sample) or pages (no heap map); reason says why not live.",
        MetricType::GAUGE,
        |r, s| {
            let (mode, reason) = r.mode.labels();
            s.add(&[("mode", mode), ("reason", reason)], 1u64);
        },
    );
}

/// The agent's own figures: what it follows, its samples, its CPU budget.
fn agent_families(out: &mut Exposition, agent: &AgentFigures) {
    use MetricType::{COUNTER, GAUGE};
    let figures = [
        (
            "pagealloc_processes",
            "Processes being sampled.",
            GAUGE,
            out.reports.len() as f64,
        ),
        (
            "pagealloc_samples_total",
            "Samples taken, of every process.",
            COUNTER,
            agent.samples as f64,
        ),
        (
            "pagealloc_sample_errors_total",
            "Samples that failed for another reason than the process exiting.",
            COUNTER,
            agent.sample_errors as f64,
        ),
        (
            "pagealloc_samples_delayed_total",
            "Samples taken later than their interval to keep the agent within its CPU budget.",
            COUNTER,
            agent.samples_delayed as f64,
        ),
        (
            "pagealloc_cpu_budget_cores",
            "The CPU the agent allows itself, in cores (--cpu-budget).",
            GAUGE,
            agent.cpu_budget,
        ),
    ];
    for (name, help, kind, value) in figures {
        out.single(name, help, kind, value);
    }
}

/// A state or a part that splits a family into series: the label's name, its values.
trait Key: Copy + 'static {
    const LABEL: &'static str;
    const ALL: &'static [Self];
    fn label_value(self) -> &'static str;
}

impl Key for ChunkState {
    const LABEL: &'static str = "state";
    const ALL: &'static [Self] = &ChunkState::ALL;
    fn label_value(self) -> &'static str {
        self.key()
    }
}

impl Key for PageState {
    const LABEL: &'static str = "state";
    const ALL: &'static [Self] = &PageState::ALL;
    fn label_value(self) -> &'static str {
        self.key()
    }
}

impl Key for Part {
    const LABEL: &'static str = "part";
    const ALL: &'static [Self] = &Part::ALL;
    fn label_value(self) -> &'static str {
        self.key()
    }
}

/// The families built so far, of these reports; families without a sample are left out.
struct Exposition<'r> {
    reports: &'r [&'r Report],
    families: Vec<MetricFamily>,
}

impl Exposition<'_> {
    /// A family with `fill`'s samples of each process, labelled `pid` and `comm` first.
    fn each(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        fill: impl Fn(&Report, &mut Samples),
    ) {
        let mut family = Family::new(name, help, kind);
        for report in self.reports {
            let pid = report.pid.to_string();
            let mut samples = Samples {
                family: &mut family,
                labels: [("pid", &pid), ("comm", &report.comm)],
            };
            fill(report, &mut samples);
        }
        self.push(family);
    }

    /// A family of one sample per process, `value`'s (None: none of this process).
    fn each_value<V: Into<Value>>(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        value: impl Fn(&Report) -> Option<V>,
    ) {
        self.each(name, help, kind, |r, s| {
            if let Some(value) = value(r) {
                s.add(&[], value);
            }
        });
    }

    /// A gauge of one sample per process and key `K` (None: none of it), labelled by the key.
    fn by_key<K: Key>(
        &mut self,
        name: &str,
        help: &str,
        value: impl Fn(&Report, K) -> Option<u64>,
    ) {
        self.each(name, help, MetricType::GAUGE, |r, s| {
            for &key in K::ALL {
                if let Some(value) = value(r, key) {
                    s.add(&[(K::LABEL, key.label_value())], value);
                }
            }
        });
    }

    /// A family of each figure of the part `of` of every report that has it.
    fn figures<T>(
        &mut self,
        kind: MetricType,
        figures: &[Figure<T>],
        of: impl Fn(&Report) -> Option<&T>,
    ) {
        for &(name, help, value) in figures {
            self.each_value(name, help, kind, |r| of(r).map(value));
        }
    }

    /// A family of one sample, without labels.
    fn single(&mut self, name: &str, help: &str, kind: MetricType, value: f64) {
        let mut family = Family::new(name, help, kind);
        family.sample(&[], value);
        self.push(family);
    }

    fn push(&mut self, family: Family) {
        if !family.inner.get_metric().is_empty() {
            self.families.push(family.inner);
        }
    }
}

/// One process's samples of a family.
struct Samples<'a> {
    family: &'a mut Family,
    labels: [(&'static str, &'a str); 2],
}

impl Samples<'_> {
    fn add(&mut self, extra: &[(&str, &str)], value: impl Into<Value>) {
        let labels: Vec<(&str, &str)> = self.labels.iter().chain(extra).copied().collect();
        self.family.sample(&labels, value.into().0);
    }

    fn histogram(&mut self, events: &Counts) {
        self.family.histogram(&self.labels, events);
    }
}

/// A sample's value: counts and byte figures are u64, times f64.
struct Value(f64);

impl From<u64> for Value {
    fn from(value: u64) -> Value {
        Value(value as f64)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Value {
        Value(value)
    }
}

/// One metric family being filled.
struct Family {
    inner: MetricFamily,
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut inner = MetricFamily::default();
        inner.set_name(name.to_string());
        inner.set_help(help.to_string());
        inner.set_field_type(kind);
        Family { inner }
    }

    fn metric(&mut self, labels: &[(&str, &str)]) -> &mut Metric {
        let mut metric = Metric::default();
        metric.set_label(
            labels
                .iter()
                .map(|&(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name(name.to_string());
                    pair.set_value(value.to_string());
                    pair
                })
                .collect(),
        );
        self.inner.mut_metric().push(metric);
        self.inner.mut_metric().last_mut().expect("just pushed")
    }

    /// A gauge's or a counter's sample, as the family's type says.
    fn sample(&mut self, labels: &[(&str, &str)], value: f64) {
        if self.inner.get_field_type() == MetricType::COUNTER {
            let mut counter = Counter::default();
            counter.set_value(value);
            self.metric(labels).set_counter(counter);
        } else {
            let mut gauge = Gauge::default();
            gauge.set_value(value);
            self.metric(labels).set_gauge(gauge);
        }
    }

    /// The allocation sizes of `events` as a cumulative histogram.
    fn histogram(&mut self, labels: &[(&str, &str)], events: &Counts) {
        let mut cumulative = 0;
        let buckets = SIZE_BOUNDS
            .iter()
            .zip(events.allocation_sizes)
            .map(|(&bound, count)| {
                cumulative += count;
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(bound as f64);
                bucket.set_cumulative_count(cumulative);
                bucket
            })
            .collect();
        let mut histogram = Histogram::default();
        histogram.set_bucket(buckets);
        histogram.set_sample_count(events.allocs);
        histogram.set_sample_sum(events.allocated_bytes as f64);
        self.metric(labels).set_histogram(histogram);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::state::events::Mismatch;
    use crate::state::heap::HeapFigures;
    use crate::state::pages::PageCounts;
    use crate::state::report::Mode;
    use crate::state::resident::Resident;

    /// A process in live mode (two arenas, a reconcile that found a mismatch) or walked.
    fn report(pid: i32, live: bool) -> Report {
        let events = Counts {
            reconcile_mismatch: Some(Mismatch::default()),
            ..Counts::default()
        };
        Report {
            pid,
            comm: format!("p{pid}"),
            mode: if live {
                Mode::Live
            } else {
                Mode::Walk("asked")
            },
            taken: UNIX_EPOCH,
            duration: Duration::ZERO,
            pages: PageCounts::default(),
            heap: Some(HeapReport {
                totals: HeapFigures::default(),
                arenas: vec![HeapFigures::default(); if live { 2 } else { 1 }],
                mmapped_chunks: 0,
                mmapped_bytes: 0,
            }),
            resident: Resident::default(),
            events: live.then_some(events),
            sites: None,
        }
    }

    /// Each family as "name type: labels of its first series ×series", in exposition order.
    fn shape(families: &[MetricFamily]) -> Vec<String> {
        (families.iter())
            .map(|f| {
                let metrics = f.get_metric();
                let labels: Vec<&str> = (metrics[0].get_label().iter()).map(|l| l.name()).collect();
                let kind = format!("{:?}", f.get_field_type()).to_lowercase();
                let (name, series) = (f.name(), metrics.len());
                format!("{name} {kind}: {} ×{series}", labels.join(","))
            })
            .collect()
    }

    #[test]
    fn families_come_in_their_order_with_their_labels() {
        let (live, walked) = (report(1, true), report(2, false));
        let agent = AgentFigures::default();
        let with_arenas = families(&[&live, &walked], &agent, true);
        let want = [
            "pagealloc_heap_bytes gauge: pid,comm,state ×16",
            "pagealloc_heap_chunks gauge: pid,comm,state ×10",
            "pagealloc_arena_heap_bytes gauge: pid,comm,arena,state ×24",
            "pagealloc_free_resident_bytes gauge: pid,comm ×2",
            "pagealloc_pinned_bytes gauge: pid,comm ×2",
            "pagealloc_trimmable_bytes gauge: pid,comm ×2",
            "pagealloc_largest_free_bytes gauge: pid,comm ×2",
            "pagealloc_mmapped_bytes gauge: pid,comm ×2",
            "pagealloc_mmapped_chunks gauge: pid,comm ×2",
            "pagealloc_pages gauge: pid,comm,state ×12",
            "pagealloc_resident_bytes gauge: pid,comm,part ×14",
            "pagealloc_resident_huge_bytes gauge: pid,comm ×2",
            "pagealloc_allocations_total counter: pid,comm ×1",
            "pagealloc_frees_total counter: pid,comm ×1",
            "pagealloc_allocated_bytes_total counter: pid,comm ×1",
            "pagealloc_events_lost_total counter: pid,comm ×1",
            "pagealloc_resyncs_total counter: pid,comm ×1",
            "pagealloc_reconcile_mismatch_bytes gauge: pid,comm ×1",
            "pagealloc_allocation_size_bytes histogram: pid,comm ×1",
            "pagealloc_sample_duration_seconds gauge: pid,comm ×2",
            "pagealloc_sample_timestamp_seconds gauge: pid,comm ×2",
            "pagealloc_mode gauge: pid,comm,mode,reason ×2",
            "pagealloc_processes gauge:  ×1",
            "pagealloc_samples_total counter:  ×1",
            "pagealloc_sample_errors_total counter:  ×1",
            "pagealloc_samples_delayed_total counter:  ×1",
            "pagealloc_cpu_budget_cores gauge:  ×1",
        ];
        assert_eq!(shape(&with_arenas), want);
        // Without --per-arena, the per-arena family only is left out.
        let without = shape(&families(&[&live, &walked], &agent, false));
        let mut want_without = want.to_vec();
        want_without.remove(2);
        assert_eq!(without, want_without);
    }
}
