//! The sites panel of `watch` in live mode: who holds the memory, who pins free pages, and who
//! grew since watch began, one line a site.
use super::heap::size;
use crate::state::sites::{SiteReport, SitesReport};

/// What a ranking orders sites by.
type Measure<'a> = dyn Fn(&SiteReport) -> f64 + 'a;

/// Sites a ranking shows.
const PER_RANKING: usize = 3;

/// The panel's lines, at most `columns` wide; `first`: the sites at watch's first sample, for
/// the growth.
pub fn panel(report: &SitesReport, first: Option<&SitesReport>, columns: usize) -> Vec<String> {
    let sampling = &report.sampling;
    let rate = match sampling.sample_bytes {
        1 => "every allocation".to_string(),
        bytes => format!("1 in {}", size(bytes)),
    };
    let pages = match sampling.pin_pages() {
        0 => "no page".to_string(),
        1 => "every page".to_string(),
        n => format!("1 page in {n}"),
    };
    let mut lines = vec![cut(
        &format!(
            "Sites: {} stacks ({rate}; pinning: {pages}); before attach {}",
            report.stacks,
            size(report.before_attach.inuse_bytes as u64)
        ),
        columns,
    )];
    let grown = |site: &SiteReport| {
        let before = first
            .and_then(|first| first.sites.iter().find(|f| f.frames == site.frames))
            .map_or(0.0, |f| f.figures.inuse_bytes);
        site.figures.inuse_bytes - before
    };
    let rankings: [(&str, &Measure, &str); 3] = [
        ("by live", &|s| s.figures.inuse_bytes, ""),
        ("by pinned", &|s| s.figures.pinned_bytes, ""),
        ("by growth", &grown, "+"),
    ];
    for (label, measure, sign) in rankings {
        for (rank, site) in report.top_by(PER_RANKING, measure).into_iter().enumerate() {
            let label = if rank == 0 { label } else { "" };
            let shown = format!("{sign}{}", size(measure(site) as u64));
            let line = format!("  {label:<10}{shown:>9}  {}", describe(site));
            lines.push(cut(&line, columns));
        }
    }
    lines
}

/// A site as one line: its innermost frame of the program's own code, file:line, objects.
fn describe(site: &SiteReport) -> String {
    let place = match site.own_frame() {
        Some(frame) => match frame.lines.last() {
            Some(line) => {
                let file =
                    (line.file.as_deref()).map(|f| f.rsplit('/').next().unwrap_or(f).to_string());
                match (file, line.line) {
                    (Some(file), Some(n)) => format!("{} ({file}:{n})", line.function),
                    (Some(file), None) => format!("{} ({file})", line.function),
                    _ => line.function.clone(),
                }
            }
            None => match &frame.module {
                Some(module) => format!(
                    "{}+{:#x}",
                    module.path.rsplit('/').next().unwrap_or(&module.path),
                    frame.file_offset
                ),
                None => format!("{:#x}", frame.address),
            },
        },
        None => "?".to_string(),
    };
    let truncated = if site.truncated {
        " (stack truncated)"
    } else {
        ""
    };
    format!(
        "{place}  {} objects{truncated}",
        site.figures.inuse_objects.round() as u64
    )
}

fn cut(line: &str, columns: usize) -> String {
    line.chars().take(columns).collect()
}
