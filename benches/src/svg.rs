//! A dependency-free SVG strip chart: one row per series, one tick per sample, with p50 and
//! p90 marked. Enough to see a boot-time distribution and its tail at a glance.

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
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="20" font-size="14">{title}</text>"#
    );
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
}
