//! Dependency-free SVG charts: a strip chart (one row per series, one tick per sample, p50
//! and p90 marked), enough to see a boot-time distribution and its tail at a glance; and a
//! line chart of a few series against one x axis (memory per instance against their count).

use std::fmt::Write;

use crate::stats::summarize;

/// One named set of samples.
#[derive(Debug)]
pub struct Series<'a> {
    pub name: &'a str,
    pub values: &'a [f64],
}

const WIDTH: f64 = 760.0;
const LEFT: f64 = 170.0;
const ROW: f64 = 46.0;

/// The opening tag, a white background and the title.
fn open_svg(height: f64, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">{title}</text>"#
    );
    out
}

/// Renders `series` on a shared axis labelled `unit`.
pub fn strip_chart(title: &str, unit: &str, series: &[Series<'_>]) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.05;
    let x = |v: f64| LEFT + (v / max) * (WIDTH - LEFT - 20.0);
    let height = 70.0 + ROW * series.len() as f64;
    let mut out = open_svg(height, title);
    for (i, s) in series.iter().enumerate() {
        let y = 45.0 + ROW * i as f64;
        let _ = writeln!(out, r#"<text x="10" y="{:.1}">{}</text>"#, y + 14.0, s.name);
        for v in s.values {
            let _ = writeln!(
                out,
                r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="#3465a4" stroke-opacity="0.5"/>"##,
                x(*v),
                y,
                y + 20.0
            );
        }
        if let Some(sum) = summarize(s.values) {
            for (label, v, color) in [("p50", sum.p50, "#cc0000"), ("p90", sum.p90, "#f57900")] {
                let _ = writeln!(
                    out,
                    r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="{color}" stroke-width="2"/><text x="{0:.1}" y="{3:.1}" fill="{color}" font-size="10">{label} {4:.2}</text>"#,
                    x(v),
                    y - 3.0,
                    y + 23.0,
                    if label == "p50" { y + 33.0 } else { y - 5.0 },
                    v
                );
            }
        }
    }
    let axis_y = height - 15.0;
    for k in 0..=5 {
        let v = max * f64::from(k) / 5.0;
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{axis_y:.1}" text-anchor="middle">{v:.1}</text>"#,
            x(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{axis_y:.1}">{unit}</text></svg>"#,
        WIDTH - 15.0
    );
    out
}

/// One named line of `(x, y)` points, in x order.
#[derive(Debug)]
pub struct Line<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

const PALETTE: [&str; 5] = ["#3465a4", "#cc0000", "#4e9a06", "#f57900", "#75507b"];
const PLOT_LEFT: f64 = 70.0;
const PLOT_TOP: f64 = 40.0;
const PLOT_HEIGHT: f64 = 300.0;

/// Renders `lines` on shared axes from 0 to their largest x and y.
pub fn line_chart(title: &str, x_unit: &str, y_unit: &str, lines: &[Line<'_>]) -> String {
    let points = lines.iter().flat_map(|l| l.points.iter());
    let (max_x, max_y) = points.fold((1e-9_f64, 1e-9_f64), |(mx, my), (x, y)| {
        (mx.max(*x), my.max(*y))
    });
    let max_y = max_y * 1.1;
    let plot_width = WIDTH - PLOT_LEFT - 170.0;
    let px = |x: f64| PLOT_LEFT + x / max_x * plot_width;
    let py = |y: f64| PLOT_TOP + PLOT_HEIGHT - y / max_y * PLOT_HEIGHT;
    let height = PLOT_TOP + PLOT_HEIGHT + 45.0;
    let mut out = open_svg(height, title);
    for k in 0..=5 {
        let (xv, yv) = (max_x * f64::from(k) / 5.0, max_y * f64::from(k) / 5.0);
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{xv:.0}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{yv:.0}</text><line x1="{PLOT_LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#dddddd"/>"##,
            px(xv),
            PLOT_TOP + PLOT_HEIGHT + 18.0,
            PLOT_LEFT - 6.0,
            py(yv) + 4.0,
            PLOT_LEFT + plot_width,
            py(yv),
            py(yv)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x_unit}</text><text x="10" y="{:.1}">{y_unit}</text>"#,
        PLOT_LEFT + plot_width / 2.0,
        height - 5.0,
        PLOT_TOP - 8.0
    );
    for (i, line) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = line
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/><text x="{:.1}" y="{:.1}" fill="{color}">{}</text>"#,
            path.join(" "),
            PLOT_LEFT + plot_width + 10.0,
            PLOT_TOP + 16.0 * i as f64 + 10.0,
            line.name
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_tick_per_sample_and_is_closed() {
        let a = [1.0, 2.0, 3.0];
        let svg = strip_chart(
            "t",
            "ms",
            &[Series {
                name: "a",
                values: &a,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("stroke-opacity").count(), 3);
    }

    #[test]
    fn line_chart_draws_one_polyline_per_series_within_the_plot() {
        let (a, b) = ([(0.0, 1.0), (10.0, 3.0)], [(5.0, 2.0)]);
        let svg = line_chart(
            "t",
            "instances",
            "KiB",
            &[
                Line {
                    name: "a",
                    points: &a,
                },
                Line {
                    name: "b",
                    points: &b,
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        // The largest x lands on the plot's right edge.
        assert!(svg.contains(&format!("{:.1},", PLOT_LEFT + WIDTH - PLOT_LEFT - 170.0)));
    }
}
