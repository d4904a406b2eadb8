//! `serve --live` under a stream of short-lived matching processes beside a long-lived busy
//! one, as a continuous profiler meets them: the long-lived one is sampled on time and loses no
//! event, and once the short ones are gone the agent holds no more than it did before them.
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pagealloc_tests::serve::*;
use pagealloc_tests::*;

const INTERVAL: Duration = Duration::from_secs(1);
/// How long short-lived processes keep coming.
const SOAK: Duration = Duration::from_secs(40);
/// Short-lived processes alive at once, each living 0.5 to 4 s.
const CONCURRENT: usize = 20;
/// Samples of the long-lived process the soak may miss against one per interval: the first
/// and the last may fall just outside it.
const SAMPLES_MARGIN: u64 = 2;
/// What the agent may hold above its baseline once the short ones are gone: a scrape's
/// connection (an fd), the thread that detaches probes (started at the first retired monitor,
/// it stays), and the allocator's own slack after the states of the processes seen.
const FDS_TOLERANCE: u64 = 2;
const THREADS_TOLERANCE: u64 = 1;
const RSS_TOLERANCE: u64 = 48 << 20;

/// The agent's own resources, from /proc.
#[derive(Clone, Copy, Debug)]
struct Held {
    rss: u64,
    fds: u64,
    threads: u64,
}

fn held(pid: i32) -> Held {
    let process = process(pid);
    let status = process.status().expect("the agent's status");
    Held {
        rss: status.vmrss.expect("VmRSS") << 10,
        fds: process.fd_count().expect("the agent's fds") as u64,
        threads: status.threads,
    }
}

/// Keeps [`CONCURRENT`] short-lived `shorty` processes alive until `stop`; how many it started.
fn short_lived(stop: &AtomicBool) -> u64 {
    let mut alive: Vec<Child> = Vec::new();
    let mut seed = 12345u32;
    let mut started = 0;
    loop {
        alive.retain_mut(|child| child.try_wait().ok().flatten().is_none());
        if stop.load(Ordering::Relaxed) {
            break;
        }
        while alive.len() < CONCURRENT {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let lives = 500 + (seed >> 8) % 3_500;
            let child = Command::new(fixture_path!("SHORTY"))
                .arg(lives.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("shorty starts");
            alive.push(child);
            started += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut child in alive {
        let _ = child.wait();
    }
    started
}

#[test]
fn root_serve_live_soak_with_short_lived_processes() {
    require_root();
    let bursty = Fixture::spawn(fixture_path!("BURSTY"), &["2"]);
    let pid = bursty.pid().to_string();
    let interval = humantime::format_duration(INTERVAL).to_string();
    let mut serve = Serve::start(&[
        "--pid",
        &pid,
        "--comm",
        "^shorty$",
        "--live",
        "--interval",
        &interval,
        "--max-rate",
        "1000000000000",
    ]);
    let agent = serve.child.0.id() as i32;
    let live = [("pid", pid.as_str()), ("mode", "live")];
    serve.metrics_when("the long-lived process followed live", |m| {
        match m.get("pagealloc_mode", &live) {
            Some(_) => Ok(()),
            None => Err(m.text.clone()),
        }
    });
    let baseline = held(agent);

    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let stop = stop.clone();
        std::thread::spawn(move || short_lived(&stop))
    };
    let start = Instant::now();
    let mut sampled_at = Vec::new();
    let mut lost = std::collections::BTreeMap::new();
    let mut followed = std::collections::BTreeSet::new();
    while start.elapsed() < SOAK {
        let metrics = serve.metrics();
        if let Some(at) = metrics.get("pagealloc_sample_timestamp_seconds", &[("pid", &pid)])
            && sampled_at.last() != Some(&at)
        {
            sampled_at.push(at);
        }
        for series in metrics.all("pagealloc_events_lost_total", &[]) {
            followed.insert(series.labels["pid"].clone());
            if series.value > 0.0 {
                lost.insert(format!("{:?}", series.labels), series.value);
            }
        }
        assert!(serve.running(), "serve ended: {}", serve.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    let soaked = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let started = driver.join().expect("the short-lived processes' driver");
    let during = held(agent);

    // The samples the soak saw, against one per interval.
    let due = (soaked.as_secs_f64() / INTERVAL.as_secs_f64()) as u64;
    let samples = sampled_at.len() as u64;
    assert!(
        samples + SAMPLES_MARGIN >= due,
        "{samples} samples of the long-lived process in {soaked:?} ({due} due); {started} \
         short-lived processes started, {} followed: {}",
        followed.len(),
        serve.stderr()
    );
    let said: Vec<String> = (serve.stderr().lines())
        .filter(|line| line.contains("lost") || line.contains("vouched"))
        .map(str::to_string)
        .collect();
    assert!(lost.is_empty(), "events lost: {lost:?}; said: {said:?}");

    // Every short-lived process gone, the agent back to its baseline (or within the
    // tolerance) within a bounded wait: its monitors retired, their probes detached.
    let last = poll("the agent back to its baseline", WAIT, || {
        let metrics = serve.metrics();
        let now = held(agent);
        let processes = metrics.value("pagealloc_processes", &[]);
        let back = processes == 1.0
            && now.fds <= baseline.fds + FDS_TOLERANCE
            && now.threads <= baseline.threads + THREADS_TOLERANCE
            && now.rss <= baseline.rss + RSS_TOLERANCE;
        match back {
            true => Ok(now),
            false => Err(format!(
                "{processes} processes followed; {now:?} against {baseline:?}"
            )),
        }
    });
    eprintln!(
        "soak: {started} short-lived processes started, {} followed; {samples} samples in \
         {soaked:?}; baseline {baseline:?}, during {during:?}, after {last:?}",
        followed.len().saturating_sub(1)
    );

    // SIGTERM ends serve promptly, whatever it followed.
    unsafe { libc::kill(agent, libc::SIGTERM) };
    let bound = Duration::from_secs(1);
    assert!(
        exits_within(agent, bound),
        "serve still running {bound:?} after SIGTERM"
    );
}
