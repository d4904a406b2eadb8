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
    use MetricType::{COUNTER, GAUGE, HISTOGRAM};
    let mut out = Exposition::default();
    out.each(
        "pagealloc_heap_bytes",
        "Bytes of glibc malloc's heaps (arenas) by chunk state; freed = freed since the last walk (live mode).",
        GAUGE,
        reports,
        |r, s| {
            for state in ChunkState::ALL {
                if let Some(heap) = &r.heap {
                    s.add(&[("state", state.key())], heap.totals.get(state).1);
                }
            }
        },
    );
    out.each(
        "pagealloc_heap_chunks",
        "Chunks of glibc malloc's heaps by state (the states whose chunks are counted).",
        GAUGE,
        reports,
        |r, s| {
            for state in ChunkState::ALL {
                if let Some((Some(chunks), _)) = r.heap.as_ref().map(|h| h.totals.get(state)) {
                    s.add(&[("state", state.key())], chunks);
                }
            }
        },
    );
    if per_arena {
        out.each(
            "pagealloc_arena_heap_bytes",
            "Bytes of each malloc arena by chunk state (arena 0 is the main arena).",
            GAUGE,
            reports,
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
    let heap_figures: [HeapGauge; 5] = [
        (
            "pagealloc_free_resident_bytes",
            "Bytes of free and cached chunk interiors on resident pages: paid for, not used.",
            |h| h.totals.free_resident_bytes,
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
    for (name, help, value) in heap_figures {
        out.each(name, help, GAUGE, reports, |r, s| {
            if let Some(heap) = &r.heap {
                s.add(&[], value(heap));
            }
        });
    }
    out.each(
        "pagealloc_pages",
        "Pages of the process's mappings by state, as the page map shows them.",
        GAUGE,
        reports,
        |r, s| {
            for state in PageState::ALL {
                s.add(&[("state", state.key())], r.pages.get(state));
            }
        },
    );
    out.each(
        "pagealloc_resident_bytes",
        "The process's resident memory by part; the parts sum to its RSS.",
        GAUGE,
        reports,
        |r, s| {
            for part in Part::ALL {
                s.add(&[("part", part.key())], r.resident.get(part));
            }
        },
    );
    out.each(
        "pagealloc_resident_huge_bytes",
        "Bytes of the process's resident memory in transparent huge pages or large folios.",
        GAUGE,
        reports,
        |r, s| s.add(&[], r.resident.huge_bytes),
    );
    let event_counters: [EventCounter; 5] = [
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
    for (name, help, value) in event_counters {
        out.each(name, help, COUNTER, reports, |r, s| {
            if let Some(events) = &r.events {
                s.add(&[], value(events));
            }
        });
    }
    out.each(
        "pagealloc_reconcile_mismatch_bytes",
        "Live bytes by which the last reconcile's fresh walk differed from the state kept from events.",
        GAUGE,
        reports,
        |r, s| {
            if let Some(mismatch) = r.events.and_then(|e| e.reconcile_mismatch) {
                s.add(&[], mismatch.bytes);
            }
        },
    );
    out.each(
        "pagealloc_allocation_size_bytes",
        "Chunk sizes of the allocations, live mode.",
        HISTOGRAM,
        reports,
        |r, s| {
            if let Some(events) = &r.events {
                s.histogram(events);
            }
        },
    );
    out.each(
        "pagealloc_sample_duration_seconds",
        "How long the process's last sample took.",
        GAUGE,
        reports,
        |r, s| s.add(&[], r.duration.as_secs_f64()),
    );
    out.each(
        "pagealloc_sample_timestamp_seconds",
        "When the process's last sample began (Unix time).",
        GAUGE,
        reports,
        |r, s| {
            let at = r.taken.duration_since(std::time::UNIX_EPOCH);
            s.add(&[], at.map_or(0.0, |d| d.as_secs_f64()));
        },
    );
    out.each(
        "pagealloc_mode",
        "1 for the mode a process is sampled in: live (events), walk (a heap walk at each sample) or pages (no heap map); reason says why not live.",
        GAUGE,
        reports,
        |r, s| {
            let (mode, reason) = r.mode.labels();
            s.add(&[("mode", mode), ("reason", reason)], 1u64);
        },
    );
    out.single(
        "pagealloc_processes",
        "Processes being sampled.",
        GAUGE,
        reports.len() as f64,
    );
    out.single(
        "pagealloc_samples_total",
        "Samples taken, of every process.",
        COUNTER,
        agent.samples as f64,
    );
    out.single(
        "pagealloc_sample_errors_total",
        "Samples that failed for another reason than the process exiting.",
        COUNTER,
        agent.sample_errors as f64,
    );
    out.single(
        "pagealloc_samples_delayed_total",
        "Samples taken later than their interval to keep the agent within its CPU budget.",
        COUNTER,
        agent.samples_delayed as f64,
    );
    out.single(
        "pagealloc_cpu_budget_cores",
        "The CPU the agent allows itself, in cores (--cpu-budget).",
        GAUGE,
        agent.cpu_budget,
    );
    out.families
}

/// A per-process gauge of the heap report: name, help, value.
type HeapGauge = (&'static str, &'static str, fn(&HeapReport) -> u64);
/// A per-process counter of the events: name, help, value.
type EventCounter = (&'static str, &'static str, fn(&Counts) -> u64);

/// The families built so far; families without a sample are left out.
#[derive(Default)]
struct Exposition {
    families: Vec<MetricFamily>,
}

impl Exposition {
    /// A family with `fill`'s samples of each process, labelled `pid` and `comm` first.
    fn each(
        &mut self,
        name: &str,
        help: &str,
        kind: MetricType,
        reports: &[&Report],
        fill: impl Fn(&Report, &mut Samples),
    ) {
        let mut family = Family::new(name, help, kind);
        for report in reports {
            let pid = report.pid.to_string();
            let mut samples = Samples {
                family: &mut family,
                labels: [("pid", &pid), ("comm", &report.comm)],
            };
            fill(report, &mut samples);
        }
        self.push(family);
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
