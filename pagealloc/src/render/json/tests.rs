//! The public JSON schema, pinned: the names written here are the contract scripts and the
//! README rely on, so a test fails when a field is renamed, dropped or added unannounced.
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::{snapshot, watch_end, watch_line};
use crate::state::events::{Counts, Mismatch};
use crate::state::heap::{AddressRange, Arena, HeapFigures, HeapGeometry, HeapMap, HeapNote};
use crate::state::pages::{Limitation, Mapping, MappingPages, PageCounts, PageMap, PageState};
use crate::state::{Heap, LibcInfo, Sample};

const PAGE_COUNTS: &[&str] = &["anon", "file", "thp_anon", "thp_file", "swapped", "absent"];

/// An arena's figures and the heap's totals; `freed_*` only where something was freed.
const FIGURES: &[&str] = &[
    "system_bytes",
    "live_chunks",
    "live_bytes",
    "tcache_chunks",
    "tcache_bytes",
    "fastbin_chunks",
    "fastbin_bytes",
    "bin_chunks",
    "bin_bytes",
    "top_bytes",
    "overhead_bytes",
    "unknown_bytes",
    "free_resident_bytes",
    "trimmable_bytes",
    "pinned_bytes",
    "largest_free_bytes",
    "fragmentation",
];
const FREED: &[&str] = &["freed_chunks", "freed_bytes"];

const HEAP: &[&str] = &[
    "arenas",
    "mmapped_chunks",
    "mmapped_bytes",
    "totals",
    "notes",
];
const ARENA: &[&str] = &["address", "main", "heaps"];

const EVENTS: &[&str] = &[
    "allocs",
    "frees",
    "allocated_bytes",
    "freed_bytes",
    "lost",
    "resyncs",
    "contradictions",
    "reconciles",
    "reconcile_mismatch_chunks",
    "reconcile_mismatch_bytes",
];

/// Two arenas, the second with chunks freed since the walk (live mode), in a process of two
/// mappings, read with a known C library.
fn sample() -> Sample {
    let mut heap_pages = MappingPages::new(Mapping {
        start: 0x55_0000_0000,
        end: 0x55_0000_4000,
        perms: "rw-p".to_string(),
        offset: 0,
        path: "[heap]".to_string(),
    });
    heap_pages.push(PageState::Anon, 3);
    heap_pages.push(PageState::Absent, 1);
    let mut library = MappingPages::new(Mapping {
        start: 0x7f00_0000_0000,
        end: 0x7f00_0000_2000,
        perms: "r-xp".to_string(),
        offset: 0x1000,
        path: "/lib/libc.so.6".to_string(),
    });
    library.push(PageState::File, 2);
    let mut totals = PageCounts::default();
    for pages in [&heap_pages, &library] {
        totals.merge(&pages.counts);
    }
    let mut main = HeapFigures {
        system_bytes: 0x4000,
        live_chunks: 3,
        live_bytes: 0x300,
        bin_chunks: 2,
        bin_bytes: 0x200,
        largest_free_bytes: 0x180,
        ..HeapFigures::default()
    };
    main.finish();
    let thread = HeapFigures {
        freed_chunks: 5,
        freed_bytes: 0x500,
        ..main
    };
    let mut heap_totals = main;
    heap_totals.add(&thread);
    let arena = |address, main, figures| Arena {
        address,
        main,
        heaps: vec![AddressRange {
            start: address,
            end: address + 0x4000,
        }],
        figures,
    };
    Sample {
        pid: 4242,
        taken: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        duration: Duration::from_millis(250),
        pages: PageMap {
            pid: 4242,
            page_size: 4096,
            mappings: vec![heap_pages, library],
            totals,
            limitations: vec![Limitation::FramesHidden],
        },
        libc: Some(LibcInfo {
            path: "/lib/libc.so.6".to_string(),
            build_id: "93ac61ec".to_string(),
            debug_file: Some("/usr/lib/debug/.build-id/93/ac61ec.debug".to_string()),
            version: Some("2.36".to_string()),
        }),
        heap: Heap::Map(Box::new(HeapMap {
            arenas: vec![
                arena(0x55_0000_0000, true, main),
                arena(0x7e00_0000_0000, false, thread),
            ],
            geometry: HeapGeometry::for_tests(),
            mmapped_chunks: 1,
            mmapped_bytes: 0x21000,
            totals: heap_totals,
            notes: vec![HeapNote::inconsistent("a bin changed".to_string())],
            mmapped: Vec::new(),
            segments: Vec::new(),
        })),
        events: None,
        sites: None,
    }
}

/// `value`'s keys, which must be `expected`'s (each list given in the document's order).
fn assert_keys(value: &Value, expected: &[&[&str]], what: &str) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{what} is not an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut want: Vec<&str> = expected.concat();
    keys.sort_unstable();
    want.sort_unstable();
    assert_eq!(keys, want, "the keys of {what}");
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The heap object, the same in a snapshot and in a watch line.
fn assert_heap(heap: &Value) {
    assert_keys(heap, &[HEAP], "heap");
    assert_keys(&heap["totals"], &[FIGURES, FREED], "heap.totals");
    let arenas = heap["arenas"].as_array().expect("arenas");
    assert_eq!(arenas.len(), 2);
    assert_keys(&arenas[0], &[ARENA, FIGURES], "an arena freed nothing in");
    assert_keys(
        &arenas[1],
        &[ARENA, FIGURES, FREED],
        "an arena with freed chunks",
    );
    assert_keys(&arenas[0]["heaps"][0], &[&["start", "end"]], "a heap");
    assert_eq!(arenas[0]["main"], true);
    assert_eq!(arenas[1]["address"], 0x7e00_0000_0000u64);
    assert_eq!(arenas[1]["heaps"][0]["end"], 0x7e00_0000_4000u64);
    assert_eq!(arenas[1]["freed_chunks"], 5);
    assert_eq!(arenas[0]["fragmentation"], 0.25);
    assert_eq!(heap["totals"]["live_bytes"], 0x600);
    assert_eq!(heap["mmapped_bytes"], 0x21000);
    assert_eq!(heap["notes"], serde_json::json!(["a bin changed"]));
}

#[test]
fn a_snapshot_has_the_schemas_keys_at_every_level() {
    let sample = sample();
    let document = parse(&snapshot(&sample));
    assert_keys(
        &document,
        &[&[
            "pid",
            "page_size",
            "mappings",
            "totals",
            "limitations",
            "libc",
            "heap",
            "heap_error",
        ]],
        "the document",
    );
    assert_eq!(document["pid"], 4242);
    assert_eq!(document["heap_error"], Value::Null);
    assert_eq!(document["limitations"].as_array().map(Vec::len), Some(1));
    let mapping = &document["mappings"][0];
    assert_keys(
        mapping,
        &[&["start", "end", "perms", "offset", "path", "pages"]],
        "a mapping",
    );
    assert_eq!(mapping["path"], "[heap]");
    assert_eq!(mapping["start"], 0x55_0000_0000u64);
    assert_eq!(document["mappings"][1]["offset"], 0x1000);
    assert_keys(&mapping["pages"], &[PAGE_COUNTS], "a mapping's pages");
    assert_eq!(mapping["pages"]["anon"], 3);
    assert_eq!(mapping["pages"]["absent"], 1);
    assert_keys(&document["totals"], &[PAGE_COUNTS], "the totals");
    assert_eq!(document["totals"]["file"], 2);
    assert_keys(
        &document["libc"],
        &[&["path", "build_id", "debug_file", "version", "layout"]],
        "libc",
    );
    assert_eq!(document["libc"]["version"], "2.36");
    assert_eq!(document["libc"]["layout"], "debug info");
    assert_heap(&document["heap"]);
}

#[test]
fn watch_lines_have_the_schemas_keys_in_either_mode_and_at_the_end() {
    let mut sample = sample();
    const LINE: &[&str] = &[
        "time",
        "pid",
        "mode",
        "sample_seconds",
        "pages",
        "heap",
        "heap_error",
    ];
    let walk = parse(&watch_line(&sample, Some("asked for (--walk)")));
    assert_keys(&walk, &[LINE, &["walk_reason"]], "a walk line");
    assert_eq!(walk["time"], "2023-11-14T22:13:20.123Z");
    assert_eq!(walk["mode"], "walk");
    assert_eq!(walk["walk_reason"], "asked for (--walk)");
    assert_eq!(walk["sample_seconds"], 0.25);
    assert_keys(&walk["pages"], &[PAGE_COUNTS], "a line's pages");
    assert_eq!(walk["pages"]["anon"], 3);
    assert_heap(&walk["heap"]);

    let counts = Counts {
        allocs: 7,
        reconciles: 1,
        reconcile_mismatch: Some(Mismatch {
            chunks: 2,
            bytes: 64,
        }),
        ..Counts::default()
    };
    sample.events = Some(counts);
    let live = parse(&watch_line(&sample, Some("not asked")));
    assert_keys(&live, &[LINE, &["events"]], "a live line");
    assert_eq!(live["mode"], "live");
    assert_keys(&live["events"], &[EVENTS], "the events");
    assert_eq!(live["events"]["allocs"], 7);
    assert_eq!(live["events"]["reconcile_mismatch_bytes"], 64);

    let end = parse(&watch_end(4242, Some(counts), None, 0.5, "process exited"));
    assert_keys(&end, &[LINE, &["events", "ended"]], "the last line");
    assert_eq!(end["ended"], "process exited");
    assert_eq!(end["heap_error"], "process exited");
    assert_eq!(end["pages"], Value::Null);
    assert_eq!(end["heap"], Value::Null);
    let walk_end = parse(&watch_end(
        4242,
        None,
        Some("no probes"),
        0.5,
        "process exited",
    ));
    assert_keys(
        &walk_end,
        &[LINE, &["walk_reason", "ended"]],
        "the last walk line",
    );
}
