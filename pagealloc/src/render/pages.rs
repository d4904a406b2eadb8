//! The page map picture: one pixel per page, a legend, a header per mapping.
use super::Style;
use super::canvas::{Canvas, Pixel};
use crate::state::pages::{MappingPages, PageMap, PageState};

impl Pixel for PageState {
    fn color(self) -> u8 {
        match self {
            PageState::Anon => 34,     // green
            PageState::File => 33,     // blue
            PageState::ThpAnon => 201, // magenta
            PageState::ThpFile => 51,  // cyan
            PageState::Swapped => 214, // orange
            PageState::Absent => 238,  // dark grey
        }
    }

    fn glyph(self) -> char {
        match self {
            PageState::Anon => '#',
            PageState::File => '=',
            PageState::ThpAnon => 'H',
            PageState::ThpFile => 'F',
            PageState::Swapped => 's',
            PageState::Absent => '.',
        }
    }
}

pub const LEGEND: [(PageState, &str); 6] = [
    (PageState::Anon, "anonymous"),
    (PageState::File, "file/shared"),
    (PageState::ThpAnon, "huge anonymous"),
    (PageState::ThpFile, "huge file"),
    (PageState::Swapped, "swapped"),
    (PageState::Absent, "not present"),
];

pub fn render(map: &PageMap, style: &Style) -> String {
    let mut canvas = Canvas::new(style);
    canvas.flow(
        &[
            format!(
                "process {}: {} mappings, {} pages resident ({} KiB), {} swapped",
                map.pid,
                map.mappings.len(),
                map.totals.resident(),
                map.totals.resident() * map.page_size / 1024,
                map.totals.swapped,
            ),
            format!("one pixel = one {} KiB page", map.page_size / 1024),
        ],
        "; ",
    );
    for note in &map.limitations {
        canvas.flow(&[format!("note: {note}")], "");
    }
    canvas.legend(&LEGEND);
    for pages in &map.mappings {
        canvas.text("");
        canvas.flow(&header(pages), "  ");
        canvas.draw(
            pages.mapping.start,
            map.page_size,
            pages.runs.iter().map(|r| (r.state, r.pages)),
        );
    }
    canvas.finish()
}

/// A mapping's header: where and what it is, then its pages by state.
fn header(pages: &MappingPages) -> [String; 2] {
    let m = &pages.mapping;
    let mut counts = String::new();
    for (state, _) in LEGEND {
        let n = pages.counts.get(state);
        if n > 0 {
            counts.push_str(&format!(" {}={n}", state.key()));
        }
    }
    [
        format!(
            "{:x}-{:x} {} {:08x} {}",
            m.start,
            m.end,
            m.perms,
            m.offset,
            if m.path.is_empty() {
                "(anonymous)"
            } else {
                &m.path
            },
        ),
        format!("[{}]", counts.trim_start()),
    ]
}
