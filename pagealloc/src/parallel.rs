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

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    #[test]
    fn items_run_side_by_side_and_results_come_back_in_order() {
        // Items 0 and 1 wait for each other: they meet only if two threads run them at once.
        let arrived = Mutex::new(0);
        let both = Condvar::new();
        let met = Mutex::new(true);
        let items: Vec<u64> = (0..1000).collect();
        let squares = super::map(items, 4, |i| {
            if i < 2 {
                let mut count = arrived.lock().unwrap();
                *count += 1;
                both.notify_all();
                let (count, timeout) = both
                    .wait_timeout_while(count, Duration::from_secs(10), |c| *c < 2)
                    .unwrap();
                drop(count);
                if timeout.timed_out() {
                    *met.lock().unwrap() = false;
                }
            }
            i * i
        });
        assert_eq!(squares, (0..1000).map(|i| i * i).collect::<Vec<u64>>());
        assert!(
            *met.lock().unwrap(),
            "items 0 and 1 never ran at the same time"
        );
    }

    #[test]
    fn no_items_and_one_thread() {
        assert!(super::map(Vec::<u8>::new(), 4, |i| i).is_empty());
        assert_eq!(super::map(vec![1, 2, 3], 1, |i| i + 1), vec![2, 3, 4]);
    }
}
