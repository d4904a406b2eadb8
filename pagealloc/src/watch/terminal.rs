//! The terminal while watch draws on it: the alternate screen with the cursor hidden, each frame
//! drawn over the last, and the terminal given back as it was on every way out (the end,
//! Ctrl-C, SIGTERM, a panic).
use std::io::{self, Write};
use std::sync::Once;

use crossterm::{cursor, execute, terminal};

/// The alternate screen, entered on creation and left on drop.
pub struct Screen {
    out: io::Stdout,
}

impl Screen {
    pub fn enter() -> io::Result<Screen> {
        static PANIC_HOOK: Once = Once::new();
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let _ = restore(&mut io::stdout());
                previous(info);
            }));
        });
        let mut out = io::stdout();
        execute!(out, terminal::EnterAlternateScreen, cursor::Hide)?;
        Ok(Screen { out })
    }

    /// The terminal's (columns, rows).
    pub fn size() -> Option<(usize, usize)> {
        terminal::size()
            .ok()
            .map(|(cols, rows)| (usize::from(cols), usize::from(rows)))
    }

    /// Draws `frame` over the screen, cut at its last row and column: the screen never scrolls
    /// and no line wraps.
    pub fn draw(&mut self, frame: &str, columns: usize, rows: usize) -> io::Result<()> {
        let mut buffer = String::with_capacity(frame.len() + 64);
        buffer.push_str("\x1b[H");
        for (i, line) in frame.lines().take(rows.max(1)).enumerate() {
            if i > 0 {
                buffer.push_str("\r\n");
            }
            // Text lines may be long; picture lines (with colour codes) are drawn to fit.
            if line.contains('\x1b') {
                buffer.push_str(line);
            } else {
                buffer.extend(line.chars().take(columns));
            }
            // The rest of the row, from a previous frame.
            buffer.push_str("\x1b[K");
        }
        // The rows below, from a previous frame.
        buffer.push_str("\x1b[J");
        self.out.write_all(buffer.as_bytes())?;
        self.out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = restore(&mut self.out);
    }
}

fn restore(out: &mut impl Write) -> io::Result<()> {
    execute!(out, cursor::Show, terminal::LeaveAlternateScreen)
}
