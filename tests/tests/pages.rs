//! The page map against regions whose states the fixture controls.
use std::os::unix::process::CommandExt;
use std::process::Command;

use pagealloc_tests::*;
use serde_json::Value;

const PAGE: u64 = 4096;

fn pages_fixture() -> Fixture {
    Fixture::spawn(
        fixture_path!("PAGES"),
        &[std::env::temp_dir().to_str().unwrap()],
    )
}

fn mapping_at(doc: &Value, start: u64) -> &Value {
    doc["mappings"]
        .as_array()
        .expect("mappings array")
        .iter()
        .find(|m| m["start"].as_u64() == Some(start))
        .unwrap_or_else(|| panic!("no mapping starts at {start:#x}"))
}

fn count(mapping: &Value, state: &str) -> u64 {
    mapping["pages"][state]
        .as_u64()
        .unwrap_or_else(|| panic!("pages.{state} missing in {mapping}"))
}

/// The kernel's own smaps figure (in pages) for the mapping starting at `start`.
fn smaps_pages(pid: i32, start: u64, key: &str) -> u64 {
    let process = process(pid);
    let maps = process.smaps().expect("smaps");
    let map = maps
        .into_iter()
        .find(|m| m.address.0 == start)
        .expect("mapping in smaps");
    map.extension.map.get(key).copied().unwrap_or(0) / PAGE
}

#[test]
fn root_page_states_match_the_fixture() {
    require_root();
    let _swap = TempSwap::ensure();
    let fixture = pages_fixture();
    assert_eq!(
        fixture.get("pageout_ok"),
        1,
        "MADV_PAGEOUT is supported here"
    );
    let doc = snapshot_json(fixture.pid(), &[]);
    assert!(
        doc["limitations"].as_array().unwrap().is_empty(),
        "root sees everything: {}",
        doc["limitations"]
    );

    let untouched = mapping_at(&doc, fixture.get("untouched"));
    assert_eq!(
        untouched["end"].as_u64().unwrap() - untouched["start"].as_u64().unwrap(),
        64 * PAGE
    );
    assert_eq!(untouched["perms"], "rw-p");
    assert_eq!(untouched["path"], "");
    assert_eq!(count(untouched, "absent"), 64);

    let touched = mapping_at(&doc, fixture.get("touched"));
    assert_eq!(count(touched, "anon"), 64);
    assert_eq!(count(touched, "absent"), 0);

    let file = mapping_at(&doc, fixture.get("file"));
    assert_eq!(file["perms"], "r--s");
    assert!(file["path"].as_str().unwrap().contains("pages-fixture-"));
    assert_eq!(count(file, "file") + count(file, "thp_file"), 32);
    assert_eq!(count(file, "anon") + count(file, "thp_anon"), 0);

    let huge_start = fixture.get("huge");
    let huge = mapping_at(&doc, huge_start);
    let kernel_huge = smaps_pages(fixture.pid(), huge_start, "AnonHugePages");
    assert!(
        kernel_huge >= 512,
        "the kernel gave the MADV_HUGEPAGE region a huge page"
    );
    assert_eq!(count(huge, "thp_anon"), kernel_huge);
    assert_eq!(count(huge, "thp_anon") + count(huge, "anon"), 1024);

    let pageout_start = fixture.get("pageout");
    let pageout = mapping_at(&doc, pageout_start);
    let kernel_swapped = smaps_pages(fixture.pid(), pageout_start, "Swap");
    assert!(kernel_swapped > 0, "MADV_PAGEOUT swapped something out");
    assert_eq!(count(pageout, "swapped"), kernel_swapped);
    assert_eq!(count(pageout, "swapped") + count(pageout, "anon"), 64);

    // Totals are the sums over the mappings.
    for state in ["anon", "file", "thp_anon", "thp_file", "swapped", "absent"] {
        let sum: u64 = doc["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| count(m, state))
            .sum();
        assert_eq!(doc["totals"][state].as_u64(), Some(sum), "totals.{state}");
    }
}

/// The lines drawn for a mapping: from its header (its page counts on a line of their own
/// where it is narrow) to the blank line after it.
fn drawn_lines(text: &str, start: u64) -> Vec<String> {
    let header = format!("{start:x}-");
    text.lines()
        .skip_while(|l| !l.starts_with(&header))
        .skip(1)
        .skip_while(|l| l.trim_start().starts_with('['))
        .take_while(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn root_text_map_draws_each_page() {
    require_root();
    let fixture = pages_fixture();
    let pid = fixture.pid().to_string();
    let output = pagealloc(&["snapshot", &pid, "--color", "never"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("# anonymous"), "legend present");

    let touched = fixture.get("touched");
    assert_eq!(
        drawn_lines(&text, touched),
        [format!("{touched:>12x}  {}", "#".repeat(64))]
    );
    let untouched = fixture.get("untouched");
    assert_eq!(
        drawn_lines(&text, untouched),
        [format!("{untouched:>12x}  {}", ".".repeat(64))]
    );
    // 1024 huge pages at 80 a line: one line, a collapsed repeat of 11 more, a last line of 64.
    let huge = fixture.get("huge");
    assert_eq!(
        drawn_lines(&text, huge),
        [
            format!("{huge:>12x}  {}", "H".repeat(80)),
            format!(
                "{:>12}  ┆ 11 more lines like the one above, up to {:x}",
                "",
                huge + 960 * PAGE
            ),
            format!("{:>12x}  {}", huge + 960 * PAGE, "H".repeat(64)),
        ]
    );

    let narrow = pagealloc(&["snapshot", &pid, "--color", "never", "--width", "40"]);
    let narrow = String::from_utf8(narrow.stdout).unwrap();
    assert_eq!(
        drawn_lines(&narrow, touched),
        [
            format!("{touched:>12x}  {}", "#".repeat(40)),
            format!("{:>12x}  {}", touched + 40 * PAGE, "#".repeat(24)),
        ]
    );
}

#[test]
fn colour_follows_flag_and_no_color() {
    let fixture = pages_fixture();
    let pid = fixture.pid().to_string();
    let run = |color: &str, no_color: bool| {
        let mut command = pagealloc_command(&["snapshot", &pid, "--color", color]);
        if no_color {
            command.env("NO_COLOR", "1");
        }
        let output = command.output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let escape = "\x1b[38;5;";
    assert!(run("always", false).contains(escape));
    assert!(
        run("always", true).contains(escape),
        "--color=always beats NO_COLOR"
    );
    assert!(!run("never", false).contains(escape));
    assert!(!run("auto", false).contains(escape), "not a terminal");
    // Two pages per cell in colour: the 64 touched pages fill 32 cells of one line... drawn as
    // upper half blocks with the anon colour on top.
    let coloured = run("always", false);
    let touched = fixture.get("touched");
    let lines = drawn_lines(&coloured, touched);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].matches('▀').count(), 64);
}

#[test]
fn root_unprivileged_user_sees_what_it_can() {
    require_root();
    const NOBODY: u32 = 65534;
    let fixture = Fixture::spawn_with(
        Command::new(fixture_path!("PAGES"))
            .arg("/tmp")
            .uid(NOBODY)
            .gid(NOBODY),
    );
    let pid = fixture.pid().to_string();
    let output = pagealloc_command(&["snapshot", &pid, "--format", "json"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The heap of a process of one's own needs no root.
    assert!(doc["heap_error"].is_null(), "{}", doc["heap_error"]);
    assert!(
        doc["heap"]["arenas"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    );
    let notes = doc["limitations"].to_string();
    assert!(
        notes.contains("huge pages") && notes.contains("root"),
        "{notes}"
    );
    // Residency is still known; huge pages are not.
    let huge = mapping_at(&doc, fixture.get("huge"));
    assert_eq!(count(huge, "anon"), 1024);
    assert_eq!(count(huge, "thp_anon"), 0);
    assert_eq!(count(mapping_at(&doc, fixture.get("touched")), "anon"), 64);
    // Pages only read map the zero page, which only its frame number tells apart: resident
    // here, and the limitation says so.
    assert_eq!(
        count(mapping_at(&doc, fixture.get("untouched")), "anon"),
        64
    );
    assert!(notes.contains("zero page"), "{notes}");
    // Said once in the text output too.
    let text = pagealloc_command(&["snapshot", &pid, "--color", "never"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert_eq!(text.matches("note: huge pages").count(), 1);
}
