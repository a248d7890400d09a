//! Line charts drawn on the server as SVG: no script, nothing to load, readable by a screen
//! reader from its label. Every text in a chart (series names are device ids) goes through
//! maud, which escapes it.

use maud::{html, Markup};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
/// Room for the value labels on the left and the time labels below.
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 8.0;
const RIGHT: f64 = 8.0;

/// One line of a chart: (time in ms, value) in time order.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<(i64, f64)>,
}

/// A chart of `series` over `[from_ms, to_ms)`, its axes labelled with `value` and `time`
/// (how to show a value and a time), and `label` its accessible name.
pub(crate) fn line_chart(
    label: &str,
    series: &[Series],
    (from_ms, to_ms): (i64, i64),
    value: impl Fn(f64) -> String,
    time: impl Fn(i64) -> String,
) -> Markup {
    let (lo, hi) = value_range(series);
    let span = (to_ms - from_ms).max(1) as f64;
    let x = |t: i64| LEFT + (t - from_ms) as f64 / span * (WIDTH - LEFT - RIGHT);
    let y = |v: f64| TOP + (hi - v) / (hi - lo) * (HEIGHT - TOP - BOTTOM);
    let bottom = HEIGHT - BOTTOM;
    html! {
        svg class="chart" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(label) {
            title { (label) }
            line class="axis" x1=(LEFT) y1=(bottom) x2=(WIDTH - RIGHT) y2=(bottom) {}
            line class="axis" x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(bottom) {}
            text class="tick" x=(LEFT - 4.0) y=(TOP + 10.0) text-anchor="end" { (value(hi)) }
            text class="tick" x=(LEFT - 4.0) y=(bottom) text-anchor="end" { (value(lo)) }
            text class="tick" x=(LEFT) y=(HEIGHT - 6.0) { (time(from_ms)) }
            text class="tick" x=(WIDTH - RIGHT) y=(HEIGHT - 6.0) text-anchor="end" { (time(to_ms)) }
            @for (i, s) in series.iter().enumerate() {
                g class=(format!("series s{}", i % 4)) {
                    title { (s.name) }
                    @if s.points.len() == 1 {
                        circle cx=(fmt(x(s.points[0].0))) cy=(fmt(y(s.points[0].1))) r="3" {}
                    } @else {
                        polyline points=(path(&s.points, &x, &y)) {}
                    }
                }
            }
        }
        @if series.len() > 1 {
            ul class="legend" {
                @for (i, s) in series.iter().enumerate() {
                    li class=(format!("s{}", i % 4)) { (s.name) }
                }
            }
        }
    }
}

/// The values' range, widened a little (and around a flat line) so lines do not sit on the
/// chart's edges.
fn value_range(series: &[Series]) -> (f64, f64) {
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.1
    } else {
        lo.abs().max(1.0) * 0.1
    };
    (lo - pad, hi + pad)
}

fn path(points: &[(i64, f64)], x: &impl Fn(i64) -> f64, y: &impl Fn(f64) -> f64) -> String {
    let mut out = String::with_capacity(points.len() * 14);
    for (t, v) in points {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&fmt(x(*t)));
        out.push(',');
        out.push_str(&fmt(y(*v)));
    }
    out
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: &[Series]) -> String {
        line_chart(
            "Heart rate",
            series,
            (0, 100),
            |v| format!("{v:.0}"),
            |t| t.to_string(),
        )
        .into_string()
    }

    #[test]
    fn points_are_placed_by_time_and_value() {
        let s = Series {
            name: "bed-001".into(),
            points: vec![(0, 50.0), (100, 70.0)],
        };
        let svg = chart(&[s]);
        // 50 is the bottom of the padded range [48, 72], 70 near its top; time 0 at the
        // left edge, 100 at the right.
        assert!(svg.contains("points=\"56.0,162.0 632.0,22.0\""), "{svg}");
        assert!(svg.contains(">72<") && svg.contains(">48<"), "{svg}");
        assert!(!svg.contains("legend"), "one series needs no legend");
    }

    #[test]
    fn names_and_labels_are_text_never_markup() {
        let s = Series {
            name: "<script>alert(1)</script>".into(),
            points: vec![(10, 1.0)],
        };
        let t = Series {
            name: "\"quoted\" & more".into(),
            points: vec![(10, 2.0), (20, 3.0)],
        };
        let svg = chart(&[s, t]);
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(
            svg.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{svg}"
        );
        assert!(svg.contains("&quot;quoted&quot; &amp; more"), "{svg}");
        assert!(svg.contains("<circle"), "a lone point is a dot");
    }

    #[test]
    fn a_flat_line_and_no_data_still_draw() {
        assert_eq!(value_range(&[]), (0.0, 1.0));
        let flat = [Series {
            name: "x".into(),
            points: vec![(0, 60.0), (50, 60.0)],
        }];
        assert_eq!(value_range(&flat), (54.0, 66.0));
    }
}
