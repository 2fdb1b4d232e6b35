//! A small hand-built SVG line chart (no plotting dependency): axes with ticks, one polyline
//! per series, a legend, optional vertical marker lines.

use std::fmt::Write as _;

/// One line of the chart.
pub struct Series {
    /// The legend text.
    pub name: String,
    /// The points, x ascending.
    pub points: Vec<(f64, f64)>,
}

/// A vertical marker (e.g. a target) at `x`, labelled.
pub struct Marker {
    /// Where.
    pub x: f64,
    /// Its label.
    pub label: String,
}

/// An axis: its title, range, and whether it is logarithmic (base 10).
pub struct Axis {
    /// The axis title.
    pub title: String,
    /// The smallest value shown.
    pub min: f64,
    /// The largest value shown.
    pub max: f64,
    /// Logarithmic (both bounds must be positive).
    pub log: bool,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

impl Axis {
    fn fraction(&self, v: f64) -> f64 {
        if self.log {
            let (lo, hi) = (self.min.max(1e-12).log10(), self.max.max(1e-12).log10());
            (v.max(1e-12).log10() - lo) / (hi - lo).max(1e-12)
        } else {
            (v - self.min) / (self.max - self.min).max(1e-12)
        }
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut ticks = Vec::new();
            let mut t = 10f64.powf(self.min.max(1e-12).log10().floor());
            while t <= self.max * 1.0001 {
                for m in [1.0, 2.0, 5.0] {
                    let v = t * m;
                    if v >= self.min * 0.9999 && v <= self.max * 1.0001 {
                        ticks.push(v);
                    }
                }
                t *= 10.0;
            }
            ticks
        } else {
            let span = (self.max - self.min).max(1e-12);
            let raw = span / 5.0;
            let magnitude = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * magnitude)
                .find(|s| *s >= raw)
                .unwrap_or(raw);
            let mut ticks = Vec::new();
            let mut v = (self.min / step).ceil() * step;
            while v <= self.max + step * 1e-6 {
                ticks.push(v);
                v += step;
            }
            ticks
        }
    }
}

fn label(v: f64) -> String {
    if v >= 1000.0 {
        crate::report::count(v.round() as u64)
    } else if v >= 1.0 || v == 0.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        format!("{v:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart as an SVG document.
pub fn line_chart(
    title: &str,
    x: &Axis,
    y: &Axis,
    series: &[Series],
    markers: &[Marker],
) -> String {
    let (width, height) = (760.0, 440.0);
    let (left, right, top, bottom) = (70.0, 200.0, 40.0, 60.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let px = |v: f64| left + x.fraction(v).clamp(0.0, 1.0) * plot_w;
    let py = |v: f64| top + plot_h - y.fraction(v).clamp(0.0, 1.0) * plot_h;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        left + plot_w / 2.0,
        escape(title)
    );
    for t in x.ticks() {
        let xx = px(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + plot_h,
            top + plot_h + 16.0,
            label(t)
        );
    }
    for t in y.ticks() {
        let yy = py(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            yy + 4.0,
            label(t)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        height - 18.0,
        escape(&x.title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(&y.title)
    );
    for marker in markers {
        let xx = px(marker.x);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="5,4"/><text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
            top + plot_h,
            xx + 4.0,
            top + 14.0,
            escape(&marker.label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(a, b)| format!("{:.1},{:.1}", px(a), py(b)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        for &(a, b) in s.points.iter().filter(|_| s.points.len() <= 20) {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(a),
                py(b)
            );
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let lx = left + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// One group of bars (e.g. one log size, one number of writers): a label and one value per
/// series, in the order of the chart's series names (`None`: not measured).
pub struct BarGroup {
    /// The group's label, left of its bars.
    pub label: String,
    /// One value per series.
    pub values: Vec<Option<f64>>,
}

/// A horizontal grouped bar chart: one group of bars per [`BarGroup`], one bar per series,
/// each bar labelled with its value formatted by `format`, and an optional vertical marker
/// (a target) in the value axis. For figures a reader compares side by side: rates of the
/// framework and of plain PostgreSQL doing the same work (append, command path, rebuild).
pub fn bar_chart(
    title: &str,
    value_title: &str,
    series: &[&str],
    groups: &[BarGroup],
    format: &dyn Fn(f64) -> String,
) -> String {
    let bar_h = 16.0;
    let gap = 14.0;
    let (left, right, top, bottom) = (170.0, 90.0, 40.0, 50.0);
    let width = 820.0;
    let plot_w = width - left - right;
    let group_h = bar_h * series.len().max(1) as f64 + gap;
    let legend_h = 20.0 * series.len() as f64;
    let plot_h = group_h * groups.len().max(1) as f64;
    let height = top + plot_h + bottom + legend_h;
    let max = groups
        .iter()
        .flat_map(|g| g.values.iter().flatten().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let axis = Axis {
        title: value_title.to_string(),
        min: 0.0,
        max: max * 1.05,
        log: false,
    };
    let px = |v: f64| left + axis.fraction(v).clamp(0.0, 1.0) * plot_w;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        width / 2.0,
        escape(title)
    );
    for t in axis.ticks() {
        let xx = px(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + plot_h,
            top + plot_h + 16.0,
            label(t)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + plot_w / 2.0,
        top + plot_h + 36.0,
        escape(value_title)
    );
    for (g, group) in groups.iter().enumerate() {
        let gy = top + g as f64 * group_h + gap / 2.0;
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            gy + group_h / 2.0 - gap / 2.0 + 4.0,
            escape(&group.label)
        );
        for (s, value) in group.values.iter().enumerate() {
            let Some(value) = *value else { continue };
            let color = COLORS[s % COLORS.len()];
            let y = gy + s as f64 * bar_h;
            let w = (px(value) - left).max(0.5);
            let _ = writeln!(
                svg,
                r#"<rect x="{left}" y="{y:.1}" width="{w:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                bar_h - 2.0,
                left + w + 4.0,
                y + bar_h - 5.0,
                escape(&format(value))
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#333"/>"##,
        top + plot_h
    );
    for (s, name) in series.iter().enumerate() {
        let color = COLORS[s % COLORS.len()];
        let ly = top + plot_h + bottom + s as f64 * 20.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{left}" y="{:.1}" width="14" height="12" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 10.0,
            left + 20.0,
            ly,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The command path's chart, for `es-bench command` to call: commands/s by method (one bar per
/// method) for each number of writers (one group per count), e.g. `("repository, default",
/// [(1, 2112.0), (8, 4652.0)])`. Methods missing at a writer count leave no bar.
// Called by `es-bench command`, which another branch owns; until it does, only the tests do.
#[allow(dead_code)]
pub fn command_chart(title: &str, methods: &[(&str, Vec<(usize, f64)>)]) -> String {
    let mut writers: Vec<usize> = methods
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .collect();
    writers.sort_unstable();
    writers.dedup();
    let names: Vec<&str> = methods.iter().map(|m| m.0).collect();
    let groups: Vec<BarGroup> = writers
        .iter()
        .map(|&w| BarGroup {
            label: format!("{w} writer{}", if w == 1 { "" } else { "s" }),
            values: methods
                .iter()
                .map(|(_, points)| points.iter().find(|p| p.0 == w).map(|p| p.1))
                .collect(),
        })
        .collect();
    bar_chart(title, "commands/s", &names, &groups, &|v| {
        format!("{}/s", crate::report::count(v.round().max(0.0) as u64))
    })
}

/// Writes a chart next to the markdown (creating the directory) and returns the file name the
/// markdown links to.
pub fn write_chart(path: &std::path::Path, svg: &str) -> std::io::Result<String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, svg)?;
    eprintln!("wrote {}", path.display());
    Ok(path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_chart_draws_a_bar_per_measured_value() {
        let svg = command_chart(
            "t & u",
            &[
                ("ours", vec![(1, 100.0), (8, 400.0)]),
                ("raw", vec![(8, 500.0)]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &amp; u"));
        // Three bars plus two legend swatches and the background.
        assert_eq!(svg.matches("<rect").count(), 3 + 2 + 1);
        assert!(svg.contains("500/s") && svg.contains("8 writers"));
    }
}
