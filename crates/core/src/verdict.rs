//! Multi-vantage verdicts: is a target (a region or a backend) up, degraded
//! or down, as seen from several places at once (DESIGN.md invariant 4).
//!
//! Every vantage point (each region's agent) reports probe results. A target
//! is declared down only when a majority of the configured vantage points
//! each saw `fall` consecutive failures, and up again only when a majority
//! each saw `rise` consecutive successes and that majority held for the
//! hold-down time. A vantage point whose last report is older than
//! `stale_after` has no vote, so a partitioned observer can neither condemn
//! nor rescue a target. A target that answers, but slower than the optional
//! latency threshold for a majority, is degraded: traffic moves away without
//! declaring it down.
//!
//! [`VerdictEngine`] is sans-IO: observations and the time go in, a
//! [`Decision`] with its evidence comes out (DESIGN.md invariant 7).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::HealthState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Verdict {
    Up,
    Degraded,
    Down,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Up => "up",
            Verdict::Degraded => "degraded",
            Verdict::Down => "down",
        }
    }

    /// Whether traffic may be sent there at all.
    pub fn serves(self) -> bool {
        self != Verdict::Down
    }
}

impl From<HealthState> for Verdict {
    fn from(h: HealthState) -> Verdict {
        match h {
            HealthState::Up => Verdict::Up,
            HealthState::Down => Verdict::Down,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictSettings {
    pub fall: u32,
    pub rise: u32,
    /// How long a majority must keep seeing a down target up before it returns.
    #[serde(with = "crate::units::serde_ms")]
    pub hold_down: Duration,
    /// Answers slower than this count as slow; `None` disables degraded verdicts.
    #[serde(with = "crate::units::serde_ms::option")]
    pub degraded_latency: Option<Duration>,
    /// Reports older than this carry no vote.
    #[serde(with = "crate::units::serde_ms")]
    pub stale_after: Duration,
}

/// One probe result from one vantage point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub vantage: String,
    pub target: String,
    pub ok: bool,
    /// Round trip of a successful probe.
    #[serde(with = "crate::units::serde_ms::option")]
    pub latency: Option<Duration>,
    #[serde(with = "crate::units::serde_ms")]
    pub at: Duration,
}

/// What one vantage point had seen when a decision was taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VantageEvidence {
    pub vantage: String,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub consecutive_slow: u32,
    #[serde(with = "crate::units::serde_ms::option")]
    pub last_latency: Option<Duration>,
    #[serde(with = "crate::units::serde_ms")]
    pub last_report: Duration,
    /// False when the report was too old to vote.
    pub fresh: bool,
}

/// A verdict change, with the observations that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub target: String,
    pub from: Verdict,
    pub to: Verdict,
    #[serde(with = "crate::units::serde_ms")]
    pub at: Duration,
    pub evidence: Vec<VantageEvidence>,
}

#[derive(Debug, Clone, Default)]
struct VantageState {
    consecutive_failures: u32,
    consecutive_successes: u32,
    consecutive_slow: u32,
    consecutive_fast: u32,
    last_latency: Option<Duration>,
    last_report: Duration,
}

#[derive(Debug, Clone)]
struct TargetState {
    verdict: Verdict,
    since: Duration,
    /// When a majority started seeing a down target healthy again.
    recovering_since: Option<Duration>,
    vantages: BTreeMap<String, VantageState>,
}

#[derive(Debug, Clone)]
pub struct VerdictEngine {
    settings: VerdictSettings,
    /// The configured vantage points; the majority is of these, reporting or not.
    vantages: Vec<String>,
    targets: BTreeMap<String, TargetState>,
}

impl VerdictEngine {
    /// Targets start `Up` as of `now`, like the edge's own health checks.
    pub fn new(
        settings: VerdictSettings,
        vantages: Vec<String>,
        targets: &[String],
        now: Duration,
    ) -> VerdictEngine {
        let targets = targets
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    TargetState {
                        verdict: Verdict::Up,
                        since: now,
                        recovering_since: None,
                        vantages: BTreeMap::new(),
                    },
                )
            })
            .collect();
        VerdictEngine {
            settings: VerdictSettings {
                fall: settings.fall.max(1),
                rise: settings.rise.max(1),
                ..settings
            },
            vantages,
            targets,
        }
    }

    /// Sets a target's verdict without a decision: a new controller leader
    /// starts its engine from the committed verdicts.
    pub fn seed(&mut self, target: &str, verdict: Verdict, now: Duration) {
        if let Some(t) = self.targets.get_mut(target) {
            if t.verdict != verdict {
                t.verdict = verdict;
                t.since = now;
                t.recovering_since = None;
            }
        }
    }

    pub fn majority(&self) -> usize {
        self.vantages.len() / 2 + 1
    }

    pub fn verdict(&self, target: &str) -> Option<Verdict> {
        self.targets.get(target).map(|t| t.verdict)
    }

    pub fn since(&self, target: &str) -> Option<Duration> {
        self.targets.get(target).map(|t| t.since)
    }

    /// Records one observation and returns the decision it causes, if any.
    /// Observations from unknown vantage points or about unknown targets are
    /// ignored: they carry no vote.
    pub fn observe(&mut self, obs: &Observation) -> Option<Decision> {
        if !self.vantages.contains(&obs.vantage) {
            return None;
        }
        let settings = self.settings;
        let target = self.targets.get_mut(&obs.target)?;
        let v = target.vantages.entry(obs.vantage.clone()).or_default();
        // A report older than the last one from the same vantage changes nothing.
        if obs.at < v.last_report {
            return None;
        }
        v.last_report = obs.at;
        if obs.ok {
            v.consecutive_successes = v.consecutive_successes.saturating_add(1);
            v.consecutive_failures = 0;
            v.last_latency = obs.latency;
            let slow = match (settings.degraded_latency, obs.latency) {
                (Some(limit), Some(l)) => l > limit,
                _ => false,
            };
            if slow {
                v.consecutive_slow = v.consecutive_slow.saturating_add(1);
                v.consecutive_fast = 0;
            } else {
                v.consecutive_fast = v.consecutive_fast.saturating_add(1);
                v.consecutive_slow = 0;
            }
        } else {
            v.consecutive_failures = v.consecutive_failures.saturating_add(1);
            v.consecutive_successes = 0;
        }
        let name = obs.target.clone();
        self.evaluate(&name, obs.at)
    }

    /// Advances time without an observation: ends hold-downs that have run
    /// their course. Returns the decisions taken.
    pub fn tick(&mut self, now: Duration) -> Vec<Decision> {
        let names: Vec<String> = self.targets.keys().cloned().collect();
        names
            .into_iter()
            .filter_map(|t| self.evaluate(&t, now))
            .collect()
    }

    fn evaluate(&mut self, name: &str, now: Duration) -> Option<Decision> {
        let s = self.settings;
        let majority = self.majority();
        let target = self.targets.get_mut(name)?;
        let fresh = |v: &VantageState| now.saturating_sub(v.last_report) <= s.stale_after;
        let count = |f: &dyn Fn(&VantageState) -> bool| {
            target
                .vantages
                .values()
                .filter(|v| fresh(v) && f(v))
                .count()
        };
        let sees_down = count(&|v| v.consecutive_failures >= s.fall);
        let sees_up = count(&|v| v.consecutive_successes >= s.rise);
        let sees_slow = count(&|v| v.consecutive_successes > 0 && v.consecutive_slow >= s.fall);
        let sees_fast = count(&|v| v.consecutive_successes > 0 && v.consecutive_fast >= s.rise);

        let next = match target.verdict {
            Verdict::Up | Verdict::Degraded if sees_down >= majority => Verdict::Down,
            Verdict::Up if s.degraded_latency.is_some() && sees_slow >= majority => {
                Verdict::Degraded
            }
            Verdict::Degraded if sees_fast >= majority => Verdict::Up,
            Verdict::Down => {
                if sees_up >= majority {
                    let started = *target.recovering_since.get_or_insert(now);
                    if now.saturating_sub(started) >= s.hold_down {
                        if s.degraded_latency.is_some() && sees_slow >= majority {
                            Verdict::Degraded
                        } else {
                            Verdict::Up
                        }
                    } else {
                        Verdict::Down
                    }
                } else {
                    target.recovering_since = None;
                    Verdict::Down
                }
            }
            v => v,
        };
        if next == target.verdict {
            return None;
        }
        let evidence = target
            .vantages
            .iter()
            .map(|(name, v)| VantageEvidence {
                vantage: name.clone(),
                consecutive_failures: v.consecutive_failures,
                consecutive_successes: v.consecutive_successes,
                consecutive_slow: v.consecutive_slow,
                last_latency: v.last_latency,
                last_report: v.last_report,
                fresh: fresh(v),
            })
            .collect();
        let decision = Decision {
            target: name.to_string(),
            from: target.verdict,
            to: next,
            at: now,
            evidence,
        };
        target.verdict = next;
        target.since = now;
        target.recovering_since = None;
        Some(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> VerdictSettings {
        VerdictSettings {
            fall: 3,
            rise: 3,
            hold_down: Duration::from_secs(5),
            degraded_latency: Some(Duration::from_millis(200)),
            stale_after: Duration::from_secs(3),
        }
    }

    fn engine() -> VerdictEngine {
        VerdictEngine::new(
            settings(),
            vec!["a".into(), "b".into(), "w".into()],
            &["east".to_string()],
            Duration::ZERO,
        )
    }

    /// Feeds one round per second: each character is one vantage's report
    /// in order a, b, w: '.' ok, 'x' failed, 's' ok but slow, '-' no report.
    /// Returns the verdict after each round as U, G (degraded) or D.
    fn run(rounds: &[&str]) -> String {
        let mut e = engine();
        let mut out = String::new();
        for (i, round) in rounds.iter().enumerate() {
            let at = Duration::from_secs(i as u64 + 1);
            for (vantage, c) in ["a", "b", "w"].iter().zip(round.chars()) {
                if c == '-' {
                    continue;
                }
                e.observe(&Observation {
                    vantage: vantage.to_string(),
                    target: "east".into(),
                    ok: c != 'x',
                    latency: Some(Duration::from_millis(if c == 's' { 500 } else { 20 })),
                    at,
                });
            }
            e.tick(at);
            out.push(match e.verdict("east").unwrap() {
                Verdict::Up => 'U',
                Verdict::Degraded => 'G',
                Verdict::Down => 'D',
            });
        }
        out
    }

    #[test]
    fn verdict_table() {
        let table: &[(&str, &[&str], &str)] = &[
            (
                "one failed probe moves nothing",
                &["x..", "...", "..."],
                "UUU",
            ),
            (
                "one vantage failing alone moves nothing",
                &["x..", "x..", "x..", "x..", "x.."],
                "UUUUU",
            ),
            (
                "a majority failing fall times declares down",
                &["xx.", "xx.", "xx.", "xx."],
                "UUDD",
            ),
            (
                "alternating failures never reach fall",
                &["xxx", "...", "xxx", "...", "xxx", "..."],
                "UUUUUU",
            ),
            (
                "return needs rise successes plus the hold-down",
                &[
                    "xxx", "xxx", "xxx", "...", "...", "...", "...", "...", "...", "...", "...",
                    "...",
                ],
                // Down at 3; majority healthy again from round 6; hold-down 5 s ends at 11.
                "UUDDDDDDDDUU",
            ),
            (
                "a relapse during the hold-down restarts it",
                &[
                    "xxx", "xxx", "xxx", "...", "...", "...", "...", "xxx", "...", "...", "...",
                    "...", "...", "...", "...", "...",
                ],
                "UUDDDDDDDDDDDDDU",
            ),
            (
                "a majority slow for fall rounds is degraded, then recovers",
                &["ss.", "ss.", "ss.", "...", "...", "..."],
                "UUGGGU",
            ),
            (
                "one slow vantage is not degraded",
                &["s..", "s..", "s..", "s.."],
                "UUUU",
            ),
            (
                "silent vantages have no vote: one reporter cannot condemn",
                &["x--", "x--", "x--", "x--", "x--"],
                "UUUUU",
            ),
        ];
        for (what, rounds, want) in table {
            assert_eq!(run(rounds), *want, "{what}");
        }
    }

    #[test]
    fn stale_reports_lose_their_vote() {
        let mut e = engine();
        let obs = |v: &str, ok: bool, s: u64| Observation {
            vantage: v.into(),
            target: "east".into(),
            ok,
            latency: None,
            at: Duration::from_secs(s),
        };
        // b saw three failures long ago; a sees three now. b's view is stale,
        // so only one fresh vote says down.
        for s in 1..=3 {
            e.observe(&obs("b", false, s));
        }
        for s in 10..=12 {
            assert_eq!(e.observe(&obs("a", false, s)), None);
        }
        assert_eq!(e.verdict("east"), Some(Verdict::Up));
        // A fresh failure from b restores the majority of fresh votes (b's
        // failure streak is 4 by now).
        let d = e.observe(&obs("b", false, 13)).expect("down");
        assert_eq!((d.from, d.to), (Verdict::Up, Verdict::Down));
    }

    #[test]
    fn decisions_carry_their_evidence() {
        let mut e = engine();
        let mut decision = None;
        for s in 1..=3 {
            for v in ["a", "w"] {
                decision = decision.or(e.observe(&Observation {
                    vantage: v.into(),
                    target: "east".into(),
                    ok: false,
                    latency: None,
                    at: Duration::from_secs(s),
                }));
            }
        }
        let d = decision.expect("a majority of three failures each");
        assert_eq!(d.at, Duration::from_secs(3));
        let failing: Vec<_> = d
            .evidence
            .iter()
            .filter(|v| v.consecutive_failures >= 3)
            .map(|v| v.vantage.as_str())
            .collect();
        assert_eq!(failing, vec!["a", "w"]);
    }

    #[test]
    fn unknown_vantages_and_targets_are_ignored() {
        let mut e = engine();
        for s in 1..=10 {
            for v in ["intruder", "other"] {
                e.observe(&Observation {
                    vantage: v.into(),
                    target: "east".into(),
                    ok: false,
                    latency: None,
                    at: Duration::from_secs(s),
                });
            }
        }
        assert_eq!(e.verdict("east"), Some(Verdict::Up));
        assert_eq!(e.verdict("nowhere"), None);
    }
}
