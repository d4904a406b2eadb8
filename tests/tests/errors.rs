//! Bad input: a clear message and a distinct exit code, never a panic or a hang.
use std::os::unix::process::CommandExt;

use pagealloc::Error;
use pagealloc::proc::Target;
use pagealloc::proc::pagemap::PageReader;
use pagealloc::session::{Session, SessionOptions};
use pagealloc::state::pages::PageState;
use pagealloc_tests::*;

fn expect_failure(args: &[&str], code: i32, message: &str) {
    let output = pagealloc(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(message), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_process() {
    // Above the largest pid_max Linux allows (2^22), so it can never exist.
    expect_failure(&["snapshot", "2147483647"], 3, "does not exist");
}

#[test]
fn zombie_process() {
    let mut fixture = Fixture::spawn(fixture_path!("MALLOC_CALLS"), &["1"]);
    fixture.kill_leaving_zombie();
    expect_failure(&["snapshot", &fixture.pid().to_string()], 6, "zombie");
}

#[test]
fn kernel_thread() {
    let kthread = procfs::process::all_processes()
        .unwrap()
        .filter_map(Result::ok)
        .find(|p| p.stat().is_ok_and(|s| s.flags & 0x0020_0000 != 0))
        .expect("a kernel thread exists");
    expect_failure(&["snapshot", &kthread.pid.to_string()], 7, "kernel thread");
}

#[test]
fn root_no_permission() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("MALLOC_CALLS"), &["1"]);
    let output = pagealloc_command(&["snapshot", &fixture.pid().to_string()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("root"),
        "{stderr}"
    );
}

#[test]
fn process_exits_while_being_read() {
    for reap in [false, true] {
        let mut fixture = Fixture::spawn(fixture_path!("MALLOC_CALLS"), &["1"]);
        let mut session =
            Session::open(fixture.pid(), SessionOptions::default()).expect("live fixture opens");
        session.sample().expect("a live fixture is read");
        fixture.kill_leaving_zombie();
        if reap {
            drop(fixture);
        }
        let error = session.sample().expect_err("reading a dead process fails");
        assert!(matches!(error, Error::ProcessExited { .. }), "{error}");
        assert_eq!(error.exit_code(), 4);
    }
}

#[test]
fn mapping_vanishes_mid_read() {
    let mut fixture = Fixture::spawn(
        fixture_path!("PAGES"),
        &[std::env::temp_dir().to_str().unwrap()],
    );
    let touched = fixture.get("touched");
    let target = Target::open(fixture.pid()).unwrap();
    let maps = target.maps().unwrap();
    assert!(maps.iter().any(|m| m.start == touched));
    fixture.command("u"); // the fixture unmaps the region we are about to read
    let map = PageReader::open(&target)
        .unwrap()
        .read_mappings(&target, maps)
        .unwrap();
    let stale = map
        .mappings
        .iter()
        .find(|m| m.mapping.start == touched)
        .unwrap();
    assert_eq!(stale.counts.get(PageState::Absent), 64);
    assert_eq!(stale.counts.resident(), 0);
}

#[test]
fn bad_arguments_are_usage_errors() {
    expect_failure(&["snapshot", "notapid"], 2, "invalid value");
    expect_failure(&["snapshot", "1", "--width", "0"], 2, "invalid value");
    expect_failure(
        &["snapshot", "1", "--arena", "1", "--pages-only"],
        2,
        "cannot be used with",
    );
    expect_failure(&["watch", "1", "--scale", "100"], 2, "16-byte granules");
    expect_failure(&["watch", "1", "--count", "0"], 2, "invalid value");
    expect_failure(&["watch", "1", "--reconcile", "soon"], 2, "invalid value");
}

/// A process that exits at any moment of a snapshot of its large heap: the snapshot says it
/// exited (4), or, if it finished first, shows a heap read consistently (0) — never a corrupt
/// heap, a failed read (1) or an unwalkable heap (10).
#[test]
fn root_process_exiting_mid_snapshot_says_so() {
    require_root();
    let mut exited = 0;
    for run in 0..20u64 {
        let mut fixture = Fixture::spawn(fixture_path!("EXITING"), &[]);
        let pid = fixture.pid();
        let mut snapshot = pagealloc_command(&["snapshot", &pid.to_string(), "--format", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Once the snapshot reads the target's page tables, the target exits 0–300 ms later.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !has_open(snapshot.id() as i32, &format!("/proc/{pid}/pagemap")) {
            assert!(
                std::time::Instant::now() < deadline,
                "the snapshot never read pagemap"
            );
            assert!(
                snapshot.try_wait().unwrap().is_none(),
                "the snapshot ended first"
            );
            std::thread::yield_now();
        }
        let delay = run * 2654435761 % 300;
        fixture.send(&format!("e{delay}"));
        let output = snapshot.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            Some(4) => {
                assert!(stderr.contains("exited while"), "{stderr}");
                exited += 1;
            }
            Some(0) => {
                let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
                let heap = &doc["heap"];
                assert_eq!(
                    n(&heap["totals"], "unknown_bytes"),
                    0,
                    "run {run}: {}",
                    heap["notes"]
                );
                assert_eq!(heap["notes"].as_array().unwrap().len(), 0, "run {run}");
            }
            code => panic!("run {run} (exit after {delay} ms): exit code {code:?}: {stderr}"),
        }
    }
    assert!(exited > 0, "no run caught the target exiting");
}

/// Whether process `pid` has `path` open.
fn has_open(pid: i32, path: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.filter_map(Result::ok).any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.to_str() == Some(path))
        })
    })
}

/// A process whose main thread has exited while another runs on is alive: it is read through
/// the live thread, heap and all.
#[test]
fn root_main_thread_exited_is_read_through_another_thread() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("LEADER_EXIT"), &[]);
    let doc = snapshot_json(fixture.pid(), &[]);
    if let Err(why) = heap_matches_mallinfo(&fixture.report, &doc["heap"]) {
        panic!("{why}\n{}", doc["heap"]);
    }
    assert!(doc["mappings"].as_array().unwrap().len() > 5);
}

/// `--stop` on a process a debugger already traces names the tracer.
#[test]
fn root_stop_on_a_traced_process_names_the_tracer() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("MALLOC_CALLS"), &["1"]);
    // This thread becomes its tracer until the test ends.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, fixture.pid(), 0, 0) };
    assert_eq!(rc, 0, "PTRACE_SEIZE: {}", std::io::Error::last_os_error());
    let output = pagealloc(&["snapshot", &fixture.pid().to_string(), "--stop"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    let me = unsafe { libc::gettid() };
    assert!(
        stderr.contains(&format!("already traced by process {me}")),
        "{stderr}"
    );
    assert!(!stderr.contains("ptrace_scope"), "{stderr}");
}

/// `pagealloc ARGS` as root whose capabilities lack `dropped` (setpriv takes them out of the
/// bounding set before exec): its exit code and stderr.
fn as_root_without(dropped: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new("setpriv")
        .arg(format!("--bounding-set={dropped}"))
        .arg("--")
        .arg(pagealloc_bin())
        .args(args)
        .output()
        .expect("setpriv runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

/// Root without the capabilities reading another user's process needs: the message names the
/// ones missing, not "run as root" (it is root).
#[test]
fn root_without_a_capability_names_it() {
    require_root();
    let fixture = Fixture::spawn_with(
        std::process::Command::new(fixture_path!("QUIET"))
            .uid(65534)
            .gid(65534),
    );
    let pid = fixture.pid().to_string();
    let (code, stderr) = as_root_without(
        "-sys_ptrace,-dac_override,-dac_read_search",
        &["snapshot", &pid],
    );
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains("CAP_SYS_PTRACE") && stderr.contains("CAP_DAC_READ_SEARCH"),
        "{stderr}"
    );
    assert!(!stderr.contains("run as root"), "{stderr}");
    // Holding the threads still needs only ptrace's.
    let (code, stderr) = as_root_without("-sys_ptrace", &["snapshot", &pid, "--stop"]);
    assert_eq!(code, Some(5), "{stderr}");
    assert!(
        stderr.contains("CAP_SYS_PTRACE") && !stderr.contains("CAP_DAC_READ_SEARCH"),
        "{stderr}"
    );
    assert!(!stderr.contains("run as root"), "{stderr}");
    // Root of a user namespace of its own, every capability there: none reach the fixture.
    let output = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--"])
        .arg(pagealloc_bin())
        .args(["snapshot", &pid])
        .output()
        .expect("unshare runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("root of a user namespace"), "{stderr}");
}

/// A process that exits while watch attaches to it (once watch has opened it: placing and
/// attaching the probes, the seed walk of its 3 M chunks, the first sample, 0.6–1.4 s here) gets one
/// verdict whatever the moment: exit 4, "exited", no line. Once a sample was shown, watch ends
/// as for any exit: the end line, exit 0. Before, the moment decided between 0 with no sample,
/// 4 and 3.
#[test]
fn root_a_process_exiting_while_watch_attaches_gets_one_verdict() {
    require_root();
    let mut verdicts = std::collections::BTreeMap::new();
    // Longer and longer, until a run gets a sample shown (later ones would all be so).
    for delay in [
        0, 10, 25, 50, 100, 200, 300, 450, 600, 800, 1100, 1600, 3200, 6400, 12800,
    ] {
        let mut fixture = Fixture::spawn(fixture_path!("EXITING"), &[]);
        let pid = fixture.pid();
        let mut watch = Watch::json(pid, &["--interval", "100ms"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !has_open(watch.child.id() as i32, &format!("/proc/{pid}/pagemap")) {
            assert!(
                std::time::Instant::now() < deadline,
                "watch never opened the process"
            );
            assert!(
                watch.child.try_wait().unwrap().is_none(),
                "watch ended first"
            );
            std::thread::yield_now();
        }
        fixture.send(&format!("e{delay}"));
        let lines = watch.rest();
        let stderr = watch.child.wait_with_output_stderr();
        let code = watch.child.try_wait().unwrap().and_then(|s| s.code());
        let samples = lines.iter().filter(|l| l.get("ended").is_none()).count();
        let context = format!(
            "exit {delay} ms after watch opened it: exit code {code:?} after {samples} samples: {stderr}"
        );
        match (code, samples) {
            (Some(4), 0) => assert!(lines.is_empty() && stderr.contains("exited"), "{context}"),
            (Some(0), 1..) => assert_eq!(
                lines.last().unwrap()["ended"],
                "process exited",
                "{context}"
            ),
            _ => panic!("{context}"),
        }
        *verdicts.entry((code, samples > 0)).or_insert(0) += 1;
        if samples > 0 {
            break;
        }
    }
    // Some runs ended during the attach, and some after a sample: both verdicts were met.
    assert!(verdicts.len() == 2, "{verdicts:?}");
}
