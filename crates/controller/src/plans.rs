//! Failover plans, as the leader drives them: what it knows of a cluster
//! beyond the committed state (candidates and the last known lag, from
//! the agents' replication reports), the RPO gate's input, and the
//! commands that start, grant and time out plans (`tern_core::failover`
//! decides; this module only gathers facts and commits).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern_core::control::{Applied, Command, ControlState};
use tern_core::failover::{
    leader_action, leader_view, LeaderAction, LeaderView, NodeReport, NodeRole, PlanKind, Step,
};
use tern_proto::api::{ClustersView, WriteAnswer};

use crate::node::Controller;

impl Controller {
    /// What the leader knows of a cluster beyond the committed state: which
    /// regions could take the writer and the last known lag toward `target`
    /// (or the best candidate), from the agents' replication reports
    /// (`tern_core::failover::leader_view` decides).
    pub(crate) fn leader_view(
        &self,
        state: &ControlState,
        cluster: &str,
        target: Option<&str>,
    ) -> Option<LeaderView> {
        let c = state.clusters().get(cluster)?;
        let writer_down = !state.verdict(&c.writer.region).serves();
        let reports: BTreeMap<String, NodeReport> = self
            .replication
            .lock()
            .expect("replication lock")
            .iter()
            .filter(|((name, _), _)| name == cluster)
            .map(|((_, region), (at, r))| {
                let role = match r.role.as_str() {
                    "primary" => NodeRole::Primary,
                    "standby" => NodeRole::Standby,
                    _ => NodeRole::Down,
                };
                let report = NodeReport {
                    role,
                    lsn: r.lsn,
                    received_lsn: r.received_lsn,
                    streamed_epoch: r.streamed_epoch,
                    age: at.elapsed(),
                };
                (region.clone(), report)
            })
            .collect();
        let serving = |r: &str| state.verdict(r).serves();
        Some(leader_view(c, writer_down, &serving, &reports, target))
    }

    /// An operator's plan comes without a lag figure: the leader adds the
    /// one it knows, with its evidence, so the gate and the audit have it.
    pub(crate) fn with_lag(&self, command: Command) -> Command {
        match command {
            Command::StartFailover {
                cluster,
                to,
                kind,
                lag_bytes: None,
                mut evidence,
            } => {
                let view = self.leader_view(&self.state(), &cluster, Some(&to));
                let lag_bytes = view.as_ref().and_then(|v| v.lag_bytes);
                if let Some(v) = view {
                    evidence.extend(v.evidence);
                }
                Command::StartFailover {
                    cluster,
                    to,
                    kind,
                    lag_bytes,
                    evidence,
                }
            }
            other => other,
        }
    }

    /// Merges the replication reports the other controllers hold: for each
    /// (cluster, region) the freshest report wins.
    async fn fetch_peer_reports(&self) {
        let peers: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, a)| *a)
            .collect();
        let calls = peers.iter().map(|a| {
            self.client
                .get::<ClustersView>(*a, "/v1/clusters", self.settings.rpc_timeout)
        });
        let views = futures_util::future::join_all(calls).await;
        let now = Instant::now();
        let mut mine = self.replication.lock().expect("replication lock");
        for view in views.into_iter().flatten() {
            for seen in view.replication {
                let at = now
                    .checked_sub(Duration::from_millis(seen.age_ms))
                    .unwrap_or(now);
                let key = (seen.report.cluster.clone(), seen.report.region.clone());
                let newer = mine.get(&key).is_none_or(|(t, _)| *t < at);
                if newer {
                    mine.insert(key, (at, seen.report));
                }
            }
        }
    }

    /// While leading with a quorum: starts, grants and retries failover plans.
    pub(crate) async fn drive_plans(&self) {
        let state = self.state();
        let names: Vec<String> = state.clusters().keys().cloned().collect();
        for cluster in names {
            let Some(view) = self.leader_view(&state, &cluster, None) else {
                continue;
            };
            let c = &state.clusters()[&cluster];
            let Some(action) =
                leader_action(c, &cluster, state.leases(), &view, self.cluster_now())
            else {
                continue;
            };
            let command = match action {
                LeaderAction::Start {
                    to,
                    lag_bytes,
                    evidence,
                } => {
                    let throttled = {
                        let mut attempts = self.plan_attempts.lock().expect("attempts lock");
                        let recent = attempts
                            .get(&cluster)
                            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
                        if !recent {
                            attempts.insert(cluster.clone(), Instant::now());
                        }
                        recent
                    };
                    if throttled {
                        continue;
                    }
                    if lag_bytes.is_none() {
                        // This node may have restarted and lost the reports
                        // (the dead primary's last one never comes again):
                        // its peers hold them too.
                        self.fetch_peer_reports().await;
                        if let Some(v) = self.leader_view(&state, &cluster, None) {
                            if v.lag_bytes.is_some() {
                                continue; // decided on the next tick, with the figure
                            }
                        }
                    }
                    Command::StartFailover {
                        cluster: cluster.clone(),
                        to,
                        kind: PlanKind::Automatic,
                        lag_bytes,
                        evidence,
                    }
                }
                LeaderAction::Grant { plan_id } => Command::PlanStep {
                    cluster: cluster.clone(),
                    plan_id,
                    step: Step::WaitLease,
                    ok: true,
                    detail: "the previous lease surely expired".into(),
                    lsn: None,
                },
                LeaderAction::TimedOut { plan_id, step } => Command::PlanTimedOut {
                    cluster: cluster.clone(),
                    plan_id,
                    step,
                },
            };
            match self.write_local(command).await {
                Ok(WriteAnswer {
                    applied: Applied::Plan(id),
                    ..
                }) => tracing::info!(%cluster, plan = id, "failover plan started"),
                Ok(_) => {}
                Err(e) => tracing::debug!(%cluster, "plan command not committed: {e}"),
            }
        }
    }
}
