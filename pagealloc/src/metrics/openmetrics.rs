//! The two exposition formats a scraper may ask for: Prometheus text (the `prometheus` crate's
//! encoder) and OpenMetrics text 1.0, which that crate does not write. They differ in what the
//! families here use: a counter's family is named without `_total` (its samples keep it), and
//! the exposition ends with `# EOF`.
use std::fmt::Write;

use prometheus::proto::{LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which format an `Accept` header asks for: OpenMetrics when it names it.
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.contains("application/openmetrics-text")
}

/// The Prometheus text format (content type [`prometheus::TEXT_FORMAT`]).
pub fn prometheus_text(families: &[MetricFamily]) -> String {
    let mut buffer = Vec::new();
    // Writing to memory fails only on a family without samples, which `families` leaves out.
    if let Err(e) = TextEncoder::new().encode(families, &mut buffer) {
        log::warn!("encoding the metrics: {e}");
    }
    String::from_utf8(buffer).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The OpenMetrics text format of `families`, without the closing `# EOF` (an exposition may
/// be made of several parts: [`OPENMETRICS_END`] ends it).
pub fn openmetrics_text(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for family in families {
        let name = family.name();
        let (kind, base) = match family.get_field_type() {
            MetricType::COUNTER => ("counter", name.strip_suffix("_total").unwrap_or(name)),
            MetricType::GAUGE => ("gauge", name),
            MetricType::HISTOGRAM => ("histogram", name),
            MetricType::SUMMARY => ("summary", name),
            MetricType::UNTYPED => ("unknown", name),
        };
        let _ = writeln!(out, "# TYPE {base} {kind}");
        let _ = writeln!(out, "# HELP {base} {}", escape(family.help(), false));
        for metric in family.get_metric() {
            let labels = metric.get_label();
            match family.get_field_type() {
                MetricType::COUNTER => sample(
                    &mut out,
                    &format!("{base}_total"),
                    labels,
                    None,
                    metric.get_counter().get_value(),
                ),
                MetricType::GAUGE => {
                    sample(&mut out, base, labels, None, metric.get_gauge().get_value())
                }
                // Nothing here makes untyped metrics.
                MetricType::UNTYPED => {}
                MetricType::HISTOGRAM => {
                    let histogram = metric.get_histogram();
                    let bucket = format!("{base}_bucket");
                    for b in histogram.get_bucket() {
                        let le = number(b.upper_bound());
                        sample(
                            &mut out,
                            &bucket,
                            labels,
                            Some(("le", &le)),
                            b.cumulative_count() as f64,
                        );
                    }
                    let count = histogram.get_sample_count() as f64;
                    sample(&mut out, &bucket, labels, Some(("le", "+Inf")), count);
                    sample(&mut out, &format!("{base}_count"), labels, None, count);
                    sample(
                        &mut out,
                        &format!("{base}_sum"),
                        labels,
                        None,
                        histogram.get_sample_sum(),
                    );
                }
                MetricType::SUMMARY => {
                    let summary = metric.get_summary();
                    for q in summary.get_quantile() {
                        let quantile = number(q.quantile());
                        let extra = Some(("quantile", quantile.as_str()));
                        sample(&mut out, base, labels, extra, q.value());
                    }
                    sample(
                        &mut out,
                        &format!("{base}_count"),
                        labels,
                        None,
                        summary.sample_count() as f64,
                    );
                    sample(
                        &mut out,
                        &format!("{base}_sum"),
                        labels,
                        None,
                        summary.sample_sum(),
                    );
                }
            }
        }
    }
    out
}

/// What ends an OpenMetrics exposition.
pub const OPENMETRICS_END: &str = "# EOF\n";

/// One sample line; `extra` is a label of the line's own (a bucket's `le`, a quantile).
fn sample(
    out: &mut String,
    name: &str,
    labels: &[LabelPair],
    extra: Option<(&str, &str)>,
    value: f64,
) {
    out.push_str(name);
    let pairs = labels.iter().map(|l| (l.name(), l.value())).chain(extra);
    let mut first = true;
    for (label, value) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{label}=\"{}\"", escape(value, true));
    }
    if !first {
        out.push('}');
    }
    let _ = writeln!(out, " {}", number(value));
}

/// A number as OpenMetrics writes it: integers without a fraction, infinities as `+Inf`/`-Inf`.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// Backslash, newline and (in label values) double quote escaped.
fn escape(text: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}
