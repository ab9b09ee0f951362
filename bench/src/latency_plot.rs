//! Latency distributions as an SVG plot, in the HDR histogram style: latency (log scale)
//! against the percentile, spread out towards the tail (the x axis is `1 / (1 − q)`, log
//! scale), so that p50, p99 and p99.99 each get room.
//!
//! The load generator records each run's latencies in an HDR histogram and prints the value
//! at the quantiles [`quantile`]`(0..=`[`STEPS`]`)`; this module draws them, one panel per
//! load, one line per server.

use std::fmt::Write as _;

/// Points per distribution after the first (p0): `q = 1 − 10^(−k/4)` for `k` in
/// `0..=STEPS`, up to p99.99.
pub const STEPS: usize = 16;

/// The quantile of point `k`.
#[must_use]
pub fn quantile(k: usize) -> f64 {
    1.0 - 10f64.powf(-(k as f64) / 4.0)
}

/// One panel: a title and a line per server (label, latency in µs at each quantile).
pub struct Panel {
    /// The panel's title.
    pub title: String,
    /// One line per server: its label and `STEPS + 1` latencies in µs.
    pub series: Vec<(String, Vec<f64>)>,
}

const PANEL_WIDTH: f64 = 460.0;
const PANEL_HEIGHT: f64 = 300.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
const GAP: f64 = 90.0;
const COLORS: [&str; 5] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"];

/// The plot: panels side by side, a shared legend below.
#[must_use]
pub fn render(panels: &[Panel]) -> String {
    let width = MARGIN_LEFT + panels.len() as f64 * (PANEL_WIDTH + GAP);
    let height = MARGIN_TOP + PANEL_HEIGHT + MARGIN_BOTTOM + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (index, panel) in panels.iter().enumerate() {
        let left = MARGIN_LEFT + index as f64 * (PANEL_WIDTH + GAP);
        draw_panel(&mut svg, panel, left);
    }
    // One legend for all panels: the servers in the order the panels first name them (the
    // panels give their lines in the same order, so colours match).
    let mut labels: Vec<&str> = Vec::new();
    for (label, _) in panels.iter().flat_map(|panel| &panel.series) {
        if !labels.contains(&label.as_str()) {
            labels.push(label);
        }
    }
    {
        let y = MARGIN_TOP + PANEL_HEIGHT + MARGIN_BOTTOM + 20.0;
        for (index, label) in labels.iter().enumerate() {
            let x = MARGIN_LEFT + index as f64 * 200.0;
            let color = COLORS[index % COLORS.len()];
            let _ = writeln!(
                svg,
                "<line x1=\"{x:.0}\" y1=\"{y:.0}\" x2=\"{:.0}\" y2=\"{y:.0}\" stroke=\"{color}\" \
                 stroke-width=\"2\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text>",
                x + 24.0,
                x + 30.0,
                y + 4.0,
                escape(label)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(svg: &mut String, panel: &Panel, left: f64) {
    let top = MARGIN_TOP;
    let _ = writeln!(
        svg,
        "<text x=\"{:.0}\" y=\"{:.0}\" font-weight=\"bold\">{}</text>\n\
         <rect x=\"{left:.0}\" y=\"{top:.0}\" width=\"{PANEL_WIDTH:.0}\" \
         height=\"{PANEL_HEIGHT:.0}\" fill=\"none\" stroke=\"#888\"/>",
        left,
        top - 12.0,
        escape(&panel.title)
    );
    let values = panel
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0);
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if low > high {
        let _ = writeln!(
            svg,
            "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\">no data</text>",
            left + PANEL_WIDTH / 2.0,
            top + PANEL_HEIGHT / 2.0
        );
        return;
    }
    // Whole decades of µs on the y axis.
    let (y_low, y_high) = (
        low.log10().floor(),
        high.log10().ceil().max(low.log10().floor() + 1.0),
    );
    let x_max = STEPS as f64 / 4.0; // log10 of 1 / (1 - q) at the last point
    let x = |k: usize| left + (k as f64 / 4.0) / x_max * PANEL_WIDTH;
    let y = |us: f64| top + PANEL_HEIGHT - (us.log10() - y_low) / (y_high - y_low) * PANEL_HEIGHT;
    // Grid: a line per decade of latency, one per percentile mark.
    let mut decade = y_low;
    while decade <= y_high {
        let yy = y(10f64.powf(decade));
        let _ = writeln!(
            svg,
            "<line x1=\"{left:.0}\" y1=\"{yy:.1}\" x2=\"{:.0}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + PANEL_WIDTH,
            left - 6.0,
            yy + 4.0,
            micros_label(10f64.powf(decade))
        );
        decade += 1.0;
    }
    for (k, label) in [
        (0, "p0"),
        (4, "p90"),
        (8, "p99"),
        (12, "p99.9"),
        (16, "p99.99"),
    ] {
        let xx = x(k);
        let _ = writeln!(
            svg,
            "<line x1=\"{xx:.1}\" y1=\"{top:.0}\" x2=\"{xx:.1}\" y2=\"{:.0}\" stroke=\"#ddd\"/>\
             <text x=\"{xx:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{label}</text>",
            top + PANEL_HEIGHT,
            top + PANEL_HEIGHT + 16.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\">percentile</text>\
         <text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" \
         transform=\"rotate(-90 {:.0} {:.0})\">latency</text>",
        left + PANEL_WIDTH / 2.0,
        top + PANEL_HEIGHT + 36.0,
        left - 52.0,
        top + PANEL_HEIGHT / 2.0,
        left - 52.0,
        top + PANEL_HEIGHT / 2.0
    );
    for (index, (_, values)) in panel.series.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite() && **v > 0.0)
            .map(|(k, v)| format!("{:.1},{:.1}", x(k), y(*v)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            COLORS[index % COLORS.len()],
            points.join(" ")
        );
    }
}

/// `100 µs`, `1 ms`, `10 s`.
fn micros_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.0} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.0} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_run_from_p0_to_p99_99() {
        assert_eq!(quantile(0), 0.0);
        assert!((quantile(4) - 0.9).abs() < 1e-12);
        assert!((quantile(8) - 0.99).abs() < 1e-12);
        assert!((quantile(STEPS) - 0.9999).abs() < 1e-12);
    }

    #[test]
    fn a_plot_has_a_line_per_server_in_each_panel() {
        let line = |scale: f64| (0..=STEPS).map(|k| scale * (k + 1) as f64).collect();
        let panel = |title: &str| Panel {
            title: title.to_string(),
            series: vec![
                ("shoal Wasm echo".to_string(), line(100.0)),
                ("raw <tokio> echo".to_string(), line(10.0)),
            ],
        };
        let svg = render(&[panel("round trips"), panel("connections")]);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("raw &lt;tokio&gt; echo"));
        assert!(svg.contains(">10 µs<") && svg.contains(">1 ms<"));
    }

    #[test]
    fn a_panel_without_data_still_shows_its_frame() {
        let empty = Panel {
            title: "connections".to_string(),
            series: vec![("shoal Wasm echo".to_string(), vec![f64::NAN; STEPS + 1])],
        };
        let svg = render(&[empty]);
        assert!(svg.contains(">connections<") && svg.contains(">no data<"));
        assert!(
            svg.contains(">shoal Wasm echo<"),
            "the legend names the server"
        );
    }
}
