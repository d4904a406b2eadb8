//! mmapped chunks that memalign moved up their mapping, then reallocated (mremap): live mode
//! follows them from a walk that found them all, event by event, against the pointers the
//! fixture knows it holds.
use std::time::SystemTime;

use pagealloc_tests::*;

/// Seeded from a heap whose aligned chunks were already reallocated (the headers at the start
/// of their mappings stale), watch follows three more rounds of memalign, posix_memalign,
/// realloc and free: after each, its mmapped figures are the fixture's, with nothing
/// contradicting the state, no walk needed and no event lost.
#[test]
fn root_live_mode_follows_reallocated_aligned_chunks() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("MMAPPED_REALLOC"), &[]);
    fixture.command("g");
    fixture.command("g");
    assert!(fixture.get("stale_headers") > 0, "{:?}", fixture.report);
    let mut watch = Watch::start(
        fixture.pid(),
        &[
            "--format",
            "json",
            "--interval",
            "200ms",
            "--reconcile",
            "1h",
            "--max-rate",
            "1000000000000",
        ],
    );
    let mut check = |fixture: &Fixture, context: &str| {
        let line = watch.line_after(SystemTime::now(), |_| true);
        let context = format!("{context}: {}", line["events"]);
        assert_eq!(line["mode"], "live", "{context}");
        let heap = &line["heap"];
        assert_eq!(
            (n(heap, "mmapped_chunks"), n(heap, "mmapped_bytes")),
            (fixture.get("mmapped_chunks"), fixture.get("mmapped_bytes")),
            "{context}"
        );
        assert_eq!(
            (n(heap, "mmapped_chunks"), n(heap, "mmapped_bytes")),
            (fixture.get("hblks"), fixture.get("hblkhd")),
            "{context}"
        );
        for key in ["contradictions", "resyncs", "lost"] {
            assert_eq!(events(&line, key), 0, "{key}: {context}");
        }
    };
    check(&fixture, "seeded");
    for round in 1..=3 {
        fixture.command("g");
        check(&fixture, &format!("round {round}"));
    }
}
