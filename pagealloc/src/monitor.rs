//! One process followed over time: its session, live mode while the probes can be had and the
//! process is not too busy for them, walk mode otherwise, and what the samples so far were.
//! `watch` draws its samples; `serve` exports them.
use std::time::{Duration, Instant};

use crate::debuginfo::DebugOptions;
use crate::error::{Error, Result};
use crate::live::{Live, LiveOptions};
use crate::session::{Session, SessionOptions};
use crate::state::events::Counts;
use crate::state::{History, Sample};

#[derive(Clone, Debug)]
pub struct MonitorOptions {
    pub debug: DebugOptions,
    /// Walks hold the process's threads still (see [`SessionOptions::stop`]).
    pub stop: bool,
    pub mode: ModeChoice,
    /// Above this many allocation calls and frees a second, the probes come off (walk mode)
    /// until a later try finds the rate lower.
    pub max_rate: u64,
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub enum ModeChoice {
    /// Live mode where the probes attach.
    Live(LiveOptions),
    /// Walk mode, for this reason (said wherever the mode is).
    Walk(String),
}

/// Why a process is sampled by walking its heap rather than followed by events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalkReason {
    /// The user asked for walk mode.
    Asked(String),
    /// The probes could not be attached (why, with the capabilities missing).
    ProbesUnavailable(String),
    /// The process called the allocator faster than the overhead guard allows.
    TooBusy(String),
    /// The probes lost more of the process's events than the overhead guard allows (each
    /// loss costs a resync walk).
    EventsLost(String),
}

impl WalkReason {
    /// A short stable name, for labels.
    pub fn key(&self) -> &'static str {
        match self {
            WalkReason::Asked(_) => "asked",
            WalkReason::ProbesUnavailable(_) => "probes_unavailable",
            WalkReason::TooBusy(_) => "over_max_rate",
            WalkReason::EventsLost(_) => "events_lost",
        }
    }
}

impl std::fmt::Display for WalkReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkReason::Asked(why)
            | WalkReason::ProbesUnavailable(why)
            | WalkReason::TooBusy(why)
            | WalkReason::EventsLost(why) => f.write_str(why),
        }
    }
}

pub struct Monitor {
    session: Session,
    live: Option<Live>,
    options: MonitorOptions,
    guard: Guard,
    walk_reason: Option<WalkReason>,
    /// What the events did under earlier probes (live mode ended by the guard, then resumed):
    /// the counts stay cumulative.
    earlier_events: Counts,
    history: History,
}

impl Monitor {
    /// Opens the process and attaches the probes (unless walk mode is asked for); a failure to
    /// attach them leaves walk mode, with the reason. A process that exits meanwhile is
    /// [`Error::ProcessExited`], whatever the step it failed.
    pub fn open(pid: i32, options: MonitorOptions) -> Result<Monitor> {
        let mut session = Session::open(
            pid,
            SessionOptions {
                heap: true,
                debug: options.debug.clone(),
                stop: options.stop,
            },
        )?;
        let (live, walk_reason) = match &options.mode {
            ModeChoice::Walk(why) => (None, Some(WalkReason::Asked(why.clone()))),
            ModeChoice::Live(live_options) => match Live::start(&mut session, *live_options) {
                Ok(live) => (Some(live), None),
                Err(_) if session.is_gone() => return Err(Error::ProcessExited { pid }),
                // Gone, no heap to follow, a debugger holding it for --stop, or asked to end:
                // walk mode could not do better.
                Err(e)
                    if e.is_gone()
                        || matches!(
                            e,
                            Error::Heap(_) | Error::AlreadyTraced { .. } | Error::Cancelled
                        ) =>
                {
                    return Err(e);
                }
                Err(e) => (
                    None,
                    Some(WalkReason::ProbesUnavailable(live_unavailable(&e))),
                ),
            },
        };
        if let Some(why) = &walk_reason {
            log::info!("process {pid}: walk mode: {why}");
        }
        let max_lost = match &options.mode {
            ModeChoice::Live(live_options) => live_options.max_lost,
            ModeChoice::Walk(_) => 0.0,
        };
        Ok(Monitor {
            session,
            live,
            guard: Guard::new(options.max_rate, max_lost),
            options,
            walk_reason,
            earlier_events: Counts::default(),
            history: History::default(),
        })
    }

    pub fn pid(&self) -> i32 {
        self.session.pid()
    }

    /// The process's name (`comm`).
    pub fn name(&self) -> String {
        self.session.name()
    }

    /// Why the samples walk the heap; None in live mode.
    pub fn walk_reason(&self) -> Option<&WalkReason> {
        self.walk_reason.as_ref()
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// In live mode, applies the events handed over since the last call: called every
    /// [`PUMP_EVERY`] between samples.
    pub fn pump(&mut self) {
        if let Some(live) = &mut self.live {
            live.pump(&mut self.session);
        }
    }

    /// Live mode: the counts of every event until now, as a sample's (after the process
    /// exited: all it made); None in walk mode.
    pub fn events_until_now(&mut self) -> Result<Option<Counts>> {
        let Some(live) = &mut self.live else {
            return Ok(None);
        };
        let counts = live.counts_until_now(&mut self.session)?;
        Ok(Some(self.earlier_events.then(&counts)))
    }

    /// A sample (from the events in live mode, a walk otherwise), remembered in the history;
    /// then the guard takes the probes off a process too busy for them, or tries them again.
    /// A debugger holding the process for a moment makes the walk due then (`--stop`) a
    /// sample without the heap, saying so; the next walk is tried as usual (at the first
    /// sample, the refusal stands, as for a snapshot).
    pub fn sample(&mut self) -> Result<Sample> {
        let sampled = match &mut self.live {
            Some(live) => live.sample(&mut self.session),
            None => self.session.sample(),
        };
        let mut sample = match sampled {
            Err(refused @ Error::AlreadyTraced { .. }) if self.history.samples > 0 => {
                log::info!("process {}: walk skipped: {refused}", self.pid());
                let mut sample = self.session.sample_skipping_the_walk(&refused)?;
                sample.events = self.live.as_ref().map(Live::counts);
                sample
            }
            sampled => sampled?,
        };
        if let Some(events) = &mut sample.events {
            *events = self.earlier_events.then(events);
        }
        self.history.push(&sample);
        if let Some(live) = &self.live
            && let Some(interval) = last_interval(&self.history)
            && let Some(why) = self.guard.too_costly(interval, Instant::now())
        {
            self.earlier_events = self.earlier_events.then(&live.counts());
            self.live = None;
            log::info!("process {}: walk mode: {why}", self.pid());
            self.walk_reason = Some(why);
        } else if self.live.is_none()
            && let ModeChoice::Live(live_options) = self.options.mode
            && self.guard.retry_due(Instant::now())
        {
            match Live::start(&mut self.session, live_options) {
                Ok(started) => {
                    self.live = Some(started);
                    self.walk_reason = None;
                }
                Err(e) => {
                    self.walk_reason = Some(WalkReason::ProbesUnavailable(live_unavailable(&e)))
                }
            }
        }
        Ok(sample)
    }
}

/// The overhead guard's limit when none is given: allocation calls and frees a second.
pub const DEFAULT_MAX_RATE: u64 = 250_000;

/// How often live mode applies the events between samples (see [`Live::pump`]).
pub const PUMP_EVERY: Duration = Duration::from_millis(50);

/// Takes the per-call probes off a process they cost too much, and tries them again after a
/// while, waiting twice as long after each try that finds them still too costly. Two costs
/// count: the rate of calls, each paying a trap (a lost event paid its trap too: it counts as
/// a call), and the share of the events lost (each loss costs a resync walk, and the state is
/// not worth following when the rings cannot keep up).
struct Guard {
    max_rate: u64,
    /// Above this share of an interval's events lost, the probes come off (by default 1 %: a
    /// burst of a few dozen lost among thousands is resynced, a ring too small for the
    /// process is not followed).
    max_lost: f64,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// The first wait before the probes are tried again, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_LONGEST: Duration = Duration::from_secs(600);

/// What the probes met over the last interval.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Interval {
    /// Allocation calls and frees counted.
    calls: u64,
    /// Events lost.
    lost: u64,
    seconds: f64,
}

impl Guard {
    fn new(max_rate: u64, max_lost: f64) -> Guard {
        Guard {
            max_rate,
            max_lost,
            retry_at: None,
            backoff: RETRY_FIRST,
        }
    }

    /// Why the probes must come off at `now`, if the last `interval` cost too much.
    fn too_costly(&mut self, interval: Interval, now: Instant) -> Option<WalkReason> {
        let trapped = interval.calls + interval.lost;
        let rate = trapped as f64 / interval.seconds.max(1e-3);
        let lost_share = interval.lost as f64 / trapped.max(1) as f64;
        let wait = self.backoff;
        let trying_again = format!(
            "the probes are off, trying again in {}",
            humantime::format_duration(wait)
        );
        let why = if rate > self.max_rate as f64 {
            let lost = match interval.lost {
                0 => String::new(),
                lost => format!(" ({lost} lost events among them)"),
            };
            WalkReason::TooBusy(format!(
                "{rate:.0} calls/s{lost} is above --max-rate {}: {trying_again} (each call \
                 pays a trap)",
                self.max_rate
            ))
        } else if lost_share > self.max_lost {
            WalkReason::EventsLost(format!(
                "{} of {trapped} events lost in {:.1} s ({:.1} %, above --max-lost {} %): the \
                 ring buffers cannot keep up (--ring-bytes) and each loss costs a walk; \
                 {trying_again}",
                interval.lost,
                interval.seconds,
                lost_share * 100.0,
                self.max_lost * 100.0
            ))
        } else {
            self.backoff = RETRY_FIRST;
            return None;
        };
        self.retry_at = Some(now + wait);
        self.backoff = (self.backoff * 2).min(RETRY_LONGEST);
        Some(why)
    }

    /// Whether the probes are to be tried again at `now` (once for each time they came off).
    fn retry_due(&mut self, now: Instant) -> bool {
        let due = self.retry_at.is_some_and(|at| now >= at);
        if due {
            self.retry_at = None;
        }
        due
    }
}

/// What the events of the last interval were, once two samples had events.
fn last_interval(history: &History) -> Option<Interval> {
    let (now, before) = (history.current_events?, history.previous_events?);
    let calls = |counts: Counts| counts.allocs + counts.frees;
    Some(Interval {
        calls: calls(now).saturating_sub(calls(before)),
        lost: now.lost.saturating_sub(before.lost),
        seconds: history.achieved_interval()?.as_secs_f64(),
    })
}

/// Why live mode could not start, with the capabilities this process lacks for it.
fn live_unavailable(error: &Error) -> String {
    const NEEDED: [(u32, &str); 4] = [
        (39, "CAP_BPF"),
        (38, "CAP_PERFMON"),
        (19, "CAP_SYS_PTRACE"),
        (
            21,
            "CAP_SYS_ADMIN (attaching uprobes on kernels with the fix for CVE-2025-38466, \
             6.16 and the stable kernels since July 2025; frame numbers)",
        ),
    ];
    let effective = procfs::process::Process::myself()
        .and_then(|me| me.status())
        .map_or(0, |status| status.capeff);
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|&(_, name)| name)
        .collect();
    if missing.is_empty() {
        format!("the probes could not be attached: {error}")
    } else {
        format!(
            "the probes could not be attached ({error}); missing: {}",
            missing.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Guard, Interval, RETRY_FIRST, WalkReason};

    const MAX_RATE: u64 = 1000;
    const MAX_LOST_SHARE: f64 = 0.01;

    fn guard() -> Guard {
        Guard::new(MAX_RATE, MAX_LOST_SHARE)
    }

    /// An interval of one second with these calls and lost events.
    fn second(calls: u64, lost: u64) -> Interval {
        Interval {
            calls,
            lost,
            seconds: 1.0,
        }
    }

    #[test]
    fn the_probes_come_off_above_the_rate_only() {
        for (calls, off) in [(MAX_RATE, false), (MAX_RATE + 1, true)] {
            let mut guard = guard();
            let why = guard.too_costly(second(calls, 0), Instant::now());
            assert_eq!(why.is_some(), off, "{calls} calls/s");
        }
        let half_a_second = Interval {
            seconds: 0.5,
            ..second(MAX_RATE, 0)
        };
        let why = guard().too_costly(half_a_second, Instant::now());
        assert!(matches!(why, Some(WalkReason::TooBusy(_))), "{why:?}");
    }

    /// Each lost event paid its trap: a call in the rate, said in the reason.
    #[test]
    fn lost_events_count_as_calls_in_the_rate() {
        let few_lost = (MAX_RATE as f64 * MAX_LOST_SHARE) as u64;
        let mut guard = guard();
        assert!(
            guard
                .too_costly(second(MAX_RATE - few_lost, few_lost), Instant::now())
                .is_none()
        );
        match guard.too_costly(second(MAX_RATE - few_lost, few_lost + 1), Instant::now()) {
            Some(WalkReason::TooBusy(why)) => {
                assert!(
                    why.contains("1001 calls/s (11 lost events among them)"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    /// Under the rate, a share of lost events above the limit takes the probes off, for a
    /// reason of its own.
    #[test]
    fn the_probes_come_off_when_too_many_events_are_lost() {
        let limit = (100.0 * MAX_LOST_SHARE) as u64;
        for (lost, off) in [(limit, false), (limit + 1, true)] {
            let mut guard = guard();
            let why = guard.too_costly(second(100 - lost, lost), Instant::now());
            assert_eq!(why.is_some(), off, "{lost} lost of 100");
            if let Some(why) = why {
                assert_eq!(why.key(), "events_lost");
                assert!(why.to_string().contains("2 of 100 events lost"), "{why}");
                assert!(guard.retry_at.is_some());
            }
        }
        // Nothing counted, nothing lost: no share to judge.
        assert!(guard().too_costly(second(0, 0), Instant::now()).is_none());
    }

    #[test]
    fn each_try_still_too_costly_waits_twice_as_long_up_to_the_longest() {
        let mut guard = guard();
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for i in 0..7 {
            // Too busy and too lossy in turn: one back-off for both.
            let interval = match i % 2 {
                0 => second(2 * MAX_RATE, 0),
                _ => second(10, 10),
            };
            let why = guard.too_costly(interval, now).unwrap().to_string();
            let wait = guard.retry_at.unwrap() - now;
            assert!(
                why.contains(&humantime::format_duration(wait).to_string()),
                "{why}"
            );
            assert!(!guard.retry_due(now + wait - Duration::from_millis(1)));
            assert!(guard.retry_due(now + wait));
            assert!(!guard.retry_due(now + wait), "one try for each time off");
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [30, 60, 120, 240, 480, 600, 600]);
    }

    #[test]
    fn a_try_that_finds_the_cost_lower_starts_the_back_off_again() {
        let mut guard = guard();
        let now = Instant::now();
        guard.too_costly(second(2 * MAX_RATE, 0), now);
        guard.too_costly(second(2 * MAX_RATE, 0), now);
        assert!(guard.too_costly(second(MAX_RATE / 2, 0), now).is_none());
        guard.too_costly(second(2 * MAX_RATE, 0), now);
        assert_eq!(guard.retry_at, Some(now + RETRY_FIRST));
    }
}
