//! The report of `cargo xtask bench overhead`: the setups' table, the notes, what each trap
//! costs, the goals, and the event rates.
use super::probes::describe_all;
use super::{AgentCost, Measured, Medians, RATE_TARGET, RateRun, Ratio, SETUPS, Setup, THREADS};
use crate::load_average;

impl Measured {
    /// What the table shows, and the machine's load around the rounds.
    pub(super) fn print_legend(&self, size: u64, load_before: &str) {
        let (rounds, cores) = (self.rounds, self.cores);
        println!(
            "bench overhead: malloc({size})+free on 1 and {} threads ({cores} cores), ns per \
             pair, medians of {rounds} interleaved rounds",
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
            "  CPU = the benchmark threads' user+system time per pair (the traps are system \
             time); [wall] = elapsed × busy cores ÷ pairs (also counts waits, and the \
             neighbours on a shared machine); tracer = the tracer's own processes' CPU per \
             pair; ratios of CPU, 1 / {} threads",
            THREADS[1]
        );
    }

    /// Each setup's medians at 1 and 4 threads, its tracer's own CPU, and its ratios to the
    /// untraced program, the trap floor and bpftrace; a setup not measured says why.
    pub(super) fn print_table(&self) {
        table_line([
            "setup",
            "1 thread CPU [wall]",
            &format!("{} threads CPU [wall]", THREADS[1]),
            "tracer CPU",
            "×untraced",
            "×trap floor",
            "×bpftrace",
        ]);
        for setup in SETUPS {
            let cells: Vec<Option<Medians>> =
                THREADS.iter().map(|&t| self.medians(setup, t)).collect();
            if cells.iter().all(Option::is_none) {
                println!("{:<36} not run: {}", setup.label(), self.why_not_run(setup));
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
            table_line([
                setup.label(),
                &cell(&cells[0]),
                &cell(&cells[1]),
                &tracer,
                &self.cpu_ratios(setup, Setup::Untraced),
                &self.cpu_ratios(setup, Setup::TrapFloor),
                &self.cpu_ratios(setup, Setup::Bpftrace),
            ]);
        }
    }

    fn why_not_run(&self, setup: Setup) -> String {
        (self.unavailable.get(&setup).cloned())
            .or_else(|| self.errors.get(&setup).and_then(|e| e.last().cloned()))
            .unwrap_or_else(|| "no sample".into())
    }

    /// `a`'s CPU over `b`'s at each thread count: "1.02 / 1.10".
    fn cpu_ratios(&self, a: Setup, b: Setup) -> String {
        THREADS
            .iter()
            .map(|&t| (self.ratio(a, b, t)).map_or("-".into(), |r| format!("{:.2}", r.cpu)))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// The probes of the bare setups, the failed rounds of setups that were measured, and what
    /// the tracers said, each once.
    pub(super) fn print_notes(&mut self) {
        for (setup, probes) in &self.placements {
            println!("  {}: {}", setup_name(*setup), describe_all(probes));
        }
        for (setup, list) in &self.errors {
            if let (true, Some(last)) = (self.sampled(*setup), list.last()) {
                println!(
                    "  {}: {} of {} rounds failed, last: {last}",
                    setup.label(),
                    list.len(),
                    self.rounds,
                );
            }
        }
        for (setup, list) in &mut self.notes {
            list.sort();
            list.dedup();
            for note in list.iter() {
                println!("  {}: {note}", setup.label());
            }
        }
    }

    /// What each trap costs, from the floors (1 thread, CPU), and heaptrack's whole pair
    /// beside one trap.
    pub(super) fn print_trap_costs(&self) {
        let cpu1 = |s: Setup| self.medians(s, 1).map(|m| m.cpu);
        let (Some(untraced), Some(one), Some(floor)) = (
            cpu1(Setup::Untraced),
            cpu1(Setup::OneTrap),
            cpu1(Setup::TrapFloor),
        ) else {
            return;
        };
        let entry_trap = (one - untraced) / 2.0;
        // Whether pagealloc caught malloc's result with a return probe (two traps) or at its
        // return paths (one trap).
        let malloc_returns = (self.placements.get(&Setup::TrapFloor))
            .is_some_and(|probes| probes.iter().any(|p| p.function == "malloc" && p.returns));
        println!(
            "traps (1 thread, CPU): an emulated entry trap ≈ {} ((one-trap floor − untraced) ÷ \
             2); {} {} per call",
            ns(entry_trap),
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
        if let Some(heaptrack) = self.medians(Setup::Heaptrack, 1) {
            let whole = heaptrack.cpu - untraced + heaptrack.tracer;
            println!(
                "  heaptrack's whole pair: {} (its threads {} + its own processes {}); one \
                 trap alone: {}: {}",
                ns(whole),
                ns(heaptrack.cpu - untraced),
                ns(heaptrack.tracer),
                ns(entry_trap),
                if entry_trap > whole {
                    "per-call probes cannot beat heaptrack here; walk mode (`pagealloc watch \
                     --walk`) costs nothing per call"
                } else {
                    "per-call probes can beat heaptrack here"
                }
            );
        }
    }

    /// pagealloc against its trap floor and bpftrace, the trap floor against one trap per
    /// call, and the agent's CPU per event.
    pub(super) fn print_goals(&self) {
        for (other, against, most) in [
            (Setup::TrapFloor, "its trap floor", 1.15),
            (Setup::Bpftrace, "bpftrace", 0.3),
        ] {
            for t in THREADS {
                goal(
                    &format!("pagealloc ÷ {against}, {t} thread{}", plural(t)),
                    self.ratio(Setup::Pagealloc, other, t),
                    most,
                    &format!("≤ {most:.2}"),
                );
            }
        }
        goal(
            "pagealloc's trap floor ÷ the one-trap floor, 1 thread",
            self.ratio(Setup::TrapFloor, Setup::OneTrap, 1),
            1.05,
            "one trap per call: ≈ 1",
        );
        match (self.agents.get(&Setup::PageallocNoStacks)).and_then(|a| a.goal("bench rounds")) {
            Some(line) => println!("{line}"),
            None => println!("goal agent CPU per event: not measured (≤ 50 ns)"),
        }
        self.print_stack_goals();
    }

    /// What stacks cost: at the defaults against none; with every allocation's stack, per
    /// pair, per stack (one stack a pair: its malloc) and against heaptrack (which records every
    /// stack); and the agent's CPU per stack, its caches warm (one call site, unwound and
    /// symbolised once).
    fn print_stack_goals(&self) {
        for t in THREADS {
            goal(
                &format!(
                    "stacks at the defaults ÷ no stacks, {t} thread{}",
                    plural(t)
                ),
                self.ratio(Setup::Pagealloc, Setup::PageallocNoStacks, t),
                1.05,
                "≤ 1.05",
            );
        }
        for t in THREADS {
            let (Some(every), Some(none)) = (
                self.medians(Setup::PageallocEveryStack, t),
                self.medians(Setup::PageallocNoStacks, t),
            ) else {
                println!("every stack, {t} thread{}: not measured", plural(t));
                continue;
            };
            let heaptrack = match self.ratio(Setup::PageallocEveryStack, Setup::Heaptrack, t) {
                Some(Ratio { cpu, wall }) => format!("{cpu:.2} [wall {wall:.2}]"),
                None => "not measured".into(),
            };
            println!(
                "every stack, {t} thread{}: {} a pair, {} a stack more than without stacks; \
                 ÷ heaptrack {heaptrack}; {:.0} stacks/s held with 0 lost",
                plural(t),
                ns(every.cpu),
                ns(every.cpu - none.cpu),
                1e9 * f64::from(t.min(self.cores)) / every.wall,
            );
        }
        let per_pair = |setup| {
            let agent: &AgentCost = self.agents.get(&setup)?;
            // Two events a pair, one of them the stack's allocation.
            Some(agent.cpu_ns / (agent.events as f64 / 2.0))
        };
        match (
            per_pair(Setup::PageallocEveryStack),
            per_pair(Setup::PageallocNoStacks),
        ) {
            (Some(every), Some(none)) => {
                let per_stack = every - none;
                println!(
                    "goal agent CPU per stack unwound and symbolised, caches warm: {} (≤ 10 µs): \
                     {}",
                    ns(per_stack),
                    met(per_stack <= 10_000.0)
                );
            }
            _ => println!("goal agent CPU per stack: not measured (≤ 10 µs)"),
        }
    }
}

/// A line of the setups' table: the setup, then the figures right-aligned.
fn table_line(cells: [&str; 7]) {
    let [setup, one, four, tracer, untraced, floor, bpftrace] = cells;
    println!(
        "{setup:<36} {one:>20} {four:>20} {tracer:>17}  {untraced:>13} {floor:>13} {bpftrace:>13}"
    );
}

/// The event rates of pagealloc's rate runs, the highest held with nothing lost, and the
/// agent's CPU per event there.
pub(super) fn print_rates(rates: &[RateRun], cores: u32) {
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
    for r in rates {
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
            best = Some(best.map_or(r.events_per_second, |b: f64| b.max(r.events_per_second)));
        }
        for note in &r.notes {
            println!("  {} threads: {note}", r.threads);
        }
    }
    println!(
        "  (agent busy = pagealloc's CPU ÷ the run's wall time: the rate is set by the traps in \
         the traced threads and the cores they get, not by the agent)"
    );
    match best {
        Some(v) => println!(
            "goal highest event rate held with 0 lost: {:.2} M events/s (≥ 1.5 M): {}",
            v / 1e6,
            met(v >= 1.5e6)
        ),
        None => println!("goal highest event rate held with 0 lost: none held"),
    }
    if let Some(line) = cost.goal("rate runs") {
        println!("{line}");
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

/// One goal line, met at `most` or below: the CPU ratio decides, the wall ratio is shown
/// beside it.
fn goal(name: &str, ratio: Option<Ratio>, most: f64, want: &str) {
    match ratio {
        Some(Ratio { cpu, wall }) => println!(
            "goal {name}: {cpu:.2} [wall {wall:.2}] ({want}): {}",
            met(cpu <= most)
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

impl AgentCost {
    /// The goal line of the agent's CPU per event over `runs`; None if it saw no event.
    fn goal(&self, runs: &str) -> Option<String> {
        let v = self.per_event()?;
        Some(format!(
            "goal agent CPU per event ({runs}, {} events): {} (≤ 50 ns): {}",
            self.events,
            ns(v),
            met(v <= 50.0)
        ))
    }
}
