//! Live mode loses no event at moderate rates, however the CPUs are shared: a probe preempted
//! between stamping an event and writing it (the agent's own walk and other programs compete
//! for the CPUs) holds the reader back instead of arriving after its time was vouched for.
use std::time::{Duration, SystemTime};

use pagealloc_testkit::hogs::CpuHogs;
use pagealloc_tests::*;

/// The bursty target (two threads, a burst every millisecond, ~17,500 allocations a second)
/// reconciled every second, half its CPUs taken by busy loops: over `RECONCILES` reconcile
/// periods, no event lost and no resync. Before the fix, a run like this lost events within
/// seconds ("N events arrived after their time was vouched for").
#[test]
fn root_reconciling_every_second_under_cpu_load_loses_nothing() {
    require_root();
    const RECONCILES: u32 = 20;
    let fixture = Fixture::spawn(fixture_path!("BURSTY"), &[]);
    let _hogs = CpuHogs::start();
    let mut watch = Watch::json(fixture.pid(), &["--interval", "250ms", "--reconcile", "1s"]);
    let first = watch.line_after(SystemTime::now(), |_| true);
    assert_eq!(first["mode"], "live", "{first}");
    let end = started(&first) + Duration::from_secs(RECONCILES.into());
    let mut line = first;
    while started(&line) < end {
        line = watch.line();
        let context = format!("{}", line["events"]);
        assert_eq!(events(&line, "lost"), 0, "{context}");
        assert_eq!(events(&line, "resyncs"), 0, "{context}");
    }
    assert!(events(&line, "allocs") > 0, "{}", line["events"]);
}
