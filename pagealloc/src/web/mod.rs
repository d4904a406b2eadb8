//! The web view: one page (HTML, CSS and JavaScript embedded in the binary, no network
//! needed) that `serve` serves at `/` and fills from the JSON of [`api`], and the same page as
//! one self-contained HTML file with one sample's documents inline (`--format html`).
pub mod api;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::state::Sample;
use crate::state::report::Report;
use crate::state::timeline::{Point, Timeline};

const INDEX: &str = include_str!("assets/index.html");
pub const SCRIPT: &str = include_str!("assets/app.js");
pub const STYLE: &str = include_str!("assets/app.css");

/// Where the page's head and the end of its body take what differs between served and
/// inline.
const HEAD: &str = "<!--head-->";
const BODY_END: &str = "<!--body-end-->";

/// What `serve`'s answers allow: the page's own files and requests, nothing else (no inline
/// code, no other origin, no framing).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page as `serve` serves it: its script and style are `/app.js` and `/app.css`.
pub fn served_page() -> String {
    INDEX
        .replace(HEAD, r#"<link rel="stylesheet" href="app.css">"#)
        .replace(BODY_END, r#"<script src="app.js"></script>"#)
}

/// The documents an HTML report carries, keyed as the page asks for them.
pub struct Documents(Vec<(String, String)>);

/// The most heap-map pixels a report carries, all scales together.
const REPORT_PIXELS: u64 = 1 << 22;

impl Documents {
    /// One sample's documents: the process, its pages, its sites, and its heap map at every
    /// scale from a screen's down to the finest that keeps the report within
    /// [`REPORT_PIXELS`] (a report zooms as far as that).
    pub fn of(report: &Report, sample: &Sample) -> Documents {
        let none = api::Query::parse(None);
        let mut timeline = Timeline::default();
        timeline.push(Point::of(report));
        let mut documents = vec![
            (
                "processes".to_string(),
                api::processes(std::iter::once(report), std::time::Duration::ZERO, 0),
            ),
            ("process".to_string(), api::process(report, sample)),
            (
                "history".to_string(),
                api::history(&timeline, std::time::Duration::ZERO),
            ),
        ];
        documents.extend(
            api::pages(sample, &none)
                .ok()
                .map(|d| ("pages".to_string(), d)),
        );
        documents.extend(
            api::sites(sample, &none)
                .ok()
                .map(|d| ("sites".to_string(), d)),
        );
        if let Some(heap) = sample.heap_map() {
            let bytes: u64 = heap.segments.iter().map(|s| s.end - s.start).sum();
            let largest = heap.segments.iter().map(|s| s.end - s.start).max();
            let granule = crate::state::heap::GRANULE;
            // Halving the scale doubles the pixels: the finest level is half the budget.
            let mut scale = granule;
            while bytes.div_ceil(scale) > REPORT_PIXELS / 2 {
                scale *= 2;
            }
            loop {
                let raw = format!("scale={scale}");
                if let Ok(document) = api::heap_map(sample, &api::Query::parse(Some(&raw))) {
                    documents.push((format!("heap-map:{scale}"), document));
                }
                // Up to the scale the page opens at: the largest heap whole in one view.
                if largest.unwrap_or(0).div_ceil(scale) <= VIEW_PIXELS {
                    break;
                }
                scale *= 2;
            }
        }
        Documents(documents)
    }
}

/// The pixels the page shows of one heap at once (its WIDTH × ROWS in app.js).
const VIEW_PIXELS: u64 = 1024 * 160;

/// The HTML report of one sample of process `comm` (`--format html`).
pub fn report_file(sample: &Sample, comm: &str, mode: crate::state::report::Mode) -> String {
    report_page(&Documents::of(&Report::of(sample, comm, mode), sample))
}

/// The page as one file: its style, its script and `documents` inline, under a policy that
/// allows exactly that style and that script (by their hashes) and no request at all.
pub fn report_page(documents: &Documents) -> String {
    let data: serde_json::Map<String, serde_json::Value> = (documents.0.iter())
        .map(|(key, document)| {
            let value = serde_json::from_str(document).unwrap_or(serde_json::Value::Null);
            (key.clone(), value)
        })
        .collect();
    // Inside <script>, "</script>" would end it: no '<' goes in as such (JSON allows \u003c).
    let data = serde_json::to_string(&data)
        .expect("plain data always serialises")
        .replace('<', "\\u003c");
    let policy = format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; img-src data:; base-uri 'none'; \
         form-action 'none'",
        hash(SCRIPT),
        hash(STYLE)
    );
    INDEX
        .replace(
            HEAD,
            &format!(
                "<meta http-equiv=\"Content-Security-Policy\" content=\"{policy}\">\n<style>{STYLE}</style>"
            ),
        )
        .replace(
            BODY_END,
            &format!(
                "<script type=\"application/json\" id=\"pagealloc-data\">{data}</script>\n<script>{SCRIPT}</script>"
            ),
        )
}

/// A CSP source for inline content: `sha256-` and its digest in base64.
fn hash(content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}
