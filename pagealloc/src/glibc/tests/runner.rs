//! Running suites case by case in child processes (this test binary, re-executed).
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::suites::*;

// --- Running suites in child processes ----------------------------------------------------------

pub(super) const SUITE_ENV: &str = "PAGEALLOC_WALKER_SUITE";
/// A case the child has not finished after this long is a hang.
pub(super) const HANG: Duration = Duration::from_secs(3);
/// The child's address space: a walker allocating without bound fails its case, not the host.
pub(super) const MEMORY_LIMIT: u64 = 4 << 30;
/// After this many hung or crashed cases a suite stops (each costs a child process).
pub(super) const MAX_LOST: usize = 3;

pub(super) struct Report {
    pub(super) cases: usize,
    pub(super) run: usize,
    pub(super) failures: Vec<(usize, String)>,
    pub(super) slowest: Duration,
    pub(super) elapsed: Duration,
}

/// Runs a suite in child processes; a hung or crashed case is a failure, and the next child
/// goes on after it.
pub(super) fn run_suite(name: &str) -> Report {
    let suite = SUITES.iter().find(|s| s.name == name).unwrap();
    let started = Instant::now();
    let exe = std::env::current_exe().unwrap();
    let mut report = Report {
        cases: suite.cases,
        run: 0,
        failures: Vec::new(),
        slowest: Duration::ZERO,
        elapsed: Duration::ZERO,
    };
    let (mut next, mut lost) = (0, 0);
    while next < suite.cases && lost < MAX_LOST {
        let mut command = Command::new(&exe);
        command
            .args(["--exact", "glibc::tests::suite_worker", "--ignored"])
            .args(["--nocapture", "--test-threads=1", "-q"])
            .env(SUITE_ENV, format!("{name}:{next}:{}", suite.cases))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: MEMORY_LIMIT,
                    rlim_max: MEMORY_LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("re-running the test binary");
        let (lines, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut current: Option<usize> = None;
        let lost_case = loop {
            match rx.recv_timeout(HANG) {
                Ok(line) => {
                    let mut words = line.splitn(4, ' ');
                    let tag = words.next().unwrap_or("");
                    let case = words.next().and_then(|c| c.parse::<usize>().ok());
                    let micros = words.next().and_then(|m| m.parse::<u64>().ok());
                    match (tag, case) {
                        ("@@start", Some(case)) => current = Some(case),
                        ("@@pass" | "@@fail", Some(case)) => {
                            report.run += 1;
                            let walk = Duration::from_micros(micros.unwrap_or(0));
                            report.slowest = report.slowest.max(walk);
                            if tag == "@@fail" {
                                report
                                    .failures
                                    .push((case, words.next().unwrap_or("").to_string()));
                            }
                            current = None;
                            next = case + 1;
                        }
                        _ => {}
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    break current.map(|case| (case, format!("hung: no verdict after {HANG:?}")));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break current.map(|case| (case, "crashed".to_string()));
                }
            }
        };
        let status = child.wait().ok();
        let stderr = stderr.join().unwrap_or_default();
        match lost_case {
            Some((case, what)) => {
                let tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                report.run += 1;
                report
                    .failures
                    .push((case, format!("{what} (child {status:?}; stderr: {tail})")));
                next = case + 1;
                lost += 1;
            }
            None if next < suite.cases => {
                panic!("the suite's child process stopped before case {next}: {status:?} {stderr}")
            }
            None => {}
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// Runs a suite and fails with its failures, grouped by category.
pub(super) fn expect_suite(name: &str) {
    let report = run_suite(name);
    println!(
        "suite {name}: {} of {} cases run in {:.1?}, slowest walk {:?}, {} failed",
        report.run,
        report.cases,
        report.elapsed,
        report.slowest,
        report.failures.len()
    );
    if report.failures.is_empty() && report.run == report.cases {
        return;
    }
    let mut groups: BTreeMap<String, Vec<&(usize, String)>> = BTreeMap::new();
    for failure in &report.failures {
        let category = failure.1.split(':').next().unwrap_or("").to_string();
        groups.entry(category).or_default().push(failure);
    }
    // PAGEALLOC_WALKER_SHOW=n shows n failures of each kind (6 by default).
    let show = (std::env::var("PAGEALLOC_WALKER_SHOW").ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(6);
    let mut text = String::new();
    for (category, failures) in &groups {
        text += &format!("\n{} × {category}:\n", failures.len());
        for (case, why) in failures.iter().take(show) {
            text += &format!("  case {case}: {why}\n");
        }
    }
    text += &format!(
        "\nA case reruns alone with PAGEALLOC_WALKER_SUITE={name}:CASE:CASE+1 cargo test -p \
         pagealloc glibc::tests::suite_worker -- --ignored --exact --nocapture\n"
    );
    if report.run < report.cases {
        text += &format!(
            "\n{} cases not run: the suite stopped after {MAX_LOST} hung or crashed cases\n",
            report.cases - report.run
        );
    }
    panic!("suite {name}: {} failures{text}", report.failures.len());
}
