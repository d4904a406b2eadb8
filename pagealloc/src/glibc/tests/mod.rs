//! The arena walker on synthetic heaps.
//!
//! [`Synthetic`] lays out glibc's structures in an [`ImageMemory`] at the offsets of this
//! machine's glibc (read from its debug info: nothing here is hard-coded), so the walker's
//! figures can be compared with what was laid out. The fuzz suites then corrupt such images in
//! thousands of deterministic ways (xorshift64* with fixed seeds: a failure names its suite and
//! case, which reproduce) and check that the walker returns in bounded time, that its figures
//! count every heap byte exactly once, and that it reports what it cannot make sense of.
//!
//! Every suite runs case by case in a child process (this test binary, re-executed) under an
//! address-space limit, so that a walker that hangs or exhausts memory fails its case instead
//! of the test run or the machine. One case reruns alone with
//! `PAGEALLOC_WALKER_SUITE=suite:case:case+1 cargo test -p pagealloc glibc::tests::suite_worker
//! -- --ignored --exact --nocapture`; `PAGEALLOC_WALKER_SHOW=n` lists n failures of each kind.
//!
//! The `regression_*` tests are one corruption each that the walker mishandled: a hang, a panic,
//! bytes counted twice, or a silent wrong answer.
use std::io::Write;
use std::panic::catch_unwind;
use std::time::Duration;

use runner::*;
use suites::*;
use synthetic::*;
use walking::*;

/// `Err(format!(...))` unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

mod corruptions;
mod debug_info;
mod derived;
mod runner;
mod scenarios;
mod suites;
mod synthetic;
mod walking;

/// Runs cases `from..to` of a suite, printing a start and a verdict line for each.
#[test]
#[ignore = "the suites' child process: does nothing without PAGEALLOC_WALKER_SUITE"]
fn suite_worker() {
    let Ok(spec) = std::env::var(SUITE_ENV) else {
        return;
    };
    let mut parts = spec.split(':');
    let (name, from, to) = (
        parts.next().unwrap(),
        parts.next().unwrap().parse::<usize>().unwrap(),
        parts.next().unwrap().parse::<usize>().unwrap(),
    );
    let suite = SUITES.iter().find(|s| s.name == name).unwrap();
    glibc();
    install_panic_hook();
    let mut out = std::io::stdout();
    for case in from..to {
        writeln!(out, "@@start {case}").unwrap();
        out.flush().unwrap();
        *lock(&WALK_TIME) = Duration::ZERO;
        let verdict = catch_unwind(|| (suite.run)(case)).unwrap_or_else(|p| {
            Err(format!(
                "test bug: the case panicked: {}",
                panic_message(&*p)
            ))
        });
        let micros = lock(&WALK_TIME).as_micros();
        let line = match verdict {
            Ok(()) => format!("@@pass {case} {micros}"),
            Err(why) => format!("@@fail {case} {micros} {}", why.replace('\n', " | ")),
        };
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn valid_heaps_are_counted_exactly() {
    expect_suite("valid");
}

#[test]
fn fuzz_random_words() {
    expect_suite("random_words");
}

#[test]
fn fuzz_targeted_corruptions() {
    expect_suite("targeted");
}

#[test]
fn fuzz_whole_segment_random() {
    expect_suite("whole_segment");
}

#[test]
fn pages_not_resident() {
    expect_suite("holes");
}

// One test per corruption that once broke the walker: a hang, a panic, bytes counted twice, or a
// silent wrong answer.

#[test]
fn regression_reread_after_a_bad_chunk() {
    expect_suite("reread_after_a_bad_chunk");
}

#[test]
fn regression_fencepost_then_garbage() {
    expect_suite("fencepost_then_garbage");
}

#[test]
fn regression_zero_size() {
    expect_suite("zero_size");
}

#[test]
fn regression_heap_info_size_past_the_heap() {
    expect_suite("heap_info_size_past_the_heap");
}

#[test]
fn regression_heap_info_size_below_the_first_chunk() {
    expect_suite("heap_info_size_below_the_first_chunk");
}

#[test]
fn regression_heap_info_prev_cycle() {
    expect_suite("heap_info_prev_cycle");
}

#[test]
fn regression_top_near_the_end_of_the_address_space() {
    expect_suite("top_near_the_end_of_the_address_space");
}

#[test]
fn regression_huge_hp_pagesize() {
    expect_suite("huge_hp_pagesize");
}

#[test]
fn regression_huge_mmapped_size() {
    expect_suite("huge_mmapped_size");
}

#[test]
fn regression_top_past_the_heap_mapping() {
    expect_suite("top_past_the_heap_mapping");
}

#[test]
fn regression_top_on_a_tcache_link() {
    expect_suite("top_on_a_tcache_link");
}

#[test]
fn regression_arena_top_short_of_its_heap_end() {
    expect_suite("arena_top_short_of_its_heap_end");
}
