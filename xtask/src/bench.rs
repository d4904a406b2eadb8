//! `cargo xtask bench snapshot`: pagealloc's snapshot of ~1 GiB heaps of ~10 million chunks in
//! the shapes real programs make, each side by side with its floor: merely reading the heaps'
//! present pages into a buffer faulted in beforehand, by one thread and by two (pagealloc uses
//! every core). Medians of interleaved runs, and the snapshot's peak memory.
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, compile_workload, mib, run};

const RUNS: usize = 7;
const PAGE: u64 = 4096;

/// The heap shapes of `xtask/bench/heaps.c` (its header says what each one is).
pub const SHAPES: [&str; 5] = [
    "scattered",
    "mass-free",
    "unsorted",
    "one-fastbin",
    "arenas",
];

/// What one shape measured: medians and the snapshot's peak RSS.
struct Figures {
    shape: &'static str,
    heap_bytes: u64,
    snapshot: Duration,
    floors: [Duration; 2],
    peak_rss: u64,
}

pub fn snapshot(root: &Path, chunks: u64, shape: Option<&str>) -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "pagealloc"]))?;
    let workload = root.join("target/bench/heaps");
    compile_workload("-O2", &root.join("xtask/bench/heaps.c"), &workload)?;
    run(Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(root.join("target/bench/peak_rss"))
        .arg(root.join("xtask/bench/peak_rss.c")))?;
    let mut all = Vec::new();
    for name in SHAPES.into_iter().filter(|&s| shape.is_none_or(|n| n == s)) {
        println!("bench: building the {name} heap of {chunks} chunks...");
        let mut child = Command::new(&workload)
            .args([name, &chunks.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let result = measure(root, name, &mut child);
        drop(child.stdin.take());
        child.wait()?;
        all.push(result?);
    }
    if all.len() > 1 {
        println!("\nbench snapshot: medians of {RUNS} interleaved runs per shape");
        println!(
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>9} {:>8}",
            "shape",
            "heap MiB",
            "snapshot",
            "floor 1t",
            "floor 2t",
            "÷1t",
            "÷2t",
            "peak RSS",
            "÷heap"
        );
        for f in &all {
            println!(
                "{:<12} {:>9.0} {:>7.3} s {:>7.3} s {:>7.3} s {:>7.2} {:>7.2} {:>5.0} MiB {:>8.3}",
                f.shape,
                mib(f.heap_bytes),
                f.snapshot.as_secs_f64(),
                f.floors[0].as_secs_f64(),
                f.floors[1].as_secs_f64(),
                ratio(f.snapshot, f.floors[0]),
                ratio(f.snapshot, f.floors[1]),
                mib(f.peak_rss),
                f.peak_rss as f64 / f.heap_bytes as f64
            );
        }
    }
    Ok(())
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

fn measure(root: &Path, shape: &'static str, child: &mut Child) -> Result<Figures> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the bench workload did not start: {line:?}");
    }
    let pid = child.id();
    let pagealloc = root.join("target/release/pagealloc");
    let launcher = root.join("target/bench/peak_rss");
    // Timed and measured by a small launcher: see xtask/bench/peak_rss.c for why.
    let snapshot_once = || -> Result<(Duration, u64)> {
        let out = Command::new(&launcher)
            .arg(&pagealloc)
            .args(["snapshot", &pid.to_string(), "--format", "json"])
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("pagealloc snapshot failed: {}", out.status);
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let mut words = line.split_whitespace();
        let seconds: f64 = words.next().context("no time from peak_rss")?.parse()?;
        let kib: u64 = words.next().context("no peak RSS from peak_rss")?.parse()?;
        Ok((Duration::from_secs_f64(seconds), kib * 1024))
    };
    // This snapshot also warms the layout cache and the page cache of the binary: not what
    // is measured.
    let heaps = heap_ranges(&pagealloc, pid)?;
    let heap_bytes: u64 = heaps.iter().map(|(start, end)| end - start).sum();
    let mut snapshot = Vec::new();
    let mut peak_rss = 0;
    // The floor, read by one thread and by two (pagealloc uses every core).
    let mut floors = [Vec::new(), Vec::new()];
    let mut bytes = 0;
    // The floor reads into a buffer faulted in beforehand: the cost of the reads alone.
    let mut buffer = vec![1u8; heap_bytes as usize];
    // Interleaved, so that all see the same machine load.
    for _ in 0..RUNS {
        let (elapsed, rss) = snapshot_once()?;
        snapshot.push(elapsed);
        peak_rss = peak_rss.max(rss);
        for (threads, floor) in (1..).zip(floors.iter_mut()) {
            let start = Instant::now();
            bytes = read_present(pid, &heaps, &mut buffer, threads)?;
            floor.push(start.elapsed());
        }
    }
    let figures = Figures {
        shape,
        heap_bytes,
        snapshot: median(snapshot),
        floors: floors.map(median),
        peak_rss,
    };
    println!(
        "bench snapshot {shape}: {} heap{} of {:.0} MiB, {:.0} MiB present; medians of {RUNS} \
         interleaved runs",
        heaps.len(),
        if heaps.len() == 1 { "" } else { "s" },
        mib(heap_bytes),
        mib(bytes)
    );
    println!(
        "  pagealloc snapshot --format json              {:>8.3} s   peak RSS {:.0} MiB ({:.3} \
         of the heap)",
        figures.snapshot.as_secs_f64(),
        mib(peak_rss),
        peak_rss as f64 / heap_bytes as f64
    );
    for (threads, floor) in (1..).zip(figures.floors) {
        println!(
            "  floor: read the present heap pages, {threads} thread{} {:>8.3} s   ratio {:.2}",
            if threads == 1 { " " } else { "s" },
            floor.as_secs_f64(),
            ratio(figures.snapshot, floor)
        );
    }
    Ok(figures)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The heaps of every arena, as the snapshot walked them: the floor reads the same memory
/// the walker does (whatever glibc's heap size, huge pages or not).
fn heap_ranges(pagealloc: &Path, pid: u32) -> Result<Vec<(u64, u64)>> {
    let out = Command::new(pagealloc)
        .args(["snapshot", &pid.to_string(), "--format", "json"])
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("pagealloc snapshot failed: {}", out.status);
    }
    let snapshot: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let arenas = snapshot["heap"]["arenas"]
        .as_array()
        .context("the snapshot has no heap map")?;
    let mut heaps = Vec::new();
    for heap in arenas
        .iter()
        .flat_map(|a| a["heaps"].as_array().into_iter().flatten())
    {
        let bound = |key: &str| heap[key].as_u64().context("a heap without bounds");
        heaps.push((bound("start")?, bound("end")?));
    }
    if heaps.is_empty() {
        bail!("the workload has no heap");
    }
    Ok(heaps)
}

/// The floor: which pages of `heaps` are present (pagemap), then one read per run of present
/// pages (in pieces of at most 8 MiB, over one or two threads), into `buffer`.
fn read_present(pid: u32, heaps: &[(u64, u64)], buffer: &mut [u8], threads: usize) -> Result<u64> {
    const PIECE_PAGES: u64 = (8 << 20) / PAGE;
    let mut pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    // (first page, end page) of each piece, as addresses / PAGE.
    let mut pieces: Vec<(u64, u64)> = Vec::new();
    for &(start, end) in heaps {
        let pages = ((end - start) / PAGE) as usize;
        pagemap.seek(SeekFrom::Start(start / PAGE * 8))?;
        let mut entries = vec![0u8; pages * 8];
        pagemap.read_exact(&mut entries)?;
        let present = |i: usize| entries[i * 8 + 7] >> 7 == 1;
        for i in (0..pages).filter(|&i| present(i)) {
            let page = start / PAGE + i as u64;
            match pieces.last_mut() {
                Some(last) if last.1 == page && last.1 - last.0 < PIECE_PAGES => last.1 += 1,
                _ => pieces.push((page, page + 1)),
            }
        }
    }
    let mut jobs: Vec<(u64, &mut [u8])> = Vec::with_capacity(pieces.len());
    let mut rest = buffer;
    for &(lo, hi) in &pieces {
        let (slice, tail) = std::mem::take(&mut rest).split_at_mut(((hi - lo) * PAGE) as usize);
        rest = tail;
        jobs.push((lo * PAGE, slice));
    }
    let read = |jobs: &mut [(u64, &mut [u8])]| -> Result<u64> {
        let mut total = 0;
        for (addr, slice) in jobs.iter_mut() {
            let local = Iovec {
                base: slice.as_mut_ptr(),
                len: slice.len(),
            };
            let remote = Iovec {
                base: *addr as *mut u8,
                len: slice.len(),
            };
            // SAFETY: both vectors describe valid buffers of the given lengths.
            let n = unsafe { process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
            if n < 0 {
                bail!(
                    "process_vm_readv failed: {}",
                    std::io::Error::last_os_error()
                );
            }
            total += n as u64;
        }
        Ok(total)
    };
    if threads == 1 {
        return read(&mut jobs);
    }
    let (a, b) = jobs.split_at_mut(pieces.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| read(b));
        let mine = read(a)?;
        Ok(mine + other.join().expect("reader thread")?)
    })
}

#[repr(C)]
struct Iovec {
    base: *mut u8,
    len: usize,
}

unsafe extern "C" {
    fn process_vm_readv(
        pid: i32,
        local: *const Iovec,
        liovcnt: u64,
        remote: *const Iovec,
        riovcnt: u64,
        flags: u64,
    ) -> isize;
}
