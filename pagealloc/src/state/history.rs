//! What a watch remembers between samples: the first and the previous figures (for changes since
//! start and since the last sample), when samples began (the interval achieved), and the last
//! few live and free-but-resident figures (the history line).
use std::collections::VecDeque;
use std::time::SystemTime;

use crate::state::Sample;
use crate::state::events::Counts;
use crate::state::heap::HeapFigures;

/// Samples the history line shows, at most.
pub const HISTORY_LEN: usize = 60;

/// The heap totals a watch header shows, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub live: u64,
    /// tcache and fastbins: free to the program, kept by malloc for quick reuse.
    pub cached: u64,
    /// The bins.
    pub free: u64,
    pub top: u64,
    pub free_resident: u64,
    pub trimmable: u64,
    pub largest_free: u64,
}

impl Totals {
    pub fn of(figures: &HeapFigures) -> Totals {
        Totals {
            live: figures.live_bytes,
            cached: figures.tcache_bytes + figures.fastbin_bytes,
            free: figures.bin_bytes,
            top: figures.top_bytes,
            free_resident: figures.free_resident_bytes,
            trimmable: figures.trimmable_bytes,
            largest_free: figures.largest_free_bytes,
        }
    }
}

#[derive(Default)]
pub struct History {
    /// Samples taken.
    pub samples: u64,
    pub first: Option<Totals>,
    pub previous: Option<Totals>,
    pub current: Option<Totals>,
    /// When the last two samples began.
    previous_start: Option<SystemTime>,
    current_start: Option<SystemTime>,
    /// (live, free but resident) of the last [`HISTORY_LEN`] samples with a heap map.
    pub series: VecDeque<(u64, u64)>,
    /// Live mode: the events' counts at the last two samples.
    pub previous_events: Option<Counts>,
    pub current_events: Option<Counts>,
    /// Live mode with stacks: the sites at the first sample that had them (for their growth).
    pub first_sites: Option<std::sync::Arc<super::sites::SitesReport>>,
}

impl History {
    pub fn push(&mut self, sample: &Sample) {
        self.samples += 1;
        self.previous_start = self.current_start.replace(sample.taken);
        self.previous_events = std::mem::replace(&mut self.current_events, sample.events);
        if self.first_sites.is_none() {
            self.first_sites = sample.sites.clone();
        }
        let Some(heap) = sample.heap_map() else {
            return;
        };
        let totals = Totals::of(&heap.totals);
        self.first.get_or_insert(totals);
        self.previous = self.current.replace(totals);
        if self.series.len() == HISTORY_LEN {
            self.series.pop_front();
        }
        self.series.push_back((totals.live, totals.free_resident));
    }

    /// The time between the starts of the last two samples.
    pub fn achieved_interval(&self) -> Option<std::time::Duration> {
        self.current_start?
            .duration_since(self.previous_start?)
            .ok()
    }
}

/// `values` as a line of block elements, lowest to highest of them.
pub fn sparkline(values: impl Iterator<Item = u64> + Clone) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let (low, high) = values
        .clone()
        .fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    values
        .map(|v| {
            let level = match high.checked_sub(low) {
                Some(span) if span > 0 => ((v - low) as u128 * 7 / span as u128) as usize,
                _ => 0,
            };
            BLOCKS[level]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::sparkline;

    #[test]
    fn sparkline_spans_lowest_to_highest() {
        assert_eq!(sparkline([5u64, 5, 5].into_iter()), "▁▁▁");
        assert_eq!(sparkline([0u64, 7, 14].into_iter()), "▁▄█");
        assert_eq!(sparkline([100u64, 200, 150].into_iter()), "▁█▄");
        assert_eq!(sparkline(std::iter::empty::<u64>()), "");
        assert_eq!(sparkline([0u64, u64::MAX].into_iter()), "▁█");
    }
}
