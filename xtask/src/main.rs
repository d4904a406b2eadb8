//! `cargo xtask <task>`: set-up, demo, test and bench for pagealloc.
//!
//! Every task first runs `setup`, which checks each prerequisite and installs what is missing,
//! idempotently, printing one line per step.
mod bench;
mod layers;
mod layouts;
mod losses;
mod overhead;
mod quiet;
mod serve;
mod setup;
mod sites;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check and install the toolchains, bpf-linker and Debian packages pagealloc needs.
    Setup,
    /// Set up, build, start the demo workload and watch it with pagealloc (Ctrl-C ends it).
    Demo {
        /// Extra arguments for `pagealloc watch` (e.g. --pages, --interval 1s).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run the whole test suite (root tests are skipped, and named, without root).
    Test {
        /// Extra arguments for the test binaries (after `--`), e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check that pagealloc's modules import one another without cycles, outputs never sources.
    Layers,
    /// Write the table of malloc's struct layouts per glibc version (pagealloc/src/glibc/
    /// layouts.json) from the DWARF of the system's glibc (libc6-dbg) and of the builds given.
    Layouts {
        /// Other builds, three arguments each: PACKAGE_VERSION LIBC DEBUG_DIR (the directory
        /// holding its .build-id/xx/rest.debug).
        builds: Vec<String>,
    },
    /// Benchmarks; prints medians side by side.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Snapshots of ~1 GiB, ~10 million chunk heaps of every shape against the floor (reading
    /// their pages).
    Snapshot {
        /// Chunks in each benchmark heap.
        #[arg(long, default_value_t = 10_000_000)]
        chunks: u64,
        /// Only this heap shape (all of them by default).
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(bench::SHAPES))]
        shape: Option<String>,
    },
    /// What each tracer costs a program doing malloc+free pairs (1 and 4 threads), side by side.
    Overhead {
        /// Interleaved rounds (each setup once per round, on a fresh process).
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Bytes per malloc (small: the tcache hot path).
        #[arg(long, default_value_t = 24)]
        size: u64,
    },
    /// Live mode's event losses, run after run, on a bursty target beside busy loops and on
    /// CPython churning on three threads.
    Losses {
        /// Runs per shape.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Seconds each run watches.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// What a live sample of a quiet main arena of gigabytes costs (memalign(2 MiB) chunks).
    Quiet {
        /// memalign(2 MiB) chunks: ~2 MiB of arena each.
        #[arg(long, default_value_t = 3400)]
        chunks: u64,
        /// Live samples after the seed.
        #[arg(long, default_value_t = 10)]
        samples: usize,
    },
    /// `serve --live --sample-bytes 1` on a busy target for minutes: the agent's RSS stays
    /// bounded, nothing is lost, reconciles find no difference.
    Sites {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Scrape latency of `pagealloc serve` following 10 processes, from 1 and 8 clients.
    Serve {
        /// Processes the agent follows.
        #[arg(long, default_value_t = 10)]
        processes: usize,
        /// Scrapes per setup (or --max-seconds, whichever comes first).
        #[arg(long, default_value_t = 2000)]
        scrapes: usize,
        /// Seconds per setup at most.
        #[arg(long, default_value_t = 30)]
        max_seconds: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    if let Task::Layers = cli.task {
        return layers::check(Path::new(layers::SOURCE));
    }
    setup::run()?;
    match cli.task {
        Task::Setup | Task::Layers => Ok(()),
        Task::Layouts { builds } => layouts::generate(&root, &builds),
        Task::Demo { args } => demo(&root, &args),
        Task::Test { args } => test(&args),
        Task::Bench {
            bench: Bench::Snapshot { chunks, shape },
        } => bench::snapshot(&root, chunks, shape.as_deref()),
        Task::Bench {
            bench: Bench::Overhead { rounds, size },
        } => overhead::overhead(&root, rounds, size),
        Task::Bench {
            bench: Bench::Losses { runs, seconds },
        } => losses::losses(&root, runs, seconds),
        Task::Bench {
            bench: Bench::Quiet { chunks, samples },
        } => quiet::quiet(&root, chunks, samples),
        Task::Bench {
            bench: Bench::Sites { minutes },
        } => sites::sites(&root, minutes),
        Task::Bench {
            bench:
                Bench::Serve {
                    processes,
                    scrapes,
                    max_seconds,
                },
        } => serve::serve(
            &root,
            processes,
            scrapes,
            std::time::Duration::from_secs(max_seconds),
        ),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A child killed and reaped however the bench ends.
pub(crate) struct Ended(pub(crate) std::process::Child);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a bench's target with its stdin and stdout piped, and waits for its first line (a
/// fixture's report, CPython's "ready"): the target, and its stdout read on (kept open: a
/// target that writes again must not meet a closed pipe).
pub(crate) fn start_ready(
    command: &mut Command,
    what: &str,
) -> Result<(Ended, pagealloc_testkit::lines::Lines)> {
    let mut target = Ended(
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what}"))?,
    );
    let stdout = target.0.stdout.take().context("the target's stdout")?;
    let mut said = pagealloc_testkit::lines::Lines::new(stdout);
    if said.next(TARGET_READY_LIMIT).ok().flatten().is_none() {
        bail!("{what} ended before it was ready");
    }
    Ok((target, said))
}

/// How long a bench's target may take to say it is ready.
const TARGET_READY_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs a command, inheriting the terminal; fails with the command line if it fails.
pub(crate) fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Compiles a C workload (demo or benchmark) with gcc at `opt` (e.g. "-O2"), into `output`
/// (its directory made if need be): threaded, and with malloc and free kept as real calls
/// (no builtins), so that the probes on them see every one.
pub(crate) fn compile_workload(opt: &str, source: &Path, output: &Path) -> Result<()> {
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    run(Command::new("gcc")
        .args([
            opt,
            "-pthread",
            "-fno-builtin-malloc",
            "-fno-builtin-free",
            "-o",
        ])
        .arg(output)
        .arg(source))
}

/// The 1-minute load average, as /proc/loadavg says it: the benchmarks print it beside their
/// figures (these machines are shared).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn demo(root: &Path, args: &[String]) -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "pagealloc"]))?;
    let workload = root.join("target/demo/workload");
    compile_workload("-O1", &root.join("xtask/demo/workload.c"), &workload)?;
    let mut child = Command::new(&workload)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the demo workload")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the demo workload did not start: {line:?}");
    }
    println!(
        "demo workload running as pid {}; Ctrl-C ends the demo",
        child.id()
    );
    // The workload makes hundreds of thousands of calls a second as it grows: past the
    // overhead guard's default, which is for production processes, not for a demo of live mode.
    let mut watch = Command::new(root.join("target/release/pagealloc"))
        .arg("watch")
        .arg(child.id().to_string())
        .args(["--max-rate", "10000000"])
        .args(args)
        .spawn()
        .context("starting pagealloc watch")?;
    // Ctrl-C goes to the whole foreground group: pagealloc ends on it (giving the terminal
    // back), and so does the workload; the demo waits for both and ends quietly.
    // SAFETY: ignoring a signal in this process only; the children were started before.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = watch.wait()?;
    drop(child.stdin.take()); // the workload exits when its stdin closes
    child.wait()?;
    if !status.success() {
        bail!("pagealloc watch failed with {status}");
    }
    Ok(())
}

/// The names of the tests that need root (`cargo test -- --list` lines `name: test`).
fn root_tests() -> Result<Vec<String>> {
    let out = cargo().args(["test", "--quiet", "--", "--list"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|name| {
            name.rsplit("::")
                .next()
                .is_some_and(|n| n.starts_with("root_"))
        })
        .map(str::to_string)
        .collect())
}

fn test(args: &[String]) -> Result<()> {
    layers::check(Path::new(layers::SOURCE))?;
    // The end-to-end tests run the binary as a user would: build it first.
    run(cargo().args(["build", "--package", "pagealloc"]))?;
    let mut command = cargo();
    // Default members: the eBPF crate cannot build for the host.
    command.args(["test", "--"]);
    command.args(args);
    if !setup::is_root() {
        println!(
            "xtask: not root: skipping the tests named root_* (they load eBPF programs, read \
             /proc/kpageflags, switch users, add swap or ptrace). Run as root to run them; CI does."
        );
        for name in root_tests()? {
            println!("xtask: skipped {name}");
        }
        command.args(["--skip", "root_"]);
    }
    // Pass the output through and add up the test binaries' results into one closing line.
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                result
                    .split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}
