//! `pagealloc profile`: attach live mode's probes to a process for a while, then write who holds
//! its memory as a pprof heap profile (what `serve --live` answers at `/debug/pprof/heap`), and
//! take the probes off.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::debuginfo::DebugOptions;
use crate::error::{Error, Result};
use crate::live::LiveOptions;
use crate::monitor::{ModeChoice, Monitor, MonitorOptions, PUMP_EVERY};
use crate::pprof;
use crate::state::Sample;
use crate::state::report::Mode;

#[derive(Clone, Debug)]
pub struct ProfileOptions {
    pub pid: i32,
    /// How long to trace.
    pub duration: Duration,
    /// Where the profile goes; None: standard output (if it is not a terminal).
    pub output: Option<PathBuf>,
    /// The web view's HTML report of the last sample instead of a pprof profile.
    pub html: bool,
    pub debug: DebugOptions,
    pub live: LiveOptions,
    pub max_rate: u64,
}

/// How often the guard looks at the call rate while profiling (it acts at samples).
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

pub fn run(options: ProfileOptions) -> Result<()> {
    if options.output.is_none() && !options.html && std::io::stdout().is_terminal() {
        return Err(Error::Usage(
            "the profile is binary (gzipped protobuf): give -o FILE, or redirect the output".into(),
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Error::io("listening for signals", e))?;
    }
    let pid = options.pid;
    let mut monitor = Monitor::open(
        pid,
        MonitorOptions {
            debug: options.debug.clone(),
            stop: false,
            mode: ModeChoice::Live(options.live),
            max_rate: options.max_rate,
        },
    )?;
    if let Some(why) = monitor.walk_reason() {
        return Err(Error::NoStacks {
            pid,
            why: why.to_string(),
        });
    }
    let started = Instant::now();
    let mut last = monitor.sample()?;
    // Traced for the duration, or until a signal; the process exiting ends it too, with the
    // last sample taken.
    let mut next_sample = started + SAMPLE_EVERY;
    while started.elapsed() < options.duration && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(PUMP_EVERY.min(options.duration.saturating_sub(started.elapsed())));
        monitor.pump();
        if Instant::now() >= next_sample || started.elapsed() >= options.duration {
            next_sample += SAMPLE_EVERY;
            match monitor.sample() {
                Ok(sample) => last = sample,
                Err(e) if e.is_gone() => break,
                Err(e) => return Err(e),
            }
            if let Some(why) = monitor.walk_reason() {
                return Err(Error::NoStacks {
                    pid,
                    why: format!("the probes came off while profiling: {why}"),
                });
            }
        }
    }
    write(&options, &last)
}

fn write(options: &ProfileOptions, sample: &Sample) -> Result<()> {
    let Some(sites) = &sample.sites else {
        return Err(Error::NoStacks {
            pid: options.pid,
            why: "stacks are off (--sample-bytes 0)".into(),
        });
    };
    let traced = sites.traced(sample.taken);
    let profile = match options.html {
        true => {
            let comm = crate::proc::comm(options.pid);
            crate::web::report_file(sample, &comm, Mode::Live).into_bytes()
        }
        false => pprof::heap_profile(sites, sample.taken, traced),
    };
    match &options.output {
        Some(path) => std::fs::write(path, &profile)
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?,
        None => std::io::stdout()
            .write_all(&profile)
            .map_err(|e| Error::io("writing the profile", e))?,
    }
    let to =
        (options.output.as_ref()).map_or("standard output".into(), |p| p.display().to_string());
    eprintln!(
        "pagealloc: process {}: {} sites from {} stacks over {:.1} s, written to {to}",
        options.pid,
        sites.sites.len(),
        sites.stacks,
        traced.as_secs_f64()
    );
    Ok(())
}
