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
use crate::live::LiveOptions;
use crate::monitor::{ModeChoice, Monitor, MonitorOptions, PUMP_EVERY};
use crate::render::screen::{self, ScreenOptions};
use crate::render::{self, ColorChoice, Style};
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
    /// Walks hold the process's threads still.
    pub stop: bool,
    pub live: LiveOptions,
    /// Above this many allocation calls and frees a second, the probes come off (walk mode)
    /// until a later try finds the rate lower.
    pub max_rate: u64,
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
    let opened = Monitor::open(
        options.pid,
        MonitorOptions {
            debug: options.debug.clone(),
            stop: options.stop,
            mode: if options.walk {
                ModeChoice::Walk("asked for (--walk)".into())
            } else {
                ModeChoice::Live(options.live)
            },
            max_rate: options.max_rate,
        },
    );
    let mut monitor = match opened {
        Ok(monitor) => monitor,
        // A signal to end heard while attaching.
        Err(Error::Cancelled) => return Ok(()),
        Err(e) => return Err(e),
    };
    let name = monitor.name();
    let mut output = if options.json {
        Output::Json
    } else if std::io::stdout().is_terminal() {
        Output::Screen(Screen::enter().map_err(|e| Error::io("preparing the terminal", e))?)
    } else {
        Output::Appended
    };
    let started = Instant::now();
    loop {
        // A sample longer than the interval leaves no wait to hear a signal in: heard here.
        if wakes.stop_asked() {
            return Ok(());
        }
        // The reason the sample walked, from before the guard looks at it.
        let walk_reason = monitor.walk_reason().map(ToString::to_string);
        let sample = match monitor.sample() {
            Ok(sample) => sample,
            // Gone: by an exec, said as such, or else by an exit.
            // Gone before a first sample: nothing was shown, the verdict is attaching's.
            Err(e) if e.is_gone() && monitor.history().samples == 0 => {
                return Err(match e {
                    Error::ProcessExeced { .. } => e,
                    _ => Error::ProcessExited { pid: options.pid },
                });
            }
            Err(Error::ProcessExeced { .. }) => {
                return end(output, &mut monitor, walk_reason, "exec'd another program");
            }
            Err(e) if e.is_gone() => return end(output, &mut monitor, walk_reason, "exited"),
            // A signal to end heard while the heap was walked: the walk was abandoned.
            Err(Error::Cancelled) => return Ok(()),
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
        let show_now = |output: &mut Output, monitor: &Monitor| {
            let shown = Shown {
                sample: &sample,
                history: monitor.history(),
                name: &name,
                walk_reason: &walk_reason,
            };
            show(output, &shown, &options)
        };
        show_now(&mut output, &monitor)?;
        let samples = monitor.history().samples;
        if options.count.is_some_and(|count| samples >= count) {
            return Ok(());
        }
        // Samples keep to the interval's beat; one that took longer than the interval is
        // followed by the next at once. In between, live mode applies the events as they come.
        let next = started + options.interval.mul_f64(samples as f64);
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            match wakes.recv_timeout(wait.min(PUMP_EVERY)) {
                Err(RecvTimeoutError::Timeout) => monitor.pump(),
                Ok(Wake::Resize) => show_now(&mut output, &monitor)?,
                Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
}

/// The process is gone (`how`: "exited"): JSON ends with a line of the events up to then,
/// which the reader still had (a target that exits at once made many since the last sample).
fn end(
    output: Output,
    monitor: &mut Monitor,
    walk_reason: Option<String>,
    how: &str,
) -> Result<()> {
    let pid = monitor.pid();
    if let Output::Json = output {
        let started = Instant::now();
        let counts = monitor.events_until_now().unwrap_or_else(|e| {
            log::warn!("process {pid}: the events since the last sample: {e}");
            monitor.history().current_events
        });
        let ended = format!("process {how}");
        let line = render::json::watch_end(
            pid,
            counts,
            walk_reason.as_deref(),
            started.elapsed().as_secs_f64(),
            &ended,
        );
        render::write_stdout(&(line + "\n"))?;
    }
    drop(output);
    eprintln!("pagealloc: process {pid} {how}; watch ends");
    Ok(())
}

/// What a frame shows.
struct Shown<'a> {
    sample: &'a Sample,
    history: &'a History,
    name: &'a str,
    walk_reason: &'a Option<String>,
}

fn show(output: &mut Output, shown: &Shown, options: &WatchOptions) -> Result<()> {
    let failed = |e| Error::io("writing the output", e);
    let screen_options = |columns, rows, terminal| ScreenOptions {
        walk_reason: shown.walk_reason.clone(),
        ..screen_options(options, shown.name, columns, rows, terminal)
    };
    let Shown {
        sample, history, ..
    } = *shown;
    match output {
        Output::Json => render::write_stdout(
            &(render::json::watch_line(sample, shown.walk_reason.as_deref()) + "\n"),
        ),
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
        style: Style::new(
            color,
            (options.width).unwrap_or_else(|| screen::picture_width(columns)),
            terminal.then_some(columns),
        ),
        rows,
        arena: options.arena,
        pages: options.pages,
        granules_per_pixel: options.scale.map(|bytes| bytes / GRANULE),
        interval: options.interval,
        name: name.to_string(),
        walk_reason: None,
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
                    // A walk under way is abandoned, not finished first.
                    crate::cancel::ask();
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

    /// Whether Ctrl-C or SIGTERM came since the last look, without waiting (a resize needs
    /// nothing then: the next frame is drawn at the new size).
    fn stop_asked(&self) -> bool {
        self.receiver
            .try_iter()
            .any(|wake| matches!(wake, Wake::Stop))
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
