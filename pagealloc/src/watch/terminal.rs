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

    /// The (columns, rows) of the terminal drawn on: standard output's, not the controlling
    /// terminal's.
    pub fn size() -> Option<(usize, usize)> {
        let mut size = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ fills a winsize.
        let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
        (rc == 0 && size.ws_col > 0 && size.ws_row > 0)
            .then(|| (usize::from(size.ws_col), usize::from(size.ws_row)))
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
            cut(line, columns, &mut buffer);
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

/// Appends the first `columns` visible characters of `line` to `out`, its colour codes kept.
fn cut(line: &str, columns: usize, out: &mut String) {
    let mut shown = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // A CSI sequence, up to its final letter: no width.
            out.push(c);
            for c in chars.by_ref() {
                out.push(c);
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        if shown == columns {
            out.push_str("\x1b[0m");
            return;
        }
        out.push(c);
        shown += 1;
    }
}

fn restore(out: &mut impl Write) -> io::Result<()> {
    execute!(out, cursor::Show, terminal::LeaveAlternateScreen)
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn lines_are_cut_at_the_column_with_their_colours() {
        let mut out = String::new();
        cut("abcdef", 4, &mut out);
        assert_eq!(out, "abcd\x1b[0m");
        out.clear();
        cut("\x1b[38;5;1mab\x1b[0mcd", 3, &mut out);
        assert_eq!(out, "\x1b[38;5;1mab\x1b[0mc\x1b[0m");
        out.clear();
        cut("▀▀", 2, &mut out);
        assert_eq!(out, "▀▀");
    }
}
