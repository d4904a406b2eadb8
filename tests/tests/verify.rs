//! Live mode verifies a busy heap and keeps its figures exact: a reconcile whose walk read part
//! of the heap while it changed still compares the rest, what a free did is settled, and the
//! heap's bounds follow its top as it grows and shrinks.
use std::time::{Duration, SystemTime};

use pagealloc_tests::*;
use serde_json::Value;

const RECONCILE: Duration = Duration::from_secs(2);

/// Two threads making ~17,500 allocations a second in bursts every millisecond: no walk reads
/// the whole heap consistently, yet a reconcile completes at least every two reconcile periods
/// and finds the state exact, the bytes freed since a reconcile's walk are all that is left
/// unsettled, and no note of an earlier walk stays behind.
#[test]
fn root_a_bursty_heap_is_reconciled_every_period_and_exact() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("BURSTY"), &[]);
    let reconcile = format!("{}s", RECONCILE.as_secs());
    let mut watch = Watch::json(
        fixture.pid(),
        &["--interval", "250ms", "--reconcile", &reconcile],
    );
    let first = watch.line_after(SystemTime::now(), |_| true);
    assert_eq!(first["mode"], "live", "{first}");
    let periods = 6;
    let end = started(&first) + RECONCILE * periods;
    // (when, reconciles so far) of each line, and the previous line's events.
    let mut lines = vec![first];
    while started(lines.last().unwrap()) < end {
        lines.push(watch.line());
    }
    let mut last_reconcile: Option<usize> = None;
    for (i, line) in lines.iter().enumerate().skip(1) {
        let context = format!("line {i}: {}", line["events"]);
        assert_eq!(events(line, "lost"), 0, "{context}");
        assert_eq!(events(line, "contradictions"), 0, "{context}");
        assert_eq!(events(line, "resyncs"), 0, "{context}");
        let since = started(line).duration_since(started(&lines[0])).unwrap();
        let due = (since.as_secs_f64() / (2.0 * RECONCILE.as_secs_f64())) as u64;
        assert!(
            events(line, "reconciles") >= due,
            "{due} reconciles due by {since:?}: {context}"
        );
        if events(line, "reconciles") > events(&lines[i - 1], "reconciles") {
            assert_eq!(events(line, "reconcile_mismatch_chunks"), 0, "{context}");
            assert_eq!(events(line, "reconcile_mismatch_bytes"), 0, "{context}");
            last_reconcile = Some(i);
        }
        if let Some(r) = last_reconcile {
            // What is freed to the state was freed since the reconcile's walk began (after the
            // line before it), and no note of a walk before it is left.
            let freed_since = events(line, "freed_bytes") - events(&lines[r - 1], "freed_bytes");
            assert!(
                heap_total(line, "freed_bytes") <= freed_since,
                "{} bytes freed to the state, {freed_since} freed since the reconcile: {context}",
                heap_total(line, "freed_bytes")
            );
            assert_eq!(line["heap"]["notes"], Value::Array(vec![]), "{context}");
        }
    }
    assert!(
        last_reconcile.is_some(),
        "no reconcile in {periods} periods"
    );
}

/// The main heap grown by sbrk, then freed and trimmed by malloc_trim, then grown again and
/// half freed: after each, a live sample's system bytes and top are mallinfo2's (the fixture's
/// own figures, not a walk's), without a walk (no reconcile is due).
#[test]
fn root_live_heap_bounds_follow_its_top() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("BURSTY"), &["top"]);
    let mut watch = Watch::json(fixture.pid(), &["--interval", "100ms", "--reconcile", "1h"]);
    let first = watch.line_after(SystemTime::now(), |_| true);
    assert_eq!(first["mode"], "live", "{first}");
    for command in ["g", "s", "g", "f", "s", "g"] {
        fixture.command(command);
        let line = watch.line_after(SystemTime::now(), |_| true);
        let context = format!(
            "after {command}: {:?}, {}",
            fixture.report, line["heap"]["totals"]
        );
        assert_eq!(events(&line, "resyncs"), 0, "{context}");
        assert_eq!(events(&line, "reconciles"), 0, "{context}");
        assert_eq!(
            heap_total(&line, "system_bytes"),
            fixture.get("arena"),
            "{context}"
        );
        assert_eq!(
            heap_total(&line, "top_bytes"),
            fixture.get("keepcost"),
            "{context}"
        );
        assert!(
            heap_total(&line, "live_bytes") >= fixture.get("held_bytes"),
            "{context}"
        );
    }
}
