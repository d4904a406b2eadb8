use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use pagealloc::SnapshotOptions;
use pagealloc::debuginfo::DebugOptions;
use pagealloc::render::{self, ColorChoice, Style};

/// Where a running process's memory is: page by page, and (soon) chunk by chunk in its heaps.
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
}

#[derive(clap::Args)]
struct SnapshotArgs {
    /// The process to look at.
    pid: i32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// When to use colour (NO_COLOR is honoured unless `always`).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Pixels per row (default: 80, fewer if the terminal is narrower).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    width: Option<u16>,
    /// Show only the heap map (arena summary and heap pictures).
    #[arg(long, conflicts_with = "pages_only")]
    heap_only: bool,
    /// Show only the page map; the heap is not walked and no debug info is needed.
    #[arg(long)]
    pages_only: bool,
    /// Draw only arena N (0 is the main arena, in the order of the summary table).
    #[arg(long, value_name = "N")]
    arena: Option<usize>,
    /// Stop the target's threads (ptrace) while reading, for a consistent heap; they resume on
    /// every exit path, Ctrl-C and kill included.
    #[arg(long)]
    stop: bool,
    /// The C library's debug file, instead of searching /usr/lib/debug, .gnu_debuglink and
    /// debuginfod.
    #[arg(long, value_name = "PATH")]
    debug_file: Option<std::path::PathBuf>,
    /// Neither read nor write the cache of malloc layouts (~/.cache/pagealloc/layouts).
    #[arg(long)]
    no_cache: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
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
        Command::Snapshot(args) => {
            let options = SnapshotOptions {
                heap: !args.pages_only,
                stop: args.stop,
                debug: DebugOptions {
                    debug_file: args.debug_file.clone(),
                    use_cache: !args.no_cache,
                    ..DebugOptions::default()
                },
            };
            let (snapshot, heap_error) = pagealloc::snapshot(args.pid, &options)?;
            let text = match args.format {
                Format::Json => render::json::to_string(&snapshot),
                Format::Text => {
                    let style = Style::resolve(args.color, args.width.map(usize::from));
                    let mut text = String::new();
                    if !args.heap_only {
                        text.push_str(&render::pages::render(&snapshot.pages, &style));
                    }
                    if let Some(heap) = &snapshot.heap {
                        if let Some(arena) = args.arena.filter(|&a| a >= heap.arenas.len()) {
                            return Err(pagealloc::Error::Other(format!(
                                "--arena {arena}: process {} has {} arenas (0 to {})",
                                args.pid,
                                heap.arenas.len(),
                                heap.arenas.len().saturating_sub(1)
                            )));
                        }
                        text.push_str(&render::heap::render(heap, &snapshot, args.arena, &style));
                    }
                    text
                }
            };
            write_stdout(&text)?;
            heap_error.map_or(Ok(()), Err)
        }
    }
}

/// A closed pipe (`| head`) ends the output quietly.
fn write_stdout(text: &str) -> pagealloc::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(pagealloc::Error::io("writing the output", e))
        }
        _ => Ok(()),
    }
}
