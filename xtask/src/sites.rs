//! `cargo xtask bench sites`: `serve --live --sample-bytes 1` (every allocation's stack)
//! following the bursty fixture (~17,500 allocations a second on two threads) for `--minutes`:
//! the agent's RSS at minute 2 and at the end (the sites table and the sampled chunks are
//! bounded, so it must not grow with time), the events lost, the resyncs and the last reconcile's mismatch,
//! scraped from `/metrics` every 10 s.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pagealloc_testkit::exposition::{self, Series};
use pagealloc_testkit::http::get;

use crate::{Ended, cargo, compile_workload, load_average, mib, run, start_ready};

const SCRAPE_EVERY: Duration = Duration::from_secs(10);

pub fn sites(root: &Path, minutes: u64) -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "pagealloc"]))?;
    let bursty = root.join("target/bench/bursty");
    compile_workload("-O1", &root.join("tests/fixtures/bursty.c"), &bursty)?;
    let (target, _said) = start_ready(&mut Command::new(&bursty), "bursty")?;
    let pid = target.0.id().to_string();
    let address = pagealloc_testkit::free_port()?;
    let _serve = Ended(
        Command::new(root.join("target/release/pagealloc"))
            .args(["serve", "--live", "--pid", &pid, "--sample-bytes", "1"])
            .args(["--interval", "2s", "--reconcile", "30s"])
            .args(["--listen", &address.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pagealloc serve")?,
    );
    let started = Instant::now();
    let length = Duration::from_secs(minutes * 60);
    let minute_2 = Duration::from_secs(120).min(length / 5);
    let mut at_minute_2 = None;
    let mut last = None;
    println!(
        "bench sites: serve --live --sample-bytes 1 on bursty for {minutes} min; load average {}",
        load_average()
    );
    while started.elapsed() < length {
        std::thread::sleep(SCRAPE_EVERY);
        let Ok(response) = get(address, "/metrics", &[]) else {
            continue;
        };
        let series = exposition::parse(&response.body).map_err(anyhow::Error::msg)?;
        let figures = Figures::of(&series, &pid);
        println!(
            "  {:>4.0} s: agent RSS {:.1} MiB, {} stacks, lost {}, resyncs {}, reconcile mismatch {}",
            started.elapsed().as_secs_f64(),
            mib(figures.rss),
            figures.stacks,
            figures.lost,
            figures.resyncs,
            mismatch(figures.mismatch)
        );
        if at_minute_2.is_none() && started.elapsed() >= minute_2 {
            at_minute_2 = Some(figures.rss);
        }
        last = Some(figures);
    }
    let (Some(early), Some(last)) = (at_minute_2, last) else {
        bail!("serve was never scraped");
    };
    println!(
        "bench sites: agent RSS {:.1} MiB at {:.0} s, {:.1} MiB at the end ({:+.1} %); {} stacks; \
         lost {}, resyncs {}, last reconcile mismatch {}; load average {}",
        mib(early),
        minute_2.as_secs_f64(),
        mib(last.rss),
        100.0 * (last.rss as f64 / early as f64 - 1.0),
        last.stacks,
        last.lost,
        last.resyncs,
        mismatch(last.mismatch),
        load_average()
    );
    Ok(())
}

/// A reconcile's mismatch as the report says it.
fn mismatch(bytes: Option<u64>) -> String {
    bytes.map_or("(no reconcile yet)".into(), |bytes| {
        format!("{bytes} bytes")
    })
}

/// What a scrape says of the agent and the process.
struct Figures {
    rss: u64,
    lost: u64,
    resyncs: u64,
    stacks: u64,
    /// None before the first reconcile.
    mismatch: Option<u64>,
}

impl Figures {
    fn of(series: &[Series], pid: &str) -> Figures {
        let value = |name: &str| {
            (series.iter())
                .find(|s| s.name == name && s.labels.get("pid").is_none_or(|p| p == pid))
                .map(|s| s.value as u64)
        };
        Figures {
            rss: value("process_resident_memory_bytes").unwrap_or(0),
            lost: value("pagealloc_events_lost_total").unwrap_or(0),
            resyncs: value("pagealloc_resyncs_total").unwrap_or(0),
            stacks: value("pagealloc_stacks_total").unwrap_or(0),
            mismatch: value("pagealloc_reconcile_mismatch_bytes"),
        }
    }
}
