//! `pagealloc watch`: samples of one process every interval, drawn over the last on a terminal,
//! appended otherwise, or one JSON line each. It ends when the process exits, after `--count`
//! samples, or on Ctrl-C or SIGTERM, always with the terminal given back.
mod terminal;

use std::io::IsTerminal;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM, SIGWINCH};
use signal_hook::iterator::Signals;

use crate::debuginfo::DebugOptions;
use crate::error::{Error, Result};
use crate::live::{Live, LiveOptions};
use crate::render::screen::{self, ScreenOptions};
use crate::render::{self, ColorChoice, Style};
use crate::session::{Session, SessionOptions};
use crate::state::heap::GRANULE;
use crate::state::{HeapUnavailable, History, Sample};
use terminal::Screen;

#[derive(Clone, Debug)]
pub struct WatchOptions {
    pub pid: i32,
    pub interval: Duration,
    /// Stop after this many samples.
    pub count: Option<u64>,
    /// One JSON line per sample instead of pictures.
    pub json: bool,
    pub color: ColorChoice,
    /// Pixels per row; None: the terminal's width.
    pub width: Option<usize>,
    pub arena: Option<usize>,
    /// Draw the page map too.
    pub pages: bool,
    /// Bytes per pixel of the heap maps; None: what fits the screen.
    pub scale: Option<u64>,
    pub debug: DebugOptions,
    /// Walk the heap at every sample; do not attach probes.
    pub walk: bool,
    pub live: LiveOptions,
    /// Above this many allocation calls and frees a second, the probes come off (walk mode)
    /// until a later try finds the rate lower.
    pub max_rate: u64,
}

/// Takes the per-call probes off a process that calls the allocator faster than `max_rate`
/// (each call pays a trap), and tries them again after a while, waiting twice as long after
/// each try that finds it still too busy.
struct Guard {
    max_rate: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// The first wait before the probes are tried again, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_LONGEST: Duration = Duration::from_secs(600);

impl Guard {
    fn new(max_rate: u64) -> Guard {
        Guard {
            max_rate,
            retry_at: None,
            backoff: RETRY_FIRST,
        }
    }

    /// Why the probes must come off, if the last interval's rate was above the limit.
    fn too_busy(&mut self, history: &History) -> Option<String> {
        let (now, before) = (history.current_events?, history.previous_events?);
        let seconds = history.achieved_interval()?.as_secs_f64();
        let calls = (now.allocs + now.frees).saturating_sub(before.allocs + before.frees);
        let rate = calls as f64 / seconds.max(1e-3);
        if rate <= self.max_rate as f64 {
            self.backoff = RETRY_FIRST;
            return None;
        }
        let wait = self.backoff;
        self.retry_at = Some(Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(RETRY_LONGEST);
        Some(format!(
            "{rate:.0} calls/s is above --max-rate {}: the probes are off (each call pays a \
             trap), trying again in {}",
            self.max_rate,
            humantime::format_duration(wait)
        ))
    }

    fn retry_due(&mut self) -> bool {
        let due = self.retry_at.is_some_and(|at| Instant::now() >= at);
        if due {
            self.retry_at = None;
        }
        due
    }
}

/// The screen size assumed when the output is not a terminal: frames appended to a file or a
/// pipe stay readable.
const APPENDED_COLUMNS: usize = 80 + render::LABEL_WIDTH;
const APPENDED_ROWS: usize = 50;

/// What can interrupt the wait for the next sample.
enum Wake {
    /// Ctrl-C or SIGTERM: end.
    Stop,
    /// The terminal changed size: draw again.
    Resize,
}

/// Where samples go.
enum Output {
    Screen(Screen),
    Appended,
    Json,
}

pub fn run(options: WatchOptions) -> Result<()> {
    let wakes = Wakes::listen()?;
    let mut session = Session::open(
        options.pid,
        SessionOptions {
            heap: true,
            debug: options.debug.clone(),
        },
    )?;
    let name = session.name();
    let mut guard = Guard::new(options.max_rate);
    let (mut live, mut walk_reason) = if options.walk {
        (None, Some("asked for (--walk)".to_string()))
    } else {
        match Live::start(&mut session, options.live) {
            Ok(live) => (Some(live), None),
            Err(e @ (Error::ProcessExited { .. } | Error::Heap(_))) => return Err(e),
            Err(e) => (None, Some(live_unavailable(&e))),
        }
    };
    if let Some(why) = &walk_reason {
        log::info!("walk mode: {why}");
    }
    let mut output = if options.json {
        Output::Json
    } else if std::io::stdout().is_terminal() {
        Output::Screen(Screen::enter().map_err(|e| Error::io("preparing the terminal", e))?)
    } else {
        Output::Appended
    };
    let mut history = History::default();
    let started = Instant::now();
    loop {
        let sample = match &mut live {
            Some(live) => live.sample(&mut session),
            None => session.sample(),
        };
        let sample = match sample {
            Ok(sample) => sample,
            Err(
                Error::ProcessExited { .. } | Error::NoSuchProcess { .. } | Error::Zombie { .. },
            ) => {
                drop(output);
                eprintln!("pagealloc: process {} exited; watch ends", options.pid);
                return Ok(());
            }
            Err(Error::ProcessExeced { .. }) => {
                drop(output);
                eprintln!(
                    "pagealloc: process {} exec'd another program; watch ends",
                    options.pid
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        // Without debug info, or for a program that is not glibc's, there is no heap to watch.
        if let Some(why @ (HeapUnavailable::NoDebugInfo(_) | HeapUnavailable::NotGlibc(_))) =
            sample.heap_unavailable()
        {
            return Err(Error::Heap(why.clone()));
        }
        if let Some(heap) = sample.heap_map() {
            render::check_arena(options.arena, heap, options.pid)?;
        }
        history.push(&sample);
        // The overhead guard: per-call probes off above the rate, on again later.
        if live.is_some()
            && let Some(why) = guard.too_busy(&history)
        {
            live = None;
            log::info!("walk mode: {why}");
            walk_reason = Some(why);
        } else if live.is_none() && guard.retry_due() {
            match Live::start(&mut session, options.live) {
                Ok(started) => {
                    live = Some(started);
                    walk_reason = None;
                }
                Err(e) => walk_reason = Some(live_unavailable(&e)),
            }
        }
        show(
            &mut output,
            &sample,
            &history,
            &options,
            &name,
            &walk_reason,
        )?;
        if options.count.is_some_and(|count| history.samples >= count) {
            return Ok(());
        }
        // Samples keep to the interval's beat; one that took longer than the interval is
        // followed by the next at once.
        let next = started + options.interval.mul_f64(history.samples as f64);
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match wakes.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => break,
                Ok(Wake::Resize) => show(
                    &mut output,
                    &sample,
                    &history,
                    &options,
                    &name,
                    &walk_reason,
                )?,
                Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
}

fn show(
    output: &mut Output,
    sample: &Sample,
    history: &History,
    options: &WatchOptions,
    name: &str,
    walk_reason: &Option<String>,
) -> Result<()> {
    let failed = |e| Error::io("writing the output", e);
    let screen_options = |columns, rows, terminal| ScreenOptions {
        walk_reason: walk_reason.clone(),
        ..screen_options(options, name, columns, rows, terminal)
    };
    match output {
        Output::Json => {
            render::write_stdout(&(render::json::watch_line(sample, walk_reason.as_deref()) + "\n"))
        }
        Output::Appended => {
            let text = screen::frame(
                sample,
                history,
                &screen_options(APPENDED_COLUMNS, APPENDED_ROWS, false),
            );
            render::write_stdout(&format!("\n{text}"))
        }
        Output::Screen(screen) => {
            let (columns, rows) = Screen::size().unwrap_or((APPENDED_COLUMNS, APPENDED_ROWS));
            let text = screen::frame(sample, history, &screen_options(columns, rows, true));
            screen.draw(&text, columns, rows).map_err(failed)
        }
    }
}

fn screen_options(
    options: &WatchOptions,
    name: &str,
    columns: usize,
    rows: usize,
    terminal: bool,
) -> ScreenOptions {
    let color = match options.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    ScreenOptions {
        style: Style {
            color,
            width: options
                .width
                .unwrap_or_else(|| screen::picture_width(columns)),
        },
        rows,
        arena: options.arena,
        pages: options.pages,
        granules_per_pixel: options.scale.map(|bytes| bytes / GRANULE),
        interval: options.interval,
        name: name.to_string(),
        walk_reason: None,
    }
}

/// Why live mode could not start, with the capabilities this process lacks for it.
fn live_unavailable(error: &Error) -> String {
    const NEEDED: [(u32, &str); 4] = [
        (39, "CAP_BPF"),
        (38, "CAP_PERFMON"),
        (19, "CAP_SYS_PTRACE"),
        (21, "CAP_SYS_ADMIN (frame numbers)"),
    ];
    let effective = procfs::process::Process::myself()
        .and_then(|me| me.status())
        .map_or(0, |status| status.capeff);
    let missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|&(_, name)| name)
        .collect();
    if missing.is_empty() {
        format!("the probes could not be attached: {error}")
    } else {
        format!(
            "the probes could not be attached ({error}); missing: {}",
            missing.join(", ")
        )
    }
}

/// Ctrl-C, SIGTERM and SIGWINCH, as wakes of the main loop, for as long as this lives.
struct Wakes {
    receiver: Receiver<Wake>,
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Wakes {
    fn listen() -> Result<Wakes> {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGWINCH])
            .map_err(|e| Error::io("installing the signal handlers", e))?;
        let handle = signals.handle();
        let (send, receiver) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            for signal in signals.forever() {
                let wake = if signal == SIGWINCH {
                    Wake::Resize
                } else {
                    Wake::Stop
                };
                if send.send(wake).is_err() {
                    break;
                }
            }
        });
        Ok(Wakes {
            receiver,
            handle,
            thread: Some(thread),
        })
    }

    fn recv_timeout(&self, wait: Duration) -> Result<Wake, RecvTimeoutError> {
        self.receiver.recv_timeout(wait)
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
