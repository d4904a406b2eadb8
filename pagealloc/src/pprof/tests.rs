//! The profile decoded back (prost) and read by the real reader (`go tool pprof`).
use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flate2::read::GzDecoder;
use prost::Message;

use super::{heap_profile, proto};
use crate::state::sites::{Frame, Line, Module, Sampling, SiteFigures, SiteReport, SitesReport};

const TAKEN_NANOS: u64 = 1_700_000_000_123_456_789;
const DURATION: Duration = Duration::from_millis(2500);

fn program() -> Module {
    Module {
        path: "/opt/app/bin/app".into(),
        build_id: Some("0123456789abcdef".into()),
        start: 0x55_0000_1000,
        end: 0x55_0000_9000,
        file_offset: 0x1000,
    }
}

fn library() -> Module {
    Module {
        path: "/opt/app/lib/libshared.so".into(),
        build_id: None,
        start: 0x7f00_0000_0000,
        end: 0x7f00_0001_0000,
        file_offset: 0,
    }
}

fn line(function: &str, file: &str, line: u32) -> Line {
    Line {
        function: function.into(),
        file: Some(file.into()),
        line: Some(line),
    }
}

fn frame(address: u64, module: Option<Module>, lines: Vec<Line>) -> Arc<Frame> {
    let file_offset = module
        .as_ref()
        .map_or(0, |m| address - m.start + m.file_offset);
    Arc::new(Frame {
        address,
        module: module.map(Arc::new),
        file_offset,
        lines,
    })
}

fn figures(
    alloc_objects: f64,
    alloc_bytes: f64,
    inuse_objects: f64,
    inuse_bytes: f64,
    pinned_bytes: f64,
) -> SiteFigures {
    SiteFigures {
        inuse_objects,
        inuse_bytes,
        alloc_objects,
        alloc_bytes,
        pinned_bytes,
    }
}

/// Three sites sharing `main`'s frame (each frame its own Arc, each module too: the encoder
/// must dedup by content), one with an inlined function, one through a frame without lines,
/// one truncated through a frame in no module; a site whose figures round to 0; buckets.
fn report() -> SitesReport {
    let main = || {
        frame(
            0x55_0000_2000,
            Some(program()),
            vec![line("main", "app.c", 30)],
        )
    };
    let inlined = frame(
        0x55_0000_3000,
        Some(program()),
        vec![
            line("make_node", "tree.h", 10),
            line("build_tree", "app.c", 20),
        ],
    );
    let in_library = frame(
        0x7f00_0000_4000,
        Some(library()),
        vec![line("lib_alloc", "lib.c", 5)],
    );
    let without_lines = frame(0x7f00_0000_5000, Some(library()), Vec::new());
    let worker = frame(
        0x55_0000_6000,
        Some(program()),
        vec![line("worker", "app.c", 40)],
    );
    let jitted = frame(0x1234_5000, None, Vec::new());
    let site = |frames, truncated, figures| SiteReport {
        frames,
        truncated,
        figures,
    };
    SitesReport {
        chunks: Vec::new(),
        since: None,
        sampling: Sampling {
            sample_bytes: 524288,
            ..Sampling::default()
        },
        sites: vec![
            site(
                vec![inlined, main()],
                false,
                figures(3.0, 192.0, 2.0, 128.0, 4096.0),
            ),
            site(
                vec![in_library, without_lines, main()],
                false,
                figures(1.6, 1000.4, 1.0, 1000.4, 0.0),
            ),
            site(
                vec![jitted, worker],
                true,
                figures(7.0, 7000.0, 0.0, 0.0, 0.0),
            ),
            site(vec![main()], false, figures(0.2, 0.4, 0.1, 0.4, 0.3)),
        ],
        other: figures(5.0, 500.0, 4.0, 400.0, 0.0),
        merged: 9,
        unknown: SiteFigures::default(),
        unattributed: SiteFigures::default(),
        before_attach: figures(0.0, 0.0, 10.0, 640.0, 100.0),
        stacks: 20,
        missed: 0,
    }
}

/// (each location as its function names, innermost first, or `@address` without lines;
/// the values) of each sample.
type Stacks = Vec<(Vec<String>, Vec<i64>)>;

fn taken() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(TAKEN_NANOS)
}

fn decode(gzipped: &[u8]) -> proto::Profile {
    let mut bytes = Vec::new();
    GzDecoder::new(gzipped).read_to_end(&mut bytes).unwrap();
    proto::Profile::decode(bytes.as_slice()).unwrap()
}

fn text(profile: &proto::Profile, index: i64) -> &str {
    &profile.string_table[index as usize]
}

fn location(profile: &proto::Profile, id: u64) -> &proto::Location {
    let location = &profile.location[id as usize - 1];
    assert_eq!(location.id, id);
    location
}

fn stacks(profile: &proto::Profile) -> Stacks {
    let names = |id: u64| -> String {
        let location = location(profile, id);
        if location.line.is_empty() {
            return format!("@{:#x}", location.address);
        }
        let names: Vec<&str> = (location.line.iter())
            .map(|line| {
                text(
                    profile,
                    profile.function[line.function_id as usize - 1].name,
                )
            })
            .collect();
        names.join("<")
    };
    (profile.sample.iter())
        .map(|sample| {
            let frames = sample.location_id.iter().map(|&id| names(id)).collect();
            (frames, sample.value.clone())
        })
        .collect()
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[test]
fn round_trip() {
    let profile = decode(&heap_profile(&report(), taken(), DURATION));
    assert_eq!(profile.string_table[0], "");
    let types: Vec<(&str, &str)> = (profile.sample_type.iter())
        .map(|t| (text(&profile, t.r#type), text(&profile, t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes"),
            ("pinned_space", "bytes"),
        ]
    );
    assert_eq!(text(&profile, profile.default_sample_type), "inuse_space");
    let period = profile.period_type.clone().unwrap();
    assert_eq!(
        (text(&profile, period.r#type), text(&profile, period.unit)),
        ("space", "bytes")
    );
    assert_eq!(profile.period, 524288);
    assert_eq!(profile.time_nanos, TAKEN_NANOS as i64);
    assert_eq!(profile.duration_nanos, 2_500_000_000);

    let expected: Stacks = vec![
        (
            strings(&["make_node<build_tree", "main"]),
            vec![3, 192, 2, 128, 4096],
        ),
        (
            strings(&["lib_alloc", "@0x7f0000005000", "main"]),
            vec![2, 1000, 1, 1000, 0],
        ),
        (
            strings(&["@0x12345000", "worker", "[truncated]"]),
            vec![7, 7000, 0, 0, 0],
        ),
        (strings(&["[other sites]"]), vec![5, 500, 4, 400, 0]),
        (strings(&["[live before attach]"]), vec![0, 0, 10, 640, 100]),
    ];
    assert_eq!(stacks(&profile), expected);

    // One location per address (main's is shared), one per synthetic frame.
    assert_eq!(profile.location.len(), 6 + 3);
    let addresses: HashSet<u64> = (profile.location.iter())
        .filter(|l| l.address != 0)
        .map(|l| l.address)
        .collect();
    assert_eq!(addresses.len(), 6);
    // One function per (name, file).
    let functions: HashSet<(&str, &str)> = (profile.function.iter())
        .map(|f| (text(&profile, f.name), text(&profile, f.filename)))
        .collect();
    assert_eq!(functions.len(), profile.function.len());
    assert_eq!(profile.function.len(), 5 + 3);

    // Every location has a mapping: the program, the library, the synthetic one.
    for location in &profile.location {
        assert_ne!(location.mapping_id, 0, "location {location:?}");
        let mapping = &profile.mapping[location.mapping_id as usize - 1];
        assert_eq!(mapping.id, location.mapping_id);
        let in_range =
            mapping.memory_start <= location.address && location.address < mapping.memory_limit;
        assert!(in_range || text(&profile, mapping.filename) == "[pagealloc]");
    }
    let mappings: Vec<(&str, &str, u64, u64, u64)> = (profile.mapping.iter())
        .map(|m| {
            (
                text(&profile, m.filename),
                text(&profile, m.build_id),
                m.memory_start,
                m.memory_limit,
                m.file_offset,
            )
        })
        .collect();
    assert_eq!(
        mappings,
        [
            (
                "/opt/app/bin/app",
                "0123456789abcdef",
                0x55_0000_1000,
                0x55_0000_9000,
                0x1000
            ),
            (
                "/opt/app/lib/libshared.so",
                "",
                0x7f00_0000_0000,
                0x7f00_0001_0000,
                0
            ),
            ("[pagealloc]", "", 0, 0, 0),
        ]
    );
    let flags: Vec<[bool; 4]> = (profile.mapping.iter())
        .map(|m| {
            [
                m.has_functions,
                m.has_filenames,
                m.has_line_numbers,
                m.has_inline_frames,
            ]
        })
        .collect();
    assert_eq!(
        flags,
        [
            [true, true, true, true],
            [true, true, true, false],
            [true, false, false, false]
        ]
    );
}

#[test]
fn empty_report_is_a_valid_profile() {
    let profile = decode(&heap_profile(&SitesReport::default(), taken(), DURATION));
    assert_eq!(profile.string_table[0], "");
    assert_eq!(profile.sample_type.len(), 5);
    assert!(profile.sample.is_empty() && profile.location.is_empty());
}

/// Removes a file when dropped.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `go tool pprof FORMAT file`'s lines, each with its runs of blanks made one space.
fn go_pprof(file: &Removed, format: &str) -> Vec<String> {
    let out = Command::new("go")
        .args(["tool", "pprof", format])
        .arg(&file.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "go tool pprof {format}: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    println!("go tool pprof {format}:\n{stdout}");
    (stdout.lines())
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn assert_has_lines(output: &[String], wanted: &[&str]) {
    for line in wanted {
        assert!(
            output.iter().any(|l| l == line),
            "{line:?} not in the output"
        );
    }
}

/// `go tool pprof` reads the profile: each sample's values and stack, the locations' lines and
/// mappings, the default sample type.
#[test]
fn go_tool_pprof_reads_it() {
    if Command::new("go").arg("version").output().is_err() {
        println!("skipped: go is not installed (cargo xtask setup installs golang-go)");
        return;
    }
    let file = Removed(std::env::temp_dir().join(format!(
        "pagealloc-pprof-{}-{}.pb.gz",
        std::process::id(),
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()
    )));
    std::fs::write(&file.0, heap_profile(&report(), taken(), DURATION)).unwrap();

    let raw = go_pprof(&file, "-raw");
    assert_has_lines(
        &raw,
        &[
            "PeriodType: space bytes",
            "Period: 524288",
            "Duration: 2.5s",
            "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes[dflt] pinned_space/bytes",
            // Each sample's values, and its locations innermost first.
            "3 192 2 128 4096: 1 2",
            "2 1000 1 1000 0: 3 4 2",
            "7 7000 0 0 0: 5 6 7",
            "5 500 4 400 0: 8",
            "0 0 10 640 100: 9",
            "1: 0x5500003000 M=1 make_node tree.h:10 s=0",
            "build_tree app.c:20 s=0",
            "2: 0x5500002000 M=1 main app.c:30 s=0",
            "3: 0x7f0000004000 M=2 lib_alloc lib.c:5 s=0",
            "4: 0x7f0000005000 M=2",
            "5: 0x12345000 M=3",
            "6: 0x5500006000 M=1 worker app.c:40 s=0",
            "7: 0x0 M=3 [truncated] :0 s=0",
            "8: 0x0 M=3 [other sites] :0 s=0",
            "9: 0x0 M=3 [live before attach] :0 s=0",
            "1: 0x5500001000/0x5500009000/0x1000 /opt/app/bin/app 0123456789abcdef [FN][FL][LN][IN]",
            "2: 0x7f0000000000/0x7f0000010000/0x0 /opt/app/lib/libshared.so [FN][FL][LN]",
            "3: 0x0/0x0/0x0 [pagealloc] [FN]",
        ],
    );

    // The stacks by name, with the default sample type's values; a frame without lines shows
    // its file.
    let traces = go_pprof(&file, "-traces");
    let blocks: Vec<&[String]> = (traces.split(|line| line.starts_with("-----------+")))
        .skip(1)
        .filter(|block| !block.iter().all(String::is_empty))
        .collect();
    let expected: [&[&str]; 5] = [
        &["128B make_node (inline)", "build_tree", "main"],
        &["1000B lib_alloc", "[libshared.so]", "main"],
        &["0 [[pagealloc]]", "worker", "[truncated]"],
        &["400B [other sites]"],
        &["640B [live before attach]"],
    ];
    assert_eq!(blocks, expected);
    assert_has_lines(&traces, &["Type: inuse_space"]);
}
