//! The picture engine shared by the page map and the heap map: pixels in address order become
//! lines of Unicode half blocks (two pixel rows per text line) in colour, or one glyph per pixel
//! in monochrome; runs of identical lines collapse into one line with a repeat count.
use std::fmt::Write as _;

use super::Style;

/// A pixel value: how it looks in colour (ANSI 256-colour index) and in monochrome.
pub trait Pixel: Copy + PartialEq {
    fn color(self) -> u8;
    fn glyph(self) -> char;
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

    /// A legend entry: a sample pixel and its name.
    pub fn legend<P: Pixel>(&mut self, items: &[(P, &str)]) {
        let mut line = String::new();
        for (pixel, name) in items {
            if self.style.color {
                let _ = write!(
                    line,
                    "\x1b[38;5;{}m{FULL_BLOCK}\x1b[0m {name}  ",
                    pixel.color()
                );
            } else {
                let _ = write!(line, "{} {name}  ", pixel.glyph());
            }
        }
        self.text(line.trim_end());
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
