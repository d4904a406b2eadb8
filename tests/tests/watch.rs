//! `pagealloc watch` as a user runs it: its NDJSON against a fixture's ground truth as the heap
//! changes, its end when the target exits, and its terminal screen (fitting, restored on exit).
use std::time::SystemTime;

use pagealloc_tests::*;
use serde_json::Value;

/// Each NDJSON line taken while the fixture is quiet equals its ground truth at that moment,
/// through growth, fragmentation, trimming and freeing (walk mode: every figure is the walk's;
/// live mode's freed chunks are checked in `live.rs`).
#[test]
fn root_watch_lines_follow_the_heap_as_it_changes() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("PHASES"), &[]);
    let args = ["--format", "json", "--interval", "100ms", "--walk"];
    let mut watch = Watch::start(fixture.pid(), &args);
    let mut checked = 0;
    for command in ["g", "g", "f", "t", "g", "x"] {
        // The fixture is quiet from its report until the next command.
        fixture.command(command);
        let quiet_from = SystemTime::now();
        let mut quiet_samples = 0;
        while quiet_samples < 2 {
            let line = watch.line();
            assert_eq!(line["pid"], fixture.pid());
            assert_eq!(line["mode"], "walk");
            assert!(line["pages"]["anon"].as_u64().unwrap() > 0);
            if started(&line) < quiet_from {
                continue; // begun before or while the heap changed
            }
            if let Err(why) = heap_matches_mallinfo(&fixture.report, &line["heap"]) {
                panic!("after {command:?}: {why}\n{line}");
            }
            quiet_samples += 1;
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
    drop(fixture);
    // The fixture's exit ends watch, cleanly.
    assert!(
        exits_within(watch.child.id() as i32, LIMIT),
        "watch outlived its target"
    );
    let status = watch.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn root_watch_stops_after_count_samples() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("PHASES"), &[]);
    let output = pagealloc(&[
        "watch",
        &fixture.pid().to_string(),
        "--format",
        "json",
        "--interval",
        "50ms",
        "--count",
        "3",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3);
    // Samples keep to the interval: each begins after the one before.
    assert!(started(&lines[0]) < started(&lines[1]) && started(&lines[1]) < started(&lines[2]));
}

/// The target exiting mid-watch ends watch with a message and exit code 0.
#[test]
fn root_watch_ends_when_the_target_exits() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("PHASES"), &[]);
    let mut watch = Watch::start(fixture.pid(), &["--format", "json", "--interval", "50ms"]);
    watch.line();
    drop(fixture); // closes its stdin: it exits
    assert!(
        exits_within(watch.child.id() as i32, LIMIT),
        "watch outlived its target"
    );
    let stderr = watch.child.wait_with_output_stderr();
    let status = watch.child.try_wait().unwrap().expect("exited");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("exited"), "{stderr}");
}

/// Not a terminal: frames are appended, each with its header, and no terminal codes at all.
#[test]
fn root_watch_appends_plain_frames_when_not_a_terminal() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("PHASES"), &[]);
    fixture.command("g");
    let output = pagealloc(&[
        "watch",
        &fixture.pid().to_string(),
        "--interval",
        "50ms",
        "--count",
        "2",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains('\x1b'), "terminal codes in appended output");
    let headers = text
        .lines()
        .filter(|l| {
            l.starts_with(&format!("process {} (phases) — ", fixture.pid()))
                && l.contains(" sample ")
        })
        .count();
    assert_eq!(headers, 2, "{text}");
    assert!(text.contains("free but resident"), "{text}");
    assert!(text.contains("one pixel = "), "{text}");
}

/// The heap pictures a screen shows: the header line of each (`start-end arena N ...`).
fn heap_headers(screen: &[String]) -> usize {
    screen
        .iter()
        .filter(|l| {
            l.split_once(" arena ").is_some_and(|(range, _)| {
                range
                    .split_once('-')
                    .is_some_and(|(a, b)| [a, b].iter().all(|h| u64::from_str_radix(h, 16).is_ok()))
            })
        })
        .count()
}

/// On a terminal: the alternate screen, every heap drawn within the window's width and height
/// (narrow and wide, and after a resize), and the terminal restored on Ctrl-C and on SIGTERM.
#[test]
fn root_watch_fits_the_terminal_and_restores_it() {
    require_root();
    let mut fixture = Fixture::spawn(fixture_path!("PHASES"), &[]);
    for _ in 0..5 {
        fixture.command("g");
    }
    let heaps = snapshot_json(fixture.pid(), &[])["heap"]["arenas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["heaps"].as_array().unwrap().len())
        .sum::<usize>();
    let pid = fixture.pid().to_string();
    for (signal, (columns, rows), resized) in [
        (libc::SIGINT, (60, 24), (200, 60)),
        (libc::SIGTERM, (200, 60), (50, 20)),
    ] {
        let mut pty = Pty::spawn(
            &mut pagealloc_command(&["watch", &pid, "--interval", "100ms"]),
            columns,
            rows,
        );
        let fits = |screen: &Vec<String>, columns: usize, rows: usize| {
            screen.len() <= rows
                && screen.iter().all(|l| l.chars().count() <= columns)
                && heap_headers(screen) == heaps
        };
        let output = pty.wait_for(LIMIT, |out| {
            screens(out)
                .iter()
                .any(|s| fits(s, columns as usize, rows as usize))
        });
        let text = String::from_utf8_lossy(&output);
        assert!(
            text.starts_with("\x1b[?1049h"),
            "the alternate screen first"
        );
        assert!(text.contains("\x1b[?25l"), "the cursor hidden");
        pty.resize(resized.0, resized.1);
        pty.wait_for(LIMIT, |out| {
            screens(out)
                .iter()
                .any(|s| fits(s, resized.0 as usize, resized.1 as usize))
        });
        let status = pty.signal_and_wait(signal, LIMIT);
        assert_eq!(status.code(), Some(0), "signal {signal}");
        let text = String::from_utf8_lossy(&pty.output()).to_string();
        let tail = &text[text.rfind("\x1b[J").expect("a frame was drawn")..];
        assert!(
            tail.contains("\x1b[?25h") && tail.ends_with("\x1b[?1049l"),
            "signal {signal}: the terminal is given back last: {tail:?}"
        );
    }
}
