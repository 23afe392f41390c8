//! The report: a terminal summary, `results.json`, and `report.html` (an SVG timeline of
//! throughput and latency with the faults shaded and labelled, and the checker table).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::check::{availability, CheckResult, Verdict};
use crate::history::{Event, Kind, Op};

/// Everything `results.json` holds.
#[derive(Debug, Serialize)]
pub struct Results {
    /// Scenario name.
    pub scenario: String,
    /// Backend.
    pub backend: String,
    /// Seed.
    pub seed: u64,
    /// The command that replays this run.
    pub replay: String,
    /// Wall time of the run (s).
    pub wall_s: f64,
    /// PASS when every checker passed.
    pub verdict: Verdict,
    /// Per checker.
    pub checks: Vec<CheckResult>,
    /// The schedule as run (one line per step).
    pub schedule: Vec<String>,
    /// Node logs kept.
    pub logs: Vec<String>,
}

/// Prints the summary to stdout.
pub fn print_summary(r: &Results) {
    println!();
    println!(
        "ironhub-chaos: scenario {} · backend {} · seed {} · {:.0} s",
        r.scenario, r.backend, r.seed, r.wall_s
    );
    for c in &r.checks {
        let counts: Vec<String> = c.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mark = match c.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
        };
        println!("  {mark}  {:<13} {}", c.name, counts.join(" "));
        if c.verdict == Verdict::Fail {
            for d in &c.details {
                println!("          - {d}");
            }
        }
    }
    println!("  => {}", if r.verdict == Verdict::Pass { "PASS" } else { "FAIL" });
}

/// Writes `results.json`.
pub fn write_results(path: &Path, r: &Results) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(r)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Per-second buckets of completed writes: (ok count, max latency ms, failed/unknown count).
pub fn buckets(history: &[Event]) -> Vec<(u64, u64, u64)> {
    let end = history.iter().map(|e| e.t_ms).max().unwrap_or(0) / 1000 + 1;
    let mut b = vec![(0u64, 0u64, 0u64); end as usize];
    for e in history {
        if !matches!(e.op, Op::Publish { .. } | Op::Write { .. }) {
            continue;
        }
        let s = (e.t_ms / 1000) as usize;
        match e.kind {
            Kind::Ok => {
                b[s].0 += 1;
                b[s].1 = b[s].1.max(e.latency_ms.unwrap_or(0));
            }
            Kind::Fail | Kind::Unknown => b[s].2 += 1,
            _ => {}
        }
    }
    b
}

/// Writes `report.html`: summary table, timeline SVG, per-fault availability.
pub fn write_html(path: &Path, r: &Results, history: &[Event]) -> anyhow::Result<()> {
    let b = buckets(history);
    let (w, h, left, top) = (1000.0f64, 420.0f64, 60.0f64, 20.0f64);
    let pw = w - left - 60.0;
    let ph = 170.0;
    let secs = b.len().max(1) as f64;
    let x = |t_ms: f64| left + pw * (t_ms / 1000.0) / secs;
    let max_tp = b.iter().map(|v| v.0).max().unwrap_or(1).max(1) as f64;
    let max_lat = b.iter().map(|v| v.1).max().unwrap_or(1).max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    // Fault spans: from the fault to its heal.
    for e in history {
        if let Op::Fault { step, desc, .. } = &e.op {
            let end = history
                .iter()
                .find(|h| matches!(&h.op, Op::Heal { step: s, .. } if s == step) && h.t_ms >= e.t_ms)
                .map_or(e.t_ms + 500, |h| h.t_ms.max(e.t_ms + 200));
            let (x0, x1) = (x(e.t_ms as f64), x(end as f64));
            let _ = write!(
                svg,
                r##"<rect x="{x0:.1}" y="{top}" width="{:.1}" height="{}" fill="#f4b6b6" opacity="0.6"><title>{}</title></rect><text x="{x0:.1}" y="{}" fill="#a00" transform="rotate(-90 {x0:.1} {})">{}</text>"##,
                (x1 - x0).max(1.0),
                2.0 * ph + 30.0,
                esc(desc),
                top + 2.0 * ph + 28.0,
                top + 2.0 * ph + 28.0,
                esc(&format!("{}: {}", step + 1, desc.chars().take(40).collect::<String>()))
            );
        }
    }
    // Axes and series: throughput (top panel), max latency (bottom panel).
    for (panel, label, max, idx) in
        [(0.0, "ok writes/s", max_tp, 0usize), (1.0, "max latency ms", max_lat, 1)]
    {
        let y0 = top + panel * (ph + 30.0);
        let _ = write!(
            svg,
            r##"<rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/><text x="4" y="{}">{label}</text><text x="{}" y="{}">{max:.0}</text>"##,
            y0 + 12.0,
            left + pw + 4.0,
            y0 + 10.0
        );
        let pts: Vec<String> = b
            .iter()
            .enumerate()
            .map(|(s, v)| {
                let val = if idx == 0 { v.0 } else { v.1 } as f64;
                format!("{:.1},{:.1}", x(s as f64 * 1000.0 + 500.0), y0 + ph - ph * val / max)
            })
            .collect();
        let colour = if idx == 0 { "#1f6fb4" } else { "#b46f1f" };
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            pts.join(" ")
        );
    }
    // Failed/unknown writes as ticks under the throughput panel.
    for (s, v) in b.iter().enumerate() {
        if v.2 > 0 {
            let xx = x(s as f64 * 1000.0 + 500.0);
            let _ = write!(
                svg,
                r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{}" y2="{}" stroke="#c00" stroke-width="2"><title>{} failed/unknown</title></line>"##,
                top + ph - 8.0,
                top + ph,
                v.2
            );
        }
    }
    for t in (0..b.len()).step_by((b.len() / 10).max(1)) {
        let _ =
            write!(svg, r#"<text x="{:.1}" y="{}">{t}s</text>"#, x(t as f64 * 1000.0), top + 2.0 * ph + 45.0);
    }
    svg.push_str("</svg>");

    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><meta charset=utf-8><title>ironhub-chaos {}</title><body style=\"font-family:sans-serif\"><h1>ironhub-chaos: {} — {}</h1><p>backend {} · seed {} · {:.0} s · replay: <code>{}</code></p>",
        esc(&r.scenario),
        esc(&r.scenario),
        if r.verdict == Verdict::Pass { "PASS" } else { "FAIL" },
        esc(&r.backend),
        r.seed,
        r.wall_s,
        esc(&r.replay)
    );
    html.push_str("<table border=1 cellpadding=4 style=\"border-collapse:collapse\"><tr><th>checker</th><th>verdict</th><th>counts</th><th>details</th></tr>");
    for c in &r.checks {
        let counts: Vec<String> = c.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.name),
            c.verdict,
            esc(&counts.join(" ")),
            c.details.iter().map(|d| esc(d)).collect::<Vec<_>>().join("<br>")
        );
    }
    html.push_str("</table><h2>Timeline</h2><p>Blue: acknowledged writes per second (publishes and retained writes). Orange: slowest acknowledged write in that second. Red shading: a fault from injection to heal. Red ticks: seconds with failed or unknown writes.</p>");
    html.push_str(&svg);
    html.push_str("<h2>Availability per fault</h2><table border=1 cellpadding=4 style=\"border-collapse:collapse\"><tr><th>step</th><th>fault</th><th>first ok write (ms)</th><th>last failed write ended (ms)</th></tr>");
    for (step, desc, first, window) in availability::per_fault(history) {
        let first = first.map_or("never".to_string(), |v| v.to_string());
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{first}</td><td>{window}</td></tr>",
            step + 1,
            esc(&desc)
        );
    }
    html.push_str("</table><h2>Schedule</h2><ol>");
    for s in &r.schedule {
        let _ = write!(html, "<li>{}</li>", esc(s));
    }
    html.push_str("</ol><h2>Node logs</h2><ul>");
    for l in &r.logs {
        let _ = write!(html, "<li><a href=\"{0}\">{0}</a></li>", esc(l));
    }
    html.push_str("</ul></body>");
    std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testing::*;

    #[test]
    fn buckets_count_per_second_and_html_marks_faults() {
        let mut h = publish(100, 0, 1, Kind::Ok);
        h.extend(publish(1500, 0, 2, Kind::Unknown));
        h.push(ev(
            1200,
            "nemesis",
            Kind::Info,
            Op::Fault { step: 0, desc: "kill -9 node <2>".into(), nodes: vec![2] },
        ));
        h.push(ev(2500, "nemesis", Kind::Info, Op::Heal { step: 0, desc: "started".into() }));
        assert_eq!(buckets(&h), vec![(1, 5, 0), (0, 0, 1), (0, 0, 0)]);
        let dir = tempfile::tempdir().unwrap();
        let r = Results {
            scenario: "t".into(),
            backend: "process".into(),
            seed: 1,
            replay: "ironhub-chaos run --seed 1".into(),
            wall_s: 3.0,
            verdict: Verdict::Pass,
            checks: vec![],
            schedule: vec![],
            logs: vec![],
        };
        let p = dir.path().join("report.html");
        write_html(&p, &r, &h).unwrap();
        let html = std::fs::read_to_string(p).unwrap();
        assert!(html.contains("kill -9 node &lt;2&gt;"));
        assert!(html.contains("<svg"));
    }
}
