//! Work shared out between threads.
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The threads worth starting for work that keeps every core busy.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(16))
}

/// `f` applied to every item, on up to `threads` threads (this one included), each taking the
/// next item when done with one; the results in the items' order.
pub fn map<T: Send, R: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let count = items.len();
    let jobs: Vec<Mutex<Option<T>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    let done: Vec<Mutex<Option<R>>> = (0..count).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(index) else { break };
            let Some(item) = job.lock().ok().and_then(|mut j| j.take()) else {
                continue;
            };
            let result = f(item);
            if let Ok(mut slot) = done[index].lock() {
                *slot = Some(result);
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.clamp(1, count.max(1)) {
            scope.spawn(work);
        }
        work();
    });
    // A panicking thread has made the scope panic already: every slot is filled.
    done.into_iter()
        .filter_map(|slot| slot.into_inner().ok().flatten())
        .collect()
}
