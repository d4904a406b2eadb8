//! Outputs: terminal pictures and JSON. They read the state; they never change it.
pub mod canvas;
pub mod heap;
pub mod json;
pub mod pages;
pub mod screen;
pub mod sites;

use std::io::IsTerminal;

use crate::error::{Error, Result};
use crate::state::Sample;
use crate::state::heap::HeapMap;

/// `--color`: when to colour the terminal output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// How pictures are drawn, decided once from the flags, the environment and the terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
    /// Pixels per row (pages per row in the page map).
    pub width: usize,
    /// Columns the text lines fit in: the pictures' (their label and `width` pixels), no more
    /// than the terminal's.
    pub columns: usize,
}

/// The original tool's row width, kept as the default.
pub const DEFAULT_WIDTH: usize = 80;
/// Room taken by the address label in front of each line.
pub const LABEL_WIDTH: usize = 14;

impl Style {
    pub fn resolve(choice: ColorChoice, width: Option<usize>) -> Style {
        let stdout_tty = std::io::stdout().is_terminal();
        let terminal_columns = stdout_tty
            .then(crossterm::terminal::size)
            .and_then(Result::ok)
            .map(|(cols, _)| cols as usize);
        // An explicit --color=always beats NO_COLOR (no-color.org: flags override the variable).
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stdout_tty && !no_color,
        };
        let width = width.unwrap_or_else(|| {
            match terminal_columns.map(|cols| cols.saturating_sub(LABEL_WIDTH)) {
                Some(fit) if fit >= 16 => fit.min(DEFAULT_WIDTH),
                _ => DEFAULT_WIDTH,
            }
        });
        Style::new(color, width, terminal_columns)
    }

    /// `width` pixels a row; the text fits the pictures' columns and `terminal_columns`, if
    /// drawn on a terminal.
    pub fn new(color: bool, width: usize, terminal_columns: Option<usize>) -> Style {
        let width = width.max(1);
        let columns = width + LABEL_WIDTH;
        Style {
            color,
            width,
            columns: terminal_columns.map_or(columns, |terminal| terminal.min(columns)),
        }
    }
}

/// Which parts of a snapshot to draw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Parts {
    pub pages: bool,
    pub heap: bool,
    /// Only this arena's heaps.
    pub arena: Option<usize>,
}

/// A snapshot as text: the page map, then the heap map.
pub fn snapshot_text(sample: &Sample, parts: Parts, style: &Style) -> String {
    let mut text = String::new();
    if parts.pages {
        text.push_str(&pages::render(&sample.pages, style));
    }
    if let (true, Some(heap)) = (parts.heap, sample.heap_map()) {
        text.push_str(&heap::render(sample, heap, parts.arena, style));
    }
    text
}

/// `--arena N` names an arena the process has.
pub fn check_arena(arena: Option<usize>, heap: &HeapMap, pid: i32) -> Result<()> {
    let arenas = heap.arenas.len();
    match arena {
        Some(arena) if arena >= arenas => Err(Error::Usage(format!(
            "--arena {arena}: process {pid} has {arenas} arenas (0 to {})",
            arenas.saturating_sub(1)
        ))),
        _ => Ok(()),
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) ends the output quietly.
pub fn write_stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("writing the output", e))
        }
        _ => Ok(()),
    }
}

/// Writes `text` to the file at `path`.
pub fn write_file(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Where live mode's probes go, one line each.
pub fn probes(libc: &std::path::Path, placed: &[crate::state::probes::Placed]) -> String {
    use std::fmt::Write as _;
    let mut text = format!("probes in {}:\n", libc.display());
    for p in placed {
        let _ = writeln!(
            text,
            "  {:<14} {:>30}+{:<3} file offset {:#x}{}  {}",
            p.program.name(),
            p.function,
            p.offset,
            p.file_offset,
            if p.returns() { ", return" } else { "" },
            match (p.emulated, p.returns()) {
                (true, false) => "emulated: one trap",
                (true, true) => "emulated: two traps (entry, return)",
                (false, _) => "single-stepped",
            },
        );
    }
    text
}
