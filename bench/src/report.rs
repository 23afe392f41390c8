//! Results: the summary table, the JSON file, the PNG plot and the comparison of two runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{Protocol, Qos, Transport};
use crate::metrics::Percentiles;

/// One second of the run.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Publishes sent per second.
    pub out_per_s: f64,
    /// Messages received per second.
    pub in_per_s: f64,
    /// Successful connects per second.
    pub connects_per_s: f64,
    /// Connections open.
    pub open: u64,
    /// Median latency in this second, µs.
    pub p50_us: u64,
    /// 99th percentile latency in this second, µs.
    pub p99_us: u64,
}

/// CPU used by one process during the run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    /// Process id (0 for the bench itself).
    pub pid: u32,
    /// CPU seconds (user + system); `None` if /proc could not be read.
    pub cpu_s: Option<f64>,
    /// CPU seconds per wall second, in percent of one core.
    pub percent_of_core: Option<f64>,
}

/// CPU used by the bench and the brokers.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    /// The bench process.
    pub bench: ProcessCpu,
    /// Each `--broker-pid`.
    pub brokers: Vec<ProcessCpu>,
}

impl CpuUse {
    /// The difference of two snapshots `(self, brokers)` over `wall`.
    pub fn between(
        a: &(Option<f64>, Vec<Option<f64>>),
        b: &(Option<f64>, Vec<Option<f64>>),
        pids: &[u32],
        wall: Duration,
    ) -> Self {
        let one = |pid: u32, x: Option<f64>, y: Option<f64>| {
            let cpu_s = match (x, y) {
                (Some(x), Some(y)) => Some(y - x),
                _ => None,
            };
            ProcessCpu {
                pid,
                cpu_s,
                percent_of_core: cpu_s.map(|c| 100.0 * c / wall.as_secs_f64().max(1e-3)),
            }
        };
        CpuUse {
            bench: one(0, a.0, b.0),
            brokers: pids
                .iter()
                .enumerate()
                .map(|(i, &p)| one(p, a.1.get(i).copied().flatten(), b.1.get(i).copied().flatten()))
                .collect(),
        }
    }
}

/// Resident memory of one broker process: before the run and once every client was connected.
#[derive(Debug, Clone, Serialize)]
pub struct RssUse {
    /// Process id.
    pub pid: u32,
    /// VmRSS before the first connect, KiB.
    pub before_kib: Option<u64>,
    /// VmRSS once every client was connected (and subscribed), KiB.
    pub connected_kib: Option<u64>,
    /// (connected − before) / connections, bytes.
    pub bytes_per_connection: Option<f64>,
}

impl RssUse {
    /// The figures for `pid` with `connections` connections open at the second reading.
    pub fn new(pid: u32, before_kib: Option<u64>, connected_kib: Option<u64>, connections: u64) -> Self {
        let bytes_per_connection = match (before_kib, connected_kib) {
            (Some(a), Some(b)) if connections > 0 => {
                Some((b as f64 - a as f64) * 1024.0 / connections as f64)
            }
            _ => None,
        };
        RssUse { pid, before_kib, connected_kib, bytes_per_connection }
    }
}

/// The result of one run (also the JSON written by `--out`).
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// HOST:PORT.
    pub broker: String,
    /// Transport.
    pub transport: Transport,
    /// MQTT version.
    pub protocol: Protocol,
    /// QoS.
    pub qos: Qos,
    /// Payload bytes.
    pub payload_size: usize,
    /// Idle connections.
    pub idle_clients: usize,
    /// Publishers.
    pub publishers: usize,
    /// Subscribers.
    pub subscribers: usize,
    /// Target rate per publisher, messages/s (0 = unlimited).
    pub rate_per_publisher: f64,
    /// Processes the run was split over.
    pub workers: usize,
    /// Source addresses (`--ifaddr`).
    pub source_addresses: Vec<std::net::IpAddr>,
    /// The process's soft open-file limit.
    pub fd_limit: u64,
    /// The most connections the limits allow with this many processes.
    pub max_connections: u64,
    /// Seconds from the start signal until every publisher stopped.
    pub publish_s: f64,
    /// Seconds of the whole run.
    pub wall_s: f64,
    /// Publishes sent.
    pub sent: u64,
    /// Publishes acknowledged (QoS 0: written).
    pub acked: u64,
    /// Messages received.
    pub received: u64,
    /// Messages the plan expected to be received.
    pub expected: u64,
    /// Expected messages never received.
    pub lost: u64,
    /// Messages received more than once (per accounting group).
    pub duplicated: u64,
    /// Messages received after a later one of the same publisher.
    pub out_of_order: u64,
    /// Publish throughput, messages/s.
    pub out_per_s: f64,
    /// Receive throughput, messages/s.
    pub in_per_s: f64,
    /// Publish-to-receive latency.
    pub latency: Percentiles,
    /// Connections attempted.
    pub connect_attempts: u64,
    /// Connections that got CONNACK.
    pub connected: u64,
    /// Seconds from the first connect to the last CONNACK / SUBACK.
    pub connect_phase_s: f64,
    /// Successful connects per second over the connect phase.
    pub connects_per_s: f64,
    /// TCP connect to CONNACK.
    pub connect_latency: Percentiles,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// The first message of each error kind.
    pub error_examples: BTreeMap<String, String>,
    /// CPU used.
    pub cpu: CpuUse,
    /// Resident memory of each `--broker-pid`.
    pub broker_rss: Vec<RssUse>,
    /// One sample per second.
    pub timeline: Vec<Sample>,
}

/// Formats µs as a short human duration.
pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

fn fmt_cpu(c: &ProcessCpu) -> String {
    match (c.cpu_s, c.percent_of_core) {
        (Some(s), Some(p)) => format!("{s:.2} s ({p:.0}% of a core)"),
        _ => "unreadable".into(),
    }
}

/// The summary table.
pub fn summary(r: &RunResult) -> String {
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<22} {v}\n"));
    let proto = match r.protocol {
        Protocol::V311 => "3.1.1",
        Protocol::V5 => "5",
    };
    let qos = match r.qos {
        Qos::Q0 => 0,
        Qos::Q1 => 1,
        Qos::Q2 => 2,
    };
    let transport = format!("{:?}", r.transport).to_lowercase();
    row(
        "scenario",
        format!("{} against {} over {transport} (MQTT {proto}, QoS {qos})", r.scenario, r.broker),
    );
    let sources = if r.source_addresses.is_empty() {
        String::new()
    } else {
        format!(" from {} source addresses", r.source_addresses.len())
    };
    let procs = if r.workers > 1 { format!(" in {} worker processes", r.workers) } else { String::new() };
    row(
        "clients",
        format!(
            "{} publishers, {} subscribers, {} idle{sources}{procs}",
            r.publishers, r.subscribers, r.idle_clients
        ),
    );
    row(
        "connect",
        format!(
            "{}/{} ok in {:.2} s ({:.0}/s); latency p50 {} p99 {} max {}",
            r.connected,
            r.connect_attempts,
            r.connect_phase_s,
            r.connects_per_s,
            fmt_us(r.connect_latency.p50_us),
            fmt_us(r.connect_latency.p99_us),
            fmt_us(r.connect_latency.max_us)
        ),
    );
    row("published", format!("{} in {:.2} s ({:.0}/s), {} acked", r.sent, r.publish_s, r.out_per_s, r.acked));
    row("received", format!("{} of {} expected ({:.0}/s)", r.received, r.expected, r.in_per_s));
    row("lost / dup / reorder", format!("{} / {} / {}", r.lost, r.duplicated, r.out_of_order));
    let l = &r.latency;
    row(
        "latency",
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
            fmt_us(l.p50_us),
            fmt_us(l.p90_us),
            fmt_us(l.p99_us),
            fmt_us(l.p999_us),
            fmt_us(l.max_us),
            l.count
        ),
    );
    row("bench cpu", fmt_cpu(&r.cpu.bench));
    for b in &r.cpu.brokers {
        row(&format!("broker pid {} cpu", b.pid), fmt_cpu(b));
    }
    for m in &r.broker_rss {
        let kib = |k: Option<u64>| k.map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or("?".into());
        let per = m
            .bytes_per_connection
            .map(|b| format!(" = {:.1} KiB per connection", b / 1024.0))
            .unwrap_or_default();
        row(
            &format!("broker pid {} rss", m.pid),
            format!(
                "{} before, {} with {} connected{per}",
                kib(m.before_kib),
                kib(m.connected_kib),
                r.connected
            ),
        );
    }
    if r.errors.is_empty() {
        row("errors", "none".into());
    } else {
        let e: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        row("errors", e.join(" "));
        for (k, d) in &r.error_examples {
            row(&format!("  first {k}"), d.clone());
        }
    }
    out
}

/// Writes the JSON result.
pub fn write_json(r: &RunResult, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(path, text)
}

/// The comparison table of two runs of one scenario (ratios are B / A).
pub fn compare(a: &RunResult, b: &RunResult) -> String {
    let ratio = |x: f64, y: f64| if x > 0.0 { format!("{:.2}", y / x) } else { "-".into() };
    let mut out = format!("  {:<22} {:>14} {:>14} {:>8}\n", "metric", "A", "B", "B/A");
    let rows: Vec<(&str, f64, f64)> = vec![
        ("out msg/s", a.out_per_s, b.out_per_s),
        ("in msg/s", a.in_per_s, b.in_per_s),
        ("latency p50 µs", a.latency.p50_us as f64, b.latency.p50_us as f64),
        ("latency p99 µs", a.latency.p99_us as f64, b.latency.p99_us as f64),
        ("latency p99.9 µs", a.latency.p999_us as f64, b.latency.p999_us as f64),
        ("latency max µs", a.latency.max_us as f64, b.latency.max_us as f64),
        ("connects/s", a.connects_per_s, b.connects_per_s),
        ("connect p99 µs", a.connect_latency.p99_us as f64, b.connect_latency.p99_us as f64),
        ("lost", a.lost as f64, b.lost as f64),
        ("errors", a.errors.values().sum::<u64>() as f64, b.errors.values().sum::<u64>() as f64),
        ("bench cpu s", a.cpu.bench.cpu_s.unwrap_or(0.0), b.cpu.bench.cpu_s.unwrap_or(0.0)),
    ];
    for (k, x, y) in rows {
        out.push_str(&format!("  {k:<22} {x:>14.1} {y:>14.1} {:>8}\n", ratio(x, y)));
    }
    out
}

/// Why the plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {why}")]
pub struct PlotError {
    path: String,
    why: String,
}

/// One plotted line: its name, points and colour.
type Series = (&'static str, Vec<(f64, f64)>, plotters::style::RGBColor);

/// Where a TrueType sans-serif font is looked for (Debian/Ubuntu `fonts-dejavu-core` first), after
/// the file named by `IRONHUB_BENCH_FONT`. No font is shipped with ironhub.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
];

/// Registers a system TrueType font as plotters' "sans-serif" (once per process); false when
/// none could be loaded, in which case the plot is drawn without text.
fn plot_font() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        let from_env = std::env::var("IRONHUB_BENCH_FONT").ok();
        for path in from_env.iter().map(String::as_str).chain(FONT_CANDIDATES.iter().copied()) {
            let Ok(bytes) = std::fs::read(path) else { continue };
            // plotters keeps the font for the process lifetime; leaked once, guarded by the OnceLock.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok()
            {
                return true;
            }
        }
        false
    })
}

/// Draws the timeline as a PNG: top panel throughput (msg/s, blue = out, red = in), bottom panel
/// latency (ms, green = p50, red = p99), x axis time in seconds. Axis labels, ticks and legends
/// need a TrueType font from the system (see [`FONT_CANDIDATES`]); without one the same panels
/// are drawn with no text and one line on stderr says so. The JSON carries the numbers either way.
pub fn plot(r: &RunResult, path: &Path) -> Result<(), PlotError> {
    use plotters::prelude::*;
    let text = plot_font();
    if !text {
        eprintln!(
            "plot: no TrueType font found (install fonts-dejavu-core or set IRONHUB_BENCH_FONT); drawing it without axis labels"
        );
    }
    let t_max = r.timeline.last().map(|s| s.t_s).unwrap_or(1.0).max(1.0);
    let panels = [
        Panel {
            caption: "throughput",
            y_desc: "msg/s",
            series: vec![
                ("out", r.timeline.iter().map(|s| (s.t_s, s.out_per_s)).collect(), BLUE),
                ("in", r.timeline.iter().map(|s| (s.t_s, s.in_per_s)).collect(), RED),
            ],
        },
        Panel {
            caption: "latency",
            y_desc: "latency (ms)",
            series: vec![
                ("p50", r.timeline.iter().map(|s| (s.t_s, s.p50_us as f64 / 1000.0)).collect(), GREEN),
                ("p99", r.timeline.iter().map(|s| (s.t_s, s.p99_us as f64 / 1000.0)).collect(), RED),
            ],
        },
    ];
    draw_panels(path, t_max, panels, text)
}

/// One panel of the plot: a title, the y axis description and its lines.
struct Panel {
    caption: &'static str,
    y_desc: &'static str,
    series: Vec<Series>,
}

/// Draws the two panels stacked into a 900x600 PNG; `text` = with caption, axes and legend.
fn draw_panels(path: &Path, t_max: f64, panels: [Panel; 2], text: bool) -> Result<(), PlotError> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| PlotError { path: path.display().to_string(), why: e.to_string() };
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(300);
    for (area, panel) in [&top, &bottom].into_iter().zip(panels) {
        let data_max =
            panel.series.iter().flat_map(|(_, pts, _)| pts.iter().map(|p| p.1)).fold(0.0, f64::max);
        // Headroom above the data keeps the legend (upper right) off the lines.
        let y_max = data_max.max(1.0) * if text { 1.35 } else { 1.1 };
        let mut builder = ChartBuilder::on(area);
        builder.margin(10);
        if text {
            builder.caption(panel.caption, ("sans-serif", 18)).x_label_area_size(40).y_label_area_size(70);
        }
        let mut chart = builder.build_cartesian_2d(0.0..t_max, 0.0..y_max).map_err(|e| err(&e))?;
        if text {
            let decimals = if y_max >= 20.0 {
                0
            } else if y_max >= 2.0 {
                1
            } else {
                2
            };
            chart
                .configure_mesh()
                .x_desc("time (s)")
                .y_desc(panel.y_desc)
                .x_label_formatter(&|x| format!("{x:.1}"))
                .y_label_formatter(&|y| format!("{y:.decimals$}"))
                .label_style(("sans-serif", 13))
                .axis_desc_style(("sans-serif", 14))
                .light_line_style(RGBColor(242, 242, 242))
                .draw()
                .map_err(|e| err(&e))?;
        } else {
            chart
                .plotting_area()
                .draw(&Rectangle::new([(0.0, 0.0), (t_max, y_max)], BLACK.stroke_width(1)))
                .map_err(|e| err(&e))?;
        }
        for (i, (name, pts, color)) in panel.series.into_iter().enumerate() {
            // The first line is wider so it still shows when the second one lies on top of it.
            let style = color.stroke_width(if i == 0 { 4 } else { 2 });
            let drawn = chart.draw_series(LineSeries::new(pts, style)).map_err(|e| err(&e))?;
            if text {
                drawn.label(name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
        }
        if text {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_printed_in_fitting_units() {
        assert_eq!(fmt_us(850), "850µs");
        assert_eq!(fmt_us(1_500), "1.50ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
    }

    fn panels() -> [Panel; 2] {
        use plotters::style::{BLUE, GREEN, RED};
        let line = |f: fn(f64) -> f64| (1..=5).map(|t| (t as f64, f(t as f64))).collect::<Vec<_>>();
        [
            Panel {
                caption: "throughput",
                y_desc: "msg/s",
                series: vec![("out", line(|t| 100.0 * t), BLUE), ("in", line(|t| 90.0 * t), RED)],
            },
            Panel {
                caption: "latency",
                y_desc: "latency (ms)",
                series: vec![("p50", line(|t| 0.05 * t), GREEN), ("p99", line(|t| 0.4 * t), RED)],
            },
        ]
    }

    fn is_png(path: &Path) -> bool {
        std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG"))
    }

    #[test]
    fn the_plot_is_drawn_without_a_font() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bare.png");
        draw_panels(&path, 5.0, panels(), false).unwrap();
        assert!(is_png(&path));
    }

    #[test]
    fn the_plot_has_text_when_a_system_font_is_found() {
        if !plot_font() {
            eprintln!("no system font: only the text-less plot is tested");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("text.png");
        draw_panels(&path, 5.0, panels(), true).unwrap();
        assert!(is_png(&path));
    }
}
