//! The report's charts, each written as PNG and SVG by plotters. PNG text needs a font:
//! DejaVu Sans, embedded by the `dejavu` crate, registered once as `sans-serif`.

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

/// One series of points `(x, y, y spread)` with a name.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y, half-height of the error bar)`.
    pub points: Vec<(f64, f64, f64)>,
}

/// A scatter-and-line chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// The series, each drawn as connected points with error bars.
    pub series: Vec<Series>,
}

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        // The bytes are a valid TrueType font; should registration fail, text drawing
        // reports it as a plotting error below.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3 * hi.abs().max(1.0));
    (lo - pad, hi + pad)
}

/// The corner whose legend-sized box (40% wide, 35% tall) covers the fewest points.
fn emptiest_corner(chart: &Chart, x: (f64, f64), y: (f64, f64)) -> SeriesLabelPosition {
    let corners = [
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
    ];
    let covered = |right: bool, upper: bool| {
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| {
                let (u, v) = ((p.0 - x.0) / (x.1 - x.0), (p.1 - y.0) / (y.1 - y.0));
                (if right { u > 0.6 } else { u < 0.4 }) && (if upper { v > 0.65 } else { v < 0.35 })
            })
            .count()
    };
    corners
        .into_iter()
        .min_by_key(|&(_, right, upper)| covered(right, upper))
        .map_or(SeriesLabelPosition::LowerRight, |c| c.0)
}

fn draw<DB: DrawingBackend>(chart: &Chart, area: DrawingArea<DB, Shift>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plot {}: {e:?}", chart.title);
    area.fill(&WHITE).map_err(err)?;
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = bounds(points().map(|p| p.0));
    let (y0, y1) = bounds(points().flat_map(|p| [p.1 - p.2, p.1 + p.2]));
    let mut ctx = ChartBuilder::on(&area)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    ctx.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, series) in chart.series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        let mut sorted = series.points.clone();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        ctx.draw_series(LineSeries::new(
            sorted.iter().map(|p| (p.0, p.1)),
            colour.stroke_width(2),
        ))
        .map_err(err)?
        .label(series.name.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        ctx.draw_series(
            sorted
                .iter()
                .map(|p| Circle::new((p.0, p.1), 4, colour.filled())),
        )
        .map_err(err)?;
        for p in sorted.iter().filter(|p| p.2 > 0.0) {
            ctx.draw_series(LineSeries::new(
                [(p.0, p.1 - p.2), (p.0, p.1 + p.2)],
                colour.stroke_width(1),
            ))
            .map_err(err)?;
        }
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(emptiest_corner(chart, (x0, x1), (y0, y1)))
        .draw()
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}

/// Writes `chart` to `stem.png` and `stem.svg` (800x520); returns both paths.
pub fn write_chart(chart: &Chart, stem: &Path) -> Result<[PathBuf; 2]> {
    register_font();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    draw(
        chart,
        BitMapBackend::new(&png, (800, 520)).into_drawing_area(),
    )?;
    draw(chart, SVGBackend::new(&svg, (800, 520)).into_drawing_area())?;
    Ok([png, svg])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_goes_where_the_points_are_not() {
        let chart = |points: Vec<(f64, f64, f64)>| Chart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            series: vec![Series {
                name: "s".into(),
                points,
            }],
        };
        // Points along the falling diagonal leave the lower-left and upper-right free; the
        // lower-right has one, so it is not chosen.
        let falling = chart(vec![(0.0, 1.0, 0.0), (0.5, 0.5, 0.0), (0.95, 0.05, 0.0)]);
        let corner = emptiest_corner(&falling, (0.0, 1.0), (0.0, 1.0));
        assert!(
            matches!(corner, SeriesLabelPosition::LowerLeft),
            "{corner:?}"
        );
        let rising = chart(vec![(0.05, 0.05, 0.0), (0.2, 0.1, 0.0), (0.95, 0.95, 0.0)]);
        let corner = emptiest_corner(&rising, (0.0, 1.0), (0.0, 1.0));
        assert!(
            matches!(corner, SeriesLabelPosition::LowerRight),
            "{corner:?}"
        );
    }
}
