//! The Prometheus text exposition format (version 0.0.4), the one every Prometheus scrapes
//! and `promtool check metrics` checks: a `# HELP` and a `# TYPE` line per family, then its
//! samples, label values escaped.
//!
//! Written here rather than with the `prometheus-client` crate, whose encoder writes only
//! OpenMetrics: its counter families (`# TYPE x counter` over samples named `x_total`) and
//! its `info` type are refused or flagged by the promtool that Debian ships (2.42).

use std::fmt::Write;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A page of metrics being written.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    text: String,
}

impl Exposition {
    /// Start the family `name` (samples follow with [`Exposition::sample`]).
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.name());
    }

    /// One sample of the current family: `name{labels} value`.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (key, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                self.text.push_str(key);
                self.text.push_str("=\"");
                escape_label_value(&mut self.text, value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        write_value(&mut self.text, value);
        self.text.push('\n');
    }

    /// A histogram's samples for one label set: cumulative `_bucket`s by upper bound `le`
    /// (`+Inf` last), `_sum` and `_count`. `buckets` pairs each bound with the count of
    /// observations at most that bound and above the previous one; `overflow` counts those
    /// above the last bound.
    pub(crate) fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        overflow: u64,
        sum: f64,
    ) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (bound, count) in buckets {
            cumulative += count;
            let le = format_value(*bound);
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative as f64);
        }
        cumulative += overflow;
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, cumulative as f64);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }

    /// The page.
    pub(crate) fn finish(self) -> String {
        self.text
    }
}

fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

fn format_value(value: f64) -> String {
    let mut text = String::new();
    write_value(&mut text, value);
    text
}

fn write_value(out: &mut String, value: f64) {
    if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else if value.is_nan() {
        out.push_str("NaN");
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaped_labels() {
        let mut page = Exposition::default();
        page.family("shoal_x_total", Kind::Counter, "Things.\nMany.");
        page.sample("shoal_x_total", &[("listener", "a\"b\\c\nd")], 3.0);
        page.sample("shoal_x_total", &[], 0.5);
        assert_eq!(
            page.finish(),
            "# HELP shoal_x_total Things.\\nMany.\n# TYPE shoal_x_total counter\n\
             shoal_x_total{listener=\"a\\\"b\\\\c\\nd\"} 3\nshoal_x_total 0.5\n"
        );
    }

    #[test]
    fn a_histogram_is_cumulative_and_ends_with_inf() {
        let mut page = Exposition::default();
        page.family("shoal_d_seconds", Kind::Histogram, "D.");
        page.histogram(
            "shoal_d_seconds",
            &[("e", "h")],
            &[(0.001, 2), (0.01, 1)],
            1,
            5.02,
        );
        let text = page.finish();
        assert!(
            text.contains("shoal_d_seconds_bucket{e=\"h\",le=\"0.001\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("shoal_d_seconds_bucket{e=\"h\",le=\"0.01\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("shoal_d_seconds_bucket{e=\"h\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("shoal_d_seconds_count{e=\"h\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("shoal_d_seconds_sum{e=\"h\"} 5.02\n"),
            "{text}"
        );
    }
}
