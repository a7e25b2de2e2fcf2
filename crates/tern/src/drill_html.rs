//! `tern drill report --html`: one drill as a page a team can show, with
//! no script and nothing fetched: the outcome, the plan, a step chart of
//! the evacuated share over time with the guardrails' limits, a table of
//! every phase with what each client region saw over it (requests, errors,
//! p50 and p99), and the database switchovers with their step timings.

use std::fmt::Write as _;

use tern_core::drill::{Drill, Phase};

use crate::drill_report::{phase_lines, DrillReport};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page for a drill's report.
pub(crate) fn render(report: &DrillReport<'_>) -> String {
    let drill = report.drill;
    let (outcome, class, reason) = match &drill.phase {
        Phase::Passed => ("passed", "ok", None),
        Phase::Aborted { reason } => ("aborted", "bad", Some(reason.as_str())),
        other => (other.name(), "run", None),
    };
    let g = &drill.spec.guardrails;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>tern drill {id} of {region}: {outcome}</title><style>\
         body{{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}}\
         .ok{{color:#176b2c}}.bad{{color:#a11}}.run{{color:#a60}}\
         svg text{{font-size:12px}}</style></head><body>\
         <h1>Drill {id} of {region}: <span id=\"outcome\" class=\"{class}\">{outcome}</span></h1>",
        id = drill.id,
        region = esc(&drill.spec.region),
    );
    if let Some(r) = reason {
        let _ = write!(
            out,
            "<p id=\"reason\" class=\"bad\">Aborted: {}</p>",
            esc(r)
        );
    }
    let _ = write!(
        out,
        "<section id=\"plan\"><h2>Plan</h2><p>Started by {actor}. Steps {steps} (percent of \
         {region}'s traffic sent elsewhere), each held {hold:.0} s; back {back}{switch}.</p>\
         <p id=\"guardrails\">Guardrails, per client region over {window:.0} s windows: error rate \
         at most {rate:.1}%, p99 at most {p99} ms; fewer than {min} requests in a window are too \
         few to judge; missing data is a breach.</p></section>",
        actor = esc(&drill.actor),
        steps = drill
            .spec
            .steps
            .iter()
            .map(|s| format!("{s}%"))
            .collect::<Vec<_>>()
            .join(", "),
        region = esc(&drill.spec.region),
        hold = drill.spec.hold.as_secs_f64(),
        back = if drill.spec.return_steps.is_empty() {
            "at once".to_string()
        } else {
            format!(
                "in steps {}",
                drill
                    .spec
                    .return_steps
                    .iter()
                    .map(|s| format!("{s}%"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        switch = drill.spec.switchover_at.map_or(String::new(), |s| format!(
            "; the database writers switched over at {s}% and back at the end"
        )),
        window = g.window.as_secs_f64(),
        rate = g.max_error_rate * 100.0,
        p99 = g.max_p99.as_millis(),
        min = g.min_requests,
    );
    if !drill.spec.service_guardrails.is_empty() {
        out.push_str("<p id=\"service-guardrails\">Services with their own limits: ");
        let parts: Vec<String> = drill
            .spec
            .service_guardrails
            .iter()
            .map(|(name, g)| {
                format!(
                    "{}: error rate at most {:.1}%, p99 at most {} ms",
                    esc(name),
                    g.max_error_rate * 100.0,
                    g.max_p99.as_millis()
                )
            })
            .collect();
        out.push_str(&parts.join("; "));
        out.push_str(".</p>");
    }
    out.push_str(&chart(drill));
    out.push_str("<section id=\"phases\"><h2>Phases</h2><table><tr><th>phase</th><th>share</th><th>from (s)</th><th>held (s)</th><th>what clients saw, per client region</th></tr>");
    for r in &drill.history {
        let lines: Vec<String> = phase_lines(r, &drill.spec.guardrails)
            .iter()
            .map(|l| esc(l))
            .collect();
        let _ = write!(
            out,
            "<tr class=\"phase\"><td>{}</td><td>{}%</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
            r.phase.name(),
            r.share,
            r.started_at.saturating_sub(drill.started_at).as_secs_f64(),
            r.ended_at.saturating_sub(r.started_at).as_secs_f64(),
            lines.join("<br>")
        );
    }
    out.push_str("</table></section>");
    if drill.spec.switchover_at.is_some() || !report.switchovers.is_empty() {
        out.push_str("<section id=\"switchovers\"><h2>Database switchovers</h2>");
        if report.switchovers.is_empty() {
            out.push_str("<p>None recorded (the region held no writer, or the controllers no longer keep the plans).</p>");
        }
        for s in &report.switchovers {
            let _ = write!(out, "<p class=\"switchover\">{}</p>", esc(&s.line()));
        }
        out.push_str("</section>");
    }
    out.push_str("</body></html>\n");
    out
}

/// The share over time as steps, 0 to 100%, in an SVG 800 x 240.
fn chart(drill: &Drill) -> String {
    let (w, h, left, top) = (800.0, 240.0, 50.0, 20.0);
    let plot_w = w - left - 20.0;
    let plot_h = h - top - 40.0;
    let end = drill
        .history
        .last()
        .map_or(drill.phase_since, |r| r.ended_at)
        .max(drill.phase_since);
    let span = end.saturating_sub(drill.started_at).as_secs_f64().max(1.0);
    let x = |t: std::time::Duration| {
        left + t.saturating_sub(drill.started_at).as_secs_f64() / span * plot_w
    };
    let y = |share: u8| top + plot_h * (1.0 - f64::from(share) / 100.0);
    let mut path = String::new();
    for r in &drill.history {
        let _ = write!(
            path,
            "{}{:.1},{:.1} L{:.1},{:.1} ",
            if path.is_empty() { "M" } else { "L" },
            x(r.started_at),
            y(r.share),
            x(r.ended_at),
            y(r.share)
        );
    }
    let mut svg = format!(
        "<section id=\"chart\"><h2>Evacuated share over time</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">"
    );
    for share in [0u8, 50, 100] {
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{share}%</text>",
            left + plot_w,
            left - 6.0,
            y(share) + 4.0,
            y = y(share)
        );
    }
    let _ = write!(
        svg,
        "<path d=\"{path}\" fill=\"none\" stroke=\"#2563eb\" stroke-width=\"2\"/>"
    );
    for r in &drill.history {
        let mid = (x(r.started_at) + x(r.ended_at)) / 2.0;
        let _ = write!(
            svg,
            "<text x=\"{mid:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            h - 20.0,
            r.phase.name()
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{span:.0} s</text></svg></section>",
        left + plot_w,
        h - 4.0
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tern_core::drill::{DrillSpec, Guardrails};

    #[test]
    fn the_page_shows_the_outcome_the_plan_every_phase_and_escapes_text() {
        let spec = DrillSpec {
            service_guardrails: Default::default(),
            region: "us-east".into(),
            steps: vec![10, 100],
            hold: Duration::from_secs(5),
            return_steps: vec![],
            switchover_at: None,
            guardrails: Guardrails::default(),
        };
        let t = |s: u64| Duration::from_secs(1000 + s);
        let mut d = Drill::new(7, spec, "operator <admin>".into(), t(0));
        d.advance(
            Phase::Evacuating { step: 1 },
            vec!["clients in us-west: 500 requests, 0 failed, p99 80 ms".into()],
            t(5),
        );
        d.advance(
            Phase::Aborted {
                reason: "error rate of clients in us-west 5.0% over 1.0%".into(),
            },
            vec![],
            t(8),
        );
        let page = render(&DrillReport {
            drill: &d,
            switchovers: vec![],
        });
        assert!(page.contains("id=\"outcome\" class=\"bad\">aborted"));
        assert!(page.contains("error rate of clients in us-west 5.0% over 1.0%"));
        assert!(page.contains("operator &lt;admin&gt;"));
        assert_eq!(page.matches("<tr class=\"phase\">").count(), 2);
        assert!(page.contains("p99 at most 1000 ms"));
        assert!(page.contains("<path d=\"M"));
    }
}
