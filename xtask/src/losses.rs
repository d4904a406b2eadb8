//! `cargo xtask bench losses`: live mode's event losses, run after run, on the shapes that lost
//! events before issue 19: the bursty fixture (two threads, a burst every millisecond, ~17,500
//! allocations/s) with half the CPUs taken by busy loops, and CPython churning objects on three
//! threads. Each run starts a fresh target and `pagealloc watch --live --reconcile 1s` on it for
//! a fixed time, and prints what the last sample's events say: lost, resyncs, reconciles and the
//! call rate. The totals line is what the issue asks for: 0 lost, 0 resyncs.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pagealloc_testkit::hogs::CpuHogs;
use pagealloc_testkit::lines::Lines;

use crate::{Ended, cargo, compile_workload, load_average, run, start_ready};

/// CPython making and dropping containers and strings on three threads until stdin closes.
const CPYTHON_CHURN: &str = r#"
import sys, threading
stop = False
def churn(seed):
    held = [None] * 4096
    i = seed
    while not stop:
        i = (i * 1103515245 + 12345) & 0x7fffffff
        held[i % 4096] = [bytes(64 + i % 900), {"k": i, "v": str(i) * (1 + i % 40)}]
ts = [threading.Thread(target=churn, args=(s,)) for s in range(3)]
for t in ts: t.start()
print("ready", flush=True)
sys.stdin.read()
stop = True
for t in ts: t.join()
"#;

/// How long a line of watch may take (never reached when it works).
const LINE_LIMIT: Duration = Duration::from_secs(60);

struct Shape {
    name: &'static str,
    /// Busy loops on half the CPUs beside the target.
    hogs: bool,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "bursty + busy loops",
        hogs: true,
    },
    Shape {
        name: "CPython churn, 3 threads",
        hogs: false,
    },
];

/// What one run ended with.
struct Run {
    lost: u64,
    resyncs: u64,
    reconciles: u64,
    calls_per_second: f64,
}

pub fn losses(root: &Path, runs: usize, seconds: u64) -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "pagealloc"]))?;
    let bursty = root.join("target/bench/bursty");
    compile_workload("-O1", &root.join("tests/fixtures/bursty.c"), &bursty)?;
    println!(
        "{runs} runs of {seconds} s per shape, `watch --reconcile 1s --interval 500ms`; load \
         average {}",
        load_average()
    );
    for (index, shape) in SHAPES.iter().enumerate() {
        let mut results = Vec::new();
        for number in 1..=runs {
            let mut target = match index {
                0 => Command::new(&bursty),
                _ => {
                    let mut python = Command::new("python3");
                    python.args(["-c", CPYTHON_CHURN]);
                    python
                }
            };
            let result = one_run(root, &mut target, shape.hogs, Duration::from_secs(seconds))
                .with_context(|| format!("{} run {number}", shape.name))?;
            println!(
                "{:<26} run {number:>2}: lost {:>4}, resyncs {:>2}, reconciles {:>3}, {:>7.0} calls/s",
                shape.name, result.lost, result.resyncs, result.reconciles, result.calls_per_second
            );
            results.push(result);
        }
        let sum = |f: fn(&Run) -> u64| results.iter().map(f).sum::<u64>();
        let lossy = results.iter().filter(|r| r.lost > 0).count();
        println!(
            "{:<26} total: {} runs, {lossy} with losses, lost {}, resyncs {}, reconciles {}",
            shape.name,
            results.len(),
            sum(|r| r.lost),
            sum(|r| r.resyncs),
            sum(|r| r.reconciles)
        );
    }
    Ok(())
}

fn one_run(root: &Path, target: &mut Command, hogs: bool, length: Duration) -> Result<Run> {
    let (target, _said) = start_ready(target.stderr(Stdio::null()), "the target")?;
    let _hogs = hogs.then(CpuHogs::start);
    let pid = target.0.id().to_string();
    let mut watch = Ended(
        Command::new(root.join("target/release/pagealloc"))
            .args(["watch", &pid, "--format", "json", "--interval", "500ms"])
            .args(["--reconcile", "1s", "--max-rate", "1000000000000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pagealloc watch")?,
    );
    let mut lines = Lines::new(watch.0.stdout.take().context("watch's stdout")?);
    let mut first: Option<(Instant, serde_json::Value)> = None;
    let last = loop {
        let Ok(Some(line)) = lines.next(LINE_LIMIT) else {
            bail!("watch ended or fell silent before the run's end");
        };
        let line: serde_json::Value = serde_json::from_str(&line)?;
        if line["mode"] != "live" {
            bail!("not live mode: {}", line["mode"]);
        }
        match &first {
            None => first = Some((Instant::now(), line)),
            Some((at, _)) if at.elapsed() >= length => break line,
            Some(_) => {}
        }
    };
    let (at, first) = first.context("no line")?;
    let events = |line: &serde_json::Value, key: &str| line["events"][key].as_u64().unwrap_or(0);
    let calls = |line: &serde_json::Value| events(line, "allocs") + events(line, "frees");
    Ok(Run {
        lost: events(&last, "lost"),
        resyncs: events(&last, "resyncs"),
        reconciles: events(&last, "reconciles"),
        calls_per_second: (calls(&last) - calls(&first)) as f64 / at.elapsed().as_secs_f64(),
    })
}
