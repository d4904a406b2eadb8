//! Monitors opened off the sampling thread. Opening one in live mode attaches the probes and
//! walks the heap once, which takes seconds while the kernel detaches other probes (it does one
//! uprobe at a time, attaches included): a few threads of their own open them and hand each
//! back to the sampling thread, which never waits for them.
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use super::ServeOptions;
use crate::error::{Error, Result};
use crate::monitor::{ModeChoice, Monitor, MonitorOptions};

/// How many monitors are opened at once.
pub const OPENERS: usize = 2;

/// What wakes the sampling thread besides its timer.
pub enum Wake {
    /// serve ends.
    Stop,
    /// A monitor opened, or why it could not be (the outer error: a bug, the panic said), and
    /// the CPU seconds the agent used meanwhile.
    Opened {
        pid: i32,
        opened: std::thread::Result<Result<Box<Monitor>>>,
        cpu: f64,
    },
}

/// The opening threads: processes to open are handed to them one at a time, and each comes
/// back as a [`Wake::Opened`].
pub struct Openers {
    queue: Sender<i32>,
    /// Handed over and not back yet.
    in_progress: usize,
}

impl Openers {
    /// Starts [`OPENERS`] threads that open monitors with `options` and send them to `back`;
    /// they end with the `Openers`.
    pub fn start(options: &ServeOptions, back: &Sender<Wake>) -> Result<Openers> {
        let (queue, handed) = mpsc::channel();
        let handed = Arc::new(Mutex::new(handed));
        for n in 0..OPENERS {
            let (options, back, handed) = (options.clone(), back.clone(), handed.clone());
            std::thread::Builder::new()
                .name(format!("opener{n}"))
                .spawn(move || open_each(&options, &handed, &back))
                .map_err(|e| Error::io("starting the threads that open the processes", e))?;
        }
        Ok(Openers {
            queue,
            in_progress: 0,
        })
    }

    /// Whether another process may be handed over now.
    pub fn idle(&self) -> bool {
        self.in_progress < OPENERS
    }

    pub fn open(&mut self, pid: i32) {
        if self.queue.send(pid).is_ok() {
            self.in_progress += 1;
        }
    }

    /// One came back.
    pub fn opened(&mut self) {
        self.in_progress = self.in_progress.saturating_sub(1);
    }
}

/// An opening thread: until the queue closes (serve ends), each process handed over opened and
/// sent back. A process gone meanwhile comes back as the error that says so; a bug met while
/// opening one as the panic, the thread going on with the next.
fn open_each(options: &ServeOptions, handed: &Mutex<Receiver<i32>>, back: &Sender<Wake>) {
    loop {
        let next = handed.lock().map(|queue| queue.recv());
        let Ok(Ok(pid)) = next else { return };
        let cpu_before = own_cpu_seconds();
        let opened =
            std::panic::catch_unwind(AssertUnwindSafe(|| open(options, pid).map(Box::new)));
        let cpu = own_cpu_seconds() - cpu_before;
        // The sampling thread gone (serve ends): what was opened is dropped here.
        if back.send(Wake::Opened { pid, opened, cpu }).is_err() {
            return;
        }
    }
}

/// A monitor in the mode asked for; a process whose heap cannot be read (no debug info, not
/// glibc) is followed by its pages alone.
fn open(options: &ServeOptions, pid: i32) -> Result<Monitor> {
    let mode = match options.live {
        Some(live) => ModeChoice::Live(live),
        None => ModeChoice::Walk("serve's default (--live follows allocation events)".into()),
    };
    let monitor_options = MonitorOptions {
        debug: options.debug.clone(),
        stop: false,
        mode,
        max_rate: options.max_rate,
    };
    match Monitor::open(pid, monitor_options.clone()) {
        Err(Error::Heap(why)) => Monitor::open(
            pid,
            MonitorOptions {
                mode: ModeChoice::Walk(why.to_string()),
                ..monitor_options
            },
        ),
        other => other,
    }
}

/// The CPU time this process used so far, all threads, in seconds. (An open and a sample at the
/// same time each count the other's CPU too: the budget is overcharged then, never exceeded.)
pub fn own_cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}
