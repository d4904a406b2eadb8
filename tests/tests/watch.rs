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

/// A target that makes many allocations and exits at once, between two samples: watch's last
/// JSON line has no heap, says why, and (live mode) counts every one of them, which the reader
/// still had.
#[test]
fn root_watch_json_ends_with_the_events_up_to_the_exit() {
    require_root();
    const ALLOCS: u64 = 200_000;
    for walk in [false, true] {
        let mut fixture = Fixture::spawn(fixture_path!("EXIT_AT_ONCE"), &[&ALLOCS.to_string()]);
        let mut args = vec!["--format", "json", "--interval", "2s"];
        if walk {
            args.push("--walk");
        }
        let mut watch = Watch::start(fixture.pid(), &args);
        let first = watch.line();
        fixture.send("g");
        let rest = watch.rest();
        let last = rest
            .last()
            .unwrap_or_else(|| panic!("no line after the first: {first}"));
        assert_eq!(last["ended"], "process exited", "{last}");
        assert!(last["heap"].is_null() && last["pages"].is_null(), "{last}");
        assert_eq!(last["heap_error"], "process exited", "{last}");
        assert_eq!(last["pid"], fixture.pid());
        // Only the last line says it ended.
        let ended = rest.iter().filter(|l| l.get("ended").is_some()).count();
        assert_eq!(ended, 1, "{rest:?}");
        if walk {
            assert_eq!(last["mode"], "walk", "{last}");
            assert!(
                last["walk_reason"].as_str().unwrap().contains("--walk"),
                "{last}"
            );
        } else {
            assert_eq!(last["mode"], "live", "{last}");
            let allocs = |line: &Value| line["events"]["allocs"].as_u64().unwrap();
            assert_eq!(allocs(last) - allocs(&first), ALLOCS, "{last}");
            assert_eq!(last["events"]["lost"], 0, "{last}");
        }
        let stderr = watch.child.wait_with_output_stderr();
        let status = watch.child.try_wait().unwrap().expect("exited");
        assert_eq!(status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("exited; watch ends"), "{stderr}");
    }
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

/// What a frame must show whatever the width, or why it does not: the header's five figures
/// with their changes, the arena table's title with the columns that matter (and, in live
/// mode, the chunks freed since the walk), a row for each of `arenas` and their totals with the
/// live chunks, each line within `columns`.
fn frame_shows(
    screen: &[String],
    columns: usize,
    arenas: usize,
    live_chunks: u64,
    live: bool,
) -> Result<(), String> {
    if let Some(wide) = screen.iter().find(|l| l.chars().count() > columns) {
        return Err(format!("a line wider than {columns} columns: {wide:?}"));
    }
    let text = screen.join("\n");
    let changes = text.matches(" since start)").count();
    if changes != 5 {
        return Err(format!(
            "{changes} figures of the header with their changes, not 5"
        ));
    }
    for said in [
        "malloc_trim(0) could return",
        "largest free chunk",
        " took ",
    ] {
        if !text.contains(said) {
            return Err(format!("no {said:?} in the header"));
        }
    }
    let title = (screen.iter())
        .find(|l| l.starts_with("arena "))
        .ok_or("no title line of the arena table")?;
    let wanted: &[&str] = if live {
        &["live", "free+res", "system", "trimmable", "freed"]
    } else {
        &["live", "free+res", "system", "trimmable"]
    };
    for column in wanted {
        if !title.split_whitespace().any(|t| t == *column) {
            return Err(format!("no {column:?} column in {title:?}"));
        }
    }
    let rows = (0..arenas)
        .filter(|i| screen.iter().any(|l| l.starts_with(&format!("{i} "))))
        .count();
    if rows != arenas {
        return Err(format!("{rows} rows of arenas, not {arenas}"));
    }
    let all = (screen.iter())
        .find(|l| l.starts_with("all "))
        .ok_or("no row of the totals")?;
    if !all.contains(&format!(" {live_chunks}/")) {
        return Err(format!(
            "the totals' row has not the {live_chunks} live chunks: {all:?}"
        ));
    }
    Ok(())
}

/// On terminals of 80, 100 and 160 columns, as the tool reads their size, in live and walk mode,
/// in colour and not: no line of a frame is wider than the terminal, and the figures that
/// matter are all there, none cut off.
#[test]
fn root_watch_frames_fit_80_100_and_160_columns() {
    require_root();
    for (walk, columns, color) in [
        (false, 80, "auto"),
        (false, 100, "never"),
        (false, 160, "auto"),
        (true, 80, "never"),
        (true, 100, "auto"),
        (true, 160, "auto"),
    ] {
        let mut fixture = Fixture::spawn(fixture_path!("PHASES"), &[]);
        fixture.command("g");
        fixture.command("g");
        let pid = fixture.pid().to_string();
        let mut args = vec!["watch", &pid, "--interval", "100ms", "--color", color];
        if walk {
            args.push("--walk");
        }
        let case = format!(
            "{} mode, {columns} columns, --color {color}",
            if walk { "walk" } else { "live" }
        );
        let pty = Pty::spawn(&mut pagealloc_command(&args), columns, 60);
        // Attached (and seeded) before the frees, so that live mode has chunks freed since.
        let complete = |output: &[u8]| {
            screens(output)
                .iter()
                .filter(|s| s.iter().any(|l| l.starts_with("mmapped chunks: ")))
                .count()
        };
        pty.wait_for(LIMIT, |out| complete(out) >= 1);
        fixture.command("f");
        let heap = snapshot_json(fixture.pid(), &[])["heap"].clone();
        let arenas = heap["arenas"].as_array().unwrap().len();
        let live_chunks = n(&heap["totals"], "live_chunks");
        let after = pty.output().len();
        // The first frame after the frees may have begun before them; the last may be cut short.
        let output = pty.wait_for(LIMIT, |out| complete(&out[after..]) >= 4);
        let frames: Vec<Vec<String>> = screens(&output[after..])
            .into_iter()
            .filter(|s| s.iter().any(|l| l.starts_with("mmapped chunks: ")))
            .collect();
        for frame in &frames[1..3] {
            if let Err(why) = frame_shows(frame, columns as usize, arenas, live_chunks, !walk) {
                panic!("{case}: {why}; the frame:\n{}", frame.join("\n"));
            }
        }
    }
}

/// How long watch may take to end after a signal: the sample under way (as long as the one it
/// reported) plus the next one begun before the signal was heard, and a margin for a loaded
/// machine.
fn stop_bound(sample_seconds: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(2.0 * sample_seconds) + std::time::Duration::from_secs(5)
}

/// A heap whose walk outlasts `--interval` (3 M chunks, walked every 10 ms): SIGTERM and SIGINT
/// still end watch within a sample's time, with exit code 0.
#[test]
fn root_watch_ends_on_a_signal_when_samples_outlast_the_interval() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("LARGE_HEAP"), &["chunks", "3000000"]);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let args = ["--walk", "--interval", "10ms", "--format", "json"];
        let mut watch = Watch::start(fixture.pid(), &args);
        let first = watch.line();
        let bound = stop_bound(first["sample_seconds"].as_f64().unwrap());
        unsafe { libc::kill(watch.child.id() as i32, signal) };
        assert!(
            exits_within(watch.child.id() as i32, bound),
            "signal {signal}: watch still runs {bound:?} after it"
        );
        let stderr = watch.child.wait_with_output_stderr();
        let status = watch.child.try_wait().unwrap().expect("exited");
        assert_eq!(status.code(), Some(0), "signal {signal}: {stderr}");
    }
}

/// The same on a terminal (Ctrl-C is the SIGINT the terminal sends): watch ends at once and
/// gives the terminal back (cursor shown, alternate screen left).
#[test]
fn root_watch_ends_on_ctrl_c_on_a_terminal_when_samples_outlast_the_interval() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("LARGE_HEAP"), &["chunks", "3000000"]);
    let pid = fixture.pid().to_string();
    let args = ["watch", &pid, "--walk", "--interval", "10ms"];
    let mut pty = Pty::spawn(&mut pagealloc_command(&args), 120, 40);
    // Two frames drawn: the samples follow one another without a wait.
    pty.wait_for(LIMIT, |out| screens(out).len() >= 2);
    let status = pty.signal_and_wait(libc::SIGINT, stop_bound(1.0));
    assert_eq!(status.code(), Some(0));
    let text = String::from_utf8_lossy(&pty.output()).to_string();
    let tail = &text[text.rfind("\x1b[J").expect("a frame was drawn")..];
    assert!(
        tail.contains("\x1b[?25h") && tail.ends_with("\x1b[?1049l"),
        "the terminal is given back last: {tail:?}"
    );
}

/// `watch --stop` while a debugger holds the process for a moment (a thread of this test
/// seizes it, as gdb does when it attaches): the walk due then is skipped with a note in its
/// sample (no heap, the page map still read), and watch goes on; once the debugger has let go,
/// the heap is walked again. In walk mode every sample walks; in live mode the reconciles do.
/// (`snapshot --stop` keeps exit 5: errors.rs.)
#[test]
fn root_watch_stop_skips_a_walk_while_a_debugger_holds_the_process() {
    require_root();
    for mode in ["--walk", "--reconcile"] {
        let fixture = Fixture::spawn(fixture_path!("QUIET"), &[]);
        let pid = fixture.pid();
        let mut args = vec!["--interval", "100ms", "--stop", mode];
        if mode == "--reconcile" {
            args.push("300ms");
        }
        let mut watch = Watch::json(pid, &args);
        let first = watch.line();
        assert!(first["heap"]["totals"].is_object(), "{mode}: {first}");
        let reconciles = |line: &Value| line["events"]["reconciles"].as_u64().unwrap_or(0);
        // The debugger: seizes the process, says who it is, lets go when told (at its exit).
        let (seized, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let debugger = std::thread::spawn(move || {
            let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) };
            assert_eq!(rc, 0, "PTRACE_SEIZE: {}", std::io::Error::last_os_error());
            seized.0.send(unsafe { libc::gettid() }).unwrap();
            let _ = release.1.recv();
        });
        let tracer = seized.1.recv().unwrap();
        let skipped = watch.line_after(SystemTime::now(), |l| !l["heap_error"].is_null());
        let note = skipped["heap_error"].as_str().unwrap();
        assert!(
            note.contains("skipped") && note.contains(&format!("traced by process {tracer}")),
            "{mode}: {skipped}"
        );
        assert!(skipped["heap"].is_null(), "{mode}: {skipped}");
        assert!(
            skipped["pages"]["anon"].as_u64().unwrap() > 0,
            "{mode}: {skipped}"
        );
        release.0.send(()).unwrap();
        debugger.join().unwrap();
        let released = SystemTime::now();
        let walked = watch.line_after(released, |l| {
            l["heap_error"].is_null() && reconciles(l) > reconciles(&skipped)
                || mode == "--walk" && l["heap"]["totals"].is_object()
        });
        // A quiet process: the heap walked again is the one first seen.
        assert_eq!(
            heap_total(&walked, "live_bytes"),
            heap_total(&first, "live_bytes"),
            "{mode}: walked again after the debugger let go: {walked}"
        );
        assert!(
            watch.child.try_wait().unwrap().is_none(),
            "{mode}: watch goes on"
        );
    }
}

/// A signal heard while a walk runs abandons it: watch ends in less than half the time its
/// walks take (the sample it reported, of 10 M chunks), with exit code 0 and no error, instead
/// of walking on to the end first.
#[test]
fn root_watch_abandons_a_walk_in_progress_on_a_signal() {
    require_root();
    let fixture = Fixture::spawn(fixture_path!("LARGE_HEAP"), &["chunks", "10000000"]);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let args = ["--walk", "--interval", "10ms", "--format", "json"];
        let mut watch = Watch::start(fixture.pid(), &args);
        // The next sample begins as this one is written: the signal comes as it walks.
        let first = watch.line();
        let sample = std::time::Duration::from_secs_f64(first["sample_seconds"].as_f64().unwrap());
        let sent = std::time::Instant::now();
        unsafe { libc::kill(watch.child.id() as i32, signal) };
        let ended = exits_within(watch.child.id() as i32, sample / 2);
        let took = sent.elapsed();
        let stderr = watch.child.wait_with_output_stderr();
        assert!(
            ended,
            "signal {signal}: watch still ran {took:?} after it; a sample takes {sample:?}"
        );
        let status = watch.child.try_wait().unwrap().expect("exited");
        assert_eq!(status.code(), Some(0), "signal {signal}: {stderr}");
        assert!(!stderr.contains("pagealloc:"), "signal {signal}: {stderr}");
    }
}
