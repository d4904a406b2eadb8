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
}

impl WalkReason {
    /// A short stable name, for labels.
    pub fn key(&self) -> &'static str {
        match self {
            WalkReason::Asked(_) => "asked",
            WalkReason::ProbesUnavailable(_) => "probes_unavailable",
            WalkReason::TooBusy(_) => "over_max_rate",
        }
    }
}

impl std::fmt::Display for WalkReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkReason::Asked(why)
            | WalkReason::ProbesUnavailable(why)
            | WalkReason::TooBusy(why) => f.write_str(why),
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
    /// attach them leaves walk mode, with the reason.
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
                // Gone, or no heap to follow: walk mode could not do better.
                Err(e) if e.is_gone() || matches!(e, Error::Heap(_)) => return Err(e),
                Err(e) => (
                    None,
                    Some(WalkReason::ProbesUnavailable(live_unavailable(&e))),
                ),
            },
        };
        if let Some(why) = &walk_reason {
            log::info!("process {pid}: walk mode: {why}");
        }
        Ok(Monitor {
            session,
            live,
            guard: Guard::new(options.max_rate),
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
    pub fn sample(&mut self) -> Result<Sample> {
        let mut sample = match &mut self.live {
            Some(live) => live.sample(&mut self.session)?,
            None => self.session.sample()?,
        };
        if let Some(events) = &mut sample.events {
            *events = self.earlier_events.then(events);
        }
        self.history.push(&sample);
        if let Some(live) = &self.live
            && let Some(rate) = call_rate(&self.history)
            && let Some(why) = self.guard.too_busy(rate, Instant::now())
        {
            self.earlier_events = self.earlier_events.then(&live.counts());
            self.live = None;
            log::info!("process {}: walk mode: {why}", self.pid());
            self.walk_reason = Some(WalkReason::TooBusy(why));
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

/// Takes the per-call probes off a process that calls the allocator faster than `max_rate`
/// (each call pays a trap), and tries them again after a while, waiting twice as long after
/// each try that finds it still too busy.
struct Guard {
    max_rate: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// The first wait before the probes are tried again, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_LONGEST: Duration = Duration::from_secs(600);

impl Guard {
    fn new(max_rate: u64) -> Guard {
        Guard {
            max_rate,
            retry_at: None,
            backoff: RETRY_FIRST,
        }
    }

    /// Why the probes must come off at `now`, if the last interval's `rate` of calls a second
    /// was above the limit.
    fn too_busy(&mut self, rate: f64, now: Instant) -> Option<String> {
        if rate <= self.max_rate as f64 {
            self.backoff = RETRY_FIRST;
            return None;
        }
        let wait = self.backoff;
        self.retry_at = Some(now + wait);
        self.backoff = (self.backoff * 2).min(RETRY_LONGEST);
        Some(format!(
            "{rate:.0} calls/s is above --max-rate {}: the probes are off (each call pays a \
             trap), trying again in {}",
            self.max_rate,
            humantime::format_duration(wait)
        ))
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

/// Allocation calls and frees a second over the last interval, once two samples had events.
fn call_rate(history: &History) -> Option<f64> {
    let (now, before) = (history.current_events?, history.previous_events?);
    let seconds = history.achieved_interval()?.as_secs_f64();
    let calls = (now.allocs + now.frees).saturating_sub(before.allocs + before.frees);
    Some(calls as f64 / seconds.max(1e-3))
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

    use super::{Guard, RETRY_FIRST};

    const MAX_RATE: f64 = 1000.0;

    #[test]
    fn the_probes_come_off_above_the_rate_only() {
        for (rate, off) in [(MAX_RATE, false), (MAX_RATE + 1.0, true)] {
            let mut guard = Guard::new(MAX_RATE as u64);
            let why = guard.too_busy(rate, Instant::now());
            assert_eq!(why.is_some(), off, "{rate} calls/s");
        }
    }

    #[test]
    fn each_try_still_too_busy_waits_twice_as_long_up_to_the_longest() {
        let mut guard = Guard::new(MAX_RATE as u64);
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..7 {
            let why = guard.too_busy(2.0 * MAX_RATE, now).unwrap();
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
    fn a_try_that_finds_the_rate_lower_starts_the_back_off_again() {
        let mut guard = Guard::new(MAX_RATE as u64);
        let now = Instant::now();
        guard.too_busy(2.0 * MAX_RATE, now);
        guard.too_busy(2.0 * MAX_RATE, now);
        assert!(guard.too_busy(MAX_RATE / 2.0, now).is_none());
        guard.too_busy(2.0 * MAX_RATE, now);
        assert_eq!(guard.retry_at, Some(now + RETRY_FIRST));
    }
}
