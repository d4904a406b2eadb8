//! Outputs: terminal pictures and JSON. They read the state; they never change it.
pub mod canvas;
pub mod heap;
pub mod json;
pub mod pages;

use std::io::IsTerminal;

/// `--color`: when to colour the terminal output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
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
}

/// The original tool's row width, kept as the default.
pub const DEFAULT_WIDTH: usize = 80;
/// Room taken by the address label in front of each line.
pub const LABEL_WIDTH: usize = 14;

impl Style {
    pub fn resolve(choice: ColorChoice, width: Option<usize>) -> Style {
        let stdout_tty = std::io::stdout().is_terminal();
        // An explicit --color=always beats NO_COLOR (no-color.org: flags override the variable).
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => stdout_tty && !no_color,
        };
        let width = width.unwrap_or_else(|| {
            let fit = stdout_tty
                .then(crossterm::terminal::size)
                .and_then(Result::ok)
                .map(|(cols, _)| (cols as usize).saturating_sub(LABEL_WIDTH));
            match fit {
                Some(fit) if fit >= 16 => fit.min(DEFAULT_WIDTH),
                _ => DEFAULT_WIDTH,
            }
        });
        Style {
            color,
            width: width.max(1),
        }
    }
}
