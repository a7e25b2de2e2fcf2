//! The leader's side of a drill ([`tern_core::drill`]): the checks before
//! one starts (windows, the standby's lag, capacity), then once a tick it
//! reads the edges' latest guardrail reports (kept in memory, like
//! replication reports), asks the committed drill what comes next, and
//! commits it: a phase change, an abort on a breach, a planned switchover
//! of the region's writers, or, once per window, a watch entry (the
//! drill's heartbeat, so that a later leader can tell whether anyone was
//! watching).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tern_core::control::{Command, ControlState};
use tern_core::drill::{Decision, Drill, Reading, ServiceStats, WindowStats, Writers};
use tern_core::failover::PlanKind;
use tern_proto::api::{GuardrailReport, ServiceWindow};

use crate::node::Controller;

impl Controller {
    /// A drill start as the leader commits it: refused outside `[drill]
    /// windows`, when a switchover would start from a standby whose lag is
    /// unknown or over the budget, or when capacities are configured and
    /// the other regions cannot absorb the evacuated load; otherwise
    /// stamped with the leader's wall clock and the services' own
    /// guardrails.
    pub(crate) fn stamp_drill(
        &self,
        command: Command,
    ) -> Result<Command, crate::commit::WriteError> {
        let Command::StartDrill {
            mut spec, actor, ..
        } = command
        else {
            return Ok(command);
        };
        let refuse = |m: String| {
            Err(crate::commit::WriteError::Refused(format!(
                "drill refused: {m}"
            )))
        };
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if !self.drill.allows(wall_ms) {
            let windows: Vec<&str> = self.drill.windows.iter().map(|w| w.text.as_str()).collect();
            return refuse(format!(
                "outside the allowed windows ({}, UTC)",
                windows.join("; ")
            ));
        }
        let state = self.state();
        if spec.switchover_at.is_some() {
            if let Err(m) = self.switchover_ready(&state, &spec.region) {
                return refuse(m);
            }
        }
        if let Err(m) = self.capacity_ready(&state, &spec.region) {
            return refuse(m);
        }
        // The services' own limits, from this leader's configuration, the
        // rest from the drill's (the operator's flags included).
        spec.service_guardrails = self
            .drill
            .service_guardrails
            .iter()
            .map(|(service, own)| (service.clone(), own.resolve(&spec.guardrails)))
            .collect();
        Ok(Command::StartDrill {
            spec,
            actor,
            wall_ms,
        })
    }

    /// Every cluster whose writer is in `region` has a standby elsewhere,
    /// in a region that is up, whose last known lag is within the
    /// cluster's budget: the switchover the drill will ask for can start.
    fn switchover_ready(&self, state: &ControlState, region: &str) -> Result<(), String> {
        for (name, c) in state.clusters() {
            // Clusters without a node in the region have nothing to move.
            if c.writer.region != region || !c.spec.regions.iter().any(|r| r == region) {
                continue;
            }
            let Some(to) = c
                .spec
                .regions
                .iter()
                .find(|r| *r != region && state.verdict(r).serves())
            else {
                return Err(format!(
                    "cluster {name} has no node in another region that is up to take its writer"
                ));
            };
            match self.leader_view(state, name, Some(to)).and_then(|v| v.lag_bytes) {
                None => {
                    return Err(format!(
                        "the lag of cluster {name}'s standby in {to} is unknown (no fresh replication report of it streaming from the writer); a switchover needs it within the budget of {} bytes",
                        c.spec.rpo_budget
                    ))
                }
                Some(lag) if lag > c.spec.rpo_budget => {
                    return Err(format!(
                        "cluster {name}'s standby in {to} lags {lag} bytes, over the budget of {} bytes",
                        c.spec.rpo_budget
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// With capacities configured: the regions that are up, other than
    /// `region`, have room for the load `region` serves now (as the edges
    /// last reported it). No recent report is a refusal, not a pass.
    fn capacity_ready(&self, state: &ControlState, region: &str) -> Result<(), String> {
        if self.capacities.is_empty() {
            return Ok(());
        }
        let load = self.served_load().map_err(|silent| {
            format!(
                "capacities are configured but no edge of {} reported the load it serves in the last {} s, so there is nothing to check them against",
                silent.join(", "),
                LOAD_FRESH.as_secs()
            )
        })?;
        let evacuated = load.get(region).copied().unwrap_or(0.0);
        let mut room = 0.0;
        let mut parts = Vec::new();
        for (r, capacity) in &self.capacities {
            if r == region || !state.verdict(r).serves() {
                continue;
            }
            let serving = load.get(r).copied().unwrap_or(0.0);
            let free = (*capacity as f64 - serving).max(0.0);
            room += free;
            parts.push(format!(
                "{r} has {free:.0} req/s free (capacity {capacity}, serving {serving:.0})"
            ));
        }
        if evacuated > room {
            return Err(format!(
                "the other regions cannot absorb {region}'s load: {region} serves {evacuated:.0} req/s; {}",
                if parts.is_empty() {
                    "no other region with a capacity is up".to_string()
                } else {
                    parts.join("; ")
                }
            ));
        }
        Ok(())
    }

    /// Requests per second each region's backends answered, summed over
    /// the edges' reports of the last [`LOAD_FRESH`]. Fails, naming them,
    /// when the edges of a serving region sent none: a region's clients
    /// nobody reported on could be any load.
    fn served_load(&self) -> Result<BTreeMap<String, f64>, Vec<String>> {
        let reports = self.guardrails.lock().expect("guardrails lock");
        let mut load = BTreeMap::new();
        let mut heard = std::collections::BTreeSet::new();
        for ((edge_region, _), (at, r)) in reports.iter() {
            if at.elapsed() > LOAD_FRESH || r.window_ms == 0 {
                continue;
            }
            heard.insert(edge_region.clone());
            for (region, n) in &r.served {
                *load.entry(region.clone()).or_insert(0.0) +=
                    *n as f64 * 1000.0 / r.window_ms as f64;
            }
        }
        let silent: Vec<String> = self
            .regions
            .iter()
            .filter(|r| !heard.contains(*r))
            .cloned()
            .collect();
        if silent.is_empty() {
            Ok(load)
        } else {
            Err(silent)
        }
    }

    /// Per serving region, its edges' latest reports added up: requests and
    /// errors summed, the largest percentiles, the oldest age. Reports past
    /// the drill's freshness limit are left out while a fresher one of the
    /// region exists (an edge that stopped does not hide the others).
    fn guardrail_reading(&self, fresh_for: Duration) -> Reading {
        let reports = self.guardrails.lock().expect("guardrails lock");
        self.regions
            .iter()
            .map(|region| {
                let mine: Vec<(Duration, &GuardrailReport)> = reports
                    .iter()
                    .filter(|((r, _), _)| r == region)
                    .map(|(_, (at, rep))| (at.elapsed(), rep))
                    .collect();
                let freshest = mine.iter().map(|(age, _)| *age).min();
                let limit = freshest.map_or(Duration::ZERO, |f| f.max(fresh_for));
                let used = mine.into_iter().filter(|(age, _)| *age <= limit);
                (region.clone(), merge(used))
            })
            .collect()
    }

    /// Where the writers of the clusters with a node in `region` are.
    fn writers(&self, region: &str) -> Writers {
        self.machine.with(|m| {
            let clusters: Vec<_> = m
                .state
                .clusters()
                .values()
                .filter(|c| c.spec.regions.iter().any(|r| r == region))
                .collect();
            if clusters.is_empty() {
                Writers::None
            } else if clusters.iter().any(|c| c.active_plan().is_some()) {
                Writers::Moving
            } else if clusters.iter().any(|c| c.writer.region == region) {
                Writers::Home
            } else {
                Writers::Away
            }
        })
    }

    /// One tick of the running drill, if any.
    pub(crate) async fn drive_drill(&self) {
        let Some(drill) = self
            .machine
            .with(|m| m.state.drill().filter(|d| !d.phase.finished()).cloned())
        else {
            return;
        };
        let now = self.cluster_now();
        let reading = self.guardrail_reading(drill.spec.guardrails.window * 2);
        let writers = self.writers(&drill.spec.region);
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let command = match drill.next(now, &reading, writers) {
            Decision::Wait => {
                if now.saturating_sub(drill.last_seen) < drill.spec.guardrails.window {
                    return;
                }
                Command::DrillWatch {
                    id: drill.id,
                    evidence: tern_core::drill::summarize(&reading),
                    window: reading
                        .iter()
                        .filter_map(|(r, w)| Some((r.clone(), w.clone()?)))
                        .collect(),
                }
            }
            Decision::Advance { phase, evidence } => Command::DrillAdvance {
                id: drill.id,
                phase,
                evidence,
                wall_ms,
            },
            Decision::Abort { reason } => Command::AbortDrill {
                id: Some(drill.id),
                reason,
                actor: format!("the leader, controller {}", self.id),
            },
            Decision::MoveWriters { away } => {
                self.move_writers(&drill, away).await;
                return;
            }
        };
        if let Err(e) = self.write_local(command).await {
            tracing::warn!(drill = drill.id, "drill step not committed: {e}");
        }
    }

    /// Starts a planned switchover of each database cluster whose writer
    /// should move: away from the drill's region, or back to it.
    async fn move_writers(&self, drill: &Drill, away: bool) {
        let region = &drill.spec.region;
        let moves: Vec<(String, String)> = self.machine.with(|m| {
            let s = &m.state;
            s.clusters()
                .iter()
                .filter(|(_, c)| c.active_plan().is_none())
                .filter_map(|(name, c)| {
                    if away && c.writer.region == *region {
                        // The first other region with a node that serves.
                        let to = c
                            .spec
                            .regions
                            .iter()
                            .find(|r| *r != region && s.verdict(r).serves())?;
                        Some((name.clone(), to.clone()))
                    } else if !away
                        && c.writer.region != *region
                        && c.spec.regions.iter().any(|r| r == region)
                    {
                        Some((name.clone(), region.clone()))
                    } else {
                        None
                    }
                })
                .collect()
        });
        let mut moved = BTreeMap::new();
        for (cluster, to) in moves {
            let command = self.with_lag(Command::StartFailover {
                cluster: cluster.clone(),
                to: to.clone(),
                kind: PlanKind::Switchover {
                    actor: format!("drill {}", drill.id),
                },
                lag_bytes: None,
                evidence: vec![format!(
                    "drill {} of {region}: {}",
                    drill.id,
                    if away {
                        "the writer moves away"
                    } else {
                        "the writer comes home"
                    }
                )],
            });
            match self.write_local(command).await {
                Ok(_) => {
                    moved.insert(cluster, to);
                }
                Err(e) => {
                    // The switchover's own gate refused (lag, a standby
                    // not streaming): the drill cannot go on safely.
                    let reason = format!("switchover of {cluster} to {to} refused: {e}");
                    let _ = self
                        .write_local(Command::AbortDrill {
                            id: Some(drill.id),
                            reason,
                            actor: format!("the leader, controller {}", self.id),
                        })
                        .await;
                    return;
                }
            }
        }
        if !moved.is_empty() {
            tracing::info!(drill = drill.id, ?moved, "drill switchovers started");
        }
    }
}

/// How recent the edges' reports must be for a drill's capacity check:
/// three of their idle windows (5 s each).
const LOAD_FRESH: Duration = Duration::from_secs(15);

/// Keeps an edge's report at this node, the latest per (region, edge).
pub(crate) fn keep_report(node: &Controller, report: GuardrailReport) {
    let mut reports = node.guardrails.lock().expect("guardrails lock");
    // Edges that stopped reporting long ago are forgotten.
    reports.retain(|_, (at, _)| at.elapsed() < Duration::from_secs(600));
    reports.insert(
        (report.region.clone(), report.edge.clone()),
        (Instant::now(), report),
    );
}

/// Several edges' reports of one client region as one window: requests and
/// errors summed, the largest percentiles and age; `None` without reports.
fn merge<'a>(
    reports: impl Iterator<Item = (Duration, &'a GuardrailReport)>,
) -> Option<WindowStats> {
    let mut out: Option<WindowStats> = None;
    for (age, r) in reports {
        let w = out.get_or_insert_with(WindowStats::default);
        w.requests += r.requests;
        w.errors += r.errors;
        w.p50 = w.p50.max(Duration::from_millis(r.p50_ms));
        w.p99 = w.p99.max(Duration::from_millis(r.p99_ms));
        w.age = w.age.max(age);
        let unbroken = [ServiceWindow {
            service: WITHOUT_BREAKDOWN.into(),
            requests: r.requests,
            errors: r.errors,
            p50_ms: r.p50_ms,
            p99_ms: r.p99_ms,
        }];
        // An edge that reports no per-service figures (an older version)
        // still counts: its totals are judged as one more service.
        let services = if r.services.is_empty() && r.requests > 0 {
            &unbroken[..]
        } else {
            &r.services[..]
        };
        for s in services {
            w.services
                .entry(s.service.clone())
                .or_default()
                .add(&ServiceStats {
                    requests: s.requests,
                    errors: s.errors,
                    p50: Duration::from_millis(s.p50_ms),
                    p99: Duration::from_millis(s.p99_ms),
                });
        }
    }
    out
}

/// The name under which an edge's totals are judged when it reports no
/// per-service figures.
const WITHOUT_BREAKDOWN: &str = "all services of an edge without a per-service breakdown";

#[cfg(test)]
mod tests {
    use super::*;

    fn report(edge: &str, requests: u64, errors: u64, p99_ms: u64) -> GuardrailReport {
        GuardrailReport {
            region: "us-west".into(),
            edge: edge.into(),
            window_ms: 5000,
            requests,
            errors,
            p50_ms: 5,
            p99_ms,
            services: vec![tern_proto::api::ServiceWindow {
                service: "api".into(),
                requests,
                errors,
                p50_ms: 5,
                p99_ms,
            }],
            served: BTreeMap::new(),
        }
    }

    /// Broke: reports were kept per region, so with two edges in a region
    /// the guardrails judged whichever reported last and missed the other's
    /// failures.
    #[test]
    fn two_edges_of_a_region_are_added_up_not_overwritten() {
        let (a, b) = (report("a", 1000, 0, 40), report("b", 100, 30, 900));
        let s = Duration::from_secs;
        let w = merge([(s(1), &a), (s(3), &b)].into_iter()).unwrap();
        assert_eq!((w.requests, w.errors), (1100, 30));
        assert_eq!(w.p99, Duration::from_millis(900));
        assert_eq!(w.age, s(3));
        assert_eq!(w.services["api"].errors, 30);
        assert_eq!(merge(std::iter::empty()), None);
        // An edge without a per-service breakdown is not lost in the merge.
        let mut old = report("c", 50, 50, 10);
        old.services.clear();
        let w = merge([(s(1), &a), (s(1), &old)].into_iter()).unwrap();
        assert_eq!(w.services[WITHOUT_BREAKDOWN].errors, 50);
        assert_eq!(w.requests, 1050);
    }
}
