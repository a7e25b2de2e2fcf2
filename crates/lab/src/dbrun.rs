//! The lab's database side of a run: the operator's switchover, and the
//! facts the write oracle ([`crate::db_report`]) needs after the run: the
//! final primary's rows (read directly from the node, not through tern) and
//! the leases the controllers granted (their committed plans).

use std::time::Duration;

use anyhow::{anyhow, Result};
use tern_core::control::{Applied, Command};
use tern_core::failover::{ClusterState, PlanKind};
use tern_proto::api::ClustersView;
use tern_proto::ControllerClient;

use crate::db_report::{self, WriteOutcome};
use crate::load::RequestRecord;
use crate::postgres;
use crate::topology::{Deployment, CLUSTER};

fn controllers(deployment: &Deployment) -> ControllerClient {
    deployment.controller_client(
        deployment
            .controller_addrs()
            .into_iter()
            .map(|(_, a)| a)
            .collect(),
        Duration::from_secs(1),
    )
}

/// Commits a planned switchover to `to`, as `tern switchover` does; returns the plan's id.
pub async fn switchover(deployment: &Deployment, to: &str) -> Result<u64> {
    let command = Command::StartFailover {
        cluster: CLUSTER.into(),
        to: to.into(),
        kind: PlanKind::Switchover {
            actor: "the lab's operator".into(),
        },
        lag_bytes: None,
        evidence: vec!["scenario step".into()],
    };
    let answer = controllers(deployment)
        .write(&command)
        .await
        .map_err(|e| anyhow!("switchover to {to}: {e}"))?;
    match answer.applied {
        Applied::Plan(id) => Ok(id),
        other => Err(anyhow!("switchover to {to}: answered {other:?}")),
    }
}

/// Commits a drill as `tern drill start` does; returns its id.
pub async fn start_drill(
    deployment: &Deployment,
    spec: &tern_core::drill::DrillSpec,
) -> Result<u64> {
    let command = Command::StartDrill {
        spec: spec.clone(),
        actor: "the lab's operator".into(),
        wall_ms: 0,
    };
    let answer = controllers(deployment)
        .write(&command)
        .await
        .map_err(|e| anyhow!("drill of {}: {e}", spec.region))?;
    match answer.applied {
        Applied::Drill(id) => Ok(id),
        other => Err(anyhow!("drill of {}: answered {other:?}", spec.region)),
    }
}

/// The running or last drill as a controller in quorum has it; `None`
/// when there was none (or no controller answers within a few tries).
pub async fn last_drill(deployment: &Deployment) -> Option<tern_core::drill::Drill> {
    let client = controllers(deployment);
    for _ in 0..20 {
        match client.drills().await {
            Ok(v) if v.in_quorum => return v.current,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    None
}

/// The cluster as the controllers see it, retried for a while (a leader
/// may be moving at the end of a scenario).
async fn cluster(deployment: &Deployment) -> Result<(ClustersView, ClusterState)> {
    let client = controllers(deployment);
    let mut last = None;
    for _ in 0..20 {
        match client.clusters().await {
            Ok(v) => {
                let c = v
                    .clusters
                    .get(CLUSTER)
                    .cloned()
                    .ok_or_else(|| anyhow!("the controllers know no cluster {CLUSTER}"))?;
                return Ok((v, c));
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(anyhow!(
        "no controller answered for the database: {}",
        last.map_or("no controllers".to_string(), |e| e.to_string())
    ))
}

/// Builds the write report: the clients' records against the final
/// primary's rows and the controllers' leases. `fault_ms` is lab time.
pub async fn write_report(
    deployment: &Deployment,
    records: &[RequestRecord],
    fault_ms: Option<f64>,
) -> Result<WriteOutcome> {
    let (_, c) = cluster(deployment).await?;
    let db = deployment
        .db
        .as_ref()
        .ok_or_else(|| anyhow!("the lab runs no database"))?;
    // Every node, not only the one the controllers name: the oracle judges
    // from what each holds.
    let mut nodes = Vec::new();
    for n in &db.nodes {
        let rows = postgres::read_payments(&postgres::conninfo_for(n.addr))
            .await
            .map_err(|e| format!("{e:#}"));
        nodes.push(db_report::NodeRows {
            node: n.region.clone(),
            rows,
        });
    }
    let (acked, attempts) = db_report::writes_from_records(records);
    let build = |nodes: &[db_report::NodeRows]| {
        db_report::build(db_report::WriteInputs {
            acked: &acked,
            attempts: &attempts,
            nodes,
            fault_at: fault_ms.map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
            rpo_time: Some(crate::topology::RPO_TIME),
            agent_round: crate::topology::agent_round(),
        })
    };
    let mut report = build(&nodes);
    // The final writer fenced during the run (stopped) is started again by
    // its agent once its lease is back: wait for that state, up to 30 s,
    // rather than judge a node that is still coming back.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(n) = nodes
        .iter_mut()
        .find(|n| n.node == report.final_primary && n.rows.is_err())
    {
        if std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let addr = db.node(&n.node).map(|d| d.addr);
        if let Some(addr) = addr {
            n.rows = postgres::read_payments(&postgres::conninfo_for(addr))
                .await
                .map_err(|e| format!("{e:#}"));
        }
        if n.rows.is_ok() {
            report = build(&nodes);
        }
    }
    if let Some(n) = nodes.iter().find(|n| n.node == report.final_primary) {
        if let Err(e) = &n.rows {
            return Err(anyhow!(
                "read the final writer ({}), the node that acknowledged the last write: {e}",
                n.node
            ));
        }
    }
    let mut plans: Vec<_> = c.past.iter().collect();
    plans.extend(c.plan.iter());
    let plans = plans
        .iter()
        .map(|p| {
            let steps: Vec<String> = p
                .history
                .iter()
                .map(|h| {
                    format!(
                        "{} {} ms",
                        h.step.as_str(),
                        h.finished_at.saturating_sub(h.started_at).as_millis()
                    )
                })
                .collect();
            format!(
                "plan {} {} -> {} ({}): {}",
                p.id,
                p.from,
                p.to,
                p.step.as_str(),
                steps.join(", ")
            )
        })
        .collect();
    Ok(WriteOutcome {
        report,
        writer: c.writer.region.clone(),
        epoch: c.writer.epoch,
        plans,
    })
}
