//! `ferry bench --compare … --plot FILE.svg`: median wall time against link rate, one line per
//! tool (log–log), min–max as a vertical bar at each point. The unshaped loopback has no rate:
//! it is drawn at ten times the fastest shaped link, and the caption says so.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::stats::Row;

/// Colours of the tools, in the order they first appear (ferry first).
const COLOURS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Write the plot of `rows` to `file`. `rates`: each link name's rate in Mbit/s (`None`:
/// loopback); `title`: what was copied.
pub fn write(
    file: &Path,
    rows: &[Row],
    rates: &[(String, Option<f64>)],
    title: &str,
) -> anyhow::Result<()> {
    let fastest = rates.iter().filter_map(|(_, r)| *r).fold(1.0_f64, f64::max);
    let x_of = |link: &str| {
        rates.iter().find(|(n, _)| n == link).map(|(_, r)| r.unwrap_or(fastest * 10.0))
    };
    let mut tools: Vec<&str> = Vec::new();
    for r in rows {
        if !tools.contains(&r.tool.as_str()) {
            tools.push(&r.tool);
        }
    }
    let points: Vec<(usize, f64, f64, f64, f64)> = rows
        .iter()
        .filter_map(|r| {
            let s = r.seconds?;
            let t = tools.iter().position(|t| *t == r.tool)?;
            Some((t, x_of(&r.link)?, s.median, s.min, s.max))
        })
        .collect();
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, 0.0_f64, f64::MAX, 0.0_f64);
    for &(_, x, _, lo, hi) in &points {
        x_lo = x_lo.min(x);
        x_hi = x_hi.max(x);
        y_lo = y_lo.min(lo);
        y_hi = y_hi.max(hi);
    }
    if points.is_empty() {
        (x_lo, x_hi, y_lo, y_hi) = (1.0, 10.0, 0.1, 1.0);
    }
    let draw =
        || -> Result<(), Box<dyn std::error::Error>> {
            let root = SVGBackend::new(file, (900, 560)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(48)
                .y_label_area_size(64)
                .build_cartesian_2d(
                    ((x_lo / 1.5).max(1e-3)..x_hi * 1.5).log_scale(),
                    ((y_lo / 1.5).max(1e-3)..y_hi * 1.5).log_scale(),
                )?;
            chart
                .configure_mesh()
                .x_desc(format!(
                    "link rate, Mbit/s (loopback, unshaped, drawn at {:.0})",
                    fastest * 10.0
                ))
                .y_desc("wall time, s (median; bar: min–max)")
                .draw()?;
            for (i, tool) in tools.iter().enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
                let mut line: Vec<(f64, f64)> =
                    points.iter().filter(|p| p.0 == i).map(|p| (p.1, p.2)).collect();
                line.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))?
                    .label(*tool)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
                chart.draw_series(points.iter().filter(|p| p.0 == i).map(|p| {
                    PathElement::new(vec![(p.1, p.3), (p.1, p.4)], colour.stroke_width(1))
                }))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()?;
            root.present()?;
            Ok(())
        };
    draw().map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("--plot {}", file.display()))
}
