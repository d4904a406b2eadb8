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
}
