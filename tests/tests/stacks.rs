//! Allocation-site stacks, end to end: `serve --live` following the sites fixture (built -O2
//! -fomit-frame-pointer, a site in a shared library), its `/debug/pprof/heap` read by the real
//! reader, `go tool pprof`, and compared with what the fixture knows it made and holds.
use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use pagealloc_tests::serve::*;
use pagealloc_tests::*;

/// One test at a time: each loads both CPUs (CPython churning on three threads, or thousands
/// of stacks in a burst), and a reader starved of CPU by the other test would lose events.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fixture's sites, with the functions of their chains (innermost first, below main).
const SITES: [(&str, &[&str]); 8] = [
    ("small", &["small_4", "small_3", "small_2", "small_1"]),
    ("large", &["large_4", "large_3", "large_2", "large_1"]),
    ("shared", &["lib_c4", "lib_c3", "lib_c2", "shared_1"]),
    ("zeroed", &["zeroed_4", "zeroed_3", "zeroed_2", "zeroed_1"]),
    ("moved", &["moved_4", "moved_3", "moved_2", "moved_1"]),
    ("grown", &["grown_4", "grown_3", "grown_2", "grown_1"]),
    ("remote", &["remote_4", "remote_3", "remote_2", "remote_1"]),
    (
        "threaded",
        &["threaded_4", "threaded_3", "threaded_2", "threaded_1"],
    ),
];

/// One sample of a profile: its values (alloc_objects, alloc_space, inuse_objects,
/// inuse_space, pinned_space) and its stack's functions, innermost first (inlined ones too).
#[derive(Debug, Clone)]
struct ProfileSample {
    values: [f64; 5],
    functions: Vec<String>,
}

/// `go tool pprof -raw` of a URL, parsed: the sample types and the samples.
fn pprof_raw(url: &str) -> Result<(String, Vec<ProfileSample>), String> {
    let output = Command::new("go")
        .args(["tool", "pprof", "-raw", url])
        .env("HOME", std::env::temp_dir())
        .output()
        .map_err(|e| format!("go tool pprof: {e} (cargo xtask setup installs golang-go)"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "go tool pprof failed: {}{text}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut types = String::new();
    let mut stacks: Vec<([f64; 5], Vec<u64>)> = Vec::new();
    let mut locations: HashMap<u64, Vec<String>> = HashMap::new();
    let mut section = "";
    let mut location = 0;
    for line in text.lines() {
        match line.trim_end() {
            "Samples:" | "Locations" | "Mappings" => {
                section = line.trim_end();
                continue;
            }
            _ => {}
        }
        match section {
            "Samples:" if line.contains("/count") => types = line.trim().to_string(),
            "Samples:" => {
                let Some((values, ids)) = line.split_once(':') else {
                    continue;
                };
                let values: Vec<f64> = (values.split_whitespace())
                    .filter_map(|v| v.parse().ok())
                    .collect();
                let ids = ids.split_whitespace().filter_map(|i| i.parse().ok());
                if let Ok(values) = values.try_into() {
                    stacks.push((values, ids.collect()));
                }
            }
            "Locations" => {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if let Some(id) = fields.first().and_then(|f| f.strip_suffix(':')) {
                    // "N: 0xaddr M=m function file:line s=0"
                    location = id.parse().unwrap_or(0);
                    if let Some(function) = fields.get(3) {
                        locations
                            .entry(location)
                            .or_default()
                            .push(function.to_string());
                    }
                } else if let Some(function) = fields.first() {
                    // A continuation: the function this one is inlined into.
                    locations
                        .entry(location)
                        .or_default()
                        .push(function.to_string());
                }
            }
            _ => {}
        }
    }
    let samples = (stacks.into_iter())
        .map(|(values, ids)| ProfileSample {
            values,
            functions: (ids.iter())
                .flat_map(|id| locations.get(id).cloned().unwrap_or_default())
                .collect(),
        })
        .collect();
    Ok((types, samples))
}

/// The sample of site `chain` (the one whose stack holds its innermost function).
fn site_of<'a>(samples: &'a [ProfileSample], chain: &[&str]) -> Option<&'a ProfileSample> {
    samples
        .iter()
        .find(|s| s.functions.first().is_some_and(|f| f == chain[0]))
}

/// What [`profiled`] read: the fixture, its report, the profile, the metrics of its sample.
type Profiled = (Fixture, HashMap<String, u64>, Vec<ProfileSample>, Metrics);

/// Starts serve following the fixture in live mode with `args`, has it make its sites, and
/// reads the profile of a sample begun after they were made (no event lost, unless `losses`).
fn profiled(args: &[&str], losses: bool) -> Profiled {
    require_root();
    let _alone = alone();
    let mut fixture = Fixture::spawn(fixture_path!("SITES"), &[]);
    let pid = fixture.pid().to_string();
    let mut all = vec!["--pid", &pid, "--live", "--interval", "1s"];
    all.extend_from_slice(args);
    let serve = Serve::start(&all);
    serve.metrics_when("the process in live mode", |m| {
        match m.get("pagealloc_mode", &[("pid", &pid), ("mode", "live")]) {
            Some(_) => Ok(()),
            None => Err(m.text.clone()),
        }
    });
    fixture.command("g");
    let made = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let truth = fixture.report.clone();
    // The profile answers from the last sample: read once one began after the sites were made.
    let metrics = serve.metrics_when("a sample after the sites were made", |m| {
        match m.get("pagealloc_sample_timestamp_seconds", &[("pid", &pid)]) {
            Some(at) if at > made => Ok(()),
            at => Err(format!(
                "the last sample began at {at:?}, awaited after {made}"
            )),
        }
    });
    // Exact figures need every event: a loss would be resynced, and said here.
    if !losses {
        assert_eq!(
            metrics.int("pagealloc_events_lost_total", &[("pid", &pid)]),
            0
        );
    }
    let url = format!("http://{}/debug/pprof/heap?pid={pid}", serve.address);
    let (types, samples) = pprof_raw(&url).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        types,
        "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes[dflt] \
         pinned_space/bytes"
    );
    (fixture, truth, samples, metrics)
}

/// With every allocation sampled, each site's figures are exactly the fixture's (chunk sizes),
/// each stack has its whole chain down to main (through the shared library too, without frame
/// pointers), and the small site that sits between the freed large chunks owns the pinned bytes.
#[test]
fn root_every_allocation_sampled_gives_each_site_exactly() {
    let (_fixture, truth, samples, _) = profiled(&["--sample-bytes", "1"], false);
    for (site, chain) in SITES {
        let sample = site_of(&samples, chain)
            .unwrap_or_else(|| panic!("no sample of {site} in {samples:#?}"));
        let expected = [
            truth[&format!("{site}_alloc_chunks")] as f64,
            truth[&format!("{site}_alloc_bytes")] as f64,
            truth[&format!("{site}_live_chunks")] as f64,
            truth[&format!("{site}_live_bytes")] as f64,
        ];
        assert_eq!(&sample.values[..4], &expected, "{site}: {sample:?}");
        let functions: Vec<&str> = sample.functions.iter().map(String::as_str).collect();
        assert_eq!(&functions[..4], chain, "{site}'s chain");
        // The main thread's stacks end in _start, a thread's where clone started it.
        let root_ok = if site == "threaded" {
            functions.contains(&"allocate_on_a_thread")
                && functions
                    .last()
                    .is_some_and(|f| f.starts_with("clone") || f.starts_with("__clone"))
        } else {
            functions.contains(&"main") && functions.last() == Some(&"_start")
        };
        assert!(
            root_ok,
            "{site}'s stack goes down to its root: {functions:?}"
        );
    }
    // The small chunks pin the pages of the stretch the large ones were freed from.
    let pinned: f64 = samples.iter().map(|s| s.values[4]).sum();
    let small = site_of(&samples, SITES[0].1).unwrap().values[4];
    let stretch = (truth["pinned_pages"] - 2) as f64 * 4096.0 * 0.9;
    assert!(
        small >= stretch && small >= pinned * 0.95,
        "small pins {small} of {pinned} bytes (its stretch: {} pages)",
        truth["pinned_pages"]
    );
}

/// At the default rate (a Poisson process over bytes, mean 512 KiB), each site's estimated
/// allocated and live bytes are within 4 standard errors of the truth: for n chunks of s
/// bytes each picked with p = 1 − e^(−s/R) and counted s/p, the variance is n·s²·(1−p)/p.
/// The estimate moves in whole samples of s/p bytes, and for a site expecting well under one
/// sample (most of the fixture's, at 512 KiB) the count is Poisson, far from normal: the bound
/// is 4 standard errors plus two samples' worth. By the Poisson tails of the fixture's sites,
/// a run then fails by chance 0.06 % of the time; with 4 standard errors alone, 12 % (a site
/// that expects 0.37 samples fails whenever it gets 3).
#[test]
fn root_default_sampling_estimates_within_four_standard_errors() {
    let (_fixture, truth, samples, _) = profiled(&[], false);
    let rate = 512.0 * 1024.0;
    for (site, chain) in SITES {
        for (value, chunks, bytes) in [
            (1, "alloc_chunks", "alloc_bytes"),
            (3, "live_chunks", "live_bytes"),
        ] {
            let n = truth[&format!("{site}_{chunks}")] as f64;
            let total = truth[&format!("{site}_{bytes}")] as f64;
            let estimate = site_of(&samples, chain).map_or(0.0, |s| s.values[value]);
            if n == 0.0 {
                assert_eq!(estimate, 0.0, "{site} {bytes}");
                continue;
            }
            let size = total / n;
            let p = 1.0 - (-size / rate).exp();
            let standard_error = (n * size * size * (1.0 - p) / p).sqrt();
            let one_sample = size / p;
            assert!(
                (estimate - total).abs() <= 4.0 * standard_error + 2.0 * one_sample,
                "{site} {bytes}: estimated {estimate}, truly {total} (standard error \
                 {standard_error:.0}, one sample {one_sample:.0})"
            );
        }
    }
}

/// Events lost (rings of one page; stacks of 256 bytes): the resync's walk rebuilds the sites
/// from what it has live, so that no freed chunk stays counted. The large site, all freed,
/// holds nothing, and no site holds more than the fixture does.
#[test]
fn root_lost_events_leave_no_site_stale() {
    let args = [
        "--sample-bytes",
        "1",
        "--stack-bytes",
        "256",
        "--ring-bytes",
        "4096",
    ];
    let (fixture, truth, samples, metrics) =
        profiled(&[&args[..], &["--max-lost", "100"]].concat(), true);
    let pid = fixture.pid().to_string();
    let who = [("pid", pid.as_str())];
    assert!(
        metrics.int("pagealloc_events_lost_total", &who) > 0,
        "no loss to test"
    );
    assert!(metrics.int("pagealloc_resyncs_total", &who) > 0);
    for (site, chain) in SITES {
        let Some(sample) = site_of(&samples, chain) else {
            continue; // every event of it lost
        };
        let (objects, bytes) = (sample.values[2], sample.values[3]);
        assert!(
            objects <= truth[&format!("{site}_live_chunks")] as f64
                && bytes <= truth[&format!("{site}_live_bytes")] as f64,
            "{site} holds {objects} chunks of {bytes} bytes: more than the fixture"
        );
    }
    let large = site_of(&samples, SITES[1].1).map_or(0.0, |s| s.values[3]);
    assert_eq!(large, 0.0, "large's chunks were all freed");
}

/// A real program nobody here wrote: CPython (PYTHONMALLOC=malloc, so that its objects are
/// malloc's chunks) building dicts and lists on three threads, at the default rate. The top
/// sites are CPython's own functions, symbolised, their stacks whole; the sites whose innermost
/// frame could not be symbolised hold under 5 % of the sampled bytes.
#[test]
fn root_cpython_sites_are_its_own_functions_symbolised() {
    require_root();
    let _alone = alone();
    let python = python_interpreter();
    let script = "import sys, threading\n\
        def work(stop):\n\
        \x20   keep = []\n\
        \x20   while not stop.is_set():\n\
        \x20       keep.append({str(i): [i, i * 2, str(i)] for i in range(200)})\n\
        \x20       if len(keep) > 300: keep = keep[150:]\n\
        stop = threading.Event()\n\
        threads = [threading.Thread(target=work, args=(stop,)) for _ in range(3)]\n\
        for t in threads: t.start()\n\
        import os; sys.stdout.write(f'pid {os.getpid()}\\nready\\n'); sys.stdout.flush()\n\
        sys.stdin.read()\n\
        stop.set()\n\
        for t in threads: t.join()\n";
    let _fixture = Fixture::spawn_with(
        Command::new(&python)
            .args(["-c", script])
            .env("PYTHONMALLOC", "malloc"),
    );
    let pid = _fixture.pid();
    let mut watch = Watch::json(pid, &["--interval", "2s"]);
    let line = watch.line_after(std::time::SystemTime::now(), |line| {
        line["sites"]["stacks"].as_u64().is_some_and(|n| n > 1000)
    });
    assert_eq!(line["mode"], "live", "{line}");
    assert_eq!(line["events"]["lost"], 0, "{}", line["events"]);
    let top = line["sites"]["top"].as_array().expect("sites.top");
    let innermost = |site: &serde_json::Value| {
        let frame = &site["frames"][0];
        let lines = frame["lines"].as_array().cloned().unwrap_or_default();
        lines
            .last()
            .map(|l| l["function"].as_str().unwrap_or("").to_string())
    };
    let (mut sampled, mut unsymbolised) = (0.0, 0.0);
    for site in top {
        let bytes = site["alloc_bytes"].as_f64().unwrap_or(0.0);
        sampled += bytes;
        if innermost(site).is_none() {
            unsymbolised += bytes;
        }
    }
    assert!(
        unsymbolised < 0.05 * sampled,
        "{unsymbolised} of {sampled} sampled bytes in unsymbolised sites: {top:#?}"
    );
    for site in &top[..5.min(top.len())] {
        let function = innermost(site).unwrap_or_default();
        let module = site["frames"][0]["module"].as_str().unwrap_or("");
        assert!(
            module.contains("python") && !function.is_empty(),
            "a top site in CPython's own code: {function} in {module}"
        );
        assert_eq!(site["truncated"], false, "{site:#}");
    }
}

/// The CPython to run: the one `python3` resolves to (past any shim), as its users run it.
fn python_interpreter() -> String {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs (the machine has CPython 3.11)");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}
