//! The leader's side of a drill ([`tern_core::drill`]): once a tick it
//! reads the edges' latest guardrail reports (kept in memory, like
//! replication reports), asks the committed drill what comes next, and
//! commits it: a phase change, an abort on a breach, a planned switchover
//! of the region's writers, or, once per window, a watch entry (the
//! drill's heartbeat, so that a later leader can tell whether anyone was
//! watching).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tern_core::control::Command;
use tern_core::drill::{Decision, Drill, Reading, WindowStats, Writers};
use tern_core::failover::PlanKind;

use crate::node::Controller;

impl Controller {
    /// A drill start as the leader commits it: stamped with the leader's
    /// wall clock, and refused outside `[drill] windows`.
    pub(crate) fn stamp_drill(
        &self,
        command: Command,
    ) -> Result<Command, crate::commit::WriteError> {
        let Command::StartDrill { spec, actor, .. } = command else {
            return Ok(command);
        };
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if !self.drill.allows(wall_ms) {
            let windows: Vec<&str> = self.drill.windows.iter().map(|w| w.text.as_str()).collect();
            return Err(crate::commit::WriteError::Refused(format!(
                "drill refused: outside the allowed windows ({}, UTC)",
                windows.join("; ")
            )));
        }
        Ok(Command::StartDrill {
            spec,
            actor,
            wall_ms,
        })
    }

    /// What every serving region's edges last reported, aged.
    fn guardrail_reading(&self) -> Reading {
        let reports = self.guardrails.lock().expect("guardrails lock");
        self.regions
            .iter()
            .map(|region| {
                let stats = reports.get(region).map(|(at, r)| WindowStats {
                    requests: r.requests,
                    errors: r.errors,
                    p99: Duration::from_millis(r.p99_ms),
                    age: at.elapsed(),
                });
                (region.clone(), stats)
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
        let reading = self.guardrail_reading();
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

/// Keeps an edge's report at this node.
pub(crate) fn keep_report(node: &Controller, report: tern_proto::api::GuardrailReport) {
    node.guardrails
        .lock()
        .expect("guardrails lock")
        .insert(report.region.clone(), (Instant::now(), report));
}
