//! A transaction's attempts as a Gantt chart: one row per branch on one time axis from the
//! transaction's start, one bar per call (coloured by outcome, labelled by op, its details in a
//! tooltip). Laid out here as plain numbers, so the geometry is tested without a browser, and
//! drawn as inline SVG: no script, nothing fetched.

use super::clock;
use maud::{html, Markup};

/// One branch's row.
pub struct Row<'a> {
    pub label: &'a str,
    pub bars: Vec<Bar<'a>>,
}

/// One call.
pub struct Bar<'a> {
    pub op: &'a str,
    /// Unix ms.
    pub started_at: i64,
    pub duration_ms: i64,
    pub outcome: &'a str,
    pub error: Option<&'a str>,
}

pub const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 150.0;
const PLOT_W: f64 = WIDTH - LABEL_W - 20.0;
const ROW_H: f64 = 30.0;
const BAR_H: f64 = 18.0;
const AXIS_H: f64 = 26.0;
/// A call too short to see at this scale is drawn this wide.
const MIN_BAR_W: f64 = 3.0;

/// Where a bar goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub x: f64,
    pub y: f64,
    pub w: f64,
}

/// The axis: from `t0` to the end of the last call (at least 1 ms).
pub fn span_ms(t0: i64, rows: &[Row<'_>]) -> i64 {
    rows.iter()
        .flat_map(|r| &r.bars)
        .map(|b| b.started_at + b.duration_ms.max(0) - t0)
        .max()
        .unwrap_or(0)
        .max(1)
}

/// Each bar's place, row by row.
pub fn place(t0: i64, rows: &[Row<'_>]) -> Vec<Vec<Placed>> {
    let span = span_ms(t0, rows) as f64;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            r.bars
                .iter()
                .map(|b| {
                    let start = (b.started_at - t0).max(0) as f64;
                    let w = (b.duration_ms.max(0) as f64 * PLOT_W / span).max(MIN_BAR_W);
                    // A bar never runs past the plot's right edge.
                    let x = (LABEL_W + start * PLOT_W / span).min(LABEL_W + PLOT_W - w);
                    Placed {
                        x,
                        y: AXIS_H + i as f64 * ROW_H + (ROW_H - BAR_H) / 2.0,
                        w,
                    }
                })
                .collect()
        })
        .collect()
}

/// The chart as inline SVG.
pub fn chart(t0: i64, rows: &[Row<'_>]) -> Markup {
    let span = span_ms(t0, rows);
    let placed = place(t0, rows);
    let height = AXIS_H + rows.len() as f64 * ROW_H + 4.0;
    let ticks: Vec<(f64, String)> = (0..=4)
        .map(|k| {
            let ms = span * k / 4;
            (
                LABEL_W + ms as f64 * PLOT_W / span as f64,
                format!("+{}", clock::span(ms)),
            )
        })
        .collect();
    html! {
        svg.gantt xmlns="http://www.w3.org/2000/svg" role="img"
            viewBox=(format!("0 0 {WIDTH} {height}")) width=(WIDTH) height=(height)
            aria-label="every attempt of every branch on one time axis" {
            @for (x, label) in &ticks {
                line.tick x1=(x) x2=(x) y1=(AXIS_H - 6.0) y2=(height) {}
                text.tick-label x=(x) y=(AXIS_H - 10.0) text-anchor="middle" { (label) }
            }
            @for (i, (row, bars)) in rows.iter().zip(&placed).enumerate() {
                @let y = AXIS_H + i as f64 * ROW_H;
                rect.lane x="0" y=(y) width=(WIDTH) height=(ROW_H) {}
                text.branch x=(LABEL_W - 8.0) y=(y + ROW_H / 2.0 + 4.0) text-anchor="end" { (row.label) }
                @for (bar, p) in row.bars.iter().zip(bars) {
                    g.bar data-branch=(row.label) data-op=(bar.op) data-outcome=(bar.outcome) {
                        title {
                            (bar.op) " · " (bar.outcome) " · started +"
                            (clock::span(bar.started_at - t0)) " · took "
                            (clock::span(bar.duration_ms))
                            @if let Some(e) = bar.error { " · " (e) }
                        }
                        rect class=(format!("bar-rect {}", bar.outcome))
                            x=(format!("{:.1}", p.x)) y=(format!("{:.1}", p.y))
                            width=(format!("{:.1}", p.w)) height=(BAR_H) rx="3" {}
                        @if p.w >= 46.0 {
                            text.bar-label x=(format!("{:.1}", p.x + 4.0)) y=(format!("{:.1}", p.y + BAR_H - 5.0)) {
                                (bar.op)
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(op: &'static str, started_at: i64, duration_ms: i64) -> Bar<'static> {
        Bar {
            op,
            started_at,
            duration_ms,
            outcome: "success",
            error: None,
        }
    }

    #[test]
    fn bars_sit_on_their_branch_s_row_in_time_order_inside_the_plot() {
        let rows = [
            Row {
                label: "order",
                bars: vec![bar("try", 1000, 10), bar("confirm", 1050, 10)],
            },
            Row {
                label: "payment",
                bars: vec![bar("try", 1002, 30), bar("confirm", 1080, 20)],
            },
        ];
        let placed = place(1000, &rows);
        assert_eq!(span_ms(1000, &rows), 100);
        assert!(placed[0][0].x < placed[0][1].x);
        assert!(placed[1][0].y > placed[0][0].y, "one row per branch");
        assert_eq!(placed[0][0].y, placed[0][1].y);
        let last = &placed[1][1];
        assert!(
            (last.x + last.w - (LABEL_W + PLOT_W)).abs() < 1e-6,
            "the last call ends the axis"
        );
        assert!((placed[1][0].w - 0.3 * PLOT_W).abs() < 1e-6, "30 of 100 ms");
    }

    #[test]
    fn an_instant_call_is_still_visible_and_never_leaves_the_plot() {
        let rows = [Row {
            label: "order",
            bars: vec![bar("try", 5000, 0), bar("cancel", 3_605_000, 0)],
        }];
        let placed = place(5000, &rows);
        assert!(placed[0].iter().all(|p| p.w >= MIN_BAR_W));
        assert!(placed[0][1].x + placed[0][1].w <= LABEL_W + PLOT_W + 1e-6);
    }

    #[test]
    fn the_chart_labels_each_bar_with_its_op_and_outcome() {
        let rows = [Row {
            label: "payment",
            bars: vec![Bar {
                op: "cancel",
                started_at: 10,
                duration_ms: 5,
                outcome: "error",
                error: Some("unavailable <b>"),
            }],
        }];
        let svg = chart(0, &rows).into_string();
        assert!(
            svg.contains(r#"data-branch="payment" data-op="cancel" data-outcome="error""#),
            "{svg}"
        );
        assert!(svg.contains("unavailable &lt;b&gt;"), "escaped: {svg}");
    }
}
