//! What `serve` remembers of each process for its web view: the figures of its recent samples,
//! bounded by age and by count, so that an agent left running for days holds an hour of points.
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use super::heap::{ChunkState, HeapFigures};
use super::report::Report;
use super::resident::{Part, Resident};

/// How far back a timeline goes.
pub const SPAN: Duration = Duration::from_secs(3600);
/// The most points a timeline keeps, whatever the interval (one a second for the span).
pub const MAX_POINTS: usize = 3600;

/// The figures of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub taken: SystemTime,
    pub resident: Resident,
    /// The heap's totals; none when the sample had no heap map.
    pub heap: Option<HeapFigures>,
}

impl Point {
    pub fn of(report: &Report) -> Point {
        Point {
            taken: report.taken,
            resident: report.resident,
            heap: report.heap.as_ref().map(|h| h.totals),
        }
    }

    /// The resident bytes of `part`.
    pub fn part(&self, part: Part) -> u64 {
        self.resident.get(part)
    }

    /// The heap's bytes in `state` (0 without a heap map).
    pub fn state(&self, state: ChunkState) -> u64 {
        self.heap.map_or(0, |h| h.get(state).1)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Timeline {
    points: VecDeque<Point>,
}

impl Timeline {
    /// Adds the latest sample's point, forgetting those older than [`SPAN`] before it and any
    /// beyond [`MAX_POINTS`].
    pub fn push(&mut self, point: Point) {
        let oldest = point.taken.checked_sub(SPAN);
        while let (Some(first), Some(oldest)) = (self.points.front(), oldest) {
            if first.taken >= oldest && self.points.len() < MAX_POINTS {
                break;
            }
            self.points.pop_front();
        }
        self.points.push_back(point);
    }

    pub fn points(&self) -> impl ExactSizeIterator<Item = &Point> {
        self.points.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> Point {
        Point {
            taken: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds),
            resident: Resident::default(),
            heap: None,
        }
    }

    #[test]
    fn a_timeline_keeps_the_last_hour_and_no_more_than_its_bound() {
        let mut timeline = Timeline::default();
        for s in (0..7200).step_by(10) {
            timeline.push(at(s));
        }
        let kept: Vec<_> = timeline.points().map(|p| p.taken).collect();
        assert_eq!(kept.len(), 361, "an hour at 10 s, both ends included");
        assert_eq!(kept[0], at(7190 - 3600).taken);
        let mut dense = Timeline::default();
        for s in 0..(MAX_POINTS as u64 + 500) {
            let mut point = at(0);
            point.taken += Duration::from_millis(s * 100);
            dense.push(point);
        }
        assert_eq!(dense.points().len(), MAX_POINTS);
    }
}
