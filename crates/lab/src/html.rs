//! The lab report as one self-contained HTML page, in the order a reader
//! asks: the run's verdict line and its times (the terminal's own rows), a
//! timeline of HTTP requests (succeeded and failed), p99 latency, where each
//! edge routed and the scenario's events; what happened to the writes
//! (acknowledged and failed per interval, the window writes were
//! unavailable, the acknowledged writes lost with their ids); the
//! database's failover and switchover plans step by step; every target met
//! or missed with its figure; and the DNS path's comparison, informational
//! as in the terminal. Drawn as inline SVG with no script and nothing
//! fetched from elsewhere; every string from the report is escaped.
//!
//! Every figure is the report's, formatted as the terminal formats it, and
//! every moment is drawn when the terminal printed it ([`moments`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::{Event, Report, BUCKET_MS, RPO_BUDGET_BYTES};
use crate::scenario::{Action, Scenario};
use crate::stats::{ms as fmt_ms, thousands};
use crate::wan::Fault;

const WIDTH: f64 = 960.0;
const LEFT: f64 = 110.0;
const RIGHT: f64 = 20.0;
/// Room one character of an 11 px label takes, generously: labels are kept
/// inside the chart by it.
const CHAR_W: f64 = 6.5;
/// Rows of event labels under the timeline before labels may overlap.
const LABEL_ROWS: usize = 6;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Colours for regions, in a fixed order so a region keeps its colour.
fn region_colour(i: usize) -> &'static str {
    ["#3b7dd8", "#e08a1e", "#8e44ad", "#16a085", "#c0392b"][i % 5]
}

/// Lab time to x, the same in every chart of the page.
#[derive(Clone, Copy)]
struct Scale {
    end: f64,
}

impl Scale {
    fn of(report: &Report) -> Scale {
        Scale {
            end: report.end_ms.max(1.0),
        }
    }

    fn x(self, t_ms: f64) -> f64 {
        LEFT + (t_ms / self.end).clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }

    fn bar_w(self) -> f64 {
        ((WIDTH - LEFT - RIGHT) * BUCKET_MS / self.end).max(1.0)
    }

    /// Seconds under the chart, from 0 to the end.
    fn axis(self, svg: &mut String, y: f64) {
        let step = if self.end > 60_000.0 {
            10_000.0
        } else {
            5_000.0
        };
        let mut t = 0.0;
        while t <= self.end {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{y:.1}" class="axis" text-anchor="middle">{:.0} s</text>"#,
                self.x(t),
                t / 1_000.0
            );
            t += step;
        }
    }
}

/// The run's events, each at the moment the terminal printed it, oldest
/// first.
///
/// A scenario step's event is stamped once the step has run, and running
/// one can take seconds (a region's restart waits for its processes to
/// serve), while the terminal prints the step's line as it starts: the page
/// drew "recovery" at 21.7 s beside the terminal's 18.7 s. So a step is
/// drawn when it started: the first step at the report's fault moment and a
/// region's or agent's restart at its restore moment (the origins the
/// report's times are counted from, taken when the terminal printed those
/// lines); any other step at its planned time, or when the step before it
/// had finished if that was later (steps run one after another), never
/// after its own stamp. Events of the controllers' audit log keep their
/// time, which is the terminal's audit log's.
fn moments(report: &Report) -> Vec<Event> {
    // The fault's kind only changes a step's wording: either may have run.
    let plans: Vec<Scenario> = [Fault::Blackhole, Fault::Reset]
        .into_iter()
        .filter_map(|f| Scenario::by_name(&report.scenario, report.seed, f).ok())
        .collect();
    let step_of = |what: &str| {
        plans.iter().find_map(|s| {
            s.steps
                .iter()
                .enumerate()
                .find(|(_, step)| step.label == what)
        })
    };
    let mut recorded: Vec<&Event> = report.events.iter().collect();
    recorded.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    let mut previous_step_done = 0.0_f64;
    let mut out: Vec<Event> = recorded
        .into_iter()
        .map(|e| {
            let Some((i, step)) = step_of(&e.what) else {
                return e.clone();
            };
            let planned = step.at.as_secs_f64() * 1_000.0;
            let restarts = matches!(step.action, Action::Restore(_) | Action::StartAgent(_));
            let t_ms = match (i, report.fault_ms, report.restore_ms) {
                (0, Some(fault), _) => fault,
                (_, _, Some(restore)) if restarts => restore,
                _ => planned.max(previous_step_done).min(e.t_ms),
            };
            previous_step_done = e.t_ms;
            Event {
                t_ms,
                what: e.what.clone(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    out
}

/// A label for the line at `x`, kept inside the chart: right of the line
/// while it fits, else left of it (anchored at its end), else on the roomier
/// side, shortened, with the whole text as its tooltip. Answers the SVG and
/// the span it covers.
fn label(x: f64, y: f64, text: &str, class: &str) -> (String, f64, f64) {
    let n = text.chars().count();
    let w = n as f64 * CHAR_W;
    let right_room = WIDTH - 2.0 - (x + 4.0);
    let left_room = (x - 4.0) - 2.0;
    let (lx, anchor, room) = if w <= right_room {
        (x + 4.0, "start", right_room)
    } else if w <= left_room {
        (x - 4.0, "end", left_room)
    } else if right_room >= left_room {
        (x + 4.0, "start", right_room)
    } else {
        (x - 4.0, "end", left_room)
    };
    let fit = (room / CHAR_W).floor().max(1.0) as usize;
    let shown = if n <= fit {
        esc(text)
    } else {
        let cut: String = text.chars().take(fit.saturating_sub(1)).collect();
        format!("{}…", esc(&cut))
    };
    let used = n.min(fit) as f64 * CHAR_W;
    let (from, to) = if anchor == "start" {
        (lx, lx + used)
    } else {
        (lx - used, lx)
    };
    (
        format!(
            r#"<text x="{lx:.1}" y="{y:.1}" class="{class}" text-anchor="{anchor}"><title>{}</title>{shown}</text>"#,
            esc(text)
        ),
        from,
        to,
    )
}

pub fn render(report: &Report) -> String {
    let scale = Scale::of(report);
    let moments = moments(report);
    let verdict = if report.summary.is_empty() {
        report.verdict_line()
    } else {
        report.summary.clone()
    };
    let verdict_class = if report.targets.all_met() {
        "good"
    } else {
        "bad"
    };
    let (timeline, legend) = http_timeline(report, scale, &moments);
    let events: String = moments
        .iter()
        .map(|e| format!("<li>{:.1} s: {}</li>", e.t_ms / 1_000.0, esc(&e.what)))
        .collect();
    let audit: String = report
        .audit
        .iter()
        .map(|line| format!("<li><code>{}</code></li>", esc(line)))
        .collect();
    let drill = report.drill.as_ref().map_or(String::new(), |d| {
        format!(
            "<section id=\"drill\"><h2>Drill</h2><pre>{}</pre></section>\n",
            esc(&d.render())
        )
    });
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tern lab: {title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 12px 0 20px; }}
th {{ text-align: left; padding: 2px 16px 2px 0; font-weight: 600; vertical-align: top; white-space: nowrap; }}
td {{ padding: 2px 16px 2px 0; vertical-align: top; }}
td.num {{ text-align: right; }}
.meaning {{ color: #666; font-size: 12px; max-width: 560px; }}
.title {{ font-size: 13px; font-weight: 600; }}
.axis, .event {{ font-size: 11px; fill: #555; }}
.band {{ font-size: 11px; fill: #a04000; }}
.event, .band {{ paint-order: stroke; stroke: #fff; stroke-width: 4px; stroke-linejoin: round; }}
.chip {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -1px; }}
#verdict {{ font-size: 16px; font-weight: 600; padding: 8px 12px; border-left: 5px solid; }}
#verdict.good {{ border-color: #2e9e5b; background: #eef8f1; }}
#verdict.bad {{ border-color: #d63031; background: #fdeeee; }}
td.met {{ color: #1e7e45; font-weight: 600; }}
td.missed {{ color: #c0392b; font-weight: 700; }}
.info {{ color: #666; font-weight: normal; font-size: 13px; }}
section {{ margin-top: 28px; }}
</style></head><body>
<h1>tern lab: {title}</h1>
<p id="verdict" class="{verdict_class}">{verdict}</p>
<table id="figures">{figures}</table>
<section id="timeline"><h2>HTTP requests</h2>
<p>Regions: {legend} Times are lab time, from the start of the load, as the terminal prints them.</p>
{timeline}</section>
{writes}{database}{targets}{dns}{drill}<section id="events"><h2>Events</h2><ul>{events}</ul></section>
<section id="audit"><h2>Controllers' audit log</h2><ul>{audit}</ul></section>
</body></html>
"#,
        title = esc(&report.scenario),
        verdict = esc(&verdict),
        figures = figures(report),
        writes = writes_section(report, scale, &moments),
        database = database_section(report),
        targets = targets_section(report),
        dns = dns_section(report),
    )
}

/// The key figures, the times as the terminal's table has them (label,
/// figure, what it measures).
fn figures(report: &Report) -> String {
    let mut rows = String::new();
    let mut row = |k: &str, v: &str, meaning: &str| {
        let _ = writeln!(
            rows,
            r#"<tr><th>{}</th><td>{}</td><td class="meaning">{}</td></tr>"#,
            esc(k),
            esc(v),
            esc(meaning)
        );
    };
    row(
        "scenario",
        &format!("{} (seed {})", report.scenario, report.seed),
        "",
    );
    if let Some(r) = &report.failed_region {
        row("failed region", r, "");
    }
    if !report.settings.is_empty() {
        row("settings", &report.settings, "");
    }
    row(
        "http requests",
        &format!(
            "{} sent, {} failed",
            thousands(report.requests_total),
            thousands(report.requests_failed)
        ),
        if report.writes.is_some() {
            "GET and PUT; the payments are the writes"
        } else {
            "payments included: no database"
        },
    );
    for (region, total) in &report.requests_by_client_region {
        let failed = report
            .failed_by_client_region
            .get(region)
            .copied()
            .unwrap_or(0);
        row(
            &format!("clients {region}"),
            &format!("{} sent, {} failed", thousands(*total), thousands(failed)),
            "",
        );
    }
    if let Some(w) = &report.writes {
        row(
            "writes",
            &format!(
                "{} sent, {} acknowledged, {} failed",
                thousands(w.write_attempts),
                thousands(w.acked_writes),
                thousands(w.failed_writes)
            ),
            "POST /payments through the writer proxies",
        );
    }
    for (label, figure, meaning) in report.times() {
        row(label, &figure, &meaning);
    }
    for phase in ["before", "during", "after"] {
        if let Some(p) = report.latency_ms.get(phase) {
            row(
                &format!("latency {phase}"),
                &format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    p.p50, p.p99, p.max
                ),
                &format!("{} successful http requests", thousands(p.count)),
            );
        }
    }
    if let Some(n) = report.routing_changes {
        row(
            "routing changes",
            &format!("{n} committed, {} seen on edges", report.edge_route_changes),
            "",
        );
    }
    if let Some(n) = report.minority_decisions {
        row("minority decisions", &n.to_string(), "");
    }
    for line in &report.failed_before_fault {
        row("failed before fault", line, "");
    }
    for c in &report.https {
        row(&format!("https {}", c.region), &c.detail, &c.url);
    }
    rows
}

/// The HTTP timeline (requests, p99, each edge's routing, the events) and
/// its legend.
fn http_timeline(report: &Report, scale: Scale, moments: &[Event]) -> (String, String) {
    let x = |t: f64| scale.x(t);
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
    let bar_w = scale.bar_w();
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" class="title">http requests per {BUCKET_MS:.0} ms (green ok, red failed)</text>"#,
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
        r#"<text x="{LEFT}" y="{}" class="title">p99 latency of successful http requests</text>"#,
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
            let to = sorted.get(j + 1).map_or(scale.end, |n| n.since_ms);
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

    // The outage window and the events, across all charts, each label on
    // the first row under the charts where it overlaps no other.
    // (A scenario without a failed region or a restore, a switchover, had
    // no outage to shade.)
    let outage = report
        .fault_ms
        .filter(|_| report.failed_region.is_some() || report.restore_ms.is_some());
    if let Some(f) = outage {
        let to = report.restore_ms.unwrap_or(scale.end);
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{req_top}" width="{:.1}" height="{:.1}" fill="#d63031" opacity="0.07"/>"##,
            x(f),
            x(to) - x(f),
            lanes_bottom - req_top
        );
    }
    let row_h = 13.0;
    let mut row_ends: Vec<f64> = vec![f64::NEG_INFINITY; LABEL_ROWS];
    let mut rows_used = 1;
    let mut labels = String::new();
    for e in moments {
        let ex = x(e.t_ms);
        // Where the label would go, to find a row for it.
        let (_, from, to) = label(ex, 0.0, &e.what, "event");
        let row = row_ends
            .iter()
            .position(|end| *end + 8.0 <= from)
            .unwrap_or_else(|| {
                // Every row taken here: the one freed first.
                (0..LABEL_ROWS)
                    .min_by(|a, b| row_ends[*a].total_cmp(&row_ends[*b]))
                    .unwrap_or(0)
            });
        row_ends[row] = to;
        rows_used = rows_used.max(row + 1);
        let y = lanes_bottom + 14.0 + row as f64 * row_h;
        let (text, _, _) = label(ex, y, &e.what, "event");
        let _ = writeln!(
            svg,
            r##"<line x1="{ex:.1}" y1="{req_top}" x2="{ex:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="3,3"/>"##,
            y - 9.0
        );
        labels.push_str(&text);
        labels.push('\n');
    }
    // Over every line, each on a halo of its own, so a line that runs
    // down to a lower row does not cross out a label.
    svg.push_str(&labels);
    let axis_y = lanes_bottom + 14.0 + rows_used as f64 * row_h + 16.0;
    scale.axis(&mut svg, axis_y);
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
    let band = if outage.is_some() {
        " The shaded band is the outage, from the fault until the failed region was restored."
    } else {
        ""
    };
    (
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}">
{svg}</svg>"#
        ),
        format!("{legend} <span class=\"chip\" style=\"background:#bbb\"></span>edge unreachable.{band}"),
    )
}

/// What happened to the writes: a timeline of acknowledged and failed
/// writes with the window they were unavailable, and the oracle's figures,
/// the lost acknowledged writes by id among them.
fn writes_section(report: &Report, scale: Scale, moments: &[Event]) -> String {
    let Some(w) = &report.writes else {
        return "<section id=\"writes\"><h2>Writes</h2><p>No database in this run: payments were HTTP requests like the others (above).</p></section>\n".into();
    };
    let x = |t: f64| scale.x(t);
    let mut svg = String::new();
    let top = 30.0;
    let h = 110.0;
    let max = report
        .timeline
        .iter()
        .map(|b| b.writes_acked + b.writes_failed)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}" class="title">payment writes per {BUCKET_MS:.0} ms (green acknowledged, red failed; orange: writes unavailable)</text>"#,
        top - 8.0
    );
    // The window first, under the bars: from the fault until a write sent
    // after it was acknowledged (the terminal's "rto, writes").
    if let Some(fault) = report.fault_ms {
        let (to, what) = match w.write_unavailable_ms {
            Some(ms) => (fault + ms, format!("writes unavailable for {}", fmt_ms(ms))),
            None => (scale.end, "writes not back by the end of the run".into()),
        };
        let _ = writeln!(
            svg,
            r##"<rect id="write-unavailable" x="{:.1}" y="{top}" width="{:.1}" height="{h}" fill="#e67e22" opacity="0.18"><title>{}</title></rect>"##,
            x(fault),
            (x(to) - x(fault)).max(1.0),
            esc(&what)
        );
        let (text, _, _) = label(x(to), top + h + 14.0, &what, "band");
        let _ = writeln!(svg, "{text}");
    }
    let bar_w = scale.bar_w();
    for b in &report.timeline {
        let total = (b.writes_acked + b.writes_failed) as f64;
        if total == 0.0 {
            continue;
        }
        let h_total = total / max * h;
        let h_failed = b.writes_failed as f64 / max * h;
        let bx = x(b.t_ms);
        let _ = writeln!(
            svg,
            r##"<rect x="{bx:.1}" y="{:.1}" width="{bar_w:.1}" height="{:.1}" fill="#2e9e5b"><title>{:.1} s: {} acknowledged, {} failed</title></rect>"##,
            top + h - h_total,
            h_total - h_failed,
            b.t_ms / 1_000.0,
            b.writes_acked,
            b.writes_failed
        );
        if b.writes_failed > 0 {
            let _ = writeln!(
                svg,
                r##"<rect x="{bx:.1}" y="{:.1}" width="{bar_w:.1}" height="{h_failed:.1}" fill="#d63031"/>"##,
                top + h - h_failed
            );
        }
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" class="axis" text-anchor="end">{max:.0}</text>"#,
        LEFT - 6.0,
        top + 10.0
    );
    // The events' lines, to read the writes against them (labelled above).
    for e in moments {
        let ex = x(e.t_ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{ex:.1}" y1="{top}" x2="{ex:.1}" y2="{:.1}" stroke="#555" stroke-dasharray="3,3"><title>{:.1} s: {}</title></line>"##,
            top + h,
            e.t_ms / 1_000.0,
            esc(&e.what)
        );
    }
    let axis_y = top + h + 34.0;
    scale.axis(&mut svg, axis_y);
    let height = axis_y + 10.0;

    let mut rows = String::new();
    let mut row = |k: &str, v: String, meaning: &str| {
        let _ = writeln!(
            rows,
            r#"<tr><th>{}</th><td>{}</td><td class="meaning">{}</td></tr>"#,
            esc(k),
            v,
            esc(meaning)
        );
    };
    row(
        "writes",
        esc(&format!(
            "{} sent, {} acknowledged, {} failed",
            thousands(w.write_attempts),
            thousands(w.acked_writes),
            thousands(w.failed_writes)
        )),
        "POST /payments through the writer proxies",
    );
    if let Some((label, figure, meaning)) = report
        .times()
        .into_iter()
        .find(|(label, _, _)| *label == "rto, writes")
    {
        row(label, esc(&figure), &meaning);
    }
    row(
        "lost acked writes",
        format!(
            r#"<span id="lost-writes">{} (about {} bytes)</span>{}"#,
            thousands(w.lost_acked_writes),
            thousands(w.lost_bytes_estimate as usize),
            ids(&w.lost_ids, "lost-ids")
        ),
        &w.loss_bound.map_or(
            "acknowledged payments the final writer does not hold".into(),
            |b| {
                format!(
                "acknowledged payments the final writer does not hold; the time budget allows {b}"
            )
            },
        ),
    );
    row(
        "processed twice",
        format!(
            "{}{}",
            thousands(w.duplicate_keys),
            ids(&w.duplicate_key_list, "duplicate-keys")
        ),
        "idempotency keys with more than one row",
    );
    row(
        "split-brain writes",
        format!(
            "{}{}",
            thousands(w.split_brain_writes),
            ids(&w.split_brain_ids, "split-brain-ids")
        ),
        "taken by a superseded writer, from the clients' records",
    );
    for line in &w.writers {
        row("writer", esc(line), "");
    }
    for line in &w.nodes {
        row("node", esc(line), "");
    }
    row(
        "final writer",
        esc(&w.final_primary),
        "the node that acknowledged the last write; lost writes are counted against its rows",
    );
    format!(
        r#"<section id="writes"><h2>Writes</h2>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}">
{svg}</svg>
<table>{rows}</table></section>
"#
    )
}

/// ": 3, 17, 42" for every item (up to a thousand), in an element of its
/// own; nothing for none.
fn ids<T: std::fmt::Display>(items: &[T], id: &str) -> String {
    if items.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = items
        .iter()
        .take(1_000)
        .map(|i| esc(&i.to_string()))
        .collect();
    let more = items.len().saturating_sub(1_000);
    format!(
        r#": <span id="{id}">{}</span>{}"#,
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

/// A plan as the report has it, "plan 1 us-east -> us-west (done): fence
/// 954 ms, promote 605 ms": its heading and its steps with their
/// durations; `None` for another shape.
fn plan_steps(line: &str) -> Option<(&str, Vec<(&str, u64)>)> {
    let (heading, steps) = line.split_once(": ")?;
    let steps = steps
        .split(", ")
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (name, ms) = s.strip_suffix(" ms")?.rsplit_once(' ')?;
            Some((name, ms.parse().ok()?))
        })
        .collect::<Option<Vec<_>>>()?;
    Some((heading, steps))
}

/// The database at the end and every plan the controllers ran, step by
/// step with what each took, and what the controllers and agents recorded
/// about it, when.
fn database_section(report: &Report) -> String {
    let Some(d) = &report.database else {
        return "<section id=\"database\"><h2>Database</h2><p>No database in this run.</p></section>\n".into();
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<section id=\"database\"><h2>Database: failover and switchover plans</h2>\n<p>{} replication; writer at the end: {} (epoch {}).</p>",
        esc(&d.replication),
        esc(&d.writer),
        d.epoch
    );
    if let Some((label, figure, meaning)) = report
        .times()
        .into_iter()
        .find(|(label, _, _)| *label == "failover")
    {
        let _ = writeln!(
            out,
            r#"<p>{}: <b>{}</b> <span class="meaning">{}</span></p>"#,
            esc(label),
            esc(&figure),
            esc(&meaning)
        );
    }
    if d.plans.is_empty() {
        out.push_str("<p>No failover or switchover plan ran.</p>\n");
    }
    const BAR_W: f64 = 420.0;
    for line in &d.plans {
        let Some((heading, steps)) = plan_steps(line) else {
            let _ = writeln!(out, r#"<p class="plan">{}</p>"#, esc(line));
            continue;
        };
        let total: u64 = steps.iter().map(|(_, ms)| ms).sum();
        let _ = writeln!(
            out,
            r#"<h3 class="plan">{}</h3><table class="steps"><tr><th>step</th><th>took</th><th>in order, each bar as long as its step took</th></tr>"#,
            esc(heading)
        );
        let mut at = 0u64;
        for (name, ms) in &steps {
            let scale = BAR_W / total.max(1) as f64;
            let _ = writeln!(
                out,
                r##"<tr class="step"><td class="step-name">{}</td><td class="num">{}</td><td><svg xmlns="http://www.w3.org/2000/svg" width="{BAR_W}" height="12" viewBox="0 0 {BAR_W} 12"><rect x="{:.1}" y="1" width="{:.1}" height="10" fill="#3b7dd8"/></svg></td></tr>"##,
                esc(name),
                fmt_ms(*ms as f64),
                at as f64 * scale,
                (*ms as f64 * scale).max(1.0)
            );
            at += ms;
        }
        let _ = writeln!(
            out,
            r#"<tr><th>in all</th><td class="num">{}</td><td></td></tr></table>"#,
            fmt_ms(total as f64)
        );
    }
    // When, in lab time: the audit log's entries about the plans and the nodes.
    let recorded: Vec<&String> = report
        .audit
        .iter()
        .filter(|l| {
            ["] failover", "] writer:", "] node-", "] lease:"]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect();
    if !recorded.is_empty() {
        out.push_str("<h3>As the controllers recorded it</h3><ul>");
        for l in recorded {
            let _ = write!(out, "<li><code>{}</code></li>", esc(l));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</section>\n");
    out
}

/// What a target's state rests on, in the terminal's terms; `None` for a
/// target this page does not know (a test keeps that from happening).
fn target_figure(r: &Report, name: &str) -> Option<String> {
    let na = || "n/a".to_string();
    let w = r.writes.as_ref();
    Some(match name {
        "no failed http request outside the failed region" => {
            let region = r.failed_region.as_deref().unwrap_or("");
            let outside: usize = r
                .failed_by_client_region
                .iter()
                .filter(|(c, _)| c.as_str() != region)
                .map(|(_, n)| n)
                .sum();
            format!("{} failed outside {region}", thousands(outside))
        }
        "detection under 1000 ms" => {
            let region = r.failed_region.as_deref().unwrap_or("");
            format!(
                "{}; the first edge moved after {}",
                match r.clients_detection_ms {
                    Some(paid) if paid > 0.0 => format!(
                        "clients outside {region} paid for the fault until {}",
                        fmt_ms(paid)
                    ),
                    Some(_) => format!("no client outside {region} paid for it"),
                    None => "what clients paid for it is unknown".into(),
                },
                r.detection_ms.map_or_else(na, fmt_ms)
            )
        }
        "a verdict committed on the failed region" => {
            r.verdict_ms.map_or("no verdict committed".into(), |v| {
                format!("committed {} after the fault", fmt_ms(v))
            })
        }
        "the cut-off controller decided nothing" => r
            .minority_decisions
            .map_or_else(na, |n| format!("{n} decisions while cut off")),
        "no extra routing change (no flap)" => format!(
            "{} committed, {} seen on edges",
            r.routing_changes.map_or_else(na, |n| n.to_string()),
            r.edge_route_changes
        ),
        "no failed http request at all" => format!(
            "{} of {} failed",
            thousands(r.requests_failed),
            thousands(r.requests_total)
        ),
        "no acknowledged write lost" => {
            w.map_or_else(na, |w| format!("{} lost", thousands(w.lost_acked_writes)))
        }
        "lost writes within the RPO budget (time and size)" => w.map_or_else(na, |w| {
            format!(
                "{} lost, about {} bytes (budget {} bytes{})",
                thousands(w.lost_acked_writes),
                thousands(w.lost_bytes_estimate as usize),
                thousands(RPO_BUDGET_BYTES as usize),
                w.loss_bound
                    .map_or(String::new(), |b| format!("; the time budget allows {b}"))
            )
        }),
        "no write taken by a superseded writer (split brain)" => {
            w.map_or_else(na, |w| format!("{} taken", thousands(w.split_brain_writes)))
        }
        "no idempotency key processed twice" => {
            w.map_or_else(na, |w| format!("{} keys", thousands(w.duplicate_keys)))
        }
        "writes taken again within 10 s of the fault" => {
            w.map_or_else(na, |w| match w.write_unavailable_ms {
                Some(ms) => format!("writes back after {}", fmt_ms(ms)),
                None => "writes not back by the end of the run".into(),
            })
        }
        "nothing failed before the fault" => format!(
            "{} failed before the fault",
            thousands(r.failed_before_fault.len())
        ),
        "no failed write" => w.map_or_else(na, |w| {
            format!(
                "{} of {} failed",
                thousands(w.failed_writes),
                thousands(w.write_attempts)
            )
        }),
        "no failover (the writer never moved)" => r.database.as_ref().map_or_else(na, |d| {
            format!("{} plans ran; writer {}", d.plans.len(), d.writer)
        }),
        "every edge answered over HTTPS" => format!(
            "{} of {} edges",
            r.https.iter().filter(|c| c.ok).count(),
            r.https.len()
        ),
        "the drill passed" => r.drill.as_ref().map_or_else(na, |d| d.outcome.clone()),
        "traffic moved as each drill step said (clients' records)" => {
            r.drill.as_ref().map_or_else(na, |d| {
                format!(
                    "{} of {} phases within {:.0}%",
                    d.phases
                        .iter()
                        .filter(|p| p.within_tolerance == Some(true))
                        .count(),
                    d.phases.len(),
                    crate::drill_report::SHARE_TOLERANCE * 100.0
                )
            })
        }
        "the drill aborted within 2 windows + 2 s of the breach and traffic came back" => {
            r.drill.as_ref().map_or_else(na, |d| {
                format!(
                    "aborted {}; {} served elsewhere after it",
                    match (d.breach_ms, d.aborted_ms) {
                        (Some(b), Some(a)) => format!("{} after the breach", fmt_ms(a - b)),
                        _ => "never".into(),
                    },
                    d.after_share
                        .map_or_else(na, |s| format!("{:.1}%", s * 100.0))
                )
            })
        }
        "requests failed by the breach within the bound" => r.drill.as_ref().map_or_else(na, |d| {
            format!(
                "{} failed (bound {})",
                d.failed_during_breach.map_or_else(na, thousands),
                crate::drill_report::BREACH_FAILURE_BOUND
            )
        }),
        _ => return None,
    })
}

/// Every target that applies, met or missed, with the figure it rests on.
fn targets_section(report: &Report) -> String {
    let list = report.targets.list();
    let met = list.iter().filter(|(_, m)| *m).count();
    let mut out = format!(
        "<section id=\"targets\"><h2>Targets: {met} of {} met</h2>\n<p class=\"info\">The targets that apply to this scenario, every one enforced by <code>--check</code>.</p>\n<table>",
        list.len()
    );
    for (name, ok) in list {
        let (class, mark) = if ok {
            ("met", "met")
        } else {
            ("missed", "MISSED")
        };
        let _ = writeln!(
            out,
            r#"<tr class="target {class}"><td>{}</td><td class="{class}">{mark}</td><td>{}</td></tr>"#,
            esc(name),
            esc(&target_figure(report, name).unwrap_or_default())
        );
    }
    out.push_str("</table></section>\n");
    out
}

/// The DNS path beside the HTTP path: a comparison, not a target, so it is
/// marked informational as in the terminal and never met or missed.
fn dns_section(report: &Report) -> String {
    let Some(dns) = &report.dns_path else {
        return "<section id=\"dns\"><h2>DNS path vs HTTP path <span class=\"info\">(informational, not a target)</span></h2><p>No DNS clients in this run.</p></section>\n".into();
    };
    // The terminal's own first and last lines: the settings and the comparison.
    let table = dns.table();
    let lines: Vec<&str> = table.lines().collect();
    let mut out = format!(
        "<section id=\"dns\"><h2>DNS path vs HTTP path <span class=\"info\">(informational, not a target)</span></h2>\n<p>{}</p>\n<table><tr><th>path</th><th>group</th><th>clients</th><th>requests</th><th>failed</th><th>into failed region</th><th>kept reaching it</th><th>p99 during</th></tr>\n",
        esc(lines.first().copied().unwrap_or(""))
    );
    for g in &dns.groups {
        let _ = writeln!(
            out,
            r#"<tr class="dns-group"><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            esc(g.path),
            esc(&g.group),
            g.clients,
            g.requests,
            g.failed,
            g.reached_failed_region
                .map_or("-".to_string(), |n| n.to_string()),
            g.kept_reaching_failed_region_ms
                .map_or("never".to_string(), |k| format!("{k:.0} ms")),
            g.p99_during_ms
                .map_or("n/a".to_string(), |p| format!("{p:.0} ms")),
        );
    }
    let _ = writeln!(
        out,
        "</table>\n<p class=\"info\">{}</p></section>",
        esc(lines.last().copied().unwrap_or(""))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns_report::{DnsPathReport, DnsPathSettings, PathGroup};
    use crate::report::tests::outage_with_writes;
    use crate::report::Targets;

    /// The region-outage run with the database of the report's own tests,
    /// with the DNS path, two lost writes and the verdict line.
    fn report() -> Report {
        let (_, mut r) = outage_with_writes();
        let w = r.writes.as_mut().unwrap();
        w.lost_acked_writes = 2;
        w.lost_ids = vec![417, 9_001];
        r.dns_path = Some(DnsPathReport {
            settings: DnsPathSettings {
                ttl_s: 2,
                stretch_s: 60,
                stretch_share: 0.09,
                check_interval_ms: 200,
                check_fall: 3,
                pace_ms: 100,
            },
            bound_ms: 3_400.0,
            groups: vec![PathGroup {
                path: "dns",
                group: "dns, honours TTL".into(),
                clients: 11,
                requests: 1_649,
                failed: 3,
                reached_failed_region: Some(4),
                kept_reaching_failed_region_ms: Some(2_100.0),
                p99_during_ms: Some(79.0),
            }],
            honouring_clients_within_bound: true,
        });
        r.summary = r.verdict_line();
        r
    }

    fn section<'a>(page: &'a str, id: &str) -> &'a str {
        let start = page
            .find(&format!("<section id=\"{id}\""))
            .unwrap_or_else(|| panic!("no section {id} in\n{page}"));
        let end = page[start..].find("</section>").unwrap() + start;
        &page[start..end]
    }

    #[test]
    fn the_page_shows_the_writes_the_plan_the_targets_and_the_dns_path() {
        let r = report();
        let page = render(&r);
        assert!(
            page.contains(&format!(
                r#"<p id="verdict" class="good">{}</p>"#,
                esc(&r.summary)
            )),
            "{page}"
        );
        let writes = section(&page, "writes");
        assert!(writes.contains("<svg"), "{writes}");
        assert!(
            writes.contains("30 sent, 24 acknowledged, 6 failed"),
            "{writes}"
        );
        assert!(
            writes.contains(r#"<span id="lost-ids">417, 9001</span>"#),
            "{writes}"
        );
        assert!(writes.contains(r#"id="write-unavailable""#), "{writes}");
        let database = section(&page, "database");
        for step in ["wait-lease", "promote"] {
            assert!(
                database.contains(&format!(r#"<td class="step-name">{step}</td>"#)),
                "{database}"
            );
        }
        assert!(database.contains("2,588 ms") && database.contains("831 ms"));
        let targets = section(&page, "targets");
        for (name, met) in r.targets.list() {
            assert!(
                targets.contains(&format!(
                    "<td>{}</td><td class=\"{}\">{}</td>",
                    esc(name),
                    if met { "met" } else { "missed" },
                    if met { "met" } else { "MISSED" }
                )),
                "{name} in {targets}"
            );
        }
        let dns = section(&page, "dns");
        assert!(dns.contains("informational, not a target"), "{dns}");
        assert!(dns.contains("dns, honours TTL") && dns.contains("2100 ms"));
        assert!(!dns.contains("MISSED") && !dns.contains(">met<"), "{dns}");
        // Without the database or DNS clients the sections say so.
        let mut bare = r.clone();
        bare.writes = None;
        bare.database = None;
        bare.dns_path = None;
        let page = render(&bare);
        for id in ["writes", "database", "dns", "targets"] {
            section(&page, id);
        }
    }

    #[test]
    fn every_target_shows_its_figure() {
        let mut r = report();
        r.targets = Targets {
            no_failures_outside_failed_region: Some(true),
            detection_under_1s: Some(true),
            verdict_committed: Some(true),
            minority_decided_nothing: Some(true),
            no_extra_flap: Some(true),
            no_failures: Some(true),
            no_lost_writes: Some(false),
            loss_within_budget: Some(true),
            no_split_brain_writes: Some(true),
            no_duplicate_keys: Some(true),
            writes_back_within_10s: Some(true),
            nothing_failed_before_the_fault: Some(true),
            no_failed_writes: Some(true),
            no_failover: Some(true),
            https_at_every_edge: Some(true),
            drill_passed: Some(true),
            drill_shares_as_planned: Some(true),
            drill_aborted_in_time: Some(true),
            breach_failures_within_bound: Some(true),
        };
        for (name, _) in r.targets.list() {
            assert!(
                target_figure(&r, name).is_some_and(|f| !f.is_empty()),
                "no figure for target {name:?}"
            );
        }
        let page = render(&r);
        let targets = section(&page, "targets");
        assert!(
            targets.contains(r#"<td class="missed">MISSED</td><td>2 lost</td>"#),
            "{targets}"
        );
        assert!(page.contains(r#"<p id="verdict" class="bad">"#));
    }

    /// Broke when labels of events near the end of the run ran past the
    /// chart's right edge and were clipped.
    #[test]
    fn a_label_near_the_right_edge_ends_at_its_line() {
        let mut r = report();
        r.events = vec![
            Event {
                t_ms: 0.0,
                what: "load starts".into(),
            },
            Event {
                t_ms: r.end_ms - 200.0,
                what: "load stops after a long label that cannot fit on the right".into(),
            },
        ];
        let page = render(&r);
        let x = Scale::of(&r).x(r.end_ms - 200.0);
        let prefix = format!(r#"<text x="{:.1}" "#, x - 4.0);
        let at = page
            .find(&prefix)
            .unwrap_or_else(|| panic!("no label ending at {:.1}: {page}", x - 4.0));
        let tag = &page[at..at + page[at..].find('>').unwrap()];
        assert!(tag.contains(r#"text-anchor="end""#), "{tag}");
        // The first event's label starts right of its line.
        assert!(
            page.contains(&format!(r#"<text x="{:.1}""#, Scale::of(&r).x(0.0) + 4.0)),
            "{page}"
        );
        // No label reaches past the chart, whatever its length.
        let (long, from, to) = label(WIDTH - 30.0, 10.0, &"x".repeat(400), "event");
        assert!(from >= 0.0 && to <= WIDTH, "{from}..{to}: {long}");
        assert!(long.contains('…'), "{long}");
    }

    /// Broke when "recovery" was drawn at 21.7 s while the terminal had
    /// printed it at 18.7 s: a step's event is stamped once the step has
    /// run (a region's restart takes seconds), the terminal's line as it
    /// starts. The page draws each step at the terminal's moment, and
    /// shows the table's times as the table prints them.
    #[test]
    fn times_on_the_page_are_the_terminals() {
        let mut r = report();
        let steps = Scenario::by_name("region-outage", r.seed, Fault::Blackhole)
            .unwrap()
            .steps;
        let planned: Vec<f64> = steps.iter().map(|s| s.at.as_secs_f64() * 1e3).collect();
        // The terminal printed each step at its planned time; the report's
        // fault and restore are those moments.
        r.fault_ms = Some(planned[0] + 0.4);
        r.restore_ms = Some(planned[2] + 0.3);
        r.end_ms = planned[2] + 12_000.0;
        // As the lab records them: once each step has run.
        r.events = vec![
            Event {
                t_ms: planned[0] + 1.0,
                what: steps[0].label.clone(),
            },
            Event {
                t_ms: planned[1] + 180.0,
                what: steps[1].label.clone(),
            },
            Event {
                t_ms: planned[1] + 900.0,
                what: "payments in us-west: promoted".into(),
            },
            Event {
                t_ms: planned[2] + 3_000.0,
                what: steps[2].label.clone(),
            },
        ];
        let page = render(&r);
        let events = section(&page, "events");
        let at = |t: f64, what: &str| format!("<li>{:.1} s: {}</li>", t / 1e3, esc(what));
        for (t, what) in [
            (r.fault_ms.unwrap(), &steps[0].label),
            (planned[1], &steps[1].label),
            (
                planned[1] + 900.0,
                &"payments in us-west: promoted".to_string(),
            ),
            (r.restore_ms.unwrap(), &steps[2].label),
        ] {
            assert!(events.contains(&at(t, what)), "{what} at {t}: {events}");
        }
        // The recovery's line is drawn at the restore, not 3 s later.
        let x = Scale::of(&r).x(r.restore_ms.unwrap());
        assert!(
            page.contains(&format!(r#"<line x1="{x:.1}" y1="30""#)),
            "no line at {x:.1}"
        );
        let late = Scale::of(&r).x(planned[2] + 3_000.0);
        assert!(!page.contains(&format!(r#"<line x1="{late:.1}""#)));
        // The times are the table's rows, figure for figure.
        let figures = &page[page.find(r#"<table id="figures">"#).unwrap()..];
        for (label, figure, meaning) in r.times() {
            assert!(
                figures.contains(&format!(
                    r#"<tr><th>{}</th><td>{}</td><td class="meaning">{}</td></tr>"#,
                    esc(label),
                    esc(&figure),
                    esc(&meaning)
                )),
                "{label} {figure}: {figures}"
            );
        }
        assert!(r.table().contains("2,700 ms") && figures.contains("2,700 ms"));
    }

    #[test]
    fn every_string_from_the_report_is_escaped() {
        let mut r = report();
        let evil = "<script>alert('x')</script>&";
        r.scenario = evil.into();
        r.events = vec![Event {
            t_ms: 1_000.0,
            what: evil.into(),
        }];
        r.audit = vec![format!("[   1.0s] failover: {evil}")];
        r.failed_before_fault = vec![evil.into()];
        r.database.as_mut().unwrap().plans.push(evil.into());
        r.database.as_mut().unwrap().writer = evil.into();
        let w = r.writes.as_mut().unwrap();
        w.writers.push(evil.into());
        w.duplicate_key_list = vec![evil.into()];
        w.final_primary = evil.into();
        r.dns_path.as_mut().unwrap().groups[0].group = evil.into();
        r.summary = evil.into();
        let page = render(&r);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("alert('x')"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;"));
    }

    #[test]
    fn plan_lines_read_as_steps() {
        assert_eq!(
            plan_steps("plan 1 us-east -> us-west (done): fence 954 ms, catch-up 312 ms"),
            Some((
                "plan 1 us-east -> us-west (done)",
                vec![("fence", 954), ("catch-up", 312)]
            ))
        );
        assert_eq!(
            plan_steps("plan 2 a -> b (fence): "),
            Some(("plan 2 a -> b (fence)", vec![]))
        );
        assert_eq!(plan_steps("something else"), None);
        assert_eq!(plan_steps("plan 3 a -> b (x): fence soon"), None);
    }
}
