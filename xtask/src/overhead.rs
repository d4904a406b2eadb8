//! `cargo xtask bench overhead`: what each tracer costs the program it traces, side by side in
//! one run. `xtask/bench/pairs.c` does malloc+free pairs on 1 and 4 threads; each setup gets a
//! fresh process, attaches (or not), warms up and runs both thread counts; the setups are
//! interleaved over several rounds (the machine is shared and noisy) and the table shows medians
//! and ratios. The setups:
//!
//! - untraced;
//! - the trap floor: bare uprobes (the kernel's uprobe PMU, counting mode, no BPF program) at the
//!   placements `pagealloc probes` reports for malloc and free (malloc's result is caught on each
//!   of its return paths: several probes, one of which fires per call);
//! - the one-trap floor: bare entry uprobes at malloc's first instruction and at free's probe
//!   (one trap per call: the least any per-call tracer can cost);
//! - bpftrace's placements, bare: a uretprobe on malloc and an entry uprobe on free+0 (free's
//!   first instruction is single-stepped): bpftrace's own trap floor;
//! - `pagealloc watch` (live mode), with its event counts checked against the pairs;
//! - bpftrace with the equivalent probes (malloc's return and free's entry, into a map);
//! - heaptrack attached at run time (`heaptrack -p`, injected with gdb).
//!
//! The cost is read as the benchmark threads' CPU time per pair (user + system: a trap's handling
//! is system time of the thread that trapped), with the wall time beside it: on a shared machine
//! the wall time also counts the neighbours, and the CPU time does not. What the tracer's own
//! processes spend (pagealloc's agent, heaptrack's interpreter) is a column of its own.
//!
//! Then pagealloc's own CPU per event, and the event rates it holds with nothing lost.
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pagealloc_testkit::lines::Lines;
use serde_json::Value;

use crate::{cargo, compile_workload, load_average, run};

/// Workers in the process of each round: the 4-thread runs use them all.
const THREADS: [u32; 2] = [1, 4];
/// Wall time aimed at per measured run.
const TARGET: Duration = Duration::from_millis(500);
/// Wall time per run of the event-rate test.
const RATE_TARGET: Duration = Duration::from_secs(2);
/// Thread counts of the event-rate test.
const RATE_THREADS: [u32; 4] = [1, 2, 4, 8];
/// `pagealloc watch --max-rate` for the benchmark: a rate no process reaches, so that the
/// overhead guard never takes the probes off what is being measured.
const NO_RATE_LIMIT: &str = "1000000000000";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Setup {
    Untraced,
    TrapFloor,
    OneTrap,
    BpftraceFloor,
    Pagealloc,
    Bpftrace,
    Heaptrack,
}

const SETUPS: [Setup; 7] = [
    Setup::Untraced,
    Setup::TrapFloor,
    Setup::OneTrap,
    Setup::BpftraceFloor,
    Setup::Pagealloc,
    Setup::Bpftrace,
    Setup::Heaptrack,
];

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Untraced => "untraced",
            Setup::TrapFloor => "trap floor (pagealloc's places, bare)",
            Setup::OneTrap => "one-trap floor (bare entry probes)",
            Setup::BpftraceFloor => "bpftrace's places, bare",
            Setup::Pagealloc => "pagealloc watch (live)",
            Setup::Bpftrace => "bpftrace (same probes, map)",
            Setup::Heaptrack => "heaptrack -p (attached)",
        }
    }

    /// What a run is expected to cost per pair per thread, before anything was measured.
    fn first_guess(self) -> Duration {
        match self {
            Setup::Untraced => Duration::from_nanos(50),
            _ => Duration::from_micros(5),
        }
    }
}

/// One `go`: `threads` workers doing `pairs` pairs each.
#[derive(Clone, Copy, Debug)]
struct Run {
    threads: u32,
    pairs: u64,
    elapsed_ns: u64,
    cpu_ns: u64,
}

impl Run {
    /// Wall time per pair, as if each core did its share: elapsed × busy cores ÷ all pairs.
    fn wall_per_pair(&self, cores: u32) -> f64 {
        self.elapsed_ns as f64 * self.threads.min(cores) as f64
            / (self.pairs as f64 * self.threads as f64)
    }

    /// The workers' CPU time (user + system: the traps are system time) per pair.
    fn cpu_per_pair(&self) -> f64 {
        self.cpu_ns as f64 / (self.pairs as f64 * self.threads as f64)
    }

    /// Wall time of one worker's pair (what sizes the next run).
    fn per_thread_pair(&self) -> f64 {
        self.elapsed_ns as f64 / self.pairs as f64
    }
}

/// A measured run and what the tracer's own processes used meanwhile.
#[derive(Clone, Copy, Debug)]
struct Sample {
    run: Run,
    tracer_cpu_ns: f64,
}

impl Sample {
    fn tracer_per_pair(&self) -> f64 {
        self.tracer_cpu_ns / (self.run.pairs as f64 * self.run.threads as f64)
    }
}

/// Medians of one setup at one thread count, ns per pair.
#[derive(Clone, Copy)]
struct Medians {
    cpu: f64,
    wall: f64,
    tracer: f64,
}

type Samples = BTreeMap<(Setup, u32), Vec<Sample>>;

pub fn overhead(root: &Path, rounds: usize, size: u64) -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "pagealloc"]))?;
    let workload = root.join("target/bench/pairs");
    compile_workload("-O2", &root.join("xtask/bench/pairs.c"), &workload)?;
    let scratch = root.join("target/bench/overhead");
    std::fs::create_dir_all(&scratch)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let bench = Bench {
        workload,
        pagealloc: root.join("target/release/pagealloc"),
        scratch,
        size,
    };

    // Tools that cannot run here get their row with the reason, and are not tried again.
    let mut unavailable: BTreeMap<Setup, String> = BTreeMap::new();
    for (setup, tool) in [
        (Setup::Bpftrace, "bpftrace"),
        (Setup::Heaptrack, "heaptrack"),
    ] {
        if let Err(e) = Command::new(tool).arg("--version").output() {
            unavailable.insert(
                setup,
                format!(
                    "{tool} not found ({e}); `cargo xtask setup` installs it as root on Debian"
                ),
            );
        }
    }
    if let Err(e) = uprobe_pmu() {
        for setup in [Setup::TrapFloor, Setup::OneTrap, Setup::BpftraceFloor] {
            unavailable.insert(setup, format!("no uprobe PMU: {e:#}"));
        }
    }

    let load_before = load_average();
    let mut samples: Samples = BTreeMap::new();
    let mut errors: BTreeMap<Setup, Vec<String>> = BTreeMap::new();
    let mut notes: BTreeMap<Setup, Vec<String>> = BTreeMap::new();
    let mut agent = AgentCost::default();
    let mut placements: BTreeMap<Setup, Vec<Bare>> = BTreeMap::new();
    println!(
        "bench overhead: {rounds} rounds of {} setups, each on a fresh process of {} threads \
         doing malloc({size})+free",
        SETUPS.len(),
        THREADS[1]
    );
    for round in 0..rounds {
        // Interleaved, each round starting elsewhere: all setups see the same machine.
        for k in 0..SETUPS.len() {
            let setup = SETUPS[(k + round) % SETUPS.len()];
            if unavailable.contains_key(&setup) {
                continue;
            }
            let pairs: BTreeMap<u32, u64> = THREADS
                .iter()
                .map(|&t| (t, pairs_for(setup, t, cores, &samples, TARGET)))
                .collect();
            // Alternate which thread count goes first.
            let order: Vec<u32> = if round % 2 == 0 {
                THREADS.to_vec()
            } else {
                THREADS.iter().rev().copied().collect()
            };
            match bench.measure(setup, &pairs, &order, &mut agent, &mut placements) {
                Ok((runs, mut found)) => {
                    for r in runs {
                        samples.entry((setup, r.run.threads)).or_default().push(r);
                    }
                    notes.entry(setup).or_default().append(&mut found);
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    eprintln!(
                        "bench overhead: round {}: {}: {e}",
                        round + 1,
                        setup.label()
                    );
                    let list = errors.entry(setup).or_default();
                    list.push(e.clone());
                    // A tool that fails twice before it ever worked is not going to work here.
                    if samples.keys().all(|(s, _)| *s != setup) && list.len() >= 2 {
                        unavailable.insert(setup, format!("could not run: {e}"));
                    }
                }
            }
        }
        println!("bench overhead: round {}/{rounds} done", round + 1);
    }

    let medians = |setup: Setup, threads: u32| -> Option<Medians> {
        let runs = samples.get(&(setup, threads)).filter(|r| !r.is_empty())?;
        Some(Medians {
            cpu: median(runs.iter().map(|r| r.run.cpu_per_pair()).collect()),
            wall: median(runs.iter().map(|r| r.run.wall_per_pair(cores)).collect()),
            tracer: median(runs.iter().map(Sample::tracer_per_pair).collect()),
        })
    };
    let ratio = |a: Setup, b: Setup, t: u32| Some(medians(a, t)?.cpu / medians(b, t)?.cpu);
    let wall_ratio = |a: Setup, b: Setup, t: u32| Some(medians(a, t)?.wall / medians(b, t)?.wall);
    let ratios = |a: Setup, b: Setup| -> String {
        THREADS
            .iter()
            .map(|&t| ratio(a, b, t).map_or("-".into(), |r| format!("{r:.2}")))
            .collect::<Vec<_>>()
            .join(" / ")
    };

    println!();
    println!(
        "bench overhead: malloc({size})+free on 1 and {} threads ({cores} cores), ns per pair, \
         medians of {rounds} interleaved rounds",
        THREADS[1]
    );
    println!(
        "  machine: load average {} before the rounds, {} after (the bench's own processes \
         count: at most {} threads)",
        load_before,
        load_average(),
        THREADS[1] + 1
    );
    println!(
        "  CPU = the benchmark threads' user+system time per pair (the traps are system time); \
         [wall] = elapsed × busy cores ÷ pairs (also counts waits, and the neighbours on a \
         shared machine); tracer = the tracer's own processes' CPU per pair; ratios of CPU, \
         1 / {} threads",
        THREADS[1]
    );
    println!(
        "{:<36} {:>20} {:>20} {:>17}  {:>13} {:>13} {:>13}",
        "setup",
        "1 thread CPU [wall]",
        format!("{} threads CPU [wall]", THREADS[1]),
        "tracer CPU",
        "×untraced",
        "×trap floor",
        "×bpftrace"
    );
    for setup in SETUPS {
        let cells: Vec<Option<Medians>> = THREADS.iter().map(|&t| medians(setup, t)).collect();
        if cells.iter().all(Option::is_none) {
            let reason = unavailable
                .get(&setup)
                .cloned()
                .or_else(|| errors.get(&setup).and_then(|e| e.last().cloned()))
                .unwrap_or_else(|| "no sample".into());
            println!("{:<36} not run: {reason}", setup.label());
            continue;
        }
        let cell = |c: &Option<Medians>| match c {
            Some(m) => format!("{} [{}]", ns(m.cpu), ns(m.wall)),
            None => "-".into(),
        };
        let tracer = match setup {
            Setup::Untraced | Setup::TrapFloor | Setup::OneTrap | Setup::BpftraceFloor => {
                "-".to_string()
            }
            _ => cells
                .iter()
                .map(|c| c.map_or("-".into(), |m| ns(m.tracer)))
                .collect::<Vec<_>>()
                .join(" / "),
        };
        println!(
            "{:<36} {:>20} {:>20} {:>17}  {:>13} {:>13} {:>13}",
            setup.label(),
            cell(&cells[0]),
            cell(&cells[1]),
            tracer,
            ratios(setup, Setup::Untraced),
            ratios(setup, Setup::TrapFloor),
            ratios(setup, Setup::Bpftrace),
        );
    }
    for (setup, probes) in &placements {
        println!("  {}: {}", setup_name(*setup), describe_all(probes));
    }
    for (setup, list) in &errors {
        if samples.keys().any(|(s, _)| s == setup) {
            println!(
                "  {}: {} of {rounds} rounds failed, last: {}",
                setup.label(),
                list.len(),
                list.last().unwrap()
            );
        }
    }
    for (setup, list) in &mut notes {
        list.sort();
        list.dedup();
        for note in list.iter() {
            println!("  {}: {note}", setup.label());
        }
    }

    // What each trap costs, from the floors (1 thread, CPU).
    let cpu1 = |s: Setup| medians(s, 1).map(|m| m.cpu);
    println!();
    if let (Some(untraced), Some(one), Some(floor)) = (
        cpu1(Setup::Untraced),
        cpu1(Setup::OneTrap),
        cpu1(Setup::TrapFloor),
    ) {
        // Whether pagealloc caught malloc's result with a return probe (two traps) or at its
        // return paths (one trap).
        let malloc_returns = placements
            .get(&Setup::TrapFloor)
            .is_some_and(|probes| probes.iter().any(|p| p.function == "malloc" && p.returns));
        println!(
            "traps (1 thread, CPU): an emulated entry trap ≈ {} ((one-trap floor − untraced) ÷ 2); \
             {} {} per call",
            ns((one - untraced) / 2.0),
            if malloc_returns {
                "a uretprobe instead of an entry probe on malloc adds"
            } else {
                "pagealloc's probes at malloc's return paths instead of an entry probe add"
            },
            ns(floor - one)
        );
        if let Some(bt) = cpu1(Setup::BpftraceFloor) {
            if malloc_returns {
                println!(
                    "  free's entry at +0 (single-stepped) instead of its first emulated \
                     instruction adds {} per call",
                    ns(bt - floor)
                );
            } else {
                println!(
                    "  bpftrace's places (a uretprobe on malloc, free's entry at +0, \
                     single-stepped) instead of pagealloc's add {} per pair",
                    ns(bt - floor)
                );
            }
        }
        if let Some(heaptrack) = medians(Setup::Heaptrack, 1) {
            let whole = heaptrack.cpu - untraced + heaptrack.tracer;
            println!(
                "  heaptrack's whole pair: {} (its threads {} + its own processes {}); one \
                 trap alone: {}: {}",
                ns(whole),
                ns(heaptrack.cpu - untraced),
                ns(heaptrack.tracer),
                ns((one - untraced) / 2.0),
                if (one - untraced) / 2.0 > whole {
                    "per-call probes cannot beat heaptrack here; walk mode (`pagealloc watch \
                     --walk`) costs nothing per call"
                } else {
                    "per-call probes can beat heaptrack here"
                }
            );
        }
    }
    for t in THREADS {
        goal(
            &format!("pagealloc ÷ its trap floor, {t} thread{}", plural(t)),
            ratio(Setup::Pagealloc, Setup::TrapFloor, t),
            wall_ratio(Setup::Pagealloc, Setup::TrapFloor, t),
            |v| v <= 1.15,
            "≤ 1.15",
        );
    }
    for t in THREADS {
        goal(
            &format!("pagealloc ÷ bpftrace, {t} thread{}", plural(t)),
            ratio(Setup::Pagealloc, Setup::Bpftrace, t),
            wall_ratio(Setup::Pagealloc, Setup::Bpftrace, t),
            |v| v <= 0.3,
            "≤ 0.30",
        );
    }
    goal(
        "pagealloc's trap floor ÷ the one-trap floor, 1 thread",
        ratio(Setup::TrapFloor, Setup::OneTrap, 1),
        wall_ratio(Setup::TrapFloor, Setup::OneTrap, 1),
        |v| v <= 1.05,
        "one trap per call: ≈ 1",
    );
    match agent.per_event() {
        Some(v) => println!(
            "goal agent CPU per event (bench rounds, {} events): {} (≤ 50 ns): {}",
            agent.events,
            ns(v),
            met(v <= 50.0)
        ),
        None => println!("goal agent CPU per event: not measured (≤ 50 ns)"),
    }

    // The event rate pagealloc holds with nothing lost, and its CPU per event there.
    println!();
    if unavailable.contains_key(&Setup::Pagealloc) {
        println!("event rate: not run (pagealloc watch could not run)");
        return Ok(());
    }
    match bench.rates(&samples, cores) {
        Ok(rates) => {
            println!(
                "event rate under pagealloc watch ({} s per run):",
                RATE_TARGET.as_secs()
            );
            println!(
                "{:>8} {:>12} {:>8} {:>13} {:>12} {:>13} {:>13}",
                "threads", "events/s", "lost", "agent/event", "agent busy", "CPU/pair", "wall/pair"
            );
            let mut best: Option<f64> = None;
            let mut cost = AgentCost::default();
            for r in &rates {
                println!(
                    "{:>8} {:>12.0} {:>8} {:>13} {:>11.1}% {:>13} {:>13}",
                    r.threads,
                    r.events_per_second,
                    r.lost,
                    r.agent.per_event().map_or("-".into(), ns),
                    100.0 * r.agent.cpu_ns / r.run.elapsed_ns as f64,
                    ns(r.run.cpu_per_pair()),
                    ns(r.run.wall_per_pair(cores)),
                );
                cost.add(&r.agent);
                if r.lost == 0 && r.complete {
                    best =
                        Some(best.map_or(r.events_per_second, |b: f64| b.max(r.events_per_second)));
                }
                for note in &r.notes {
                    println!("  {} threads: {note}", r.threads);
                }
            }
            println!(
                "  (agent busy = pagealloc's CPU ÷ the run's wall time: the rate is set by the \
                 traps in the traced threads and the cores they get, not by the agent)"
            );
            match best {
                Some(v) => println!(
                    "goal highest event rate held with 0 lost: {:.2} M events/s (≥ 1.5 M): {}",
                    v / 1e6,
                    met(v >= 1.5e6)
                ),
                None => println!("goal highest event rate held with 0 lost: none held"),
            }
            if let Some(v) = cost.per_event() {
                println!(
                    "goal agent CPU per event (rate runs, {} events): {} (≤ 50 ns): {}",
                    cost.events,
                    ns(v),
                    met(v <= 50.0)
                );
            }
        }
        Err(e) => println!("event rate: failed: {e:#}"),
    }
    Ok(())
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// One goal line: the CPU ratio decides, the wall ratio is shown beside it.
fn goal(name: &str, cpu: Option<f64>, wall: Option<f64>, ok: impl Fn(f64) -> bool, want: &str) {
    match cpu {
        Some(v) => println!(
            "goal {name}: {v:.2} [wall {}] ({want}): {}",
            wall.map_or("-".into(), |w| format!("{w:.2}")),
            met(ok(v))
        ),
        None => println!("goal {name}: not measured ({want})"),
    }
}

fn setup_name(setup: Setup) -> &'static str {
    match setup {
        Setup::TrapFloor => "trap floor",
        Setup::OneTrap => "one-trap floor",
        Setup::BpftraceFloor => "bpftrace's places",
        _ => setup.label(),
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn ns(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.1} µs", v / 1000.0)
    } else if v.abs() >= 1000.0 {
        format!("{:.2} µs", v / 1000.0)
    } else {
        format!("{v:.0} ns")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Pairs per worker for a run of about `target`, from what this setup measured so far.
fn pairs_for(setup: Setup, threads: u32, cores: u32, samples: &Samples, target: Duration) -> u64 {
    let per_pair = samples
        .get(&(setup, threads))
        .filter(|runs| !runs.is_empty())
        .map(|runs| median(runs.iter().map(|r| r.run.per_thread_pair()).collect()))
        .unwrap_or_else(|| {
            // Threads beyond the cores wait their turn.
            setup.first_guess().as_nanos() as f64 * threads as f64 / threads.min(cores) as f64
        });
    ((target.as_nanos() as f64 / per_pair.max(1.0)) as u64).clamp(2_000, 50_000_000)
}

/// pagealloc's CPU time over the events it reported.
#[derive(Default, Clone, Copy)]
struct AgentCost {
    cpu_ns: f64,
    events: u64,
}

impl AgentCost {
    fn add(&mut self, other: &AgentCost) {
        self.cpu_ns += other.cpu_ns;
        self.events += other.events;
    }

    fn per_event(&self) -> Option<f64> {
        (self.events > 0).then(|| self.cpu_ns / self.events as f64)
    }
}

struct Bench {
    workload: PathBuf,
    pagealloc: PathBuf,
    scratch: PathBuf,
    size: u64,
}

struct RateRun {
    threads: u32,
    run: Run,
    events_per_second: f64,
    lost: u64,
    complete: bool,
    agent: AgentCost,
    notes: Vec<String>,
}

impl Bench {
    fn start(&self, threads: u32) -> Result<Workload> {
        Workload::start(&self.workload, threads, self.size)
    }

    /// One setup on a fresh process: attach, warm up, run each thread count, detach, check.
    fn measure(
        &self,
        setup: Setup,
        pairs: &BTreeMap<u32, u64>,
        order: &[u32],
        agent: &mut AgentCost,
        placements: &mut BTreeMap<Setup, Vec<Bare>>,
    ) -> Result<(Vec<Sample>, Vec<String>)> {
        let mut workload = self.start(THREADS[1])?;
        let result = (|| {
            let mut tracer = self.attach(setup, &workload, placements)?;
            // Warm-up (not measured): a tracer's first calls can cost more (heaptrack records
            // each new call site once).
            let warm = pairs[&THREADS[1]] / 10 + 1;
            let mark = tracer.mark()?;
            let run = workload.go(warm, THREADS[1])?;
            tracer.check(&mark, &run, &workload)?;
            let mut runs = Vec::new();
            for &t in order {
                let mark = tracer.mark()?;
                let run = workload.go(pairs[&t], t)?;
                let (tracer_cpu_ns, events) = tracer.check(&mark, &run, &workload)?;
                if setup == Setup::Pagealloc {
                    agent.add(&AgentCost {
                        cpu_ns: tracer_cpu_ns,
                        events,
                    });
                }
                runs.push(Sample { run, tracer_cpu_ns });
            }
            let total = workload.pairs_done;
            workload.finish()?;
            let notes = tracer.finish(total)?;
            Ok((runs, notes))
        })();
        workload.kill();
        result
    }

    fn attach(
        &self,
        setup: Setup,
        workload: &Workload,
        placements: &mut BTreeMap<Setup, Vec<Bare>>,
    ) -> Result<Tracer> {
        let pid = workload.pid;
        Ok(match setup {
            Setup::Untraced => Tracer::None,
            Setup::TrapFloor | Setup::OneTrap | Setup::BpftraceFloor => {
                let plan = Plan::of(&self.pagealloc, pid)?;
                let probes = match setup {
                    Setup::TrapFloor => plan.pagealloc.clone(),
                    Setup::OneTrap => vec![
                        Bare::entry("malloc", plan.malloc, 0),
                        Bare::entry("free", plan.free, plan.free_probe.saturating_sub(plan.free)),
                    ],
                    _ => vec![
                        Bare::ret("malloc", plan.malloc),
                        Bare::entry("free", plan.free, 0),
                    ],
                };
                placements.entry(setup).or_insert_with(|| probes.clone());
                // One counting event per probe, on worker 0's thread: every thread of the
                // process traps (the breakpoint is in its memory), and worker 0's count
                // checks the probe against the pairs it did. More events per probe would add
                // consumers, and work, to every trap.
                let worker = workload.workers[0];
                let mut counters = Vec::new();
                for probe in probes {
                    let fd = probe.open(&plan.libc, worker)?;
                    counters.push((probe, fd));
                }
                Tracer::Bare { counters }
            }
            Setup::Pagealloc => {
                let plan = Plan::of(&self.pagealloc, pid)?;
                let (child, out, err) = spawn_tracer(
                    Command::new(&self.pagealloc)
                        .args(["watch", &pid.to_string(), "--format", "json"])
                        .args(["--interval", "1s"])
                        // The benchmark calls malloc millions of times a second: far past the
                        // overhead guard's default, which would take the probes off and walk.
                        .args(["--max-rate", NO_RATE_LIMIT]),
                    "pagealloc watch",
                )?;
                let mut watch = Watch {
                    child,
                    out,
                    err,
                    latest: None,
                };
                // Its first line comes after the probes are attached and the heap walked.
                watch.wait_for(Duration::from_secs(120), |_| true)?;
                if watch.latest.as_ref().unwrap().mode != "live" {
                    bail!(
                        "pagealloc watch is not in live mode (mode {:?})",
                        watch.latest.as_ref().unwrap().mode
                    );
                }
                let sites: Vec<u64> = plan.pagealloc.iter().map(|p| p.file_offset).collect();
                expect_breakpoints(pid, &sites, Duration::from_secs(5))?;
                Tracer::Pagealloc(watch)
            }
            Setup::Bpftrace => {
                let plan = Plan::of(&self.pagealloc, pid)?;
                let libc = &plan.libc;
                let program = format!(
                    "BEGIN {{ printf(\"attached\\n\"); }} \
                     uretprobe:{libc}:malloc {{ @m[retval] = 1 }} \
                     uprobe:{libc}:free {{ delete(@m[arg0]) }}"
                );
                let (child, out, err) = spawn_tracer(
                    Command::new("bpftrace").args(["-p", &pid.to_string(), "-e", &program]),
                    "bpftrace",
                )?;
                let mut tracer = Tool {
                    child,
                    out,
                    err,
                    output: None,
                };
                tracer.wait_line(Duration::from_secs(120), |l| l.trim() == "attached")?;
                // bpftrace's uretprobe and uprobe: breakpoints at malloc+0 and free+0.
                expect_breakpoints(pid, &[plan.malloc, plan.free], Duration::from_secs(10))?;
                Tracer::Bpftrace(tracer)
            }
            Setup::Heaptrack => {
                let output = self.scratch.join(format!("heaptrack.pairs.{pid}"));
                let (child, out, err) = spawn_tracer(
                    Command::new("heaptrack")
                        .arg("-o")
                        .arg(&output)
                        .args(["-p", &pid.to_string()]),
                    "heaptrack",
                )?;
                let mut tracer = Tool {
                    child,
                    out,
                    err,
                    output: Some(output),
                };
                tracer.wait_line(Duration::from_secs(180), |l| {
                    l.contains("injection finished")
                })?;
                let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
                if !maps.contains("libheaptrack") {
                    bail!("heaptrack said it injected itself, but no libheaptrack is mapped");
                }
                Tracer::Heaptrack(tracer)
            }
        })
    }

    /// pagealloc over the benchmark at several thread counts: events/s, lost, CPU per event.
    fn rates(&self, samples: &Samples, cores: u32) -> Result<Vec<RateRun>> {
        let most = *RATE_THREADS.iter().max().unwrap();
        let mut workload = self.start(most)?;
        let result = (|| {
            let mut placements = BTreeMap::new();
            let mut tracer = self.attach(Setup::Pagealloc, &workload, &mut placements)?;
            let mut out = Vec::new();
            let mark = tracer.mark()?;
            let warm = workload.go(1000, most)?;
            tracer.check(&mark, &warm, &workload)?;
            // Per pair per thread, from the bench rounds (4 threads), scaled to `threads`.
            let per_pair_4 = samples
                .get(&(Setup::Pagealloc, 4))
                .map(|r| median(r.iter().map(|r| r.run.wall_per_pair(cores)).collect()))
                .unwrap_or(5_000.0);
            for threads in RATE_THREADS {
                let per_thread = per_pair_4 * threads as f64 / threads.min(cores) as f64;
                let pairs = ((RATE_TARGET.as_nanos() as f64 / per_thread) as u64).max(10_000);
                let Tracer::Pagealloc(watch) = &mut tracer else {
                    unreachable!()
                };
                watch.drain()?;
                let before = watch.latest.clone().context("no line from pagealloc")?;
                let cpu_before = tree_cpu_ns(watch.child.id())?;
                let run = workload.go(pairs, threads)?;
                let expected = pairs * threads as u64;
                let (after, complete) = watch.counted(&before, expected)?;
                let cpu = cpu_since(tree_cpu_ns(watch.child.id())?, cpu_before);
                let counted = Counted::of(&before, &after)?;
                let events = counted.events();
                let mut notes = Vec::new();
                if !complete {
                    notes.push(format!(
                        "pagealloc counted {} allocs and {} frees for {expected} pairs",
                        counted.allocs, counted.frees
                    ));
                }
                out.push(RateRun {
                    threads,
                    run,
                    events_per_second: events as f64 / (run.elapsed_ns as f64 / 1e9),
                    lost: counted.lost,
                    complete,
                    agent: AgentCost {
                        cpu_ns: cpu,
                        events,
                    },
                    notes,
                });
            }
            let total = workload.pairs_done;
            workload.finish()?;
            tracer.finish(total)?;
            Ok(out)
        })();
        workload.kill();
        result
    }
}

/// Starts a tracer (`what`, for the error) with its stdout and stderr read line by line.
fn spawn_tracer(command: &mut Command, what: &str) -> Result<(Child, Lines, Lines)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let out = Lines::new(child.stdout.take().expect("piped stdout"));
    let err = Lines::new(child.stderr.take().expect("piped stderr"));
    Ok((child, out, err))
}

/// The benchmark process.
struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Lines,
    pid: u32,
    /// Worker thread ids, worker 0 first.
    workers: Vec<u32>,
    pairs_done: u64,
}

impl Workload {
    fn start(program: &Path, threads: u32, size: u64) -> Result<Workload> {
        let mut child = Command::new(program)
            .args([threads.to_string(), size.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the benchmark")?;
        let stdin = child.stdin.take();
        let mut out = Lines::new(child.stdout.take().unwrap());
        let pid = child.id();
        let mut workload = Workload {
            child,
            stdin,
            out: Lines::new(std::io::empty()),
            pid,
            workers: Vec::new(),
            pairs_done: 0,
        };
        let line = out.next(Duration::from_secs(30))?.unwrap_or_default();
        workload.out = out;
        let mut words = line.split_whitespace();
        if words.next() != Some("ready") {
            bail!("the benchmark did not start: {line:?}");
        }
        workload.workers = words.map(str::parse).collect::<Result<_, _>>()?;
        if workload.workers.len() != threads as usize {
            bail!(
                "the benchmark named {} workers: {line:?}",
                workload.workers.len()
            );
        }
        Ok(workload)
    }

    fn go(&mut self, pairs: u64, threads: u32) -> Result<Run> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the benchmark's stdin is closed")?;
        writeln!(stdin, "go {pairs} {threads}")?;
        stdin.flush()?;
        // Generous: a tracer can make the pairs 1000× slower than untraced.
        let timeout = Duration::from_secs(300);
        let line = self
            .out
            .next(timeout)
            .context("waiting for the benchmark")?
            .context("the benchmark ended")?;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() != 5 || words[0] != "done" {
            bail!("the benchmark said {line:?}");
        }
        let run = Run {
            threads: words[1].parse()?,
            pairs: words[2].parse()?,
            elapsed_ns: words[3].parse()?,
            cpu_ns: words[4].parse()?,
        };
        self.pairs_done += run.pairs * run.threads as u64;
        Ok(run)
    }

    /// Closes stdin: the benchmark exits.
    fn finish(&mut self) -> Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the benchmark ended with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the benchmark did not exit when its stdin closed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where the probes go, from `pagealloc probes PID --format json`.
struct Plan {
    libc: String,
    /// File offsets of malloc's and free's first instructions, and of free's probe.
    malloc: u64,
    free: u64,
    free_probe: u64,
    /// pagealloc's own probes on malloc and free.
    pagealloc: Vec<Bare>,
}

impl Plan {
    fn of(pagealloc: &Path, pid: u32) -> Result<Plan> {
        let out = Command::new(pagealloc)
            .args(["probes", &pid.to_string(), "--format", "json"])
            .output()
            .context("running pagealloc probes")?;
        if !out.status.success() {
            bail!(
                "pagealloc probes failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let json: Value = serde_json::from_slice(&out.stdout).context("pagealloc probes")?;
        let libc = json["libc"]
            .as_str()
            .context("no libc in pagealloc probes")?;
        let mut pagealloc = Vec::new();
        let (mut malloc, mut free, mut free_probe) = (None, None, None);
        for probe in json["probes"].as_array().context("no probes")? {
            let function = probe["function"].as_str().unwrap_or_default();
            if function != "malloc" && function != "free" {
                continue;
            }
            let file_offset = probe["file_offset"].as_u64().context("file_offset")?;
            let offset = probe["offset"].as_u64().context("offset")?;
            let returns = probe["returns"].as_bool().context("returns")?;
            let start = file_offset.checked_sub(offset).with_context(|| {
                format!("pagealloc probes: {function}+{offset} at file offset {file_offset}")
            })?;
            if function == "malloc" {
                malloc = Some(start);
            } else {
                free = Some(start);
                if !returns {
                    free_probe = Some(file_offset);
                }
            }
            let bare = Bare {
                function: if function == "malloc" {
                    "malloc"
                } else {
                    "free"
                },
                offset,
                file_offset,
                returns,
            };
            if !pagealloc
                .iter()
                .any(|p: &Bare| p.file_offset == file_offset && p.returns == returns)
            {
                pagealloc.push(bare);
            }
        }
        Ok(Plan {
            libc: libc.to_string(),
            malloc: malloc.context("pagealloc probes nothing on malloc")?,
            free: free.context("pagealloc probes nothing on free")?,
            free_probe: free_probe.context("pagealloc has no entry probe on free")?,
            pagealloc,
        })
    }
}

/// A bare uprobe: the kernel's uprobe PMU, counting, no program.
#[derive(Clone)]
struct Bare {
    function: &'static str,
    offset: u64,
    file_offset: u64,
    returns: bool,
}

impl Bare {
    fn entry(function: &'static str, start: u64, offset: u64) -> Bare {
        Bare {
            function,
            offset,
            file_offset: start + offset,
            returns: false,
        }
    }

    fn ret(function: &'static str, start: u64) -> Bare {
        Bare {
            function,
            offset: 0,
            file_offset: start,
            returns: true,
        }
    }

    fn kind(&self) -> &'static str {
        if self.returns { "uretprobe" } else { "uprobe" }
    }

    fn describe(&self) -> String {
        format!("{} {}+{}", self.kind(), self.function, self.offset)
    }

    /// `perf_event_open` of this probe for thread `tid`, counting.
    fn open(&self, libc: &str, tid: u32) -> Result<File> {
        let (kind, retprobe_bit) = uprobe_pmu()?;
        let path = CString::new(libc)?;
        let attr = PerfEventAttr {
            kind,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: if self.returns { 1 << retprobe_bit } else { 0 },
            config1: path.as_ptr() as u64,
            config2: self.file_offset,
            ..Default::default()
        };
        // SAFETY: attr is a valid perf_event_attr of the size it states; the path outlives
        // the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                tid as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            bail!(
                "perf_event_open({}) failed: {}",
                self.describe(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd as i32) })
    }
}

/// Probes as a list, each kind named once where it starts: "uprobe malloc+156, malloc+343,
/// free+3".
fn describe_all(probes: &[Bare]) -> String {
    let mut kind = None;
    probes
        .iter()
        .map(|p| {
            let named = kind == Some(p.kind());
            kind = Some(p.kind());
            if named {
                format!("{}+{}", p.function, p.offset)
            } else {
                p.describe()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// `struct perf_event_attr` up to `config2` (PERF_ATTR_SIZE_VER1, 72 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}

/// The uprobe PMU's type and the bit of `config` that makes a return probe.
fn uprobe_pmu() -> Result<(u32, u32)> {
    let dir = Path::new("/sys/bus/event_source/devices/uprobe");
    let kind = std::fs::read_to_string(dir.join("type"))
        .with_context(|| format!("reading {}", dir.join("type").display()))?
        .trim()
        .parse()?;
    let format = std::fs::read_to_string(dir.join("format/retprobe"))?;
    let bit = format
        .trim()
        .strip_prefix("config:")
        .context("retprobe format is not config:N")?
        .parse()?;
    Ok((kind, bit))
}

fn read_count(file: &File) -> Result<u64> {
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, 0)
        .or_else(|_| (&*file).read_exact(&mut buf))?;
    Ok(u64::from_ne_bytes(buf))
}

/// Waits until an int3 (0xcc) sits at each of these libc file offsets in the process: the
/// proof that a tracer's uprobes are in.
fn expect_breakpoints(pid: u32, file_offsets: &[u64], timeout: Duration) -> Result<()> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mem = File::open(format!("/proc/{pid}/mem"))?;
    let address = |offset: u64| -> Option<u64> {
        maps.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || !f[5].ends_with("/libc.so.6") {
                return None;
            }
            let (lo, hi) = f[0].split_once('-')?;
            let lo = u64::from_str_radix(lo, 16).ok()?;
            let hi = u64::from_str_radix(hi, 16).ok()?;
            let file = u64::from_str_radix(f[2], 16).ok()?;
            let len = hi.checked_sub(lo)?;
            (offset >= file && offset - file < len).then(|| lo + (offset - file))
        })
    };
    let deadline = Instant::now() + timeout;
    for &offset in file_offsets {
        let at = address(offset).with_context(|| format!("libc offset {offset:#x} not mapped"))?;
        loop {
            let mut byte = [0u8];
            mem.read_exact_at(&mut byte, at)?;
            if byte[0] == 0xcc {
                break;
            }
            if Instant::now() > deadline {
                bail!("no breakpoint at libc offset {offset:#x}: the probes are not attached");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// user + system time of a process and of its descendants, alive or ended and waited for.
fn tree_cpu_ns(root: u32) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut parent = BTreeMap::new();
    let mut ticks = BTreeMap::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // From field 3 on: ppid is field 4, utime..cstime fields 14..17.
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        parent.insert(pid, num(1) as u32);
        ticks.insert(pid, num(11) + num(12) + num(13) + num(14));
    }
    if !ticks.contains_key(&root) {
        bail!("process {root} is gone");
    }
    let in_tree = |mut pid: u32| {
        for _ in 0..64 {
            if pid == root {
                return true;
            }
            match parent.get(&pid) {
                Some(&p) if p != 0 => pid = p,
                _ => return false,
            }
        }
        false
    };
    let total: u64 = ticks
        .iter()
        .filter(|(pid, _)| in_tree(**pid))
        .map(|(_, t)| t)
        .sum();
    Ok(total as f64 * 1e9 / hz)
}

/// The `events` of one `pagealloc watch --format json` line.
#[derive(Clone, Debug)]
struct Events {
    mode: String,
    allocs: u64,
    frees: u64,
    lost: u64,
}

impl Events {
    fn parse(line: &str) -> Result<Events> {
        let json: Value = serde_json::from_str(line).context("a line of pagealloc watch")?;
        let e = &json["events"];
        Ok(Events {
            mode: json["mode"].as_str().unwrap_or_default().to_string(),
            allocs: e["allocs"].as_u64().unwrap_or(0),
            frees: e["frees"].as_u64().unwrap_or(0),
            lost: e["lost"].as_u64().unwrap_or(0),
        })
    }
}

/// What pagealloc counted between two of its lines.
struct Counted {
    allocs: u64,
    frees: u64,
    lost: u64,
}

impl Counted {
    /// The counts from `before` to `after`; an error if pagealloc left live mode meanwhile (the
    /// overhead guard took the probes off) or its counts went back.
    fn of(before: &Events, after: &Events) -> Result<Counted> {
        if after.mode != "live" {
            bail!(
                "pagealloc watch left live mode during the run (mode {:?}; the overhead guard \
                 took the probes off?)",
                after.mode
            );
        }
        Ok(Counted {
            allocs: delta(after.allocs, before.allocs, || {
                "pagealloc's alloc count".into()
            })?,
            frees: delta(after.frees, before.frees, || {
                "pagealloc's free count".into()
            })?,
            lost: delta(after.lost, before.lost, || "pagealloc's lost count".into())?,
        })
    }

    fn events(&self) -> u64 {
        self.allocs.saturating_add(self.frees)
    }
}

/// `after - before` of a counter that only grows; an error, not a panic, if it went back.
fn delta(after: u64, before: u64, what: impl FnOnce() -> String) -> Result<u64> {
    after
        .checked_sub(before)
        .with_context(|| format!("{} went back from {before} to {after}", what()))
}

/// CPU time used since `before` (ns); never negative (a process of the tree that ended and was
/// not waited for takes its time with it).
fn cpu_since(now: f64, before: f64) -> f64 {
    (now - before).max(0.0)
}

struct Watch {
    child: Child,
    out: Lines,
    err: Lines,
    latest: Option<Events>,
}

impl Watch {
    /// Reads lines until `done(latest)`.
    fn wait_for(&mut self, timeout: Duration, done: impl Fn(&Events) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.out.next(left.max(Duration::from_millis(1))) {
                Ok(Some(line)) => line,
                Ok(None) => bail!("pagealloc watch ended: {}", self.err.rest().join("; ")),
                Err(e) => bail!("pagealloc watch: {e}; {}", self.err.rest().join("; ")),
            };
            let events = Events::parse(&line)?;
            let finished = done(&events);
            self.latest = Some(events);
            if finished {
                return Ok(());
            }
        }
    }

    /// Takes in the lines already written.
    fn drain(&mut self) -> Result<()> {
        while let Some(line) = self.out.try_next() {
            self.latest = Some(Events::parse(&line)?);
        }
        Ok(())
    }

    /// Waits until pagealloc has counted `expected` allocs since `before` (a few seconds at
    /// most); returns its counts then, and whether they were all there.
    fn counted(&mut self, before: &Events, expected: u64) -> Result<(Events, bool)> {
        let target = before.allocs + expected;
        let complete = self
            .wait_for(Duration::from_secs(5), |e| {
                e.allocs >= target && e.frees >= before.frees + expected
            })
            .is_ok();
        self.drain()?;
        Ok((self.latest.clone().context("no line")?, complete))
    }
}

/// bpftrace or heaptrack, running.
struct Tool {
    child: Child,
    out: Lines,
    err: Lines,
    output: Option<PathBuf>,
}

impl Tool {
    fn wait_line(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.next(left.max(Duration::from_millis(1))) {
                Ok(Some(line)) if want(&line) => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = self.child.wait();
                    bail!("it ended before attaching: {}", self.err.rest().join("; "));
                }
                Err(e) => bail!("it did not attach: {e}; {}", self.err.rest().join("; ")),
            }
        }
    }

    /// Waits for the tool to end (after the benchmark did), up to `timeout`; its output lines.
    fn end(&mut self, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("it did not end within {timeout:?}");
            }
            match self.out.next(left) {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => break,
                Err(_) => continue,
            }
        }
        self.child.wait()?;
        // And what it said on stderr (heaptrack's statistics go there).
        while let Ok(Some(line)) = self.err.next(Duration::from_secs(5)) {
            lines.push(line);
        }
        Ok(lines)
    }
}

/// A tracer left running by a failed round ends with it.
fn end_child(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        end_child(&mut self.child);
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        end_child(&mut self.child);
        if let Some(output) = &self.output {
            remove_heaptrack_output(output);
        }
    }
}

enum Tracer {
    None,
    Bare { counters: Vec<(Bare, File)> },
    Pagealloc(Watch),
    Bpftrace(Tool),
    Heaptrack(Tool),
}

/// A tracer's counts, and the CPU time its processes had used, before a run.
struct Mark {
    counts: Vec<u64>,
    events: Option<Events>,
    tracer_cpu_ns: f64,
}

impl Tracer {
    /// The tracer's own process (its children count too).
    fn pid(&self) -> Option<u32> {
        match self {
            Tracer::None | Tracer::Bare { .. } => None,
            Tracer::Pagealloc(watch) => Some(watch.child.id()),
            Tracer::Bpftrace(tool) | Tracer::Heaptrack(tool) => Some(tool.child.id()),
        }
    }

    fn mark(&mut self) -> Result<Mark> {
        let mut mark = Mark {
            counts: Vec::new(),
            events: None,
            tracer_cpu_ns: self.pid().map_or(Ok(0.0), tree_cpu_ns)?,
        };
        match self {
            Tracer::Bare { counters } => {
                mark.counts = counters
                    .iter()
                    .map(|(_, f)| read_count(f))
                    .collect::<Result<_>>()?
            }
            Tracer::Pagealloc(watch) => {
                watch.drain()?;
                mark.events = Some(watch.latest.clone().context("no line from pagealloc")?);
            }
            _ => {}
        }
        Ok(mark)
    }

    /// Checks that the tracer saw the run; the CPU time its processes used meanwhile (for
    /// pagealloc: until it had counted every event), and the events pagealloc reported.
    fn check(&mut self, mark: &Mark, run: &Run, workload: &Workload) -> Result<(f64, u64)> {
        let mut events = 0;
        match self {
            Tracer::Bare { counters } => {
                // Worker 0 did `run.pairs` pairs: each function's probes together are hit once
                // per pair (malloc's probes at its return paths: one of them per call).
                let mut by_function: BTreeMap<&str, (u64, Vec<Bare>)> = BTreeMap::new();
                for ((probe, file), before) in counters.iter().zip(&mark.counts) {
                    let hits = delta(read_count(file)?, *before, || {
                        format!("the hit count of {}", probe.describe())
                    })?;
                    let entry = by_function.entry(probe.function).or_default();
                    entry.0 += hits;
                    entry.1.push(probe.clone());
                }
                for (function, (hits, probes)) in by_function {
                    if hits != run.pairs {
                        bail!(
                            "{function}'s probes ({}) counted {hits} hits together on worker 0 \
                             ({}) for {} pairs",
                            describe_all(&probes),
                            workload.workers[0],
                            run.pairs
                        );
                    }
                }
            }
            Tracer::Pagealloc(watch) => {
                let before = mark.events.as_ref().context("no mark")?;
                let expected = run.pairs * run.threads as u64;
                let (after, complete) = watch.counted(before, expected)?;
                let counted = Counted::of(before, &after)?;
                if counted.lost != 0 {
                    bail!(
                        "pagealloc lost {} events in a run of {expected} pairs",
                        counted.lost
                    );
                }
                if !complete || counted.allocs != expected {
                    bail!(
                        "pagealloc counted {} allocs and {} frees for {expected} pairs",
                        counted.allocs,
                        counted.frees
                    );
                }
                events = counted.events();
            }
            _ => {}
        }
        let cpu = cpu_since(self.pid().map_or(Ok(0.0), tree_cpu_ns)?, mark.tracer_cpu_ns);
        Ok((cpu, events))
    }

    /// After the benchmark exited: the tracer ends; checks what it says about the whole run.
    fn finish(self, pairs: u64) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        match self {
            Tracer::None | Tracer::Bare { .. } => {}
            Tracer::Pagealloc(mut watch) => {
                // It ends when the process does.
                let deadline = Instant::now() + Duration::from_secs(30);
                while watch.child.try_wait()?.is_none() {
                    if Instant::now() > deadline {
                        let _ = watch.child.kill();
                        let _ = watch.child.wait();
                        bail!("pagealloc watch did not end with the process");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Tracer::Bpftrace(mut tool) => {
                // SAFETY: kill(2) on the bpftrace this bench started (SIGINT: it detaches,
                // prints its maps and ends).
                unsafe { libc::kill(tool.child.id() as i32, libc::SIGINT) };
                tool.end(Duration::from_secs(30))?;
            }
            Tracer::Heaptrack(mut tool) => {
                // heaptrack ends when the process does, with its statistics.
                let lines = tool.end(Duration::from_secs(120))?;
                let counted = lines.iter().find_map(|l| {
                    l.trim()
                        .strip_prefix("allocations:")
                        .and_then(|n| n.trim().parse::<u64>().ok())
                });
                match counted {
                    // The pairs, plus the few allocations of libc and heaptrack itself.
                    Some(n) if n >= pairs && n <= pairs + pairs / 100 + 1000 => {}
                    Some(n) => notes.push(format!(
                        "heaptrack counted {n} allocations for {pairs} pairs"
                    )),
                    None => notes.push("heaptrack printed no allocation count".into()),
                }
            }
        }
        Ok(notes)
    }
}

/// heaptrack appends a compression suffix to the file name it is given.
fn remove_heaptrack_output(output: &Path) {
    let (Some(dir), Some(name)) = (output.parent(), output.file_name()) else {
        return;
    };
    let name = name.to_string_lossy().into_owned();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
