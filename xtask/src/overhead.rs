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
//! - `pagealloc watch` (live mode) without stacks (`--sample-bytes 0`), at its defaults (stacks
//!   sampled: 512 KiB of allocations, one page in 256), and with every allocation's stack
//!   (`--sample-bytes 1 --stack-bytes 1024`), each with its event counts checked against the
//!   pairs;
//! - bpftrace with the equivalent probes (malloc's return and free's entry, into a map);
//! - heaptrack attached at run time (`heaptrack -p`, injected with gdb).
//!
//! The cost is read as the benchmark threads' CPU time per pair (user + system: a trap's handling
//! is system time of the thread that trapped), with the wall time beside it: on a shared machine
//! the wall time also counts the neighbours, and the CPU time does not. What the tracer's own
//! processes spend (pagealloc's agent, heaptrack's interpreter) is a column of its own.
//!
//! Then pagealloc's own CPU per event, and the event rates it holds with nothing lost.
//! The bare probes are placed by hand in [`probes`]; [`report`] prints what was measured.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pagealloc_testkit::lines::Lines;
use serde_json::Value;

use crate::{cargo, compile_workload, load_average, run};

mod probes;
mod report;

use probes::{Bare, Plan, describe_all, expect_breakpoints, read_count, uprobe_pmu};
use report::print_rates;

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
    PageallocNoStacks,
    Pagealloc,
    PageallocEveryStack,
    Bpftrace,
    Heaptrack,
}

const SETUPS: [Setup; 9] = [
    Setup::Untraced,
    Setup::TrapFloor,
    Setup::OneTrap,
    Setup::BpftraceFloor,
    Setup::PageallocNoStacks,
    Setup::Pagealloc,
    Setup::PageallocEveryStack,
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
            Setup::PageallocNoStacks => "pagealloc watch (live, no stacks)",
            Setup::Pagealloc => "pagealloc watch (live, stacks sampled)",
            Setup::PageallocEveryStack => "pagealloc watch (every stack, 1 KiB)",
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

    /// `pagealloc watch`'s stack sampling in this setup, if it is one of pagealloc's. Every
    /// stack copies 1 KiB (the benchmark's threads are three calls deep): 8 KiB a call, at this
    /// rate, is more than the rings take.
    fn stack_args(self) -> Option<&'static [&'static str]> {
        match self {
            Setup::PageallocNoStacks => Some(&["--sample-bytes", "0"]),
            Setup::Pagealloc => Some(&[]),
            Setup::PageallocEveryStack => Some(&["--sample-bytes", "1", "--stack-bytes", "1024"]),
            _ => None,
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
    let bench = Bench::prepare(root, size)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let unavailable = unavailable_setups();
    let load_before = load_average();
    println!(
        "bench overhead: {rounds} rounds of {} setups, each on a fresh process of {} threads \
         doing malloc({size})+free",
        SETUPS.len(),
        THREADS[1]
    );
    let mut measured = Measured::new(rounds, cores, unavailable);
    for round in 0..rounds {
        measured.round(&bench, round);
        println!("bench overhead: round {}/{rounds} done", round + 1);
    }

    println!();
    measured.print_legend(size, &load_before);
    measured.print_table();
    measured.print_notes();
    println!();
    measured.print_trap_costs();
    measured.print_goals();

    // The event rate pagealloc holds with nothing lost, and its CPU per event there.
    println!();
    if measured.unavailable.contains_key(&Setup::Pagealloc) {
        println!("event rate: not run (pagealloc watch could not run)");
        return Ok(());
    }
    match bench.rates(&measured.samples, cores) {
        Ok(rates) => print_rates(&rates, cores),
        Err(e) => println!("event rate: failed: {e:#}"),
    }
    Ok(())
}

/// The setups whose tool or kernel support is missing here, with the reason: each gets its row
/// with it, and is not tried.
fn unavailable_setups() -> BTreeMap<Setup, String> {
    let mut unavailable = BTreeMap::new();
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
    unavailable
}

/// What the interleaved rounds measured, and what kept setups from being measured.
struct Measured {
    rounds: usize,
    cores: u32,
    samples: Samples,
    /// Setups not tried (any more), and why.
    unavailable: BTreeMap<Setup, String>,
    /// Each setup's failed rounds.
    errors: BTreeMap<Setup, Vec<String>>,
    /// What the tracers said about the runs they saw.
    notes: BTreeMap<Setup, Vec<String>>,
    /// pagealloc's own CPU over the events of the rounds, by setup.
    agents: BTreeMap<Setup, AgentCost>,
    /// The probes each bare setup placed.
    placements: BTreeMap<Setup, Vec<Bare>>,
}

impl Measured {
    fn new(rounds: usize, cores: u32, unavailable: BTreeMap<Setup, String>) -> Measured {
        Measured {
            rounds,
            cores,
            samples: BTreeMap::new(),
            unavailable,
            errors: BTreeMap::new(),
            notes: BTreeMap::new(),
            agents: BTreeMap::new(),
            placements: BTreeMap::new(),
        }
    }

    /// Round `round` (from 0): every setup still available once, interleaved, each round
    /// starting elsewhere so that all setups see the same machine.
    fn round(&mut self, bench: &Bench, round: usize) {
        for k in 0..SETUPS.len() {
            let setup = SETUPS[(k + round) % SETUPS.len()];
            if self.unavailable.contains_key(&setup) {
                continue;
            }
            let pairs: BTreeMap<u32, u64> = THREADS
                .iter()
                .map(|&t| (t, pairs_for(setup, t, self.cores, &self.samples, TARGET)))
                .collect();
            // Alternate which thread count goes first.
            let order: Vec<u32> = if round.is_multiple_of(2) {
                THREADS.to_vec()
            } else {
                THREADS.iter().rev().copied().collect()
            };
            let measured = bench.measure(
                setup,
                &pairs,
                &order,
                &mut self.agents,
                &mut self.placements,
            );
            match measured {
                Ok((runs, mut found)) => {
                    for r in runs {
                        self.samples
                            .entry((setup, r.run.threads))
                            .or_default()
                            .push(r);
                    }
                    self.notes.entry(setup).or_default().append(&mut found);
                }
                Err(e) => self.failed(setup, round, format!("{e:#}")),
            }
        }
    }

    /// A failed round of `setup`: said now and kept for the report.
    fn failed(&mut self, setup: Setup, round: usize, e: String) {
        eprintln!(
            "bench overhead: round {}: {}: {e}",
            round + 1,
            setup.label()
        );
        let list = self.errors.entry(setup).or_default();
        list.push(e.clone());
        let failures = list.len();
        // A tool that fails twice before it ever worked is not going to work here.
        if !self.sampled(setup) && failures >= 2 {
            self.unavailable
                .insert(setup, format!("could not run: {e}"));
        }
    }

    fn sampled(&self, setup: Setup) -> bool {
        self.samples.keys().any(|(s, _)| *s == setup)
    }

    fn medians(&self, setup: Setup, threads: u32) -> Option<Medians> {
        let runs = (self.samples.get(&(setup, threads))).filter(|r| !r.is_empty())?;
        Some(Medians {
            cpu: median(runs.iter().map(|r| r.run.cpu_per_pair()).collect()),
            wall: median(
                runs.iter()
                    .map(|r| r.run.wall_per_pair(self.cores))
                    .collect(),
            ),
            tracer: median(runs.iter().map(Sample::tracer_per_pair).collect()),
        })
    }

    /// `a`'s medians over `b`'s at `threads`: CPU and wall.
    fn ratio(&self, a: Setup, b: Setup, threads: u32) -> Option<Ratio> {
        let (a, b) = (self.medians(a, threads)?, self.medians(b, threads)?);
        Some(Ratio {
            cpu: a.cpu / b.cpu,
            wall: a.wall / b.wall,
        })
    }
}

/// One setup's medians over another's.
#[derive(Clone, Copy)]
struct Ratio {
    cpu: f64,
    wall: f64,
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
    /// Builds pagealloc (release) and the benchmark program; makes the scratch directory.
    fn prepare(root: &Path, size: u64) -> Result<Bench> {
        run(cargo().args(["build", "--release", "--package", "pagealloc"]))?;
        let workload = root.join("target/bench/pairs");
        compile_workload("-O2", &root.join("xtask/bench/pairs.c"), &workload)?;
        let scratch = root.join("target/bench/overhead");
        std::fs::create_dir_all(&scratch)?;
        Ok(Bench {
            workload,
            pagealloc: root.join("target/release/pagealloc"),
            scratch,
            size,
        })
    }

    fn start(&self, threads: u32) -> Result<Workload> {
        Workload::start(&self.workload, threads, self.size)
    }

    /// One setup on a fresh process: attach, warm up, run each thread count, detach, check.
    fn measure(
        &self,
        setup: Setup,
        pairs: &BTreeMap<u32, u64>,
        order: &[u32],
        agents: &mut BTreeMap<Setup, AgentCost>,
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
                if setup.stack_args().is_some() {
                    agents.entry(setup).or_default().add(&AgentCost {
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

    /// Attaches `setup`'s tracer to the benchmark process, and waits until its probes are in.
    fn attach(
        &self,
        setup: Setup,
        workload: &Workload,
        placements: &mut BTreeMap<Setup, Vec<Bare>>,
    ) -> Result<Tracer> {
        Ok(match setup {
            Setup::Untraced => Tracer::None,
            Setup::TrapFloor | Setup::OneTrap | Setup::BpftraceFloor => {
                self.attach_bare(setup, workload, placements)?
            }
            Setup::PageallocNoStacks | Setup::Pagealloc | Setup::PageallocEveryStack => {
                let stacks = setup.stack_args().unwrap_or_default();
                Tracer::Pagealloc(self.attach_pagealloc(workload.pid, stacks)?)
            }
            Setup::Bpftrace => Tracer::Bpftrace(self.attach_bpftrace(workload.pid)?),
            Setup::Heaptrack => Tracer::Heaptrack(self.attach_heaptrack(workload.pid)?),
        })
    }

    /// A bare setup's probes, counting on worker 0.
    fn attach_bare(
        &self,
        setup: Setup,
        workload: &Workload,
        placements: &mut BTreeMap<Setup, Vec<Bare>>,
    ) -> Result<Tracer> {
        let plan = Plan::of(&self.pagealloc, workload.pid)?;
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
        // One counting event per probe, on worker 0's thread: every thread of the process
        // traps (the breakpoint is in its memory), and worker 0's count checks the probe
        // against the pairs it did. More events per probe would add consumers, and work, to
        // every trap.
        let worker = workload.workers[0];
        let mut counters = Vec::new();
        for probe in probes {
            let fd = probe.open(&plan.libc, worker)?;
            counters.push((probe, fd));
        }
        Ok(Tracer::Bare { counters })
    }

    /// `pagealloc watch` in live mode, its breakpoints in.
    /// `pagealloc watch` on `pid`, sampling stacks as `stacks` says.
    fn attach_pagealloc(&self, pid: u32, stacks: &[&str]) -> Result<Watch> {
        let plan = Plan::of(&self.pagealloc, pid)?;
        let (child, out, err) = spawn_tracer(
            Command::new(&self.pagealloc)
                .args(["watch", &pid.to_string(), "--format", "json"])
                .args(["--interval", "1s"])
                .args(stacks)
                // The benchmark calls malloc millions of times a second: far past the overhead
                // guard's default, which would take the probes off and walk.
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
        let mode = watch.latest.as_ref().map_or("", |e| e.mode.as_str());
        if mode != "live" {
            bail!("pagealloc watch is not in live mode (mode {mode:?})");
        }
        let sites: Vec<u64> = plan.pagealloc.iter().map(|p| p.file_offset).collect();
        expect_breakpoints(pid, &sites, Duration::from_secs(5))?;
        Ok(watch)
    }

    /// bpftrace with the equivalent probes, its breakpoints in.
    fn attach_bpftrace(&self, pid: u32) -> Result<Tool> {
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
        Ok(tracer)
    }

    /// heaptrack injected into the process, its library mapped.
    fn attach_heaptrack(&self, pid: u32) -> Result<Tool> {
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
        Ok(tracer)
    }

    /// pagealloc over the benchmark at several thread counts: events/s, lost, CPU per event.
    fn rates(&self, samples: &Samples, cores: u32) -> Result<Vec<RateRun>> {
        let most = *RATE_THREADS.iter().max().unwrap();
        let mut workload = self.start(most)?;
        let result = (|| {
            let mut watch = self.attach_pagealloc(workload.pid, &["--sample-bytes", "0"])?;
            let before = watch.now()?;
            let warm = workload.go(1000, most)?;
            watch.check(&before, &warm)?;
            // Per pair per thread, from the bench rounds (4 threads), scaled to `threads`.
            let per_pair_4 = samples
                .get(&(Setup::Pagealloc, 4))
                .map(|r| median(r.iter().map(|r| r.run.wall_per_pair(cores)).collect()))
                .unwrap_or(5_000.0);
            let mut out = Vec::new();
            for threads in RATE_THREADS {
                let per_thread = per_pair_4 * threads as f64 / threads.min(cores) as f64;
                let pairs = ((RATE_TARGET.as_nanos() as f64 / per_thread) as u64).max(10_000);
                out.push(rate_run(&mut watch, &mut workload, threads, pairs)?);
            }
            let total = workload.pairs_done;
            workload.finish()?;
            Tracer::Pagealloc(watch).finish(total)?;
            Ok(out)
        })();
        workload.kill();
        result
    }
}

/// One run of `threads` workers doing `pairs` pairs each under pagealloc watch: the events it
/// counted a second, lost, and its CPU meanwhile.
fn rate_run(
    watch: &mut Watch,
    workload: &mut Workload,
    threads: u32,
    pairs: u64,
) -> Result<RateRun> {
    let before = watch.now()?;
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
    Ok(RateRun {
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
    })
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

    /// pagealloc's latest counts, the lines already written taken in.
    fn now(&mut self) -> Result<Events> {
        self.drain()?;
        self.latest.clone().context("no line from pagealloc")
    }

    /// Checks that pagealloc counted every pair of `run` since `before`, none lost; the events
    /// it counted.
    fn check(&mut self, before: &Events, run: &Run) -> Result<u64> {
        let expected = run.pairs * run.threads as u64;
        let (after, complete) = self.counted(before, expected)?;
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
        Ok(counted.events())
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
            Tracer::Pagealloc(watch) => mark.events = Some(watch.now()?),
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
                events = watch.check(before, run)?;
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
