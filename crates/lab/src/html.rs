//! The lab report as one self-contained HTML page: the key figures, a
//! timeline of requests (succeeded and failed), p99 latency, where each edge
//! routed, and the scenario's events, drawn as inline SVG with no script
//! and nothing fetched from elsewhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::{Report, BUCKET_MS};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 20.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.0} ms"))
}

/// Colours for regions, in a fixed order so a region keeps its colour.
fn region_colour(i: usize) -> &'static str {
    ["#3b7dd8", "#e08a1e", "#8e44ad", "#16a085", "#c0392b"][i % 5]
}

pub fn render(report: &Report) -> String {
    let end = report.end_ms.max(1.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + (t / end).clamp(0.0, 1.0) * plot_w;
    let mut svg = String::new();

    // Regions in order of first appearance in the routing history.
    let mut regions: Vec<String> = Vec::new();
    for s in &report.edge_routing {
        for r in &s.serving_regions {
            if !regions.contains(r) {
                regions.push(r.clone());
            }
        }
    }
    let colour_of = |r: &str| {
        regions
            .iter()
            .position(|x| x == r)
            .map_or("#999", region_colour)
    };

    // Requests per bucket.
    let req_top = 30.0;
    let req_h = 150.0;
    let max_req = report
        .timeline
        .iter()
        .map(|b| b.ok + b.failed)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let bar_w = (plot_w * BUCKET_MS / end).max(1.0);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" class="title">requests per {BUCKET_MS:.0} ms (green ok, red failed)</text>"#,
        req_top - 8.0
    );
    for b in &report.timeline {
        let total = (b.ok + b.failed) as f64;
        let h_total = total / max_req * req_h;
        let h_failed = b.failed as f64 / max_req * req_h;
        let bx = x(b.t_ms);
        let _ = writeln!(
            svg,
            r##"<rect x="{bx:.1}" y="{:.1}" width="{bar_w:.1}" height="{:.1}" fill="#2e9e5b"/>"##,
            req_top + req_h - h_total,
            h_total - h_failed
        );
        if b.failed > 0 {
            let _ = writeln!(
                svg,
                r##"<rect x="{bx:.1}" y="{:.1}" width="{bar_w:.1}" height="{h_failed:.1}" fill="#d63031"/>"##,
                req_top + req_h - h_failed
            );
        }
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" class="axis" text-anchor="end">{max_req:.0}</text>"#,
        LEFT - 6.0,
        req_top + 10.0
    );

    // p99 latency per bucket.
    let lat_top = req_top + req_h + 40.0;
    let lat_h = 110.0;
    let max_lat = report.timeline.iter().map(|b| b.p99_ms).fold(1.0, f64::max);
    let points: Vec<String> = report
        .timeline
        .iter()
        .filter(|b| b.ok > 0)
        .map(|b| {
            format!(
                "{:.1},{:.1}",
                x(b.t_ms + BUCKET_MS / 2.0),
                lat_top + lat_h - b.p99_ms / max_lat * lat_h
            )
        })
        .collect();
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" class="title">p99 latency of successful requests</text>"#,
        lat_top - 8.0
    );
    let _ = writeln!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#444" stroke-width="1.5"/>"##,
        points.join(" ")
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" class="axis" text-anchor="end">{max_lat:.0} ms</text>"#,
        LEFT - 6.0,
        lat_top + 10.0
    );

    // Where each edge routed its first-choice traffic.
    let lane_top = lat_top + lat_h + 40.0;
    let lane_h = 22.0;
    let mut by_edge: BTreeMap<&str, Vec<&crate::report::RoutingSample>> = BTreeMap::new();
    for s in &report.edge_routing {
        by_edge.entry(&s.edge_region).or_default().push(s);
    }
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" class="title">each edge's first-choice region</text>"#,
        lane_top - 8.0
    );
    for (i, (edge, samples)) in by_edge.iter().enumerate() {
        let y = lane_top + i as f64 * (lane_h + 6.0);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" class="axis" text-anchor="end">edge {}</text>"#,
            LEFT - 6.0,
            y + 15.0,
            esc(edge)
        );
        let mut sorted = samples.clone();
        sorted.sort_by(|a, b| a.since_ms.total_cmp(&b.since_ms));
        for (j, s) in sorted.iter().enumerate() {
            let from = s.since_ms.max(0.0);
            let to = sorted.get(j + 1).map_or(end, |n| n.since_ms);
            // Grey: the edge did not answer (killed or cut off from the lab).
            let colour = s.serving_regions.first().map_or("#bbb", |r| colour_of(r));
            let _ = writeln!(
                svg,
                r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{lane_h}" fill="{colour}"><title>{} from {:.0} ms</title></rect>"#,
                x(from),
                (x(to) - x(from)).max(0.5),
                if s.reachable {
                    esc(&s.serving_regions.join("+"))
                } else {
                    "unreachable".to_string()
                },
                s.since_ms
            );
        }
    }
    let lanes_bottom = lane_top + by_edge.len().max(1) as f64 * (lane_h + 6.0);

    // The outage window and the events, across all charts.
    if let Some(f) = report.fault_ms {
        let to = report.restore_ms.unwrap_or(end);
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{req_top}" width="{:.1}" height="{:.1}" fill="#d63031" opacity="0.07"/>"##,
            x(f),
            x(to) - x(f),
            lanes_bottom - req_top
        );
    }
    for (i, e) in report.events.iter().enumerate() {
        let ex = x(e.t_ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{ex:.1}" y1="{req_top}" x2="{ex:.1}" y2="{lanes_bottom:.1}" stroke="#555" stroke-dasharray="3,3"/><text x="{:.1}" y="{:.1}" class="event">{}</text>"##,
            ex + 3.0,
            lanes_bottom + 14.0 + (i % 3) as f64 * 12.0,
            esc(&e.what)
        );
    }
    // Time axis.
    let axis_y = lanes_bottom + 58.0;
    let step = if end > 60_000.0 { 10_000.0 } else { 5_000.0 };
    let mut t = 0.0;
    while t <= end {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{axis_y:.1}" class="axis" text-anchor="middle">{:.0} s</text>"#,
            x(t),
            t / 1_000.0
        );
        t += step;
    }
    let height = axis_y + 10.0;

    let legend: String = regions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                r#"<span class="chip" style="background:{}"></span>{}"#,
                region_colour(i),
                esc(r)
            )
        })
        .collect::<Vec<_>>()
        .join(" &nbsp; ");
    let mut rows = String::new();
    let mut row = |k: &str, v: String| {
        let _ = writeln!(rows, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    row(
        "scenario",
        format!("{} (seed {})", report.scenario, report.seed),
    );
    row(
        "failed region",
        report
            .failed_region
            .clone()
            .unwrap_or_else(|| "none".into()),
    );
    row(
        "requests",
        format!(
            "{} total, {} failed",
            report.requests_total, report.requests_failed
        ),
    );
    for (region, n) in &report.failed_by_client_region {
        row(&format!("failed, clients of {region}"), n.to_string());
    }
    row("detection", opt(report.detection_ms));
    row("error window", format!("{:.0} ms", report.error_window_ms));
    row("RTO", opt(report.rto_ms));
    row("failback", opt(report.failback_ms));
    row("committed verdict", opt(report.verdict_ms));
    if let Some(n) = report.routing_changes {
        row("committed routing changes", n.to_string());
    }
    if let Some(n) = report.minority_decisions {
        row("decisions of the cut-off controller", n.to_string());
    }
    for (phase, p) in &report.latency_ms {
        row(
            &format!("latency {phase}"),
            format!(
                "p50 {:.1} ms, p99 {:.1} ms ({} requests)",
                p.p50, p.p99, p.count
            ),
        );
    }
    let events: String = report
        .events
        .iter()
        .map(|e| format!("<li>{:.1} s: {}</li>", e.t_ms / 1_000.0, esc(&e.what)))
        .collect();
    let audit: String = report
        .audit
        .iter()
        .map(|line| format!("<li><code>{}</code></li>", esc(line)))
        .collect();
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tern lab: {title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0 20px; }}
th {{ text-align: left; padding: 2px 16px 2px 0; font-weight: 600; }}
td {{ padding: 2px 0; }}
.title {{ font-size: 13px; font-weight: 600; }}
.axis, .event {{ font-size: 11px; fill: #555; }}
.chip {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; }}
</style></head><body>
<h1>tern lab: {title}</h1>
<table>{rows}</table>
<p>Regions: {legend} <span class="chip" style="background:#bbb"></span>edge unreachable. The shaded band is the outage, from the fault until the failed region was restored.</p>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}">
{svg}</svg>
<h2>Events</h2><ul>{events}</ul>
<h2>Controllers' audit log</h2><ul>{audit}</ul>
</body></html>
"#,
        title = esc(&report.scenario),
    )
}
