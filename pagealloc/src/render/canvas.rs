//! The picture engine shared by the page map and the heap map: pixels in address order become
//! lines of Unicode half blocks (two pixel rows per text line) in colour, or one glyph per pixel
//! in monochrome; runs of identical lines collapse into one line with a repeat count. Text lines
//! flow to the style's columns.
use std::fmt::Write as _;

use super::Style;

/// A pixel value: how it looks in colour (ANSI 256-colour index) and in monochrome.
pub trait Pixel: Copy + PartialEq {
    fn color(self) -> u8;
    fn glyph(self) -> char;
}

/// The colour of entry `index` of xterm's 256-colour palette as CSS `#rrggbb`: the web view
/// draws with the terminal's colours.
pub fn css_color(index: u8) -> String {
    const SYSTEM: [u32; 16] = [
        0x000000, 0x800000, 0x008000, 0x808000, 0x000080, 0x800080, 0x008080, 0xc0c0c0, 0x808080,
        0xff0000, 0x00ff00, 0xffff00, 0x0000ff, 0xff00ff, 0x00ffff, 0xffffff,
    ];
    let rgb = match index {
        0..=15 => SYSTEM[index as usize],
        16..=231 => {
            let level = |v: u8| if v == 0 { 0 } else { 55 + 40 * u32::from(v) };
            let i = index - 16;
            (level(i / 36) << 16) | (level(i / 6 % 6) << 8) | level(i % 6)
        }
        _ => {
            let grey = 8 + 10 * u32::from(index - 232);
            (grey << 16) | (grey << 8) | grey
        }
    };
    format!("#{rgb:06x}")
}

const UPPER_HALF: char = '▀';
const FULL_BLOCK: char = '█';

pub struct Canvas<'s> {
    style: &'s Style,
    out: String,
}

impl<'s> Canvas<'s> {
    pub fn new(style: &'s Style) -> Self {
        Canvas {
            style,
            out: String::new(),
        }
    }

    pub fn finish(self) -> String {
        self.out
    }

    pub fn text(&mut self, line: &str) {
        self.out.push_str(line);
        self.out.push('\n');
    }

    /// `pieces` joined by `separator`, in as many lines as the style's columns need (see
    /// [`flow`]).
    pub fn flow<S: AsRef<str>>(&mut self, pieces: &[S], separator: &str) {
        for line in flow(pieces, separator, self.style.columns) {
            self.text(&line);
        }
    }

    /// The legend: a sample pixel and its name for each entry.
    pub fn legend<P: Pixel>(&mut self, items: &[(P, &str)]) {
        let entries: Vec<String> = (items.iter())
            .map(|(pixel, name)| match self.style.color {
                true => format!("\x1b[38;5;{}m{FULL_BLOCK}\x1b[0m {name}", pixel.color()),
                false => format!("{} {name}", pixel.glyph()),
            })
            .collect();
        self.flow(&entries, "  ");
    }

    /// Draws `runs` (pixel, count) starting at `start`, each pixel standing for
    /// `bytes_per_pixel` bytes.
    pub fn draw<P: Pixel>(
        &mut self,
        start: u64,
        bytes_per_pixel: u64,
        runs: impl IntoIterator<Item = (P, u64)>,
    ) {
        let rows = if self.style.color { 2 } else { 1 };
        let line_pixels = (self.style.width * rows) as u64;
        let mut lines = LineWriter {
            canvas: self,
            previous: None,
            repeats: 0,
            bytes_per_line: line_pixels * bytes_per_pixel,
            next_addr: start,
        };
        let mut line: Vec<P> = Vec::with_capacity(line_pixels as usize);
        for (pixel, mut count) in runs {
            while count > 0 {
                if line.is_empty() && count >= line_pixels {
                    // Whole lines of one pixel: counted, not built pixel by pixel.
                    let whole = count / line_pixels;
                    line.resize(line_pixels as usize, pixel);
                    lines.emit(&line, whole);
                    line.clear();
                    count -= whole * line_pixels;
                    continue;
                }
                let take = count.min(line_pixels - line.len() as u64);
                line.extend(std::iter::repeat_n(pixel, take as usize));
                count -= take;
                if line.len() as u64 == line_pixels {
                    lines.emit(&line, 1);
                    line.clear();
                }
            }
        }
        if !line.is_empty() {
            lines.emit(&line, 1);
        }
        lines.flush();
    }

    fn render_line<P: Pixel>(&mut self, addr: u64, pixels: &[P]) {
        let width = self.style.width;
        let _ = write!(self.out, "{addr:>12x}  ");
        if !self.style.color {
            self.out.extend(pixels.iter().map(|p| p.glyph()));
            self.out.push('\n');
            return;
        }
        let mut current: (Option<u8>, Option<u8>) = (None, None);
        for col in 0..width.min(pixels.len()) {
            let top = pixels[col].color();
            let bottom = pixels.get(col + width).map(|p| p.color());
            if (Some(top), bottom) != current {
                match bottom {
                    Some(b) => {
                        let _ = write!(self.out, "\x1b[38;5;{top};48;5;{b}m");
                    }
                    None => {
                        let _ = write!(self.out, "\x1b[0;38;5;{top}m");
                    }
                }
                current = (Some(top), bottom);
            }
            self.out.push(UPPER_HALF);
        }
        self.out.push_str("\x1b[0m\n");
    }
}

/// Where a line broken by [`flow`] goes on.
const INDENT: &str = "  ";

/// `pieces` joined by `separator` in lines of at most `columns` visible characters, broken
/// between pieces (the lines after the first indented); a piece too long for a line of its own
/// is broken between its words, a word too long for one between its characters.
pub fn flow<S: AsRef<str>>(pieces: &[S], separator: &str, columns: usize) -> Vec<String> {
    let columns = columns.max(INDENT.len() + 1);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for piece in pieces.iter().map(AsRef::as_ref) {
        let joined = visible_width(&line) + visible_width(separator) + visible_width(piece);
        if !line.is_empty() && joined <= columns {
            line.push_str(separator);
            line.push_str(piece);
            continue;
        }
        let indent = if lines.is_empty() && line.is_empty() {
            ""
        } else {
            INDENT
        };
        if !line.is_empty() {
            lines.push(std::mem::take(&mut line));
        }
        let room = columns - indent.len();
        let mut parts = if visible_width(piece) <= room {
            vec![piece.to_string()]
        } else if piece.contains(' ') {
            flow(&piece.split(' ').collect::<Vec<_>>(), " ", room)
        } else {
            let chars: Vec<char> = piece.chars().collect();
            chars.chunks(room).map(|c| c.iter().collect()).collect()
        };
        // The last part may have the next piece joined to it.
        line = parts
            .pop()
            .map(|last| format!("{indent}{last}"))
            .unwrap_or_default();
        lines.extend(parts.into_iter().map(|part| format!("{indent}{part}")));
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// The characters of `text` a terminal shows: all but its CSI sequences (`ESC [ ... letter`),
/// each one column wide (the half blocks and the box drawing characters are).
pub fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(char::is_ascii_alphabetic);
        } else {
            width += 1;
        }
    }
    width
}

/// Emits lines, collapsing each run of identical lines after the first into a count.
struct LineWriter<'c, 's, P> {
    canvas: &'c mut Canvas<'s>,
    previous: Option<Vec<P>>,
    repeats: u64,
    bytes_per_line: u64,
    next_addr: u64,
}

impl<P: Pixel> LineWriter<'_, '_, P> {
    fn emit(&mut self, line: &[P], times: u64) {
        let mut times = times;
        if self.previous.as_deref() != Some(line) {
            self.flush();
            self.canvas.render_line(self.next_addr, line);
            self.previous = Some(line.to_vec());
            self.next_addr += self.bytes_per_line;
            times -= 1;
        }
        self.repeats += times;
        self.next_addr += self.bytes_per_line * times;
    }

    fn flush(&mut self) {
        if self.repeats > 0 {
            let _ = writeln!(
                self.canvas.out,
                "{:>12}  ┆ {} more line{} like the one above, up to {:x}",
                "",
                self.repeats,
                if self.repeats == 1 { "" } else { "s" },
                self.next_addr
            );
            self.repeats = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{flow, visible_width};

    #[test]
    fn pieces_flow_to_the_columns() {
        let pieces = ["live 12.3M", "cached 1.0K", "top 4.0K"];
        assert_eq!(
            flow(&pieces, "   ", 80),
            ["live 12.3M   cached 1.0K   top 4.0K"]
        );
        // Broken between pieces, the rest indented.
        assert_eq!(
            flow(&pieces, "   ", 25),
            ["live 12.3M   cached 1.0K", "  top 4.0K"]
        );
        // A piece longer than a line: between its words, then a word between its characters.
        let long = flow(&["note: a b c", "abcdefghij"], " ", 8);
        assert_eq!(long, ["note: a", "  b c", "  abcdef", "  ghij"]);
        for columns in 3..40 {
            let lines = flow(
                &["walk mode: the probes could not be attached", "x"],
                "; ",
                columns,
            );
            assert!(
                lines.iter().all(|l| visible_width(l) <= columns),
                "{columns}: {lines:?}"
            );
        }
    }

    #[test]
    fn colour_codes_take_no_room() {
        assert_eq!(visible_width("\x1b[38;5;220m█\x1b[0m tcache"), 8);
        let legend = ["\x1b[38;5;220m█\x1b[0m tcache", "\x1b[38;5;33m█\x1b[0m bin"];
        assert_eq!(flow(&legend, "  ", 15).len(), 1);
        assert_eq!(flow(&legend, "  ", 14).len(), 2);
    }
}
