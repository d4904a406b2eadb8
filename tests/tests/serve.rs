//! `pagealloc serve` as an operator runs it: a real Prometheus scraping it, its figures against
//! the fixtures' own ground truth (`mallinfo2()`, what they hold and touched, the kernel's RSS),
//! the exposition checked by `promtool`, and its HTTP side against bad and hostile clients.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pagealloc_testkit::exposition;
use pagealloc_testkit::http::{self, get};
use pagealloc_tests::serve::*;
use pagealloc_tests::*;
use serde_json::Value;

/// The last sample of process `pid` began after `since` (Unix time): what a scrape then shows
/// was read after that moment.
fn sampled_after(metrics: &Metrics, pid: &str, since: f64) -> Result<(), String> {
    let at = metrics.get("pagealloc_sample_timestamp_seconds", &[("pid", pid)]);
    match at {
        Some(at) if at > since => Ok(()),
        at => Err(format!(
            "process {pid}'s last sample began at {at:?}, awaited after {since}"
        )),
    }
}

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A real Prometheus server scraping one target every second, with its own storage.
struct Prometheus {
    _child: Running,
    address: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: `cargo xtask setup` installs Debian's prometheus package"
        );
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: pagealloc\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        for attempt in 1.. {
            let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log_path = dir.0.join(format!("log{attempt}"));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Running(
                std::process::Command::new(PROMETHEUS)
                    .arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.0.join("data").display()
                    ))
                    .arg(format!("--web.listen-address={address}"))
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .expect("prometheus starts"),
            );
            let exited = poll("prometheus ready", WAIT, || {
                if let Some(status) = child.0.try_wait().unwrap() {
                    return Ok(Some(status));
                }
                match get(address, "/-/ready", &[]) {
                    Ok(r) if r.status == 200 => Ok(None),
                    other => Err(format!("{other:?}")),
                }
            });
            let Some(status) = exited else {
                return Prometheus {
                    _child: child,
                    address,
                    _dir: dir,
                };
            };
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            assert!(
                log.contains("address already in use") && attempt < 3,
                "prometheus ended ({status}): {log}"
            );
        }
        unreachable!()
    }

    /// An instant query's result vector.
    fn query(&self, query: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", url_encode(query));
        let response = get(self.address, &path, &[])
            .unwrap_or_else(|e| panic!("querying prometheus for {query}: {e}"));
        assert_eq!(response.status, 200, "{query}: {response:?}");
        let answer: Value = serde_json::from_str(&response.body).expect("prometheus answers JSON");
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The scrape target's health and last error.
    fn target(&self) -> (String, String) {
        let response = get(self.address, "/api/v1/targets", &[]).expect("the targets API");
        let answer: Value = serde_json::from_str(&response.body).expect("JSON");
        let target = &answer["data"]["activeTargets"][0];
        let text = |key: &str| target[key].as_str().unwrap_or("").to_string();
        (text("health"), text("lastError"))
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// `text` percent-encoded for a query string.
fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Ground truth.

/// Each chunk state's bytes against a serve_target fixture's own `mallinfo2()` and holdings
/// ([`bytes_against_mallinfo`]), and nothing freed (walk mode); Err names what disagrees.
/// `heap` maps each state to its bytes, and `mmapped_bytes` to pagealloc_mmapped_bytes.
fn heap_against_fixture(fixture: &Fixture, heap: &BTreeMap<String, u64>) -> Result<(), String> {
    let state = |key: &str| {
        heap.get(key)
            .copied()
            .ok_or_else(|| format!("no {key} in {heap:?}"))
    };
    let bytes = StateBytes {
        live: state("live")?,
        tcache: state("tcache")?,
        overhead: state("overhead")?,
        unknown: state("unknown")?,
        top: state("top")?,
        fastbin: state("fastbin")?,
        bin: state("bin")?,
        mmapped: state("mmapped_bytes")?,
    };
    let mut wrong = bytes_against_mallinfo(&fixture.report, &bytes);
    if state("freed")? != 0 {
        wrong.push(format!(
            "freed (walk mode): {}, expected 0",
            state("freed")?
        ));
    }
    match wrong.is_empty() {
        true => Ok(()),
        false => Err(wrong.join("; ")),
    }
}

/// The figures [`heap_against_fixture`] needs, from an exposition, for process `pid`.
fn heap_of(metrics: &Metrics, pid: &str) -> BTreeMap<String, u64> {
    let mut heap: BTreeMap<String, u64> = metrics
        .all("pagealloc_heap_bytes", &[("pid", pid)])
        .iter()
        .map(|s| (s.labels["state"].clone(), s.value as u64))
        .collect();
    if let Some(mmapped) = metrics.get("pagealloc_mmapped_bytes", &[("pid", pid)]) {
        heap.insert("mmapped_bytes".into(), mmapped as u64);
    }
    heap
}

/// `Rss` and `AnonHugePages` of `/proc/PID/smaps_rollup`, in bytes.
fn rollup(pid: i32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in smaps_rollup:\n{text}"))
            * 1024
    };
    (field("Rss:"), field("AnonHugePages:"))
}

/// Whether the only transparent huge page size enabled is the PMD's (2 MiB): then every huge
/// anonymous page is one that `AnonHugePages` counts.
fn only_pmd_sized_thp() -> bool {
    let Ok(sizes) = std::fs::read_dir("/sys/kernel/mm/transparent_hugepage") else {
        return true;
    };
    sizes
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("hugepages-"))
        .filter(|e| e.file_name() != "hugepages-2048kB")
        .all(|e| {
            std::fs::read_to_string(e.path().join("enabled")).is_ok_and(|t| t.contains("[never]"))
        })
}

// ---------------------------------------------------------------------------------------------

/// Two processes found by name, scraped by a real Prometheus: each one's heap series equal its
/// own `mallinfo2()` and holdings and the snapshot's walk; a process that ends leaves
/// Prometheus (its series go stale), one that starts later joins it.
#[test]
fn root_prometheus_scrapes_two_fixtures() {
    require_root();
    let (_dir, name, exe) = fixture_named(fixture_path!("SERVE_TARGET"), "pas");
    let start =
        |chunks: &str, mmapped: &str| Fixture::spawn(exe.to_str().unwrap(), &[chunks, mmapped]);
    let first = start("2000", "1");
    let second = start("3500", "2");
    let serve = Serve::start(&["--comm", &format!("^{name}$"), "--interval", "1s"]);
    let prometheus = Prometheus::start(serve.address);

    // Every pid's heap and mmapped figures, as Prometheus has them now.
    let query =
        format!("{{__name__=~\"pagealloc_heap_bytes|pagealloc_mmapped_bytes\",comm=\"{name}\"}}");
    let in_prometheus = || {
        let mut by_pid: BTreeMap<i32, BTreeMap<String, u64>> = BTreeMap::new();
        for series in prometheus.query(&query) {
            let metric = &series["metric"];
            let pid = metric["pid"].as_str().unwrap().parse().unwrap();
            let key = match metric["__name__"].as_str().unwrap() {
                "pagealloc_mmapped_bytes" => "mmapped_bytes",
                _ => metric["state"].as_str().unwrap(),
            };
            let value: f64 = series["value"][1].as_str().unwrap().parse().unwrap();
            by_pid
                .entry(pid)
                .or_default()
                .insert(key.into(), value as u64);
        }
        by_pid
    };
    // Eight chunk states and the mmapped bytes.
    let complete = |by_pid: &BTreeMap<i32, BTreeMap<String, u64>>, pid: i32| {
        by_pid.get(&pid).is_some_and(|figures| figures.len() == 9)
    };
    let check = |fixture: &Fixture, figures: &BTreeMap<String, u64>| {
        if let Err(why) = heap_against_fixture(fixture, figures) {
            panic!("process {} in Prometheus: {why}", fixture.pid());
        }
        let walked = snapshot_json(fixture.pid(), &[]);
        assert_eq!(
            figures["live"],
            n(&walked["heap"]["totals"], "live_bytes"),
            "process {}: live bytes in Prometheus and in the snapshot's walk",
            fixture.pid()
        );
    };

    let by_pid = poll("both processes' series in Prometheus", WAIT, || {
        let by_pid = in_prometheus();
        match complete(&by_pid, first.pid()) && complete(&by_pid, second.pid()) {
            true => Ok(by_pid),
            false => Err(format!("{by_pid:?}; target {:?}", prometheus.target())),
        }
    });
    assert_eq!(
        by_pid.len(),
        2,
        "only the two processes named so: {by_pid:?}"
    );
    check(&first, &by_pid[&first.pid()]);
    check(&second, &by_pid[&second.pid()]);
    // Prometheus parsed every scrape (it asks for OpenMetrics first).
    assert_eq!(prometheus.target(), ("up".into(), String::new()));

    // The first ends: its series go stale and leave the instant query, the second's stay.
    let gone = first.pid();
    drop(first);
    let by_pid = poll(
        "the ended process's series gone from Prometheus",
        WAIT,
        || {
            let by_pid = in_prometheus();
            match !by_pid.contains_key(&gone) && complete(&by_pid, second.pid()) {
                true => Ok(by_pid),
                false => Err(format!("{by_pid:?}")),
            }
        },
    );
    check(&second, &by_pid[&second.pid()]);

    // A third starts: serve finds it and Prometheus has its series.
    let third = start("5000", "3");
    let by_pid = poll("the new process's series in Prometheus", WAIT, || {
        let by_pid = in_prometheus();
        match complete(&by_pid, third.pid()) {
            true => Ok(by_pid),
            false => Err(format!("{by_pid:?}")),
        }
    });
    assert_eq!(
        by_pid.keys().copied().collect::<Vec<_>>(),
        [second.pid(), third.pid()]
    );
    check(&third, &by_pid[&third.pid()]);
    check(&second, &by_pid[&second.pid()]);
    let processes = prometheus.query("pagealloc_processes");
    assert_eq!(processes.len(), 1, "{processes:?}");
    assert_eq!(processes[0]["value"][1], "2", "{processes:?}");
}

/// The resident parts of a process with a heap, mmapped chunks, thread stacks, a mapped file and
/// a transparent huge page sum to the kernel's RSS exactly, and each part holds at least what
/// the fixture put there.
#[test]
fn root_resident_parts_sum_to_rss() {
    require_root();
    let dir = TempDir::new("rss");
    let file = dir.0.join("mapped");
    let contents: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    std::fs::write(&file, contents).unwrap();
    let fixture = Fixture::spawn(fixture_path!("RSS"), &[file.to_str().unwrap()]);
    let pid = fixture.pid().to_string();
    let serve = Serve::start(&["--pid", &pid, "--interval", "1s"]);
    let who = [("pid", pid.as_str())];
    serve.metrics_when("the process's resident bytes", |m| {
        match m.all("pagealloc_resident_bytes", &who).is_empty() {
            true => Err(m.text.clone()),
            false => Ok(()),
        }
    });

    // A sample begun after the RSS was read, and the RSS read again after it: the same both
    // times, so the sample saw what the kernel counts.
    let mut tries = 0;
    let (metrics, (rss, anon_huge)) = loop {
        tries += 1;
        let before = rollup(fixture.pid());
        let since = unix_now();
        let metrics = serve.metrics_when("a sample after the RSS was read", |m| {
            sampled_after(m, &pid, since)
        });
        let after = rollup(fixture.pid());
        if before == after {
            break (metrics, after);
        }
        assert!(
            tries < 5,
            "the quiet fixture's RSS keeps changing: {before:?}, then {after:?}"
        );
    };
    let part = |key: &str| metrics.int("pagealloc_resident_bytes", &[who[0], ("part", key)]);
    let parts: BTreeMap<&str, u64> = [
        "heap_live",
        "heap_free",
        "heap_overhead",
        "heap_unknown",
        "mmapped_chunks",
        "anon_other",
        "file",
    ]
    .into_iter()
    .map(|key| (key, part(key)))
    .collect();
    assert_eq!(
        metrics.all("pagealloc_resident_bytes", &who).len(),
        parts.len(),
        "a part not checked here:\n{}",
        metrics.text
    );
    assert_eq!(
        parts.values().sum::<u64>(),
        rss,
        "the parts {parts:?} against Rss of smaps_rollup"
    );

    let held = fixture.get("held_bytes");
    assert!(
        parts["heap_live"] >= held && parts["heap_live"] - held <= LIBC_INTERNAL_BYTES,
        "heap_live {} for {held} bytes held, every chunk written",
        parts["heap_live"]
    );
    assert_eq!(parts["heap_unknown"], 0, "a quiet heap: nothing unknown");
    assert_eq!(
        parts["mmapped_chunks"],
        fixture.get("mmapped_bytes"),
        "mmapped chunks written whole: every page of them resident"
    );
    assert!(
        parts["file"] >= fixture.get("file_bytes"),
        "file {} with {} bytes of a file mapped and read",
        parts["file"],
        fixture.get("file_bytes")
    );
    let anon = fixture.get("stack_touched") + fixture.get("huge_region");
    assert!(
        parts["anon_other"] >= anon,
        "anon_other {} with thread stacks and the huge region written: {anon} bytes",
        parts["anon_other"]
    );

    let huge = metrics.int("pagealloc_resident_huge_bytes", &who);
    let page_size = 4096;
    let thp_anon = metrics.int("pagealloc_pages", &[who[0], ("state", "thp_anon")]) * page_size;
    if anon_huge >= fixture.get("huge_region") {
        assert!(
            huge >= fixture.get("huge_region") && huge >= thp_anon,
            "huge bytes {huge}, huge anonymous {thp_anon}, AnonHugePages {anon_huge}"
        );
    }
    if only_pmd_sized_thp() {
        assert_eq!(
            thp_anon, anon_huge,
            "huge anonymous pages against AnonHugePages of smaps_rollup"
        );
    } else {
        assert!(
            thp_anon >= anon_huge,
            "{thp_anon} < AnonHugePages {anon_huge}"
        );
    }
}

/// The exposition of a process in live mode passes `promtool check metrics`; OpenMetrics when
/// asked; and the allocation counters rise by exactly the calls the fixture made.
#[test]
fn root_exposition_passes_promtool() {
    require_root();
    const CALLS: u64 = 1000;
    let mut fixture = Fixture::spawn(fixture_path!("MALLOC_CALLS"), &[&CALLS.to_string()]);
    let pid = fixture.pid().to_string();
    let serve = Serve::start(&["--pid", &pid, "--live", "--interval", "1s"]);
    let who = [("pid", pid.as_str())];
    let before = serve.metrics_when("the process in live mode", |m| {
        match m.get("pagealloc_mode", &[who[0], ("mode", "live")]) {
            Some(_) => Ok(()),
            None => Err(m.text.clone()),
        }
    });
    assert_eq!(
        before.value("pagealloc_mode", &[who[0], ("mode", "live")]),
        1.0
    );
    assert_eq!(
        before.all("pagealloc_mode", &who).len(),
        1,
        "one mode at a time"
    );

    fixture.command("g");
    let calls_made = unix_now();
    let after = serve.metrics_when("a sample after the calls", |m| {
        sampled_after(m, &pid, calls_made)
    });
    let rise = |name: &str| {
        let (from, to) = (before.int(name, &who), after.int(name, &who));
        to.checked_sub(from)
            .unwrap_or_else(|| panic!("{name} went down from {from} to {to}"))
    };
    assert_eq!(fixture.get("calls"), CALLS);
    assert_eq!(rise("pagealloc_allocations_total"), CALLS);
    assert_eq!(rise("pagealloc_allocation_size_bytes_count"), CALLS);
    assert_eq!(
        rise("pagealloc_allocated_bytes_total"),
        fixture.get("chunk_bytes")
    );
    assert_eq!(
        rise("pagealloc_allocation_size_bytes_sum"),
        fixture.get("chunk_bytes")
    );
    assert_eq!(
        rise("pagealloc_frees_total"),
        0,
        "the fixture freed nothing"
    );
    assert_eq!(after.int("pagealloc_events_lost_total", &who), 0);
    // Cumulative buckets, the last (+Inf) holding every allocation.
    let mut buckets: Vec<(f64, u64)> = after
        .all("pagealloc_allocation_size_bytes_bucket", &who)
        .iter()
        .map(|s| (s.labels["le"].parse().unwrap(), s.value as u64))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert_eq!(
        *buckets.last().unwrap(),
        (
            f64::INFINITY,
            after.int("pagealloc_allocations_total", &who)
        )
    );

    // Prometheus text, as promtool reads it.
    let text = get(serve.address, "/metrics", &[]).expect("a scrape");
    assert_eq!(text.status, 200);
    assert!(
        text.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        text.headers
    );
    for family in [
        "# TYPE pagealloc_allocations_total counter",
        "# TYPE pagealloc_allocation_size_bytes histogram",
        "# TYPE pagealloc_samples_total counter",
    ] {
        assert!(
            text.body.contains(family),
            "no {family:?} in:\n{}",
            text.body
        );
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (`cargo xtask setup` installs Debian's prometheus package)");
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(text.body.as_bytes()).unwrap();
    drop(stdin);
    let checked = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.status.success() && said.trim().is_empty(),
        "promtool check metrics ({}): {said}\n{}",
        checked.status,
        text.body
    );

    // OpenMetrics when asked for (promtool checks only the text format): counters typed by
    // their family name without _total, their samples with it, and # EOF last.
    let accept = [("Accept", "application/openmetrics-text; version=1.0.0")];
    let open = get(serve.address, "/metrics", &accept).expect("an OpenMetrics scrape");
    assert_eq!(open.status, 200);
    assert!(
        open.header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text; version=1.0.0")),
        "{:?}",
        open.headers
    );
    assert!(
        open.body.ends_with("\n# EOF\n") && open.body.matches("# EOF").count() == 1,
        "# EOF once, last:\n{}",
        open.body
    );
    let lines: Vec<&str> = open.body.lines().collect();
    for wanted in [
        "# TYPE pagealloc_samples counter",
        "# TYPE pagealloc_allocations counter",
        "# TYPE pagealloc_allocation_size_bytes histogram",
    ] {
        assert!(lines.contains(&wanted), "no {wanted:?} in:\n{}", open.body);
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pagealloc_samples_total ")),
        "{}",
        open.body
    );
    // Every sample belongs to the family typed last, each family typed once.
    let mut typed: Vec<(&str, &str)> = Vec::new();
    for line in &lines {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                typed.iter().all(|(f, _)| *f != family),
                "{family} typed twice"
            );
            assert!(
                !(kind == "counter" && family.ends_with("_total")),
                "counter family {family} named with _total"
            );
            typed.push((family, kind));
        } else if !line.starts_with('#') {
            let (family, kind) = *typed.last().expect("a sample before any # TYPE");
            let name = line.split(['{', ' ']).next().unwrap();
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_count", "_sum", "_created"],
                "summary" => &["", "_count", "_sum", "_created"],
                _ => &[""],
            };
            assert!(
                suffixes.iter().any(|s| name == format!("{family}{s}")),
                "sample {line:?} in family {family} ({kind})"
            );
        }
    }
    let open = Metrics::parse(open.body);
    assert_eq!(
        open.int("pagealloc_allocations_total", &who),
        before.int("pagealloc_allocations_total", &who) + CALLS
    );
}

/// Bad requests get the proper status, a slow client is cut off without holding up the
/// scrapes, a crowd of scrapes is served whole, and sampling goes on throughout.
#[test]
fn root_bad_requests_get_proper_answers() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("SERVE_TARGET"), &["2000", "1"]);
    let pid = fixture.pid().to_string();
    let mut serve = Serve::start(&["--pid", &pid, "--interval", "1s"]);
    let address = serve.address;
    serve.metrics_when("a sample of the fixture", |m| {
        heap_against_fixture(&fixture, &heap_of(m, &pid))
    });

    // Half a request line, then nothing.
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(address).expect("connect");
        stream.write_all(b"GET /metr").expect("half a request line");
        let opened = Instant::now();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer).map_err(|e| e.kind());
        (opened, Instant::now(), read, answer)
    });

    let answers = [
        ("an unknown path", get(address, "/nothing-here", &[]), 404),
        (
            "POST /metrics",
            http::request(
                address,
                b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            ),
            405,
        ),
        (
            "a header of 20 KB",
            get(address, "/metrics", &[("X-Padding", &"a".repeat(20 * 1024))]),
            431,
        ),
        ("/healthz", get(address, "/healthz", &[]), 200),
    ];
    for (what, answer, status) in answers {
        let answer = answer.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(answer.status, status, "{what}: {answer:?}");
        if what == "/healthz" {
            assert_eq!(answer.body, "ok\n");
        }
    }

    // 100 scrapes at once, while the slow client holds its connection: each whole.
    let uordblks = fixture.get("uordblks");
    let crowd = 100;
    let start = Arc::new(std::sync::Barrier::new(crowd));
    let scrapes: Vec<_> = (0..crowd)
        .map(|_| {
            let (start, pid) = (start.clone(), pid.clone());
            std::thread::spawn(move || -> Result<Duration, String> {
                start.wait();
                let began = Instant::now();
                let answer = get(address, "/metrics", &[])?;
                let took = began.elapsed();
                if answer.status != 200 {
                    return Err(format!("status {}", answer.status));
                }
                let metrics = Metrics {
                    series: exposition::parse(&answer.body)?,
                    text: answer.body,
                };
                let heap = heap_of(&metrics, &pid);
                let used: u64 = ["live", "tcache", "overhead", "unknown"]
                    .iter()
                    .map(|k| heap.get(*k).copied().unwrap_or(0))
                    .sum();
                let processes = metrics.get("pagealloc_processes", &[]);
                match used == uordblks && processes == Some(1.0) {
                    true => Ok(took),
                    false => Err(format!(
                        "{processes:?} processes, used {used} for uordblks {uordblks}: {heap:?}"
                    )),
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for (i, scrape) in scrapes.into_iter().enumerate() {
        match scrape.join().expect("a scraping thread") {
            Ok(took) => slowest = slowest.max(took),
            Err(why) => panic!("concurrent scrape {i}: {why}"),
        }
    }
    // And one by one, promptly, still while the slow client waits.
    for i in 0..5 {
        let began = Instant::now();
        let answer = get(address, "/metrics", &[]).expect("a scrape");
        assert_eq!(answer.status, 200, "scrape {i}");
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "scrape {i} took {:?} while a slow client was connected",
            began.elapsed()
        );
    }
    let scrapes_done = Instant::now();
    assert!(
        slowest < Duration::from_secs(20),
        "the slowest of {crowd} concurrent scrapes took {slowest:?}"
    );

    let (opened, closed, read, answer) = slow.join().expect("the slow client");
    let held = closed - opened;
    assert!(
        read.is_ok() || read == Err(std::io::ErrorKind::ConnectionReset),
        "the slow client's connection was not closed within 30 s: {read:?}"
    );
    assert!(
        held >= Duration::from_secs(8) && held <= Duration::from_secs(15),
        "the slow client was cut off after {held:?}, not at the 10 s header timeout; it got {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        scrapes_done < closed,
        "the scrapes were answered only after the slow client was cut off"
    );

    // Sampling went on: a sample begun after all that, still right.
    let since = unix_now();
    let samples = serve.metrics().value("pagealloc_samples_total", &[]);
    serve.metrics_when("a sample after the crowd and the slow client", |m| {
        sampled_after(m, &pid, since)?;
        let now = m.value("pagealloc_samples_total", &[]);
        if now <= samples {
            return Err(format!("pagealloc_samples_total stayed at {samples}"));
        }
        heap_against_fixture(&fixture, &heap_of(m, &pid))
    });
    assert!(serve.running(), "serve ended: {}", serve.stderr());
}

/// `pagealloc serve ARGS` that must end by itself (within [`WAIT`]): its exit code and stderr.
fn serve_ending(args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    let (mut child, stderr) = spawn_serve(&all);
    assert!(
        exits_within(child.0.id() as i32, WAIT),
        "pagealloc {all:?} did not end within {WAIT:?}: {}",
        stderr.lock().unwrap().0
    );
    let status = child.0.wait().expect("wait on serve");
    let text = all_of(&stderr);
    assert!(!text.contains("panicked"), "{all:?}: {text}");
    (status.code(), text)
}

/// What cannot be served is said clearly, with a distinct exit code; a pattern that matches
/// nothing yet is not an error.
#[test]
fn serve_errors_are_clear() {
    // Above the largest pid_max Linux allows (2^22), so it can never exist.
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = serve_ending(&["--pid", "2147483647", "--listen", &listen]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("2147483647"), "{stderr}");

    let (code, stderr) = serve_ending(&["--listen", &listen]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        ["--pid", "--comm", "--cgroup"]
            .iter()
            .all(|o| stderr.contains(o))
            && stderr.contains("Usage"),
        "{stderr}"
    );

    let (code, stderr) = serve_ending(&["--cgroup", "/does/not/exist", "--listen", &listen]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("/does/not/exist") && stderr.contains("no such cgroup"),
        "{stderr}"
    );

    // comm has at most 15 characters: this can never match.
    let nothing = "^nothing-[0-9]{20}$";
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let (code, stderr) = serve_ending(&["--comm", nothing, "--listen", &taken]);
    assert!(code.is_some_and(|c| c != 0), "{code:?}: {stderr}");
    assert!(
        stderr.contains(&taken) && stderr.contains("--listen"),
        "{stderr}"
    );

    let mut serve = Serve::start(&["--comm", nothing, "--interval", "1s"]);
    poll("serve saying that nothing matches", WAIT, || {
        let stderr = serve.stderr();
        match stderr.contains("no process matches yet") {
            true => Ok(()),
            false => Err(stderr),
        }
    });
    let metrics = serve.metrics();
    assert_eq!(metrics.value("pagealloc_processes", &[]), 0.0);
    assert!(
        metrics.all("pagealloc_heap_bytes", &[]).is_empty(),
        "{}",
        metrics.text
    );
    assert!(serve.running(), "serve keeps running: {}", serve.stderr());
}

/// A CPU budget smaller than the samples need: walks are taken later than their interval (and
/// counted, and said), never more often than the budget pays for; scrapes are answered all the
/// while and cost the budget nothing.
#[test]
fn root_cpu_budget_stretches_the_walks() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("SERVE_TARGET"), &["20000", "1"]);
    let pid = fixture.pid().to_string();
    // 0.001 cores: a sample of a millisecond or more of CPU (a walk of 20,000 chunks and the
    // page map) buys the next one a second or more later, once the 10 s of budget saved up at
    // the start (10 ms of CPU) are spent. (At 0.005 cores a fast host's 2 ms samples came
    // 0.4 s apart, under what the test asks.)
    let serve = Serve::start(&[
        "--pid",
        &pid,
        "--interval",
        "100ms",
        "--cpu-budget",
        "0.001",
    ]);
    let samples = |m: &Metrics| m.int("pagealloc_samples_total", &[]);
    let delayed = serve.metrics_when("a sample delayed by the budget", |m| {
        heap_against_fixture(&fixture, &heap_of(m, &pid))?;
        match m.int("pagealloc_samples_delayed_total", &[]) {
            0 => Err("no sample delayed yet".into()),
            _ => Ok(()),
        }
    });
    assert!(
        serve.stderr().contains("to stay within --cpu-budget"),
        "{}",
        serve.stderr()
    );
    // From here on the samples come at the budget's pace, not the interval's: two more take
    // well over the 200 ms that two intervals are. Scrapes meanwhile see the fixture's figures.
    let from = (Instant::now(), samples(&delayed));
    let two_later = serve.metrics_when("two more samples", |m| {
        heap_against_fixture(&fixture, &heap_of(m, &pid))?;
        match samples(m) >= from.1 + 2 {
            true => Ok(()),
            false => Err(format!("{} samples", samples(m))),
        }
    });
    let took = from.0.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "two samples in {took:?} under a budget of 0.001 cores ({} taken in all)",
        samples(&two_later)
    );
}

/// SIGTERM ends `serve --live` at once, though the kernel takes ~2 s to take one process's
/// probes off (one uprobe at a time): a child of the agent finishes that after it has gone.
#[test]
fn root_serve_live_ends_at_once_on_sigterm() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("SERVE_TARGET"), &["2000", "1"]);
    let pid = fixture.pid().to_string();
    let mut serve = Serve::start(&["--pid", &pid, "--live", "--interval", "1s"]);
    let live = [("pid", pid.as_str()), ("mode", "live")];
    serve.metrics_when("the process followed live", |m| {
        match m.get("pagealloc_mode", &live) {
            Some(_) => Ok(()),
            None => Err(m.text.clone()),
        }
    });
    let agent = serve.child.0.id() as i32;
    let sent = Instant::now();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(agent, libc::SIGTERM) };
    let bound = Duration::from_secs(1);
    assert!(
        exits_within(agent, bound),
        "serve still running {bound:?} after SIGTERM"
    );
    let status = serve.child.0.wait().expect("wait on serve");
    assert!(status.success(), "{status}: {}", all_of(&serve.stderr));
    eprintln!("serve --live ended {:?} after SIGTERM", sent.elapsed());
}

/// What serve cannot follow is refused at the start with watch's exit codes: a kernel thread
/// (7), a `--cgroup` path that leaves the cgroup filesystem (2), a CPU budget no machine has (2,
/// not a 309-digit gauge).
#[test]
fn serve_refuses_kernel_threads_paths_out_of_cgroups_and_endless_budgets() {
    let kernel_thread = procfs::process::all_processes()
        .expect("/proc")
        .filter_map(Result::ok)
        .find(|p| p.stat().is_ok_and(|s| s.flags & 0x0020_0000 != 0))
        .expect("a kernel thread exists")
        .pid
        .to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = serve_ending(&["--pid", &kernel_thread, "--listen", &listen]);
    assert_eq!(code, Some(7), "{stderr}");
    assert!(stderr.contains("kernel thread"), "{stderr}");

    let out_of_cgroups = "/sys/fs/cgroup/../../proc";
    let (code, stderr) = serve_ending(&["--cgroup", out_of_cgroups, "--listen", &listen]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(out_of_cgroups) && stderr.contains("`..`"),
        "{stderr}"
    );

    let args = [
        "--comm",
        "^x$",
        "--cpu-budget",
        "1e308",
        "--listen",
        &listen,
    ];
    let (code, stderr) = serve_ending(&args);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--cpu-budget") && stderr.contains("8192"),
        "{stderr}"
    );
}

/// `--listen` takes a host name, resolved: `localhost:PORT` serves on loopback.
#[test]
fn serve_listens_on_a_host_name() {
    let port = free_port();
    let listen = format!("localhost:{port}");
    let (mut child, stderr) = spawn_serve(&["serve", "--comm", "^x$", "--listen", &listen]);
    let listening = poll("serve listening on localhost", WAIT, || {
        let (text, ended) = &*stderr.lock().unwrap();
        let address = (text.lines())
            .find_map(|line| line.strip_prefix("pagealloc: serving metrics on http://"))
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .and_then(|address| address.parse::<SocketAddr>().ok());
        match (address, ended) {
            (Some(address), _) => Ok(Some(address)),
            (None, true) => Ok(None),
            (None, false) => Err(text.clone()),
        }
    });
    let Some(address) = listening else {
        let _ = child.0.wait();
        panic!("serve --listen {listen} ended: {}", all_of(&stderr));
    };
    assert!(
        address.ip().is_loopback() && address.port() == port,
        "{address}"
    );
    let response = get(address, "/metrics", &[]).expect("a scrape");
    assert_eq!(response.status, 200, "{response:?}");
}
