//! `cargo xtask bench quiet`: what a live sample of a quiet heap of gigabytes costs. The
//! `large_heap aligned N` fixture grows the main arena by ~2 MiB per `memalign(2 MiB)` while
//! touching a page of each (its RSS stays small); `pagealloc watch --interval 1s` follows it
//! for `--samples` samples, and the bench prints the median and the slowest `sample_seconds`
//! (the first, the seed walk, apart) and the agent's peak RSS.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pagealloc_testkit::lines::Lines;

use crate::{Ended, cargo, compile_workload, load_average, mib, run};

const LINE_LIMIT: Duration = Duration::from_secs(60);

pub fn quiet(root: &Path, chunks: u64, samples: usize) -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "pagealloc"]))?;
    let fixture = root.join("target/bench/large_heap");
    compile_workload("-O1", &root.join("tests/fixtures/large_heap.c"), &fixture)?;
    let mut target = Ended(
        Command::new(&fixture)
            .args(["aligned", &chunks.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting large_heap")?,
    );
    follow(root, &mut target.0, samples)
}

fn follow(root: &Path, target: &mut std::process::Child, samples: usize) -> Result<()> {
    let mut said = Lines::new(target.stdout.take().context("large_heap's stdout")?);
    let mut arena = 0;
    while let Ok(Some(line)) = said.next(LINE_LIMIT) {
        if let Some(bytes) = line.strip_prefix("arena ") {
            arena = bytes.trim().parse()?;
        }
        if line == "ready" {
            break;
        }
    }
    let mut watch = Ended(
        Command::new(root.join("target/release/pagealloc"))
            .args(["watch", &target.id().to_string(), "--format", "json"])
            .args(["--interval", "1s", "--max-rate", "1000000000000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pagealloc watch")?,
    );
    let mut lines = Lines::new(watch.0.stdout.take().context("watch's stdout")?);
    let mut seconds = Vec::new();
    let mut peak_rss = 0;
    while seconds.len() <= samples {
        let Ok(Some(line)) = lines.next(LINE_LIMIT) else {
            bail!("watch ended or fell silent");
        };
        let line: serde_json::Value = serde_json::from_str(&line)?;
        if line["mode"] != "live" {
            bail!("not live mode: {}", line["mode"]);
        }
        seconds.push(line["sample_seconds"].as_f64().unwrap_or(f64::NAN));
        peak_rss = peak_rss.max(rss_bytes(watch.0.id()));
    }
    let mut later = seconds.split_off(1);
    later.sort_by(f64::total_cmp);
    println!(
        "quiet arena of {:.0} MiB, {} live samples (after the seed's {:.3} s): median {:.3} s, \
         slowest {:.3} s; agent peak RSS {:.0} MiB; load average {}",
        mib(arena),
        later.len(),
        seconds[0],
        later[later.len() / 2],
        later[later.len() - 1],
        mib(peak_rss),
        load_average()
    );
    Ok(())
}

/// A process's resident bytes now (0 if unreadable).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
