//! `cargo xtask bench snapshot`: pagealloc's snapshot of a ~1 GiB, ~10 million chunk heap, side
//! by side with the floor (merely reading that heap's present pages into a buffer faulted in
//! beforehand, by one thread and by two: pagealloc uses every core), medians of several runs.
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, run};

const RUNS: usize = 7;
const PAGE: u64 = 4096;

pub fn snapshot(root: &Path, chunks: u64) -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "pagealloc"]))?;
    let workload = root.join("target/bench/bigheap");
    std::fs::create_dir_all(workload.parent().unwrap())?;
    run(Command::new("gcc")
        .args(["-O2", "-fno-builtin-malloc", "-fno-builtin-free", "-o"])
        .arg(&workload)
        .arg(root.join("xtask/bench/bigheap.c")))?;
    println!("bench: building a heap of {chunks} chunks...");
    let mut child = Command::new(&workload)
        .arg(chunks.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let result = measure(root, &mut child);
    drop(child.stdin.take());
    child.wait()?;
    result
}

fn measure(root: &Path, child: &mut Child) -> Result<()> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the bench workload did not start: {line:?}");
    }
    let pid = child.id();
    let pagealloc = root.join("target/release/pagealloc");
    let snapshot_once = || -> Result<Duration> {
        let start = Instant::now();
        let out = Command::new(&pagealloc)
            .args(["snapshot", &pid.to_string(), "--format", "json"])
            .stdout(Stdio::null())
            .status()?;
        let elapsed = start.elapsed();
        if !out.success() {
            bail!("pagealloc snapshot failed: {out}");
        }
        Ok(elapsed)
    };
    // Warm the layout cache and the page cache of the binary: not what is measured.
    snapshot_once()?;
    let (heap_start, heap_end) = heap_range(pid)?;
    let mut snapshot = Vec::new();
    // The floor, read by one thread and by two (pagealloc uses every core).
    let mut floors = [Vec::new(), Vec::new()];
    let mut bytes = 0;
    // The floor reads into a buffer faulted in beforehand: the cost of the reads alone.
    let mut buffer = vec![1u8; (heap_end - heap_start) as usize];
    // Interleaved, so that all see the same machine load.
    for _ in 0..RUNS {
        snapshot.push(snapshot_once()?);
        for (threads, floor) in (1..).zip(floors.iter_mut()) {
            let start = Instant::now();
            bytes = read_present(pid, heap_start, heap_end, &mut buffer, threads)?;
            floor.push(start.elapsed());
        }
    }
    let snapshot = median(snapshot);
    println!(
        "bench snapshot: heap {:.0} MiB, {:.0} MiB present; medians of {RUNS} interleaved runs",
        (heap_end - heap_start) as f64 / 1048576.0,
        bytes as f64 / 1048576.0
    );
    println!(
        "  pagealloc snapshot --format json              {:>8.3} s",
        snapshot.as_secs_f64()
    );
    for (threads, floor) in (1..).zip(floors) {
        let floor = median(floor);
        println!(
            "  floor: read the present heap pages, {threads} thread{} {:>8.3} s   ratio {:.2}",
            if threads == 1 { " " } else { "s" },
            floor.as_secs_f64(),
            snapshot.as_secs_f64() / floor.as_secs_f64()
        );
    }
    Ok(())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn heap_range(pid: u32) -> Result<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let line = maps
        .lines()
        .find(|l| l.ends_with("[heap]"))
        .context("the workload has no [heap]")?;
    let range = line.split_whitespace().next().unwrap();
    let (start, end) = range.split_once('-').unwrap();
    Ok((
        u64::from_str_radix(start, 16)?,
        u64::from_str_radix(end, 16)?,
    ))
}

/// The floor: which pages are present (pagemap), then one read per run of present pages (in
/// pieces of at most 8 MiB, over one or two threads), into `buffer`.
fn read_present(pid: u32, start: u64, end: u64, buffer: &mut [u8], threads: usize) -> Result<u64> {
    const PIECE_PAGES: usize = (8 << 20) / PAGE as usize;
    let pages = ((end - start) / PAGE) as usize;
    let mut pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    pagemap.seek(SeekFrom::Start(start / PAGE * 8))?;
    let mut entries = vec![0u8; pages * 8];
    pagemap.read_exact(&mut entries)?;
    let present = |i: usize| entries[i * 8 + 7] >> 7 == 1;
    let mut pieces: Vec<(usize, usize)> = Vec::new();
    for i in (0..pages).filter(|&i| present(i)) {
        match pieces.last_mut() {
            Some(last) if last.1 == i && last.1 - last.0 < PIECE_PAGES => last.1 += 1,
            _ => pieces.push((i, i + 1)),
        }
    }
    let mut jobs: Vec<(u64, &mut [u8])> = Vec::with_capacity(pieces.len());
    let mut rest = buffer;
    let mut consumed = 0;
    for &(lo, hi) in &pieces {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(lo * PAGE as usize - consumed);
        let (slice, tail) = tail.split_at_mut((hi - lo) * PAGE as usize);
        rest = tail;
        consumed = hi * PAGE as usize;
        jobs.push((start + lo as u64 * PAGE, slice));
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
