//! The Prometheus text exposition (and OpenMetrics), parsed: every sample line with its labels.
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of an exposition: comment lines are skipped, any other line must be a sample.
pub fn parse(text: &str) -> Result<Vec<Series>, String> {
    let lines = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    lines
        .map(|line| parse_sample(line).ok_or_else(|| format!("not a sample line: {line:?}")))
        .collect()
}

/// One sample line: `name{label="value",...} value [timestamp]`, label values unescaped.
pub fn parse_sample(line: &str) -> Option<Series> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inside) = rest.strip_prefix('{') {
        rest = inside;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(label.to_string(), value);
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Series {
        name,
        labels,
        value,
    })
}
