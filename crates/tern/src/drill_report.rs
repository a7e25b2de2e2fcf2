//! What `tern drill report` shows of one drill, as text, JSON and the
//! page (`drill_html`): what clients saw in each phase, and the database
//! switchovers the drill asked for with their step timings.

use tern_core::drill::Drill;

/// What clients saw during one phase, a line per client region (the
/// watched windows' sums and worst percentiles against the drill's
/// guardrails `g`), then what the guardrails read at its end.
/// (Services with their own limits were judged on those; these lines are
/// all services together.)
pub(crate) fn phase_lines(
    r: &tern_core::drill::PhaseRecord,
    g: &tern_core::drill::Guardrails,
) -> Vec<String> {
    if r.stats.is_empty() {
        return r.evidence.clone();
    }
    let writer_moving = matches!(
        r.phase,
        tern_core::drill::Phase::MovingWriter { .. } | tern_core::drill::Phase::ReturningWriter
    );
    let mut lines: Vec<String> = r
        .stats
        .iter()
        .map(|(region, s)| {
            let mut over = Vec::new();
            if s.requests >= g.min_requests && s.error_rate() > g.max_error_rate {
                over.push(format!("errors over {:.1}%", g.max_error_rate * 100.0));
            }
            if s.requests >= g.min_requests && s.p99 > g.max_p99 {
                over.push(format!("p99 over {} ms", g.max_p99.as_millis()));
            }
            let verdict = match (writer_moving, over.is_empty()) {
                (true, _) => "not judged while the writer moves".to_string(),
                (false, true) => "within the guardrails".to_string(),
                (false, false) => over.join(", "),
            };
            format!(
                "clients in {region}: {} requests, {} failed ({:.2}%), p50 {} ms, p99 {} ms (worst of {} windows): {verdict}",
                s.requests,
                s.errors,
                s.error_rate() * 100.0,
                s.p50.as_millis(),
                s.p99.as_millis(),
                s.windows
            )
        })
        .collect();
    // The reading at the phase's end covers a last window the tally may
    // not (and, for an aborted phase, the abort's reason).
    if !r.evidence.is_empty() {
        lines.push(format!("at its end: {}", r.evidence.join("; ")));
    }
    lines
}

/// A drill's report: the drill, and the switchovers it asked for (the
/// plans whose actor is the drill), with their step timings.
#[derive(serde::Serialize)]
pub(crate) struct DrillReport<'a> {
    #[serde(flatten)]
    pub drill: &'a Drill,
    pub switchovers: Vec<Switchover<'a>>,
}

/// One switchover of a drill.
#[derive(serde::Serialize)]
pub(crate) struct Switchover<'a> {
    pub cluster: &'a str,
    pub plan: &'a tern_core::failover::Plan,
}

impl Switchover<'_> {
    /// One line: where, how long each step took, and what the catch-up
    /// step established about acknowledged writes.
    pub(crate) fn line(&self) -> String {
        let p = self.plan;
        let steps: Vec<String> = p
            .history
            .iter()
            .map(|h| {
                format!(
                    "{} {:.2} s",
                    h.step.as_str(),
                    h.finished_at.saturating_sub(h.started_at).as_secs_f64()
                )
            })
            .collect();
        let end = p
            .history
            .last()
            .map_or(p.step_started_at, |h| h.finished_at);
        let outcome = match p.step {
            tern_core::failover::Step::Done => {
                let caught_up = p
                    .history
                    .iter()
                    .any(|h| h.step == tern_core::failover::Step::CatchUp && h.ok);
                match (caught_up, p.fence_lsn) {
                    (true, Some(lsn)) => format!(
                        "acknowledged writes lost: 0 (the new writer had replayed the fenced writer's last position, LSN {lsn}, before it was promoted)"
                    ),
                    _ => "acknowledged writes lost: not established (no catch-up step recorded)".to_string(),
                }
            }
            tern_core::failover::Step::Failed => {
                "failed: see `tern events` for its steps' evidence".to_string()
            }
            other => format!("running ({})", other.as_str()),
        };
        format!(
            "switchover of {} from {} to {} (plan {}): {:.2} s; {}; {}",
            self.cluster,
            p.from,
            p.to,
            p.id,
            end.saturating_sub(p.started_at).as_secs_f64(),
            steps.join(", "),
            outcome
        )
    }
}

/// The plans drill `id` started, oldest first.
pub(crate) fn switchovers(
    clusters: &tern_core::failover::Clusters,
    id: u64,
) -> Vec<Switchover<'_>> {
    let actor = format!("drill {id}");
    let mut out: Vec<Switchover<'_>> = clusters
        .iter()
        .flat_map(|(name, c)| {
            c.past
                .iter()
                .chain(c.plan.iter())
                .map(move |p| Switchover { cluster: name, plan: p })
        })
        .filter(|s| {
            matches!(&s.plan.kind, tern_core::failover::PlanKind::Switchover { actor: a } if *a == actor)
        })
        .collect();
    out.sort_by_key(|s| s.plan.started_at);
    out.dedup_by_key(|s| (s.cluster, s.plan.id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tern_core::failover::{Plan, PlanKind, Step, StepRecord};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn plan(step: Step, catch_up_ok: bool) -> Plan {
        let record = |step, from, to, ok| StepRecord {
            step,
            started_at: ms(from),
            finished_at: ms(to),
            attempts: 1,
            ok,
            detail: String::new(),
        };
        Plan {
            id: 4,
            kind: PlanKind::Switchover {
                actor: "drill 2".into(),
            },
            from: "us-east".into(),
            to: "us-west".into(),
            step,
            started_at: ms(1000),
            step_started_at: ms(2500),
            attempts: 1,
            lag_bytes: Some(0),
            fence_lsn: Some(4242),
            epoch: Some(3),
            previous_lease: None,
            history: vec![
                record(Step::Fence, 1000, 1300, true),
                record(Step::CatchUp, 1300, 1500, catch_up_ok),
                record(Step::Promote, 1500, 2500, true),
            ],
        }
    }

    #[test]
    fn a_switchover_line_gives_each_steps_time_and_what_catch_up_established() {
        let p = plan(Step::Done, true);
        let line = Switchover {
            cluster: "payments",
            plan: &p,
        }
        .line();
        assert!(
            line.starts_with("switchover of payments from us-east to us-west (plan 4): 1.50 s;"),
            "{line}"
        );
        assert!(
            line.contains("fence 0.30 s, catch-up 0.20 s, promote 1.00 s"),
            "{line}"
        );
        assert!(line.contains("acknowledged writes lost: 0"), "{line}");
        assert!(line.contains("LSN 4242"), "{line}");
        let p = plan(Step::Done, false);
        let line = Switchover {
            cluster: "payments",
            plan: &p,
        }
        .line();
        assert!(line.contains("not established"), "{line}");
        let p = plan(Step::Failed, true);
        let line = Switchover {
            cluster: "payments",
            plan: &p,
        }
        .line();
        assert!(line.contains("failed"), "{line}");
    }

    #[test]
    fn only_the_drills_own_plans_are_its_switchovers() {
        let mut clusters = tern_core::failover::Clusters::new();
        let spec = tern_core::failover::ClusterSpec {
            sync: true,
            rpo_budget: 0,
            regions: vec!["us-east".into(), "us-west".into()],
            primary: "us-east".into(),
            scale_hook: false,
            step_timeout: Duration::from_secs(2),
        };
        let mut c = tern_core::failover::ClusterState::new(spec);
        let mut other = plan(Step::Done, true);
        other.id = 3;
        other.kind = PlanKind::Switchover {
            actor: "drill 1".into(),
        };
        c.past = vec![other, plan(Step::Done, true)];
        clusters.insert("payments".into(), c);
        let found = switchovers(&clusters, 2);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].plan.id, 4);
        assert!(switchovers(&clusters, 9).is_empty());
    }

    #[test]
    fn a_phase_line_gives_p50_and_p99_per_client_region_against_the_guardrails() {
        use tern_core::drill::{Guardrails, Phase, PhaseRecord, StepStats};
        let stats = |errors, p99| StepStats {
            windows: 3,
            requests: 1000,
            errors,
            p50: ms(4),
            p99: ms(p99),
        };
        let mut r = PhaseRecord {
            phase: Phase::Evacuating { step: 0 },
            share: 10,
            started_at: ms(0),
            ended_at: ms(15_000),
            evidence: vec!["at its end".into()],
            stats: [
                ("us-east".to_string(), stats(0, 64)),
                ("us-west".to_string(), stats(20, 2048)),
            ]
            .into(),
        };
        let g = Guardrails::default();
        let lines = phase_lines(&r, &g);
        assert_eq!(
            lines[0],
            "clients in us-east: 1000 requests, 0 failed (0.00%), p50 4 ms, p99 64 ms (worst of 3 windows): within the guardrails"
        );
        assert!(
            lines[1].ends_with(": errors over 1.0%, p99 over 1000 ms"),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], "at its end: at its end");
        r.phase = Phase::ReturningWriter;
        assert!(phase_lines(&r, &g)[1].ends_with("not judged while the writer moves"));
        r.stats.clear();
        assert_eq!(phase_lines(&r, &g), ["at its end"]);
    }
}
