//! The delivery-health plots of a webhook page: the geometry of three small charts (success
//! rate, latency percentiles, backlog) computed from [`HealthSeries`]; the templates draw them
//! as inline SVG, so nothing is fetched and no script is needed.

use serde::Serialize;

use herald_core::health::{DURATION_BOUNDS_MS, HealthPoint, HealthSeries};

/// The drawing area inside the SVG's `viewBox` (0 0 WIDTH HEIGHT): room on the left for the
/// y labels and below for the x labels.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 74.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 24.0;

#[derive(Debug, Serialize)]
pub struct Bar {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    /// `ok`, `warn` or `bad` (colours), or `plain`.
    class: &'static str,
    /// The tooltip.
    title: String,
}

#[derive(Debug, Serialize)]
pub struct Line {
    /// `x,y x,y …` for a `<polyline>`.
    points: String,
    class: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Dot {
    x: f64,
    y: f64,
    class: &'static str,
    title: String,
}

#[derive(Debug, Serialize)]
pub struct Tick {
    pos: f64,
    label: String,
}

#[derive(Debug, Serialize)]
pub struct Legend {
    class: &'static str,
    label: &'static str,
}

#[derive(Debug, Serialize)]
pub struct Chart {
    title: &'static str,
    caption: String,
    width: f64,
    height: f64,
    left: f64,
    right_edge: f64,
    bottom_edge: f64,
    bars: Vec<Bar>,
    lines: Vec<Line>,
    dots: Vec<Dot>,
    y_ticks: Vec<Tick>,
    x_ticks: Vec<Tick>,
    legend: Vec<Legend>,
    /// Nothing to plot in the window.
    empty: bool,
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Geometry shared by the three charts: one slot per bucket.
struct Frame {
    slots: usize,
}

impl Frame {
    fn slot_width(&self) -> f64 {
        (WIDTH - LEFT - RIGHT) / self.slots.max(1) as f64
    }

    fn x(&self, i: usize) -> f64 {
        LEFT + self.slot_width() * i as f64
    }

    fn center(&self, i: usize) -> f64 {
        round(self.x(i) + self.slot_width() / 2.0)
    }

    /// `fraction` of the plot's height, from the bottom.
    fn y(fraction: f64) -> f64 {
        round(HEIGHT - BOTTOM - fraction.clamp(0.0, 1.0) * (HEIGHT - TOP - BOTTOM))
    }

    fn x_ticks(&self, points: &[HealthPoint]) -> Vec<Tick> {
        // Every sixth hour, labelled with its start (UTC).
        points
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 6 == 0)
            .map(|(i, p)| Tick {
                pos: round(self.x(i)),
                label: p.start.to_datetime().format("%H:%M").to_string(),
            })
            .collect()
    }

    fn chart(&self, title: &'static str, caption: String, points: &[HealthPoint]) -> Chart {
        Chart {
            title,
            caption,
            width: WIDTH,
            height: HEIGHT,
            left: LEFT,
            right_edge: WIDTH - RIGHT,
            bottom_edge: HEIGHT - BOTTOM,
            bars: Vec::new(),
            lines: Vec::new(),
            dots: Vec::new(),
            y_ticks: Vec::new(),
            x_ticks: self.x_ticks(points),
            legend: Vec::new(),
            empty: true,
        }
    }
}

fn hour(p: &HealthPoint) -> String {
    p.start.to_datetime().format("%H:%M").to_string()
}

/// The three charts of a webhook page.
pub fn charts(series: &HealthSeries) -> Vec<Chart> {
    let frame = Frame {
        slots: series.points.len(),
    };
    let mut charts = vec![
        success_chart(&frame, &series.points),
        latency_chart(&frame, &series.points),
        backlog_chart(&frame, &series.points),
    ];
    if series.capped {
        for chart in &mut charts {
            chart.caption.push_str(&format!(
                " Only the webhook's latest {} deliveries are counted: older ones in these 24 hours are not.",
                herald_core::health::SCAN_LIMIT
            ));
        }
    }
    charts
}

fn success_chart(frame: &Frame, points: &[HealthPoint]) -> Chart {
    let total: u64 = points.iter().map(|p| p.attempts).sum();
    let succeeded: u64 = points.iter().map(|p| p.succeeded).sum();
    let caption = if total == 0 {
        "No attempts in the last 24 hours.".to_owned()
    } else {
        format!(
            "{succeeded} of {total} attempts succeeded ({:.1}%) in the last 24 hours, by hour (UTC). A failed attempt that a retry later fixed counts as failed here.",
            100.0 * succeeded as f64 / total as f64
        )
    };
    let mut chart = frame.chart("Success rate", caption, points);
    chart.empty = total == 0;
    chart.y_ticks = [0.0, 0.5, 1.0]
        .iter()
        .map(|&f| Tick {
            pos: Frame::y(f),
            label: format!("{:.0}%", f * 100.0),
        })
        .collect();
    let w = round(frame.slot_width() * 0.8);
    for (i, p) in points.iter().enumerate() {
        let Some(rate) = p.success_rate else { continue };
        let y = Frame::y(rate);
        chart.bars.push(Bar {
            x: round(frame.x(i) + frame.slot_width() * 0.1),
            y,
            w,
            // At least a sliver, so that an hour of only failures still shows.
            h: round((HEIGHT - BOTTOM - y).max(1.5)),
            class: match rate {
                r if r >= 0.99 => "ok",
                r if r >= 0.9 => "warn",
                _ => "bad",
            },
            title: format!(
                "{}: {} of {} attempts succeeded ({:.1}%)",
                hour(p),
                p.succeeded,
                p.attempts,
                rate * 100.0
            ),
        });
    }
    chart
}

/// Latencies on a log scale from 1 ms to the last class bound.
fn latency_y(ms: u32) -> f64 {
    let top = f64::from(DURATION_BOUNDS_MS[DURATION_BOUNDS_MS.len() - 1]).log10();
    Frame::y(f64::from(ms.max(1)).log10() / top)
}

fn latency_chart(frame: &Frame, points: &[HealthPoint]) -> Chart {
    let has_data = points.iter().any(|p| p.p50_ms.is_some());
    let caption = if has_data {
        "Attempt durations per hour: p50, p90 and p99, each shown as the upper bound of its class (1, 2, 5, 10, 20, 50 ms… up to 60 s), on a log scale.".to_owned()
    } else {
        "No attempts in the last 24 hours.".to_owned()
    };
    let mut chart = frame.chart("Latency", caption, points);
    chart.empty = !has_data;
    chart.y_ticks = [1, 10, 100, 1_000, 10_000]
        .iter()
        .map(|&ms| Tick {
            pos: latency_y(ms),
            // Short, so that they fit beside the plot on a phone too.
            label: if ms >= 1000 {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            },
        })
        .collect();
    type Pick = fn(&HealthPoint) -> Option<u32>;
    let series: [(&'static str, &'static str, Pick); 3] = [
        ("p50", "p50", |p| p.p50_ms),
        ("p90", "p90", |p| p.p90_ms),
        ("p99", "p99", |p| p.p99_ms),
    ];
    for (class, label, pick) in series {
        chart.legend.push(Legend { class, label });
        // One polyline per run of hours with attempts; hours without any leave a gap.
        let mut run: Vec<String> = Vec::new();
        for (i, p) in points.iter().enumerate() {
            match pick(p) {
                Some(ms) => {
                    let (x, y) = (frame.center(i), latency_y(ms));
                    run.push(format!("{x},{y}"));
                    chart.dots.push(Dot {
                        x,
                        y,
                        class,
                        title: format!("{}: {label} ≤ {ms} ms ({} attempts)", hour(p), p.attempts),
                    });
                }
                None => flush(&mut run, &mut chart.lines, class),
            }
        }
        flush(&mut run, &mut chart.lines, class);
    }
    chart
}

fn flush(run: &mut Vec<String>, lines: &mut Vec<Line>, class: &'static str) {
    if run.len() > 1 {
        lines.push(Line {
            points: run.join(" "),
            class,
        });
    }
    run.clear();
}

fn backlog_chart(frame: &Frame, points: &[HealthPoint]) -> Chart {
    let max = points.iter().map(|p| p.backlog).max().unwrap_or(0);
    let caption = format!(
        "Deliveries not yet finished at the end of each hour, derived from when deliveries were created and when they last changed state (not sampled): unfinished at the start, plus created, minus finished. Now: {}.",
        points.last().map_or(0, |p| p.backlog)
    );
    let mut chart = frame.chart("Backlog", caption, points);
    chart.empty = max == 0;
    // A round top for the scale: 1, 2 or 5 times a power of ten.
    let mut top = 1u64;
    while top < max {
        top = match top.to_string().as_bytes()[0] {
            b'1' => top * 2,
            b'2' => top / 2 * 5,
            _ => top * 2,
        };
    }
    // A middle tick only where it is a whole number of deliveries.
    let ticks: Vec<u64> = if (top / 2) * 2 == top {
        vec![0, top / 2, top]
    } else {
        vec![0, top]
    };
    chart.y_ticks = ticks
        .iter()
        .map(|&v| Tick {
            pos: Frame::y(v as f64 / top as f64),
            label: v.to_string(),
        })
        .collect();
    let w = round(frame.slot_width() * 0.8);
    for (i, p) in points.iter().enumerate().filter(|(_, p)| p.backlog > 0) {
        let y = Frame::y(p.backlog as f64 / top as f64);
        chart.bars.push(Bar {
            x: round(frame.x(i) + frame.slot_width() * 0.1),
            y,
            w,
            h: round(HEIGHT - BOTTOM - y),
            class: "plain",
            title: format!(
                "{}: {} unfinished at the end of the hour",
                hour(p),
                p.backlog
            ),
        });
    }
    chart
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::Timestamp;

    fn point(i: i64, attempts: u64, succeeded: u64, backlog: u64) -> HealthPoint {
        HealthPoint {
            start: Timestamp::from_millis(i * 3_600_000),
            attempts,
            succeeded,
            success_rate: (attempts > 0).then(|| succeeded as f64 / attempts as f64),
            p50_ms: (attempts > 0).then_some(10),
            p90_ms: (attempts > 0).then_some(100),
            p99_ms: (attempts > 0).then_some(1000),
            backlog,
        }
    }

    #[test]
    fn each_hour_with_attempts_gets_a_bar_and_points() {
        let series = HealthSeries {
            bucket_ms: 3_600_000,
            points: vec![point(0, 0, 0, 0), point(1, 4, 3, 7), point(2, 2, 2, 0)],
            capped: false,
        };
        let [success, latency, backlog] = <[Chart; 3]>::try_from(charts(&series)).unwrap();
        assert_eq!(success.bars.len(), 2);
        assert_eq!(success.bars[0].class, "bad");
        assert_eq!(success.bars[1].class, "ok");
        assert_eq!(latency.lines.len(), 3);
        assert_eq!(latency.dots.len(), 6);
        assert_eq!(backlog.bars.len(), 1);
        assert!(!backlog.empty);
        let y_top = backlog.y_ticks.last().unwrap();
        assert_eq!(y_top.label, "10");
    }

    #[test]
    fn an_idle_webhook_says_so() {
        let series = HealthSeries {
            bucket_ms: 3_600_000,
            points: (0..24).map(|i| point(i, 0, 0, 0)).collect(),
            capped: false,
        };
        assert!(charts(&series).iter().all(|c| c.empty));
    }

    #[test]
    fn counts_of_only_the_latest_deliveries_say_so() {
        let mut series = HealthSeries {
            bucket_ms: 3_600_000,
            points: vec![point(0, 4, 3, 7)],
            capped: false,
        };
        let said = |series: &HealthSeries| {
            charts(series)
                .iter()
                .all(|c| c.caption.contains("latest 100000 deliveries are counted"))
        };
        assert!(!said(&series));
        series.capped = true;
        assert!(said(&series));
    }
}
