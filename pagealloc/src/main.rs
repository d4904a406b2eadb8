use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn main() -> ExitCode {
    env_logger::init();
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
            let map = pagealloc::page_map(args.pid)?;
            let text = match args.format {
                Format::Json => render::json::to_string(&map),
                Format::Text => {
                    let style = Style::resolve(args.color, args.width.map(usize::from));
                    render::pages::render(&map, &style)
                }
            };
            write_stdout(&text)
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
