//! Region evacuation drills, sans I/O: a [`Drill`] moves a growing share
//! of one region's traffic elsewhere in steps, holds each step while
//! guardrails are watched, holds the full evacuation, then brings the
//! traffic back; any guardrail breach (missing data included) aborts it.
//!
//! The leader feeds [`Drill::next`] the cluster time and what the edges
//! last reported ([`Reading`]) and commits the [`Decision`] it returns; the
//! committed drill is the only state, so a new leader resumes where the old
//! one stopped, unless the controllers were without a leader for longer
//! than [`Drill::blind_limit`] (then it aborts rather than continue on what
//! it did not watch). Practice in the way AWS's zonal autoshift runs its
//! weekly practice runs: shift, watch outcome alarms, end on a breach.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[drill]` in the configuration: what `tern drill start` uses where its
/// flags say nothing, when a drill may start, and how stale practice may
/// get.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillSettings {
    /// `tern status` warns when a region's last passed drill is older
    /// (default 30 days: "if your failover hasn't been tested in the last
    /// 30 days, it doesn't work").
    pub max_age: Duration,
    pub steps: Vec<u8>,
    pub hold: Duration,
    pub return_steps: Vec<u8>,
    pub switchover_at: Option<u8>,
    pub guardrails: Guardrails,
    /// When a drill may start (UTC); empty: any time.
    pub windows: Vec<DrillWindow>,
    /// Per service, the limits it sets itself (`[service.NAME.guardrails]`);
    /// each one it leaves out is the drill's ([`ServiceLimits::resolve`]).
    pub service_guardrails: BTreeMap<String, ServiceLimits>,
}

/// The guardrail limits one service sets itself; `None` takes the drill's.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ServiceLimits {
    pub max_error_rate: Option<f64>,
    pub max_p99: Option<Duration>,
    pub min_requests: Option<u64>,
}

impl ServiceLimits {
    /// The service's guardrails in a drill whose limits are `drill`: its
    /// own where it sets them, the drill's (flags included) elsewhere, and
    /// always the drill's window.
    pub fn resolve(&self, drill: &Guardrails) -> Guardrails {
        Guardrails {
            max_error_rate: self.max_error_rate.unwrap_or(drill.max_error_rate),
            max_p99: self.max_p99.unwrap_or(drill.max_p99),
            window: drill.window,
            min_requests: self.min_requests.unwrap_or(drill.min_requests),
        }
    }
}

impl Default for DrillSettings {
    /// 30 days; steps 1, 10, 50, 100 held 60 s; back at once; no
    /// switchover; [`Guardrails::default`]; any time.
    fn default() -> DrillSettings {
        DrillSettings {
            max_age: Duration::from_secs(30 * 24 * 3600),
            steps: vec![1, 10, 50, 100],
            hold: Duration::from_secs(60),
            return_steps: Vec::new(),
            switchover_at: None,
            guardrails: Guardrails::default(),
            windows: Vec::new(),
            service_guardrails: BTreeMap::new(),
        }
    }
}

impl DrillSettings {
    /// Whether a drill may start at `unix_ms`: inside one of the windows,
    /// or any time without windows.
    pub fn allows(&self, unix_ms: u64) -> bool {
        self.windows.is_empty() || self.windows.iter().any(|w| w.contains(unix_ms))
    }
}

/// A weekly time window in UTC: days of the week and a time of day range,
/// written `Mon-Fri 09:00-17:00`, `Sat 10:00-12:00` or `daily 00:00-24:00`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillWindow {
    /// Monday first.
    pub days: [bool; 7],
    /// Minutes after midnight UTC, `start < end <= 1440`.
    pub start: u16,
    pub end: u16,
    pub text: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl DrillWindow {
    /// Parses `DAYS HH:MM-HH:MM`; errors say what was expected.
    pub fn parse(text: &str) -> Result<DrillWindow, String> {
        let bad = || {
            format!(
                "expected a window like \"Mon-Fri 09:00-17:00\" (days, then a UTC time range), found \"{text}\""
            )
        };
        let (days_text, times) = text.trim().split_once(' ').ok_or_else(bad)?;
        let day = |d: &str| DAYS.iter().position(|x| d.eq_ignore_ascii_case(x));
        let mut days = [false; 7];
        if days_text.eq_ignore_ascii_case("daily") {
            days = [true; 7];
        } else {
            for part in days_text.split(',') {
                match part.split_once('-') {
                    Some((a, b)) => {
                        let (a, b) = (day(a).ok_or_else(bad)?, day(b).ok_or_else(bad)?);
                        let mut i = a;
                        loop {
                            days[i] = true;
                            if i == b {
                                break;
                            }
                            i = (i + 1) % 7;
                        }
                    }
                    None => days[day(part).ok_or_else(bad)?] = true,
                }
            }
        }
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
        };
        let (a, b) = times.trim().split_once('-').ok_or_else(bad)?;
        let (start, end) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start >= end {
            return Err(format!("the window \"{text}\" ends before it starts"));
        }
        Ok(DrillWindow {
            days,
            start,
            end,
            text: text.trim().to_string(),
        })
    }

    /// Whether `unix_ms` (UTC) falls inside.
    pub fn contains(&self, unix_ms: u64) -> bool {
        let minutes = unix_ms / 60_000;
        let day = minutes / 1440;
        // 1970-01-01 was a Thursday (index 3, Monday first).
        let weekday = ((day + 3) % 7) as usize;
        let minute = (minutes % 1440) as u16;
        self.days[weekday] && minute >= self.start && minute < self.end
    }
}

/// What the operator asked for (`tern drill start`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillSpec {
    /// The region evacuated.
    pub region: String,
    /// Evacuation shares in percent, rising, the last 100 (default
    /// 1, 10, 50, 100).
    pub steps: Vec<u8>,
    /// How long each step is held while the guardrails are watched.
    #[serde(with = "crate::units::serde_ms")]
    pub hold: Duration,
    /// Shares on the way back, falling, the last 0; empty: all at once.
    pub return_steps: Vec<u8>,
    /// Move the region's database writers away (a planned switchover)
    /// once the share reaches this, and back at the end.
    pub switchover_at: Option<u8>,
    /// The default limits, and the evaluation window of every service.
    pub guardrails: Guardrails,
    /// Per service, its own limits (`[service.NAME.guardrails]` in the
    /// leader's configuration, stamped in when the drill is committed so
    /// that every later leader judges the same); their `window` is unused.
    /// Services not named here are judged on `guardrails`.
    #[serde(default)]
    pub service_guardrails: BTreeMap<String, Guardrails>,
}

impl DrillSpec {
    /// The limits that apply to `service`'s requests.
    pub fn limits(&self, service: &str) -> &Guardrails {
        self.service_guardrails
            .get(service)
            .unwrap_or(&self.guardrails)
    }
}

/// Limits on what clients see during a drill, per client region, over the
/// edges' evaluation window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Guardrails {
    /// Largest share of failed requests (5xx or no answer), 0.0..=1.0.
    pub max_error_rate: f64,
    /// Largest p99 latency.
    #[serde(with = "crate::units::serde_ms")]
    pub max_p99: Duration,
    /// The evaluation window: each reading covers this much; a reading
    /// older than two windows counts as missing.
    #[serde(with = "crate::units::serde_ms")]
    pub window: Duration,
    /// Fewer requests than this in a window is too little to judge: it
    /// neither breaches nor counts as missing.
    pub min_requests: u64,
}

impl Eq for Guardrails {}

impl Default for Guardrails {
    /// 1% errors, 1 s p99, 5 s window, 20 requests.
    fn default() -> Guardrails {
        Guardrails {
            max_error_rate: 0.01,
            max_p99: Duration::from_secs(1),
            window: Duration::from_secs(5),
            min_requests: 20,
        }
    }
}

impl DrillSpec {
    /// Checks the shape: steps rising and ending at 100, return steps
    /// falling and ending at 0, a hold and window that are not zero.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() || self.steps.last() != Some(&100) {
            return Err("the steps must end at 100 (for example 1,10,50,100)".into());
        }
        if self.steps.windows(2).any(|w| w[0] >= w[1]) || self.steps[0] == 0 {
            return Err("the steps must rise from above 0 to 100".into());
        }
        if !self.return_steps.is_empty()
            && (self.return_steps.last() != Some(&0)
                || self.return_steps.windows(2).any(|w| w[0] <= w[1])
                || self.return_steps[0] >= 100)
        {
            return Err("the return steps must fall from below 100 to 0 (for example 50,0)".into());
        }
        if self.hold.is_zero() || self.guardrails.window.is_zero() {
            return Err("the hold and the guardrails' window must be longer than 0".into());
        }
        if !(0.0..=1.0).contains(&self.guardrails.max_error_rate) {
            return Err("the error-rate guardrail is a share between 0 and 1".into());
        }
        for (service, g) in &self.service_guardrails {
            if !(0.0..=1.0).contains(&g.max_error_rate) {
                return Err(format!(
                    "the error-rate guardrail of service {service} is a share between 0 and 1"
                ));
            }
        }
        if let Some(s) = self.switchover_at {
            if !self.steps.contains(&s) {
                return Err(format!("the switchover share {s} is not one of the steps"));
            }
        }
        Ok(())
    }
}

/// Where a drill is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Holding `steps[step]`.
    Evacuating {
        step: usize,
    },
    /// The writers move away (a switchover plan runs) at `steps[step]`.
    MovingWriter {
        step: usize,
    },
    /// Holding `return_steps[step]` (or 0 when there are none).
    Returning {
        step: usize,
    },
    /// Traffic is back; the writers move home.
    ReturningWriter,
    Passed,
    Aborted {
        reason: String,
    },
}

impl Phase {
    pub fn finished(&self) -> bool {
        matches!(self, Phase::Passed | Phase::Aborted { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Phase::Evacuating { .. } => "evacuating",
            Phase::MovingWriter { .. } => "moving-writer",
            Phase::Returning { .. } => "returning",
            Phase::ReturningWriter => "returning-writer",
            Phase::Passed => "passed",
            Phase::Aborted { .. } => "aborted",
        }
    }
}

/// One phase that ended, for the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    /// The region's evacuation share during it, percent.
    pub share: u8,
    #[serde(with = "crate::units::serde_ms")]
    pub started_at: Duration,
    #[serde(with = "crate::units::serde_ms")]
    pub ended_at: Duration,
    /// What the guardrails read at its end.
    pub evidence: Vec<String>,
    /// Per client region, what its clients saw over the phase.
    #[serde(default)]
    pub stats: BTreeMap<String, StepStats>,
}

/// A drill in the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drill {
    pub id: u64,
    pub spec: DrillSpec,
    pub phase: Phase,
    #[serde(with = "crate::units::serde_ms")]
    pub started_at: Duration,
    #[serde(with = "crate::units::serde_ms")]
    pub phase_since: Duration,
    /// The last time a leader committed anything of this drill (its
    /// heartbeat: see [`Drill::blind_limit`]).
    #[serde(with = "crate::units::serde_ms")]
    pub last_seen: Duration,
    /// Who started it.
    pub actor: String,
    pub history: Vec<PhaseRecord>,
    /// Per client region, the windows watched so far in this phase.
    #[serde(default)]
    pub tally: BTreeMap<String, StepStats>,
}

/// Requests of one service over one window, as the edges of one client
/// region saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceStats {
    pub requests: u64,
    /// Answered 5xx, or not at all.
    pub errors: u64,
    /// Median and 99th percentile of the time to response headers (upper
    /// bounds of the edges' histogram buckets; several edges: the largest).
    #[serde(with = "crate::units::serde_ms")]
    pub p50: Duration,
    #[serde(with = "crate::units::serde_ms")]
    pub p99: Duration,
}

impl ServiceStats {
    /// Adds `other`'s requests and errors, keeping the larger percentiles
    /// (several edges, or several services, as one).
    pub fn add(&mut self, other: &ServiceStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.p50 = self.p50.max(other.p50);
        self.p99 = self.p99.max(other.p99);
    }
}

/// What the edges last said about one client region's requests.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    #[serde(with = "crate::units::serde_ms", default)]
    pub p50: Duration,
    #[serde(with = "crate::units::serde_ms")]
    pub p99: Duration,
    /// How old the reading is.
    #[serde(with = "crate::units::serde_ms")]
    pub age: Duration,
    /// The same figures per service; empty from an edge that does not
    /// break them down (then the totals are judged on the drill's limits).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceStats>,
}

/// What clients of one region saw over a whole phase: the sums of the
/// windows the leader watched during it, and the worst window's
/// percentiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepStats {
    /// Evaluation windows summed.
    pub windows: u32,
    pub requests: u64,
    pub errors: u64,
    /// The largest p50 and p99 of those windows.
    #[serde(with = "crate::units::serde_ms")]
    pub p50: Duration,
    #[serde(with = "crate::units::serde_ms")]
    pub p99: Duration,
}

impl StepStats {
    /// Adds one window's figures.
    pub fn add(&mut self, w: &WindowStats) {
        self.windows += 1;
        self.requests += w.requests;
        self.errors += w.errors;
        self.p50 = self.p50.max(w.p50);
        self.p99 = self.p99.max(w.p99);
    }

    /// Failed requests as a share of all, 0.0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The guardrails' inputs at one tick: per client region, the latest
/// window, or `None` when no edge of that region reported.
pub type Reading = BTreeMap<String, Option<WindowStats>>;

/// Where the evacuated region's database writers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// Every cluster with a node in the region has its writer there (or
    /// the region holds no writer to move): nothing moves.
    Home,
    /// Every writer of the region's clusters is elsewhere, no plan runs.
    Away,
    /// A plan is moving a writer now.
    Moving,
    /// The region has no database node: nothing to move.
    None,
}

/// What the leader commits next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing yet.
    Wait,
    /// Enter `phase` (with the evidence that justified leaving the last).
    Advance { phase: Phase, evidence: Vec<String> },
    /// A guardrail breached, or the drill cannot go on: restore routing.
    Abort { reason: String },
    /// Start a planned switchover of the region's writers (to elsewhere
    /// when `away`, home otherwise); the leader advances once the writers
    /// are where they should be.
    MoveWriters { away: bool },
}

impl Drill {
    pub fn new(id: u64, spec: DrillSpec, actor: String, now: Duration) -> Drill {
        Drill {
            id,
            spec,
            phase: Phase::Evacuating { step: 0 },
            started_at: now,
            phase_since: now,
            last_seen: now,
            actor,
            history: Vec::new(),
            tally: BTreeMap::new(),
        }
    }

    /// The leader watched one window at `now`: the drill's heartbeat, and
    /// the window's figures added to the phase's tally.
    pub fn watch(&mut self, window: &BTreeMap<String, WindowStats>, now: Duration) {
        for (region, w) in window {
            self.tally.entry(region.clone()).or_default().add(w);
        }
        self.last_seen = now;
    }

    /// The evacuated region's share of traffic that goes elsewhere now,
    /// percent.
    pub fn share(&self) -> u8 {
        match &self.phase {
            Phase::Evacuating { step } | Phase::MovingWriter { step } => self.spec.steps[*step],
            Phase::Returning { step } => self.spec.return_steps.get(*step).copied().unwrap_or(0),
            Phase::ReturningWriter | Phase::Passed | Phase::Aborted { .. } => 0,
        }
    }

    /// How long the controllers may go without committing anything of a
    /// running drill before a new leader aborts it instead of resuming: two
    /// guardrail windows (after that, nobody watched what clients saw).
    pub fn blind_limit(&self) -> Duration {
        self.spec.guardrails.window * 2
    }

    /// Judges the guardrails: the first breach, if any. A region with no
    /// reading, or one older than two windows, is a breach (missing data).
    pub fn breach(&self, reading: &Reading) -> Option<String> {
        self.breach_at(self.last_seen + self.spec.guardrails.window, reading)
    }

    /// [`Drill::breach`] at `now`: in the drill's first window the edges
    /// are still learning of it, so missing data is not yet a breach.
    pub fn breach_at(&self, now: Duration, reading: &Reading) -> Option<String> {
        let g = &self.spec.guardrails;
        let learning = now < self.started_at + g.window;
        for (region, stats) in reading {
            let fresh = stats.as_ref().filter(|s| s.age <= g.window * 2);
            if fresh.is_none() && learning {
                continue;
            }
            let Some(s) = fresh else {
                return Some(format!(
                    "no fresh guardrail data from the edges of {region} (missing data counts as a breach)"
                ));
            };
            if s.services.is_empty() {
                let total = ServiceStats {
                    requests: s.requests,
                    errors: s.errors,
                    p50: s.p50,
                    p99: s.p99,
                };
                if let Some(b) = judge(&total, g, &format!("clients in {region}")) {
                    return Some(b);
                }
                continue;
            }
            // Each service on its own limits; then every service without
            // limits of its own together on the drill's, so that many
            // services each too small to judge alone are still watched.
            let mut pool = ServiceStats::default();
            for (service, st) in &s.services {
                let who = format!("{service} for clients in {region}");
                if let Some(b) = judge(st, self.spec.limits(service), &who) {
                    return Some(b);
                }
                if !self.spec.service_guardrails.contains_key(service) {
                    pool.add(st);
                }
            }
            if let Some(b) = judge(&pool, g, &format!("clients in {region}")) {
                return Some(b);
            }
        }
        None
    }

    /// What to do at `now`, given the guardrails' `reading` and where the
    /// region's database writers are.
    pub fn next(&self, now: Duration, reading: &Reading, writers: Writers) -> Decision {
        if self.phase.finished() {
            return Decision::Wait;
        }
        // While the writers move (a planned switchover pauses writes for a
        // moment, under the plan's own gate and step timeouts), and for two
        // windows after (the windows still hold that pause), the guardrails
        // are not judged.
        let writer_moving = matches!(
            self.phase,
            Phase::MovingWriter { .. } | Phase::ReturningWriter
        );
        let after_move = self.history.last().is_some_and(|r| {
            matches!(r.phase, Phase::MovingWriter { .. })
                && now < self.phase_since + self.spec.guardrails.window * 2
        });
        if !writer_moving && !after_move {
            if let Some(reason) = self.breach_at(now, reading) {
                return Decision::Abort { reason };
            }
        }
        let held = now.saturating_sub(self.phase_since);
        let evidence = || summarize(reading);
        match &self.phase {
            Phase::Evacuating { step } if held >= self.spec.hold => {
                let step = *step;
                if Some(self.spec.steps[step]) == self.spec.switchover_at
                    && matches!(writers, Writers::Home | Writers::Moving)
                {
                    return Decision::Advance {
                        phase: Phase::MovingWriter { step },
                        evidence: evidence(),
                    };
                }
                let phase = if step + 1 < self.spec.steps.len() {
                    Phase::Evacuating { step: step + 1 }
                } else {
                    Phase::Returning { step: 0 }
                };
                Decision::Advance {
                    phase,
                    evidence: evidence(),
                }
            }
            Phase::MovingWriter { step } => match writers {
                // The step is held again, now with the writers away.
                Writers::Away | Writers::None => Decision::Advance {
                    phase: Phase::Evacuating { step: *step },
                    evidence: evidence(),
                },
                Writers::Home => Decision::MoveWriters { away: true },
                Writers::Moving => Decision::Wait,
            },
            Phase::Returning { step } if held >= self.spec.hold || self.share() == 0 => {
                let last = self.spec.return_steps.len().saturating_sub(1);
                if *step < last {
                    return Decision::Advance {
                        phase: Phase::Returning { step: step + 1 },
                        evidence: evidence(),
                    };
                }
                if self.spec.switchover_at.is_some() {
                    Decision::Advance {
                        phase: Phase::ReturningWriter,
                        evidence: evidence(),
                    }
                } else {
                    Decision::Advance {
                        phase: Phase::Passed,
                        evidence: evidence(),
                    }
                }
            }
            Phase::ReturningWriter => match writers {
                Writers::Away => Decision::MoveWriters { away: false },
                Writers::Home | Writers::None => Decision::Advance {
                    phase: Phase::Passed,
                    evidence: evidence(),
                },
                Writers::Moving => Decision::Wait,
            },
            _ => Decision::Wait,
        }
    }

    /// Enters `phase` at `now`, recording the one that ended.
    pub fn advance(&mut self, phase: Phase, evidence: Vec<String>, now: Duration) {
        self.history.push(PhaseRecord {
            phase: self.phase.clone(),
            share: self.share(),
            started_at: self.phase_since,
            ended_at: now,
            evidence,
            stats: std::mem::take(&mut self.tally),
        });
        self.phase = phase;
        self.phase_since = now;
        self.last_seen = now;
    }

    /// A leader took over at `now`: resume, or abort when nobody committed
    /// anything of the drill for longer than [`Drill::blind_limit`].
    pub fn on_leader_change(&self, now: Duration) -> Option<String> {
        let blind = now.saturating_sub(self.last_seen);
        (!self.phase.finished() && blind > self.blind_limit()).then(|| {
            format!(
                "the controllers went {} ms without a leader during the drill (limit {} ms): nobody watched the guardrails",
                blind.as_millis(),
                self.blind_limit().as_millis()
            )
        })
    }
}

/// The first limit `s` breaks, said of `who`; too few requests break none.
fn judge(s: &ServiceStats, g: &Guardrails, who: &str) -> Option<String> {
    if s.requests < g.min_requests {
        return None;
    }
    let rate = s.errors as f64 / s.requests as f64;
    if rate > g.max_error_rate {
        return Some(format!(
            "error rate of {who} {:.1}% over {:.1}% ({} of {} requests)",
            rate * 100.0,
            g.max_error_rate * 100.0,
            s.errors,
            s.requests
        ));
    }
    if s.p99 > g.max_p99 {
        return Some(format!(
            "p99 latency of {who} {} ms over {} ms",
            s.p99.as_millis(),
            g.max_p99.as_millis()
        ));
    }
    None
}

/// One line per client region of what the guardrails read (the evidence
/// of a phase, and of a watch entry).
pub fn summarize(reading: &Reading) -> Vec<String> {
    reading
        .iter()
        .map(|(region, s)| match s {
            Some(s) => format!(
                "clients in {region}: {} requests, {} failed, p50 {} ms, p99 {} ms",
                s.requests,
                s.errors,
                s.p50.as_millis(),
                s.p99.as_millis()
            ),
            None => format!("clients in {region}: no data"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn spec() -> DrillSpec {
        DrillSpec {
            service_guardrails: Default::default(),
            region: "us-east".into(),
            steps: vec![10, 50, 100],
            hold: s(10),
            return_steps: vec![],
            switchover_at: None,
            guardrails: Guardrails::default(),
        }
    }

    fn good() -> Reading {
        let w = WindowStats {
            requests: 1000,
            errors: 0,
            p99: Duration::from_millis(80),
            age: s(1),
            ..Default::default()
        };
        [
            ("us-east".to_string(), Some(w.clone())),
            ("us-west".to_string(), Some(w)),
        ]
        .into()
    }

    /// Runs the drill on `reading` every second until it finishes or 600 s pass.
    fn run(mut d: Drill, reading: impl Fn(Duration, &Drill) -> Reading) -> (Drill, Vec<u8>) {
        let mut shares = vec![d.share()];
        // A move takes two ticks: moving, then there.
        let mut writers = Writers::Home;
        let mut moving: Option<(Writers, u64)> = None;
        for t in 1..600 {
            let now = s(t);
            if let Some((to, at)) = moving {
                if t >= at {
                    writers = to;
                    moving = None;
                }
            }
            match d.next(now, &reading(now, &d), writers) {
                Decision::Wait => {}
                Decision::Advance { phase, evidence } => {
                    d.advance(phase, evidence, now);
                    shares.push(d.share());
                }
                Decision::Abort { reason } => {
                    d.advance(Phase::Aborted { reason }, vec![], now);
                    shares.push(d.share());
                }
                Decision::MoveWriters { away } => {
                    writers = Writers::Moving;
                    let to = if away { Writers::Away } else { Writers::Home };
                    moving = Some((to, t + 2));
                }
            }
            if d.phase.finished() {
                break;
            }
        }
        (d, shares)
    }

    #[test]
    fn a_drill_steps_up_holds_each_step_and_returns_at_once() {
        let (d, shares) = run(Drill::new(1, spec(), "op".into(), s(0)), |_, _| good());
        assert_eq!(d.phase, Phase::Passed);
        assert_eq!(shares, [10, 50, 100, 0, 0]);
        // Each step held for the hold.
        let evac: Vec<_> = d.history.iter().filter(|r| r.share > 0).collect();
        assert!(
            evac.iter().all(|r| r.ended_at - r.started_at == s(10)),
            "{evac:#?}"
        );
    }

    #[test]
    fn return_steps_are_held_too() {
        let mut sp = spec();
        sp.return_steps = vec![50, 0];
        let (d, shares) = run(Drill::new(1, sp, "op".into(), s(0)), |_, _| good());
        assert_eq!(d.phase, Phase::Passed);
        assert_eq!(shares, [10, 50, 100, 50, 0, 0]);
    }

    #[test]
    fn a_breach_aborts_at_once_and_says_which_guardrail() {
        let (d, shares) = run(Drill::new(1, spec(), "op".into(), s(0)), |now, _| {
            let mut r = good();
            if now >= s(15) {
                r.insert(
                    "us-west".into(),
                    Some(WindowStats {
                        requests: 200,
                        errors: 10,
                        p99: Duration::from_millis(90),
                        age: s(1),
                        ..Default::default()
                    }),
                );
            }
            r
        });
        let Phase::Aborted { reason } = &d.phase else {
            panic!("{:?}", d.phase)
        };
        assert!(
            reason.contains("error rate of clients in us-west 5.0% over 1.0%"),
            "{reason}"
        );
        assert_eq!(d.history.last().unwrap().ended_at, s(15));
        assert_eq!(*shares.last().unwrap(), 0, "routing restored");
    }

    #[test]
    fn latency_over_the_guardrail_aborts() {
        let d = Drill::new(1, spec(), "op".into(), s(0));
        let mut r = good();
        r.insert(
            "us-east".into(),
            Some(WindowStats {
                requests: 100,
                errors: 0,
                p99: Duration::from_millis(1500),
                age: s(1),
                ..Default::default()
            }),
        );
        let Decision::Abort { reason } = d.next(s(1), &r, Writers::Home) else {
            panic!()
        };
        assert!(reason.contains("p99 latency of clients in us-east 1500 ms over 1000 ms"));
    }

    #[test]
    fn missing_or_stale_data_is_a_breach_and_too_few_requests_is_not() {
        let d = Drill::new(1, spec(), "op".into(), s(0));
        let mut r = good();
        r.insert("us-west".into(), None);
        // In the first window the edges are still learning of the drill.
        assert_eq!(d.next(s(1), &r, Writers::Home), Decision::Wait);
        assert!(
            matches!(d.next(s(6), &r, Writers::Home), Decision::Abort { reason } if reason.contains("missing data"))
        );
        let mut r = good();
        r.get_mut("us-west").unwrap().as_mut().unwrap().age = s(11);
        assert!(matches!(
            d.next(s(6), &r, Writers::Home),
            Decision::Abort { .. }
        ));
        let mut r = good();
        *r.get_mut("us-west").unwrap() = Some(WindowStats {
            requests: 5,
            errors: 5,
            p99: s(9),
            age: s(1),
            ..Default::default()
        });
        assert_eq!(d.next(s(1), &r, Writers::Home), Decision::Wait);
    }

    #[test]
    fn the_writers_move_away_at_the_named_step_and_home_at_the_end() {
        let mut sp = spec();
        sp.switchover_at = Some(50);
        let (d, _) = run(Drill::new(1, sp, "op".into(), s(0)), |_, _| good());
        assert_eq!(d.phase, Phase::Passed);
        let names: Vec<&str> = d.history.iter().map(|r| r.phase.name()).collect();
        assert_eq!(
            names,
            [
                "evacuating",
                "evacuating",
                "moving-writer",
                "evacuating",
                "evacuating",
                "returning",
                "returning-writer"
            ]
        );
    }

    #[test]
    fn the_guardrails_rest_while_the_writer_moves_and_two_windows_after() {
        let mut sp = spec();
        sp.switchover_at = Some(10);
        let mut d = Drill::new(1, sp, "op".into(), s(0));
        d.advance(Phase::MovingWriter { step: 0 }, vec![], s(10));
        let mut bad = good();
        bad.get_mut("us-west").unwrap().as_mut().unwrap().errors = 500;
        assert_eq!(
            d.next(s(11), &bad, Writers::Home),
            Decision::MoveWriters { away: true }
        );
        assert_eq!(d.next(s(12), &bad, Writers::Moving), Decision::Wait);
        d.advance(Phase::Evacuating { step: 0 }, vec![], s(14));
        assert!(!matches!(
            d.next(s(20), &bad, Writers::Away),
            Decision::Abort { .. }
        ));
        assert!(matches!(
            d.next(s(25), &bad, Writers::Away),
            Decision::Abort { .. }
        ));
    }

    #[test]
    fn a_new_leader_resumes_unless_nobody_watched_for_two_windows() {
        let mut d = Drill::new(1, spec(), "op".into(), s(0));
        d.advance(Phase::Evacuating { step: 1 }, vec![], s(10));
        assert_eq!(d.on_leader_change(s(15)), None);
        let reason = d.on_leader_change(s(21)).unwrap();
        assert!(reason.contains("11000 ms without a leader"), "{reason}");
        d.advance(Phase::Passed, vec![], s(30));
        assert_eq!(
            d.on_leader_change(s(99)),
            None,
            "a finished drill stays finished"
        );
    }

    #[test]
    fn windows_parse_and_contain_their_minutes_in_utc() {
        let w = DrillWindow::parse("Mon-Fri 09:00-17:00").unwrap();
        // 2026-12-07 is a Monday; 10:00 UTC.
        let monday_10 = 1_796_637_600_000;
        assert!(w.contains(monday_10));
        assert!(!w.contains(monday_10 - 2 * 3_600_000), "08:00");
        assert!(!w.contains(monday_10 - 2 * 86_400_000), "Saturday");
        let w = DrillWindow::parse("Sat,Sun 00:00-24:00").unwrap();
        assert!(w.contains(monday_10 - 2 * 86_400_000));
        let w = DrillWindow::parse("Fri-Mon 22:00-23:00").unwrap();
        assert_eq!(w.days, [true, false, false, false, true, true, true]);
        assert!(DrillWindow::parse("Mon 17:00-09:00")
            .unwrap_err()
            .contains("ends before"));
        assert!(DrillWindow::parse("someday 1-2")
            .unwrap_err()
            .contains("expected a window"));
        let s = DrillSettings::default();
        assert!(s.allows(0), "no windows: any time");
    }

    #[test]
    fn specs_that_make_no_sense_are_refused() {
        let bad = |f: fn(&mut DrillSpec)| {
            let mut sp = spec();
            f(&mut sp);
            sp.validate().unwrap_err()
        };
        assert!(bad(|s| s.steps = vec![10, 50]).contains("end at 100"));
        assert!(bad(|s| s.steps = vec![50, 10, 100]).contains("rise"));
        assert!(bad(|s| s.return_steps = vec![0, 50]).contains("fall"));
        assert!(bad(|s| s.hold = Duration::ZERO).contains("longer than 0"));
        assert!(bad(|s| s.switchover_at = Some(30)).contains("not one of the steps"));
        assert_eq!(spec().validate(), Ok(()));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn each_service_is_judged_on_its_own_guardrails() {
        let mut sp = spec();
        let own = ServiceLimits {
            max_p99: Some(s(5)),
            ..ServiceLimits::default()
        };
        sp.service_guardrails
            .insert("batch".into(), own.resolve(&sp.guardrails));
        let d = Drill::new(1, sp, "op".into(), s(0));
        let svc = |p99, errors| ServiceStats {
            requests: 100,
            errors,
            p50: ms(10),
            p99: ms(p99),
        };
        let mut r = good();
        let set = |r: &mut Reading, name: &str, st: ServiceStats| {
            let w = r.get_mut("us-west").unwrap().as_mut().unwrap();
            w.services.insert(name.into(), st);
        };
        set(&mut r, "api", svc(80, 0));
        set(&mut r, "batch", svc(3000, 0));
        // batch's 3 s p99 is within its own 5 s limit, over the default 1 s.
        assert_eq!(d.next(s(1), &r, Writers::Home), Decision::Wait);
        // api is judged on the default.
        set(&mut r, "api", svc(1500, 0));
        let Decision::Abort { reason } = d.next(s(1), &r, Writers::Home) else {
            panic!()
        };
        assert!(
            reason.contains("p99 latency of api for clients in us-west 1500 ms over 1000 ms"),
            "{reason}"
        );
        // batch's own limit keeps the default error rate (1%).
        set(&mut r, "api", svc(80, 0));
        set(&mut r, "batch", svc(100, 2));
        let Decision::Abort { reason } = d.next(s(1), &r, Writers::Home) else {
            panic!()
        };
        assert!(
            reason.contains("error rate of batch for clients in us-west 2.0% over 1.0%"),
            "{reason}"
        );
    }

    #[test]
    fn each_phase_keeps_what_clients_saw_over_it() {
        let mut d = Drill::new(1, spec(), "op".into(), s(0));
        let w = |requests, errors, p50, p99| WindowStats {
            requests,
            errors,
            p50: ms(p50),
            p99: ms(p99),
            ..Default::default()
        };
        d.watch(&[("us-west".to_string(), w(100, 1, 10, 90))].into(), s(5));
        d.watch(&[("us-west".to_string(), w(300, 0, 30, 40))].into(), s(10));
        d.advance(Phase::Evacuating { step: 1 }, vec![], s(10));
        let st = d.history[0].stats["us-west"];
        assert_eq!((st.windows, st.requests, st.errors), (2, 400, 1));
        assert_eq!((st.p50, st.p99), (ms(30), ms(90)), "the worst window's");
        assert!((st.error_rate() - 0.0025).abs() < 1e-9);
        assert!(d.tally.is_empty(), "the next phase starts from nothing");
        assert_eq!(d.last_seen, s(10));
    }

    /// Broke: once edges broke their figures down per service, only each
    /// service alone was judged, so services each under `min_requests`
    /// failing together never breached.
    #[test]
    fn many_small_services_failing_together_breach() {
        let d = Drill::new(1, spec(), "op".into(), s(0));
        let mut r = good();
        let w = r.get_mut("us-west").unwrap().as_mut().unwrap();
        for name in ["a", "b", "c", "d", "e"] {
            // 10 requests each: too few alone (min 20), all failed.
            w.services.insert(
                name.into(),
                ServiceStats {
                    requests: 10,
                    errors: 10,
                    p50: ms(1),
                    p99: ms(2),
                },
            );
        }
        let Decision::Abort { reason } = d.next(s(1), &r, Writers::Home) else {
            panic!("five services failing every request went unjudged")
        };
        assert!(
            reason
                .contains("error rate of clients in us-west 100.0% over 1.0% (50 of 50 requests)"),
            "{reason}"
        );
    }

    #[test]
    fn a_services_own_limits_fill_in_from_the_drills_including_the_operators_flags() {
        let own = ServiceLimits {
            max_p99: Some(s(5)),
            ..ServiceLimits::default()
        };
        let strict = Guardrails {
            max_error_rate: 0.001,
            ..Guardrails::default()
        };
        let g = own.resolve(&strict);
        assert_eq!(g.max_p99, s(5));
        assert_eq!(g.max_error_rate, 0.001, "the flag's stricter rate");
        let mut sp = spec();
        sp.service_guardrails.insert(
            "x".into(),
            Guardrails {
                max_error_rate: 5.0,
                ..Guardrails::default()
            },
        );
        assert!(sp.validate().unwrap_err().contains("service x"));
    }
}
