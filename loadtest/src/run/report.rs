//! A run's figures: one [`PointReport`] per point, printed as a table, written as JSON and
//! drawn as an SVG plot (cost per packet, loss and latency against forwarded packets/s).

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::Scenario;

/// p50/p95 in ms (`None` when nothing was measured).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Median, ms.
    pub p50: Option<f64>,
    /// 95th percentile, ms.
    pub p95: Option<f64>,
}

/// One-way latency percentiles, ms (payload send stamp → read by the subscriber task; both
/// in this process, so it includes the tool's own scheduling).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median, ms.
    pub p50: Option<f64>,
    /// 99th percentile, ms.
    pub p99: Option<f64>,
    /// 99.9th percentile, ms.
    pub p999: Option<f64>,
}

/// The figures of one point. JSON field names are the interface `docs/benchmarks.md` and
/// scripts rely on.
#[derive(Debug, Clone, Serialize)]
pub struct PointReport {
    /// Scenario (B1…B5).
    pub scenario: Scenario,
    /// Index of the point in the run.
    pub point: usize,
    /// Human label (`B1 P=10 S=50`).
    pub label: String,
    /// Publishers.
    pub publishers: u32,
    /// Subscribers (B2: participants, who are both).
    pub subscribers: u32,
    /// Participant tasks started.
    pub participants: u32,
    /// Participants that failed (error or ended by the server).
    pub failed: u32,
    /// The first few failures, `identity: why`.
    pub failures: Vec<String>,
    /// Measurement window, s.
    pub window_s: f64,
    /// Packets/s the subscribers received in the window (what the server forwarded).
    pub forwarded_packets_per_second: f64,
    /// Packets received in the window.
    pub received_packets: u64,
    /// Of those, video packets (the rest is audio): with `expected_packets` this shows which
    /// simulcast layer arrived (video ÷ audio ≈ 0.4 for q, 1.1 for h, 3.6 for f).
    pub received_video_packets: u64,
    /// Packets the sequence numbers say were sent to the subscribers in the window.
    pub expected_packets: u64,
    /// 1 − received ÷ expected.
    pub loss_ratio: f64,
    /// One-way latency.
    pub latency_ms: Latency,
    /// Join → first media (subscribers; publish-only: → ICE+DTLS up), the counted group.
    pub join_ms: Percentiles,
    /// → `JoinResponse`.
    pub join_signal_ms: Percentiles,
    /// → ICE + DTLS up on the primary peer connection.
    pub join_connected_ms: Percentiles,
    /// → first RTP packet.
    pub join_first_media_ms: Percentiles,
    /// B5: join → first media of the storm's joiners.
    pub storm_join_ms: Option<Percentiles>,
    /// Server CPU in the window, % of one core.
    pub server_cpu_percent: Option<f64>,
    /// This tool's CPU in the window, % of one core (a run is valid below ~85 %).
    pub tool_cpu_percent: Option<f64>,
    /// Server CPU µs per forwarded packet (= CPU-s per 10⁶ forwarded packets).
    pub server_cpu_us_per_forwarded_packet: Option<f64>,
    /// The floor's relay CPU µs per forwarded packet, same fan-out and packet size.
    pub floor_us_per_forwarded_packet: Option<f64>,
    /// Server ÷ floor.
    pub r_floor: Option<f64>,
    /// Server resident memory growth per participant with media flowing, bytes.
    pub server_rss_bytes_per_participant: Option<f64>,
    /// B5: resident memory growth per connected idle participant, bytes.
    pub server_rss_bytes_per_idle_participant: Option<f64>,
    /// The floor's shape: packets/s in, fan-out, payload bytes.
    #[serde(skip)]
    pub floor_shape: (u32, u32, usize),
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

impl PointReport {
    /// One line for the end of a point.
    pub fn summary_line(&self) -> String {
        format!(
            "{}: {:.0} fwd pkt/s, loss {:.3} %, latency p50/p99/p99.9 {}/{}/{} ms, join p50/p95 \
             {}/{} ms, server {} µs/pkt, floor {} µs/pkt, R_floor {}, failed {}",
            self.label,
            self.forwarded_packets_per_second,
            self.loss_ratio * 100.0,
            f(self.latency_ms.p50, 2),
            f(self.latency_ms.p99, 2),
            f(self.latency_ms.p999, 2),
            f(self.join_ms.p50, 0),
            f(self.join_ms.p95, 0),
            f(self.server_cpu_us_per_forwarded_packet, 2),
            f(self.floor_us_per_forwarded_packet, 2),
            f(self.r_floor, 2),
            self.failed
        )
    }

    /// True when the point meets the capacity criterion (loss ≤ 1 %, p99 ≤ 5 ms, no failures).
    pub fn holds(&self) -> bool {
        self.failed == 0 && self.loss_ratio <= 0.01 && self.latency_ms.p99.is_some_and(|p| p <= 5.0)
    }
}

/// The table printed at the end (Markdown, so it pastes into `docs/benchmarks.md`).
pub fn table(points: &[PointReport]) -> String {
    let mut s = String::from(
        "| point | fwd pkt/s | loss % | latency p50 / p99 / p99.9 ms | join p50 / p95 ms | \
         server CPU % | µs/fwd pkt | floor µs | R_floor | RSS/participant KiB | tool CPU % |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in points {
        let rss = p.server_rss_bytes_per_participant.map(|b| b / 1024.0);
        s.push_str(&format!(
            "| {} | {:.0} | {:.3} | {} / {} / {} | {} / {} | {} | {} | {} | {} | {} | {} |\n",
            p.label,
            p.forwarded_packets_per_second,
            p.loss_ratio * 100.0,
            f(p.latency_ms.p50, 2),
            f(p.latency_ms.p99, 2),
            f(p.latency_ms.p999, 2),
            f(p.join_ms.p50, 0),
            f(p.join_ms.p95, 0),
            f(p.server_cpu_percent, 0),
            f(p.server_cpu_us_per_forwarded_packet, 2),
            f(p.floor_us_per_forwarded_packet, 2),
            f(p.r_floor, 2),
            f(rss, 0),
            f(p.tool_cpu_percent, 0),
        ));
    }
    for p in points {
        if let Some(st) = p.storm_join_ms {
            s.push_str(&format!(
                "\n{}: storm join p50 / p95 {} / {} ms; join split p50: signal {} ms, ICE+DTLS {} ms, first media {} ms; idle participant {} KiB\n",
                p.label,
                f(st.p50, 0),
                f(st.p95, 0),
                f(p.join_signal_ms.p50, 0),
                f(p.join_connected_ms.p50, 0),
                f(p.join_first_media_ms.p50, 0),
                f(p.server_rss_bytes_per_idle_participant.map(|b| b / 1024.0), 0),
            ));
        }
    }
    s
}

/// The JSON report: the last point's fields at the top level (the interface), every point
/// under `points`, and for sweeps the largest point that holds (loss ≤ 1 %, p99 ≤ 5 ms).
pub fn json(points: &[PointReport]) -> serde_json::Value {
    let mut top = points
        .last()
        .and_then(|p| serde_json::to_value(p).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    if let Some(obj) = top.as_object_mut() {
        obj.insert(
            "points".into(),
            serde_json::to_value(points).unwrap_or_default(),
        );
        let best = points
            .iter()
            .filter(|p| p.holds())
            .max_by_key(|p| p.subscribers);
        obj.insert(
            "largest_holding_point".into(),
            best.map_or(serde_json::Value::Null, |p| p.label.clone().into()),
        );
    }
    top
}

/// Errors drawing the plot.
#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {reason}")]
pub struct PlotError {
    path: String,
    reason: String,
}

/// One plot panel: its title and its lines (label, colour, (x, y) points).
type Panel<'a> = (&'a str, Vec<(&'a str, RGBColor, Vec<(f64, f64)>)>);

/// Draws cost per forwarded packet (server and floor), loss and latency (p50, p99) against
/// forwarded packets/s, one panel each, as SVG.
///
/// # Errors
/// [`PlotError`] when the file cannot be written.
pub fn plot(points: &[PointReport], path: &Path) -> Result<(), PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((3, 1));
    let xmax = points
        .iter()
        .map(|p| p.forwarded_packets_per_second)
        .fold(1.0, f64::max)
        * 1.1;
    let title = points
        .first()
        .map(|p| format!("{:?}", p.scenario))
        .unwrap_or_default();
    let series: [Panel<'_>; 3] = [
        (
            "CPU µs per forwarded packet",
            vec![
                (
                    "server",
                    RED,
                    points
                        .iter()
                        .filter_map(|p| {
                            p.server_cpu_us_per_forwarded_packet
                                .map(|v| (p.forwarded_packets_per_second, v))
                        })
                        .collect(),
                ),
                (
                    "floor",
                    BLUE,
                    points
                        .iter()
                        .filter_map(|p| {
                            p.floor_us_per_forwarded_packet
                                .map(|v| (p.forwarded_packets_per_second, v))
                        })
                        .collect(),
                ),
            ],
        ),
        (
            "loss %",
            vec![(
                "loss",
                RED,
                points
                    .iter()
                    .map(|p| (p.forwarded_packets_per_second, p.loss_ratio * 100.0))
                    .collect(),
            )],
        ),
        (
            "one-way latency ms",
            vec![
                (
                    "p50",
                    BLUE,
                    points
                        .iter()
                        .filter_map(|p| {
                            p.latency_ms
                                .p50
                                .map(|v| (p.forwarded_packets_per_second, v))
                        })
                        .collect(),
                ),
                (
                    "p99",
                    RED,
                    points
                        .iter()
                        .filter_map(|p| {
                            p.latency_ms
                                .p99
                                .map(|v| (p.forwarded_packets_per_second, v))
                        })
                        .collect(),
                ),
            ],
        ),
    ];
    for (area, (name, lines)) in panels.iter().zip(series.iter()) {
        let ymax = lines
            .iter()
            .flat_map(|(_, _, v)| v.iter().map(|(_, y)| *y))
            .fold(0.0, f64::max)
            .max(0.01)
            * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{title}: {name}"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..xmax, 0.0..ymax)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("forwarded packets/s")
            .draw()
            .map_err(|e| err(&e))?;
        for (label, color, pts) in lines {
            let color = *color;
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color))
                .map_err(|e| err(&e))?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
            chart
                .draw_series(
                    pts.iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
