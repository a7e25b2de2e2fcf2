//! What a drill did, judged from the outside where it can be: the phases
//! and their shares come from the controllers (the drill's committed
//! history), but whether traffic really moved is read from the clients'
//! records (which region served each request in each phase), and the
//! failures a breach caused are counted from what the clients were told.

use std::fmt::Write as _;

use serde::Serialize;
use tern_core::drill::{Drill, Phase};

use crate::clock::Clock;
use crate::load::RequestRecord;

/// The evacuated share measured in one phase may differ from the phase's
/// share by this much (absolute): a phase of ~500 requests at p = 0.5 has a
/// standard deviation of about 2%.
pub const SHARE_TOLERANCE: f64 = 0.1;

/// Requests a phase needs before its share is judged.
pub const MIN_PHASE_REQUESTS: usize = 50;

/// The first second of a phase is left out: edges learn of the new share
/// by their long poll, within about one round trip to the controllers.
pub const SETTLE_MS: f64 = 1_000.0;

/// The most client requests a breach may fail before the drill has
/// aborted and routing is back (the lab's stated bound).
pub const BREACH_FAILURE_BOUND: usize = 150;

/// How long after a breach starts the drill must have aborted: one
/// evaluation window for the edges to see it, one report interval (1 s)
/// and one leader tick, with a window's slack on a loaded machine.
pub fn abort_deadline_ms(window_ms: f64) -> f64 {
    2.0 * window_ms + 2_000.0
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseShare {
    pub phase: String,
    /// The drill's share, percent.
    pub share: u8,
    pub start_ms: f64,
    pub end_ms: f64,
    /// Client requests judged (GET and PUT, the first second left out).
    pub requests: usize,
    /// The share of them served outside the evacuated region.
    pub measured: Option<f64>,
    /// `None` when too few requests to judge.
    pub within_tolerance: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillOutcome {
    pub id: u64,
    pub region: String,
    /// passed, aborted, or the phase it was still in at the end.
    pub outcome: String,
    pub abort_reason: Option<String>,
    pub phases: Vec<PhaseShare>,
    /// When the scenario's breach started and when the drill aborted (lab ms).
    pub breach_ms: Option<f64>,
    pub aborted_ms: Option<f64>,
    /// Client requests (GET and PUT) that failed from the breach until
    /// routing was back (abort plus the settle time).
    pub failed_during_breach: Option<usize>,
    /// The share served outside the region after the drill ended, from
    /// the clients' records (routing back to before the drill: near 0).
    pub after_share: Option<f64>,
}

/// Builds the outcome of `drill` from the clients' `records`.
pub fn judge(
    drill: &Drill,
    clock: &Clock,
    records: &[RequestRecord],
    breach_ms: Option<f64>,
    end_ms: f64,
) -> DrillOutcome {
    let lab = |d: std::time::Duration| clock.lab_ms_of_unix(d.as_millis() as f64);
    let region = drill.spec.region.clone();
    let reads: Vec<&RequestRecord> = records
        .iter()
        .filter(|r| r.payment.is_none() && r.served_by.is_some())
        .collect();
    let measure = |from: f64, to: f64| -> (usize, Option<f64>) {
        let in_phase: Vec<&&RequestRecord> = reads
            .iter()
            .filter(|r| r.start_ms >= from && r.start_ms < to)
            .collect();
        let away = in_phase
            .iter()
            .filter(|r| r.served_by.as_deref() != Some(region.as_str()))
            .count();
        let n = in_phase.len();
        (n, (n > 0).then(|| away as f64 / n as f64))
    };
    let mut phases = Vec::new();
    let mut spans: Vec<(String, u8, f64, f64)> = drill
        .history
        .iter()
        .map(|r| {
            (
                r.phase.name().to_string(),
                r.share,
                lab(r.started_at),
                lab(r.ended_at),
            )
        })
        .collect();
    if !drill.phase.finished() {
        spans.push((
            drill.phase.name().to_string(),
            drill.share(),
            lab(drill.phase_since),
            end_ms,
        ));
    }
    for (phase, share, start, end) in spans {
        let (requests, measured) = measure(start + SETTLE_MS, end);
        // While a switchover moves the writer, a region's backends may
        // decline requests (503 with Retry-After) and the edges send them
        // to the next region: where reads went then is the retry's choice,
        // not the step's, so those phases are shown but not judged.
        let writer_moving = phase == "moving-writer" || phase == "returning-writer";
        let within = (requests >= MIN_PHASE_REQUESTS && !writer_moving).then(|| {
            measured.is_some_and(|m| (m - f64::from(share) / 100.0).abs() <= SHARE_TOLERANCE)
        });
        phases.push(PhaseShare {
            phase,
            share,
            start_ms: start,
            end_ms: end,
            requests,
            measured,
            within_tolerance: within,
        });
    }
    let (outcome, abort_reason) = match &drill.phase {
        Phase::Passed => ("passed".to_string(), None),
        Phase::Aborted { reason } => ("aborted".to_string(), Some(reason.clone())),
        other => (other.name().to_string(), None),
    };
    let finished_ms = drill
        .history
        .last()
        .filter(|_| drill.phase.finished())
        .map(|r| lab(r.ended_at));
    let aborted_ms = finished_ms.filter(|_| abort_reason.is_some());
    let failed_during_breach = breach_ms.map(|b| {
        let until = aborted_ms.map_or(end_ms, |a| a + SETTLE_MS);
        records
            .iter()
            .filter(|r| r.payment.is_none() && r.start_ms >= b && r.start_ms < until && !r.ok)
            .count()
    });
    let after_share = finished_ms.and_then(|f| measure(f + SETTLE_MS * 2.0, end_ms).1);
    DrillOutcome {
        id: drill.id,
        region,
        outcome,
        abort_reason,
        phases,
        breach_ms,
        aborted_ms,
        failed_during_breach,
        after_share,
    }
}

impl DrillOutcome {
    /// Every judged phase's share within [`SHARE_TOLERANCE`].
    pub fn shares_within_tolerance(&self) -> bool {
        self.phases
            .iter()
            .all(|p| p.within_tolerance != Some(false))
    }

    /// The terminal's drill section.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "drill               {} of {}: {}{}",
            self.id,
            self.region,
            self.outcome,
            self.abort_reason
                .as_ref()
                .map_or(String::new(), |r| format!(" ({r})"))
        );
        let _ = writeln!(
            out,
            "  phase             share   from      to  requests  served elsewhere (clients' records; within {:.0}%)",
            SHARE_TOLERANCE * 100.0
        );
        for p in &self.phases {
            let _ = writeln!(
                out,
                "  {:<16} {:>4}%  {:>6.1}s {:>6.1}s  {:>8}  {}",
                p.phase,
                p.share,
                p.start_ms / 1000.0,
                p.end_ms / 1000.0,
                p.requests,
                match (p.measured, p.within_tolerance) {
                    (Some(m), Some(ok)) =>
                        format!("{:.1}%{}", m * 100.0, if ok { "" } else { " (off)" }),
                    (Some(m), None) if p.phase.ends_with("-writer") =>
                        format!("{:.1}% (the writer moves: not judged)", m * 100.0),
                    (Some(m), None) => format!("{:.1}% (too few to judge)", m * 100.0),
                    (None, _) => "-".into(),
                }
            );
        }
        if let (Some(b), Some(f)) = (self.breach_ms, self.failed_during_breach) {
            let _ = writeln!(
                out,
                "  breach at {:.1}s; aborted {}; {f} client requests failed until routing was back (bound {BREACH_FAILURE_BOUND})",
                b / 1000.0,
                self.aborted_ms
                    .map_or("never".to_string(), |a| format!("{:.1}s after it", (a - b) / 1000.0)),
            );
        }
        if let Some(a) = self.after_share {
            let _ = writeln!(
                out,
                "  after the drill   {:.1}% of requests served elsewhere",
                a * 100.0
            );
        }
        out
    }
}
