//! The lab's database side of a run: the operator's switchover, and the
//! facts the write oracle ([`crate::db_report`]) needs after the run: the
//! final primary's rows (read directly from the node, not through tern) and
//! the leases the controllers granted (their committed plans).

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tern_core::control::{Applied, Command};
use tern_core::failover::{ClusterState, PlanKind, Step};
use tern_proto::api::ClustersView;
use tern_proto::ControllerClient;

use crate::db_report::{self, LeaseFact, WriteOutcome};
use crate::load::RequestRecord;
use crate::postgres;
use crate::topology::{Deployment, CLUSTER};

fn controllers(deployment: &Deployment) -> ControllerClient {
    ControllerClient::new(
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

/// Every lease the controllers granted, as far as their plans tell: each
/// plan records the lease its grant superseded (holder, epoch, expiry or
/// release), and the current writer holds the latest.
pub fn lease_facts(view: &ClustersView, c: &ClusterState) -> Vec<LeaseFact> {
    let mut facts = Vec::new();
    let mut plans: Vec<_> = c.past.iter().collect();
    plans.extend(c.plan.iter());
    // When each epoch was granted: the end of the plan's wait-lease step.
    let granted = |epoch: u64| -> Option<i64> {
        plans
            .iter()
            .filter(|p| p.epoch == Some(epoch))
            .flat_map(|p| p.history.iter())
            .find(|h| h.step == Step::WaitLease && h.ok)
            .map(|h| h.finished_at.as_millis() as i64)
    };
    for p in &plans {
        if let Some((holder, epoch, expired)) = &p.previous_lease {
            facts.push(LeaseFact {
                holder: holder.clone(),
                epoch: *epoch,
                granted_at_ms: granted(*epoch),
                expired_at_ms: *expired as i64,
            });
        }
    }
    if let Some(l) = view.leases.iter().find(|l| l.cluster == CLUSTER) {
        if let (Some(holder), Some(expires)) = (&l.holder, l.expires_at_ms) {
            facts.push(LeaseFact {
                holder: holder.clone(),
                epoch: l.epoch,
                granted_at_ms: granted(l.epoch),
                expired_at_ms: expires as i64,
            });
        }
    }
    facts
}

/// Builds the write report: the clients' records against the final
/// primary's rows and the controllers' leases. `fault_ms` is lab time.
pub async fn write_report(
    deployment: &Deployment,
    records: &[RequestRecord],
    fault_ms: Option<f64>,
) -> Result<WriteOutcome> {
    let (view, c) = cluster(deployment).await?;
    let db = deployment
        .db
        .as_ref()
        .ok_or_else(|| anyhow!("the lab runs no database"))?;
    let node = db
        .node(&c.writer.region)
        .ok_or_else(|| anyhow!("no database node in {}", c.writer.region))?;
    let rows = postgres::read_payments(&postgres::conninfo_for(node.addr))
        .await
        .with_context(|| format!("read the final primary ({})", c.writer.region))?;
    let (acked, attempts) = db_report::writes_from_records(records);
    let leases = lease_facts(&view, &c);
    let report = db_report::build(db_report::WriteInputs {
        acked: &acked,
        attempts: &attempts,
        rows: &rows,
        final_primary: &c.writer.region,
        fault_at: fault_ms.map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)),
        leases: &leases,
    });
    let mut plans: Vec<_> = c.past.iter().collect();
    plans.extend(c.plan.iter());
    // Writes are back when the node the fault's plan promoted takes them,
    // even if a later plan (a failback) moves the writer again.
    let mut report = report;
    if let (Some(first), Some(fault)) = (plans.first(), fault_ms) {
        let fault = Duration::from_secs_f64(fault.max(0.0) / 1000.0);
        report.write_unavailable_ms = acked
            .iter()
            .filter(|a| a.sent_at >= fault && a.node == first.to)
            .map(|a| a.ack_at.saturating_sub(fault).as_secs_f64() * 1000.0)
            .reduce(f64::min);
    }
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
