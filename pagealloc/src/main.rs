use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use pagealloc::debuginfo::DebugOptions;
use pagealloc::live::LiveOptions;
use pagealloc::monitor::DEFAULT_MAX_RATE;
use pagealloc::profile::{self, ProfileOptions};
use pagealloc::render::{self, ColorChoice, Parts, Style};
use pagealloc::serve::{self, Selection, ServeOptions};
use pagealloc::session::{self, Session, SessionOptions};
use pagealloc::state::report::Mode;
use pagealloc::trace::TraceOptions;
use pagealloc::trace::sampling::{self, SampleOptions};
use pagealloc::watch::{self, WatchOptions};

/// Where a running process's memory is: page by page, and chunk by chunk in glibc's heaps.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the memory of a running process once.
    Snapshot(SnapshotArgs),
    /// Show the heap of a running process again and again, as it changes.
    Watch(WatchArgs),
    /// Serve Prometheus metrics of one or many processes' heaps and memory.
    Serve(ServeArgs),
    /// Trace a process's allocations for a while and write who holds its memory as a pprof heap
    /// profile (for `go tool pprof`, Parca, Pyroscope).
    Profile(ProfileArgs),
    /// Show where live mode's probes go in a process's C library (nothing is attached).
    Probes(ProbesArgs),
}

#[derive(clap::Args)]
struct ProbesArgs {
    /// The process whose C library to look at.
    pid: i32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    heap: HeapArgs,
}

/// What reading a heap needs, for every command that reads one.
#[derive(clap::Args)]
struct HeapArgs {
    /// The C library's debug file, instead of searching /usr/lib/debug, .gnu_debuglink and
    /// debuginfod.
    #[arg(long, value_name = "PATH")]
    debug_file: Option<std::path::PathBuf>,
    /// Neither read nor write the cache of malloc layouts (~/.cache/pagealloc/layouts).
    #[arg(long)]
    no_cache: bool,
    /// Search this directory alone for the C library's debug file (as <DIR>/.build-id/xx/rest.debug
    /// and <DIR>/<debug link name>), not /usr/lib/debug nor the library's own directory;
    /// debuginfod is still asked if DEBUGINFOD_URLS is set. An empty directory (with --no-cache
    /// and DEBUGINFOD_URLS unset) puts the debug info out of reach: the layout is then derived
    /// from the library's code.
    #[arg(long, value_name = "DIR")]
    debug_dir: Option<std::path::PathBuf>,
}

impl HeapArgs {
    fn debug_options(&self) -> DebugOptions {
        DebugOptions {
            debug_file: self.debug_file.clone(),
            use_cache: !self.no_cache,
            extra_debug_dirs: self.debug_dir.iter().cloned().collect(),
            only_extra_debug_dirs: self.debug_dir.is_some(),
            ..DebugOptions::default()
        }
    }
}

/// Live mode, for every command that follows allocation events.
#[derive(clap::Args)]
struct LiveArgs {
    /// Live mode: above this many allocation calls and frees a second in a process, its probes
    /// come off (each call pays a trap) and the heap is walked instead, the probes tried again
    /// later.
    #[arg(long, value_name = "CALLS", default_value_t = DEFAULT_MAX_RATE)]
    max_rate: u64,
    /// Live mode: how often a fresh walk checks the state kept from events.
    #[arg(long, value_name = "DURATION", default_value_t = LiveOptions::default().reconcile.into())]
    reconcile: humantime::Duration,
    /// Live mode: each online CPU's ring buffer of events, in bytes (a power of two, at least
    /// a page, at most 64 MiB: 0.4 s of a CPU's events, and each CPU's costs this process its
    /// size twice over; by default 8 MiB shared out among them, 256 KiB to 4 MiB each).
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_bytes)]
    ring_bytes: Option<u32>,
    /// Live mode: above this share of a sample's events lost (the rings could not keep up;
    /// each loss costs a walk), a process's probes come off as above --max-rate.
    #[arg(long, value_name = "PERCENT", default_value_t = LiveOptions::default().max_lost * 100.0, value_parser = parse_percent)]
    max_lost: f64,
    /// Live mode: sample allocation stacks, a Poisson process over allocated bytes with this
    /// mean (as Go and jemalloc: 512 KiB); 1 records every allocation's stack, 0 takes no
    /// stacks at all (nor those of --pin-pages).
    #[arg(long, value_name = "BYTES", default_value_t = sampling::DEFAULT_SAMPLE_BYTES, value_parser = clap::value_parser!(u64).range(0..=sampling::MAX_SAMPLE_BYTES))]
    sample_bytes: u64,
    /// Live mode: for the pinned bytes, one page in N (a power of two; 0: none) is watched:
    /// every allocation whose chunk begins or ends on one of them has its stack taken.
    #[arg(long, value_name = "N", default_value_t = sampling::DEFAULT_PIN_PAGES, value_parser = parse_pin_pages)]
    pin_pages: u64,
    /// Live mode: bytes of the stack each sample copies, from the stack pointer up (deeper
    /// stacks are marked truncated), at most 32 KiB.
    #[arg(long, value_name = "BYTES", default_value_t = sampling::DEFAULT_STACK_BYTES, value_parser = clap::value_parser!(u32).range(256..=i64::from(sampling::MAX_STACK)))]
    stack_bytes: u32,
    /// Live mode: the most allocation sites kept per process (the lightest merge into one
    /// "other" site past it, so memory stays bounded).
    #[arg(long, value_name = "N", default_value_t = pagealloc::state::sites::DEFAULT_MAX_SITES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1 << 20))]
    max_sites: usize,
}

impl LiveArgs {
    fn live_options(&self) -> LiveOptions {
        LiveOptions {
            trace: TraceOptions {
                ring_bytes: self.ring_bytes,
                sampling: if self.sample_bytes == 0 {
                    SampleOptions::OFF
                } else {
                    SampleOptions {
                        sample_bytes: self.sample_bytes,
                        pin_pages: self.pin_pages,
                        stack_bytes: self.stack_bytes,
                    }
                },
                ..TraceOptions::default()
            },
            reconcile: self.reconcile.into(),
            max_lost: self.max_lost / 100.0,
            max_sites: self.max_sites,
        }
    }
}

/// `--color`: when to colour the terminal output.
#[derive(Clone, Copy, ValueEnum)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

impl From<ColorArg> for ColorChoice {
    fn from(arg: ColorArg) -> ColorChoice {
        match arg {
            ColorArg::Auto => ColorChoice::Auto,
            ColorArg::Always => ColorChoice::Always,
            ColorArg::Never => ColorChoice::Never,
        }
    }
}

/// How pictures look, for every command that draws.
#[derive(clap::Args)]
struct DrawArgs {
    /// When to use colour (NO_COLOR is honoured unless `always`).
    #[arg(long, value_enum, default_value_t = ColorArg::Auto)]
    color: ColorArg,
    /// Pixels per row (default: snapshot 80, fewer if the terminal is narrower; watch the
    /// terminal's width); the text fits the pictures' N + 14 columns, and the terminal.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    width: Option<u16>,
    /// Draw only arena N (0 is the main arena, in the order of the summary table).
    #[arg(long, value_name = "N")]
    arena: Option<usize>,
}

impl DrawArgs {
    fn style(&self) -> Style {
        Style::resolve(self.color.into(), self.width.map(usize::from))
    }
}

#[derive(clap::Args)]
struct SnapshotArgs {
    /// The process to look at.
    pid: i32,
    /// Output format: html is one self-contained page (the web view of this sample).
    #[arg(long, value_enum, default_value_t = SnapshotFormat::Text)]
    format: SnapshotFormat,
    /// Where to write it; default: standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<std::path::PathBuf>,
    #[command(flatten)]
    draw: DrawArgs,
    /// Show only the heap map (arena summary and heap pictures).
    #[arg(long, conflicts_with = "pages_only")]
    heap_only: bool,
    /// Show only the page map; the heap is not walked and no debug info is needed.
    #[arg(long, conflicts_with = "arena")]
    pages_only: bool,
    /// Stop the target's threads (ptrace) while reading, for a consistent heap; they resume on
    /// every exit path, Ctrl-C and kill included.
    #[arg(long)]
    stop: bool,
    #[command(flatten)]
    heap: HeapArgs,
}

#[derive(clap::Args)]
struct WatchArgs {
    /// The process to watch.
    pid: i32,
    /// Time between samples (e.g. 2s, 500ms, 1m).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop after N samples.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Output format: text redraws a terminal in place; json writes one line per sample.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    draw: DrawArgs,
    /// Draw the page map too.
    #[arg(long)]
    pages: bool,
    /// Bytes per pixel of the heap maps (a multiple of 16); default: whatever fits the screen.
    #[arg(long, value_name = "BYTES", value_parser = parse_scale)]
    scale: Option<u64>,
    /// Walk the heap at every sample instead of following allocation events (live mode, the
    /// default where eBPF probes can be attached).
    #[arg(long)]
    walk: bool,
    #[command(flatten)]
    live: LiveArgs,
    /// Stop the target's threads (ptrace) while the heap is walked, for a consistent heap
    /// (a pause of the walk's length: in live mode only to seed, resync and reconcile).
    #[arg(long)]
    stop: bool,
    #[command(flatten)]
    heap: HeapArgs,
}

#[derive(clap::Args)]
struct ProfileArgs {
    /// The process to profile.
    pid: i32,
    /// How long to trace its allocations (e.g. 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Where to write the profile; default: standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<std::path::PathBuf>,
    /// pprof: gzipped profile.proto; html: the web view of the last sample, sites included.
    #[arg(long, value_enum, default_value_t = ProfileFormat::Pprof)]
    format: ProfileFormat,
    #[command(flatten)]
    live: LiveArgs,
    #[command(flatten)]
    heap: HeapArgs,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("select").required(true).multiple(true)))]
struct ServeArgs {
    /// Processes to follow, by PID.
    #[arg(long, value_name = "PID", num_args = 1.., group = "select")]
    pid: Vec<i32>,
    /// Follow every process whose name (comm) matches, now and started later (as pgrep).
    #[arg(long, value_name = "REGEX", group = "select")]
    comm: Option<regex::Regex>,
    /// Follow every process in this cgroup (v2) or below it, now and started later.
    #[arg(long, value_name = "PATH", group = "select")]
    cgroup: Option<std::path::PathBuf>,
    /// Where to serve /metrics (HOST:PORT, the host a name or an address); anything but
    /// loopback is an explicit choice.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464", value_parser = parse_listen)]
    listen: std::net::SocketAddr,
    /// Time between samples of each process (e.g. 15s, 1m).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Follow allocation events with eBPF probes (each call pays a trap), under the overhead
    /// guard; without it every sample walks the heap and the processes pay nothing per call.
    #[arg(long = "live")]
    follow_events: bool,
    #[command(flatten)]
    live: LiveArgs,
    /// Export each arena's figures too (pagealloc_arena_heap_bytes).
    #[arg(long)]
    per_arena: bool,
    /// The CPU the agent may use on average, in cores (0.25 = a quarter of one); samples are
    /// taken later rather than exceed it (pagealloc_samples_delayed_total counts them).
    #[arg(long, value_name = "CORES", default_value_t = 0.25, value_parser = parse_cores)]
    cpu_budget: f64,
    #[command(flatten)]
    heap: HeapArgs,
}

/// The largest `--cpu-budget`: Linux runs on at most 8192 CPUs (NR_CPUS), so a budget above
/// that is no budget, and a number that large is a mistake (it would be exported as it is).
const MAX_CORES: f64 = 8192.0;

fn parse_cores(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(cores) if cores > 0.0 && cores <= MAX_CORES => Ok(cores),
        _ => Err(format!(
            "a positive number of cores up to {MAX_CORES} (Linux's most CPUs), such as 0.25 or 2"
        )),
    }
}

/// `HOST:PORT`, the host resolved if it is a name (its first address: `localhost` is
/// loopback whichever comes first).
fn parse_listen(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let usage = "HOST:PORT, such as 127.0.0.1:9464, [::1]:9464 or localhost:9464";
    let mut addresses = text
        .to_socket_addrs()
        .map_err(|e| format!("{usage} ({e})"))?;
    addresses
        .next()
        .ok_or_else(|| format!("{usage} ({text} resolves to no address)"))
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SnapshotFormat {
    Text,
    Json,
    Html,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProfileFormat {
    Pprof,
    Html,
}

fn parse_scale(text: &str) -> Result<u64, String> {
    let bytes: u64 = text.parse().map_err(|e| format!("{e}"))?;
    if bytes == 0 || !bytes.is_multiple_of(16) {
        return Err("a pixel is a whole number of 16-byte granules: 16, 32, 48, ...".into());
    }
    Ok(bytes)
}

fn parse_percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(percent) if (0.0..=100.0).contains(&percent) => Ok(percent),
        _ => Err("a percentage from 0 to 100, such as 1 or 0.5".into()),
    }
}

fn parse_pin_pages(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(n) if n == 0 || (n.is_power_of_two() && n <= 1 << 30) => Ok(n),
        _ => Err("0, or a power of two up to 2^30 (1, 2, 4, ... 64, ...)".into()),
    }
}

/// The largest ring: 2 M events of 32 bytes, 0.4 s of one CPU trapping without pause (a trap
/// costs at least 0.2 µs), for a reader woken when an eighth of it waits. Each online CPU gets
/// one, mapped twice into this process (64 MiB on 2 CPUs: 282 MB resident).
const MAX_RING_BYTES: u32 = 64 << 20;

fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let bytes: u64 = text.parse().map_err(|e| format!("{e}"))?;
    if !bytes.is_power_of_two() || !(4096..=MAX_RING_BYTES.into()).contains(&bytes) {
        return Err(format!(
            "a power of two, at least 4096 and at most {MAX_RING_BYTES} (64 MiB): a ring that \
             size holds 0.4 s of a CPU's events (a trap costs at least 0.2 µs), and each online \
             CPU's costs this process twice its size in memory"
        ));
    }
    Ok(bytes as u32)
}

fn main() -> ExitCode {
    env_logger::Builder::from_default_env()
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pagealloc: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn run(cli: Cli) -> pagealloc::Result<()> {
    match cli.command {
        Command::Snapshot(args) => snapshot(args),
        Command::Probes(args) => probes(args),
        Command::Serve(args) => serve::run(ServeOptions {
            selection: Selection {
                pids: args.pid,
                comm: args.comm,
                cgroup: args.cgroup,
            },
            listen: args.listen,
            interval: args.interval,
            live: args.follow_events.then(|| args.live.live_options()),
            max_rate: args.live.max_rate,
            per_arena: args.per_arena,
            cpu_budget: args.cpu_budget,
            debug: args.heap.debug_options(),
        }),
        Command::Profile(args) => profile::run(ProfileOptions {
            pid: args.pid,
            duration: args.duration,
            output: args.output,
            html: args.format == ProfileFormat::Html,
            debug: args.heap.debug_options(),
            max_rate: args.live.max_rate,
            live: args.live.live_options(),
        }),
        Command::Watch(args) => watch::run(WatchOptions {
            pid: args.pid,
            interval: args.interval,
            count: args.count,
            json: args.format == Format::Json,
            color: args.draw.color.into(),
            width: args.draw.width.map(usize::from),
            arena: args.draw.arena,
            pages: args.pages,
            scale: args.scale,
            debug: args.heap.debug_options(),
            walk: args.walk,
            stop: args.stop,
            max_rate: args.live.max_rate,
            live: args.live.live_options(),
        }),
    }
}

fn probes(args: ProbesArgs) -> pagealloc::Result<()> {
    let mut session = Session::open(
        args.pid,
        SessionOptions {
            heap: true,
            debug: args.heap.debug_options(),
            stop: false,
        },
    )?;
    let site = session.probe_site()?;
    let placed = pagealloc::trace::plan(&site.libc, &site.internals)?;
    let text = match args.format {
        Format::Json => render::json::probes(&site.libc, &placed),
        Format::Text => render::probes(&site.libc, &placed),
    };
    render::write_stdout(&text)
}

fn snapshot(args: SnapshotArgs) -> pagealloc::Result<()> {
    let mut session = Session::open(
        args.pid,
        SessionOptions {
            heap: !args.pages_only,
            debug: args.heap.debug_options(),
            stop: args.stop,
        },
    )?;
    let sample = session.sample()?;
    let text = match args.format {
        SnapshotFormat::Json => render::json::snapshot(&sample),
        SnapshotFormat::Html => {
            let mode = match sample.heap_unavailable() {
                Some(why) => Mode::Pages(why.key()),
                None => Mode::Walk("snapshot"),
            };
            pagealloc::web::report_file(&sample, &pagealloc::proc::comm(args.pid), mode)
        }
        SnapshotFormat::Text => {
            if let Some(heap) = sample.heap_map() {
                render::check_arena(args.draw.arena, heap, args.pid)?;
            }
            let parts = Parts {
                pages: !args.heap_only,
                heap: true,
                arena: args.draw.arena,
            };
            render::snapshot_text(&sample, parts, &args.draw.style())
        }
    };
    match &args.output {
        Some(path) => render::write_file(path, &text)?,
        None => render::write_stdout(&text)?,
    }
    session::verdict(&sample)
}
