//! The sampling thread of `serve`: one monitor per process, each sampled on its own beat, one
//! sample at a time, within the agent's CPU budget; each sample's report replaces the last in
//! what scrapes read. Losing one process (it exits, it cannot be read) never stops the others.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::ServeOptions;
use super::attach::{self, Openers, Wake};
use crate::error::Error;
use crate::metrics::AgentFigures;
use crate::monitor::{Monitor, PUMP_EVERY, WalkReason};
use crate::state::report::{Mode, Report};
use crate::state::timeline::{Point, Timeline};
use crate::state::{Heap, Sample};
use crate::trace;

/// What scrapes read: the latest report of each process, and the agent's figures.
#[derive(Debug, Default)]
pub struct Published {
    pub reports: BTreeMap<i32, Report>,
    /// What the web view shows of each process in `reports`.
    pub views: BTreeMap<i32, View>,
    /// How often processes are sampled (live mode: at least every [`LIVE_INTERVAL`]).
    pub interval: Duration,
    pub agent: AgentFigures,
    /// Counts every change of the above: an exposition made from them holds until it changes.
    pub generation: u64,
    /// Whether the sampling thread still runs (`/healthz` fails once it does not).
    pub sampling: bool,
}

/// One process as the web view shows it: its latest sample whole (its heap map too) and the
/// figures of its recent samples.
#[derive(Debug, Default)]
pub struct View {
    pub sample: Option<Arc<Sample>>,
    pub timeline: Timeline,
}

impl Published {
    /// Replaces `pid`'s report and sample with a new sample's.
    fn publish(&mut self, report: Report, sample: Sample) {
        let view = self.views.entry(report.pid).or_default();
        view.timeline.push(Point::of(&report));
        view.sample = Some(Arc::new(sample));
        self.reports.insert(report.pid, report);
    }

    /// Drops what is known of `pid`.
    fn forget(&mut self, pid: i32) {
        self.reports.remove(&pid);
        self.views.remove(&pid);
    }
}

/// Marks the sampling thread stopped however it ends, a panic included.
struct Running(Arc<RwLock<Published>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).sampling = false;
    }
}

/// How often /proc is looked at for new processes that match.
const DISCOVER_EVERY: Duration = Duration::from_secs(2);
/// A process that could not be opened is tried again after this.
const RETRY_REFUSED: Duration = Duration::from_secs(60);
/// Live mode samples at least this often (its events are applied as they come, in between).
pub(super) const LIVE_INTERVAL: Duration = Duration::from_secs(2);
/// The most often the allocator is asked to give back what retired monitors freed.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// How often the CPU budget delaying samples is said again.
const SAY_DELAYED_EVERY: Duration = Duration::from_secs(600);

struct Tracked {
    monitor: Monitor,
    comm: String,
    due: Instant,
    /// The error of the last failed sample, said once until a sample succeeds.
    failing: Option<String>,
}

pub fn run(options: ServeOptions, published: Arc<RwLock<Published>>, wakes: Channel) {
    let _running = Running(published.clone());
    let openers = match Openers::start(&options, &wakes.0) {
        Ok(openers) => openers,
        Err(e) => return eprintln!("pagealloc: {e}; nothing is sampled"),
    };
    let mut sampler = Sampler {
        budget: Budget::new(options.cpu_budget, Instant::now()),
        explicit: options.selection.pids.clone(),
        options,
        published,
        tracked: BTreeMap::new(),
        refused: HashMap::new(),
        openers,
        opening: BTreeSet::new(),
        said_no_match: false,
        said_delayed: None,
        trimmed: None,
    };
    // The openers' senders and serve's are the ones that count.
    let (_, wakes) = wakes;
    let mut next_discovery = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_discovery {
            sampler.discover();
            next_discovery = now + DISCOVER_EVERY;
        }
        let due = (sampler.tracked.iter()).map(|(&pid, tracked)| Due {
            pid,
            at: tracked.due,
            walks: tracked.monitor.walk_reason().is_some(),
        });
        let next = next_sample(due, sampler.budget.overdrawn_until(Instant::now()));
        let wake = next.map_or(next_discovery, |(at, ..)| at.min(next_discovery));
        let wait = wake.saturating_duration_since(Instant::now());
        match wakes.recv_timeout(wait.min(PUMP_EVERY)) {
            Err(RecvTimeoutError::Timeout) => sampler.pump(),
            Ok(Wake::Opened { pid, opened, cpu }) => {
                sampler.opened(pid, opened, cpu);
                // An opener is idle again: whatever waits for one is handed over now.
                next_discovery = Instant::now();
            }
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Some((at, pid, delayed)) = next
            && Instant::now() >= at
        {
            sampler.sample(pid, delayed);
        }
    }
}

/// The sampling thread's wake-ups: a sender for the openers, and the receiver.
pub type Channel = (Sender<Wake>, Receiver<Wake>);

/// The probes of retired monitors the kernel may still be detaching before no more are
/// attached: about three processes' (~6 s of the kernel's time). Each attach waits for the
/// detaches before it, and a stream of short-lived processes would otherwise pile up probes,
/// rings and descriptors faster than the kernel lets them go.
const DETACH_BACKLOG: usize = 64;

struct Sampler {
    options: ServeOptions,
    published: Arc<RwLock<Published>>,
    tracked: BTreeMap<i32, Tracked>,
    /// Processes that could not be opened, and when to try again.
    refused: HashMap<i32, Instant>,
    /// The processes named by PID and not yet gone.
    explicit: Vec<i32>,
    openers: Openers,
    /// Processes being opened.
    opening: BTreeSet<i32>,
    budget: Budget,
    said_no_match: bool,
    /// When the budget last delayed a sample and it was said.
    said_delayed: Option<Instant>,
    /// When the allocator last gave memory back.
    trimmed: Option<Instant>,
}

impl Sampler {
    /// Hands each selected process not yet followed to the openers, those named by PID first,
    /// as long as they are idle and the kernel keeps up with detaching; the others are looked
    /// at again at the next discovery.
    fn discover(&mut self) {
        let mut candidates = self.explicit.clone();
        let matching = self.options.selection.matching();
        candidates.extend(
            matching
                .into_iter()
                .filter(|pid| !self.explicit.contains(pid)),
        );
        let none = self.tracked.is_empty() && self.opening.is_empty();
        if candidates.is_empty() && !self.said_no_match && none {
            eprintln!("pagealloc: no process matches yet; looking again every {DISCOVER_EVERY:?}");
            self.said_no_match = true;
        }
        let now = Instant::now();
        self.refused.retain(|_, retry| *retry > now);
        for pid in candidates {
            if !self.openers.idle() || trace::detaching() > DETACH_BACKLOG {
                break;
            }
            let known = self.tracked.contains_key(&pid) || self.opening.contains(&pid);
            if known || self.refused.contains_key(&pid) {
                continue;
            }
            self.openers.open(pid);
            self.opening.insert(pid);
        }
    }

    /// A monitor back from the openers, followed from now on (its first sample due now).
    fn opened(
        &mut self,
        pid: i32,
        opened: std::thread::Result<crate::Result<Box<Monitor>>>,
        cpu: f64,
    ) {
        self.openers.opened();
        self.opening.remove(&pid);
        // Live mode's seed walk is a walk like the others.
        self.budget.spend(cpu, Instant::now());
        let Ok(opened) = opened else {
            eprintln!("pagealloc: opening process {pid} failed on a bug (the panic above)");
            self.refused.insert(pid, Instant::now() + RETRY_REFUSED);
            return;
        };
        match opened {
            Ok(monitor) => {
                let comm = monitor.name();
                let mode = monitor
                    .walk_reason()
                    .map_or("live mode".to_string(), |why| format!("walk mode: {why}"));
                eprintln!("pagealloc: following process {pid} ({comm}), {mode}");
                self.said_no_match = false;
                self.tracked.insert(
                    pid,
                    Tracked {
                        monitor: *monitor,
                        comm,
                        due: Instant::now(),
                        failing: None,
                    },
                );
            }
            // Gone, or a kernel thread (it has no memory to follow): not tried again.
            Err(e) if e.is_gone() || matches!(e, Error::KernelThread { .. }) => {
                self.explicit.retain(|&p| p != pid)
            }
            Err(e) => {
                eprintln!(
                    "pagealloc: process {pid} cannot be followed: {e}; trying again in {}",
                    humantime::format_duration(RETRY_REFUSED)
                );
                self.refused.insert(pid, Instant::now() + RETRY_REFUSED);
            }
        }
    }

    /// Live mode's events applied between samples (a bug met there is met again, and dealt
    /// with, by the process's next sample).
    fn pump(&mut self) {
        for tracked in self.tracked.values_mut() {
            let pump = std::panic::AssertUnwindSafe(|| tracked.monitor.pump());
            let _ = std::panic::catch_unwind(pump);
        }
    }

    /// A process no longer followed: its monitor dropped (its probes handed to the detaching
    /// thread), and the memory its state took given back to the system, at most every
    /// [`TRIM_EVERY`]: what the allocator keeps of the states freed (monitors are opened on
    /// other threads, their arenas are other arenas) would otherwise stay in the agent's RSS.
    fn retire(&mut self, pid: i32) {
        self.tracked.remove(&pid);
        if self.trimmed.is_none_or(|at| at.elapsed() >= TRIM_EVERY) {
            // SAFETY: malloc_trim only gives free memory back.
            unsafe { libc::malloc_trim(0) };
            self.trimmed = Some(Instant::now());
        }
    }

    fn sample(&mut self, pid: i32, delayed: bool) {
        let Some(tracked) = self.tracked.get_mut(&pid) else {
            return;
        };
        let walk_reason = tracked.monitor.walk_reason().map(WalkReason::key);
        let interval = match walk_reason {
            None => self.options.interval.min(LIVE_INTERVAL),
            Some(_) => self.options.interval,
        };
        let cpu_before = attach::own_cpu_seconds();
        // A bug met while sampling one process must not stop the others: that one is dropped.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let sample = tracked.monitor.sample()?;
            let mode = match (&sample.heap, walk_reason) {
                (Heap::Unavailable(why), _) => Mode::Pages(why.key()),
                (_, None) => Mode::Live,
                (_, Some(key)) => Mode::Walk(key),
            };
            // Made here, not under the lock that scrapes take.
            Ok::<_, Error>((Report::of(&sample, &tracked.comm, mode), sample))
        }));
        (self.budget).spend(attach::own_cpu_seconds() - cpu_before, Instant::now());
        if delayed
            && self
                .said_delayed
                .is_none_or(|at| at.elapsed() >= SAY_DELAYED_EVERY)
        {
            eprintln!(
                "pagealloc: samples are taken later than --interval to stay within --cpu-budget \
                 {} cores (pagealloc_samples_delayed_total counts them)",
                self.options.cpu_budget
            );
            self.said_delayed = Some(Instant::now());
        }
        let Ok(result) = result else {
            eprintln!(
                "pagealloc: sampling process {pid} ({}) failed on a bug (the panic above); it is \
                 no longer followed",
                tracked.comm
            );
            let mut published = self.published.write().unwrap_or_else(|e| e.into_inner());
            published.agent.sample_errors += 1;
            published.forget(pid);
            published.generation += 1;
            drop(published);
            self.retire(pid);
            self.refused.insert(pid, Instant::now() + RETRY_REFUSED);
            return;
        };
        // Keep the beat; after a late sample, the next is one interval on.
        tracked.due = (tracked.due + interval).max(Instant::now());
        let mut published = self.published.write().unwrap_or_else(|e| e.into_inner());
        published.generation += 1;
        published.agent.samples_delayed += u64::from(delayed);
        match result {
            Ok((report, sample)) => {
                published.agent.samples += 1;
                published.publish(report, sample);
                if tracked.failing.take().is_some() {
                    eprintln!(
                        "pagealloc: process {pid} ({}) is sampled again",
                        tracked.comm
                    );
                }
            }
            Err(e) if e.is_gone() => {
                published.forget(pid);
                drop(published);
                eprintln!(
                    "pagealloc: process {pid} ({}) is gone ({e}); its series are dropped",
                    tracked.comm
                );
                self.retire(pid);
                self.explicit.retain(|&p| p != pid);
            }
            Err(e) => {
                published.agent.sample_errors += 1;
                drop(published);
                let message = e.to_string();
                if tracked.failing.as_ref() != Some(&message) {
                    eprintln!(
                        "pagealloc: sampling process {pid} ({}): {message}",
                        tracked.comm
                    );
                }
                tracked.failing = Some(message);
            }
        }
    }
}

/// The CPU budget of the samples, as a bucket of CPU seconds: it fills at `cores` seconds per
/// second, up to [`BURST`] seconds' worth, and each sample empties it by the CPU the agent used
/// while it ran (the walk's threads included); a walk waits while it is below zero. On average
/// the samples use no more than the budget; one that costs more stretches the intervals after
/// it. Scrapes are not charged: they are answered from memory, and charging them would let a
/// busy scraper stop the samples it reads.
struct Budget {
    cores: f64,
    /// CPU seconds in hand (negative: owed).
    balance: f64,
    last: Instant,
}

/// The most CPU seconds the budget saves up, in seconds of budget.
const BURST: f64 = 10.0;

impl Budget {
    fn new(cores: f64, now: Instant) -> Budget {
        Budget {
            cores,
            balance: cores * BURST,
            last: now,
        }
    }

    /// Brings the balance up to `now`.
    fn earn(&mut self, now: Instant) {
        let earned = (now - self.last).as_secs_f64() * self.cores;
        self.balance = (self.balance + earned).min(self.cores * BURST);
        self.last = now;
    }

    /// A sample that ended at `now` used `cpu` seconds.
    fn spend(&mut self, cpu: f64, now: Instant) {
        self.earn(now);
        self.balance -= cpu.max(0.0);
    }

    /// Until when walks must wait, if the budget is overdrawn at `now`.
    fn overdrawn_until(&mut self, now: Instant) -> Option<Instant> {
        self.earn(now);
        if self.balance >= 0.0 {
            return None;
        }
        let wait = (-self.balance / self.cores).min(3600.0);
        Some(self.last + Duration::from_secs_f64(wait))
    }
}

/// A process's next sample: when, and whether it walks the heap.
struct Due {
    pid: i32,
    at: Instant,
    walks: bool,
}

/// The sample to take next: when, whose, and whether the budget, overdrawn until
/// `overdrawn_until`, delayed it. While the budget is overdrawn, walks wait until it is not.
/// Live mode's samples do not: they only apply the events waiting in memory (which must not
/// pile up) and read the page map.
fn next_sample(
    due: impl Iterator<Item = Due>,
    overdrawn_until: Option<Instant>,
) -> Option<(Instant, i32, bool)> {
    due.map(|Due { pid, at, walks }| {
        let held = overdrawn_until.filter(|&until| walks && until > at);
        (held.unwrap_or(at), pid, held.is_some())
    })
    .min()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{BURST, Budget, Due, next_sample};

    fn seconds(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_budget_is_overdrawn_by_what_the_samples_cost_until_it_is_earned_back() {
        let start = Instant::now();
        // (cores, idle seconds before, CPU seconds spent, seconds overdrawn for, whether that
        // pays the debt back)
        let rows = [
            // A full bucket pays for a burst.
            (1.0, 0.0, BURST, None, true),
            (1.0, 0.0, BURST + 2.0, Some(2.0), true),
            (0.5, 0.0, 0.5 * BURST + 1.0, Some(2.0), true),
            // It saves up no more than a burst however long it waits.
            (1.0, 1000.0, BURST + 0.5, Some(0.5), true),
            // Never more than an hour at a time, however deep the debt.
            (1.0, 0.0, 1e7, Some(3600.0), false),
        ];
        for (cores, idle, cpu, overdrawn, paid) in rows {
            let mut budget = Budget::new(cores, start);
            let spent = start + seconds(idle);
            budget.spend(cpu, spent);
            let until = budget.overdrawn_until(spent);
            let expected = overdrawn.map(|s| spent + seconds(s));
            let close = match (until, expected) {
                (Some(a), Some(b)) => a.max(b) - a.min(b) < Duration::from_millis(1),
                (a, b) => a == b,
            };
            assert!(close, "{cores} cores, {cpu} s: {until:?}, not {expected:?}");
            if let Some(until) = until {
                let later = until + Duration::from_millis(1);
                assert_eq!(budget.overdrawn_until(later).is_none(), paid, "{cpu} s");
            }
        }
        // A clock that went back (a negative cost) is not a credit.
        let mut budget = Budget::new(1.0, start);
        budget.spend(BURST / 2.0, start);
        budget.spend(-BURST / 2.0, start);
        budget.spend(BURST / 2.0 + 1.0, start);
        assert!(budget.overdrawn_until(start).is_some());
    }

    #[test]
    fn an_overdrawn_budget_delays_walks_and_not_live_samples() {
        let now = Instant::now();
        let at = |s: f64| now + seconds(s);
        let due = |pid, s, walks| Due {
            pid,
            at: at(s),
            walks,
        };
        // (what is due, overdrawn until, the next sample)
        let rows = [
            (vec![due(1, 1.0, true)], None, (at(1.0), 1, false)),
            (vec![due(1, 1.0, true)], Some(at(3.0)), (at(3.0), 1, true)),
            (vec![due(1, 1.0, false)], Some(at(3.0)), (at(1.0), 1, false)),
            // Due after the budget is back: not delayed.
            (vec![due(1, 4.0, true)], Some(at(3.0)), (at(4.0), 1, false)),
            // The walk held, the live sample due later goes first.
            (
                vec![due(1, 0.5, true), due(2, 2.0, false)],
                Some(at(3.0)),
                (at(2.0), 2, false),
            ),
            (
                vec![due(1, 0.5, true), due(2, 2.0, false)],
                None,
                (at(0.5), 1, false),
            ),
        ];
        for (due, overdrawn, next) in rows {
            let got = next_sample(due.into_iter(), overdrawn);
            assert_eq!(got, Some(next), "overdrawn until {overdrawn:?}");
        }
        assert_eq!(next_sample(std::iter::empty(), Some(now)), None);
    }
}
