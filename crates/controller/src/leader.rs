//! What the leader does with its input. Commands from operators and agents
//! are committed here or forwarded once to the leader (a plan start gets
//! the lag the leader knows). The leader loop: while this node leads, a
//! verdict engine per term (seeded from the committed verdicts) turns the
//! agents' observations into decisions, and only decisions are committed,
//! only with a quorum. Each tick also drives the failover plans
//! ([`crate::plans`]).

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tern_core::control::{service_target, Command};
use tern_core::verdict::{Observation, Verdict, VerdictEngine};
use tern_proto::api::{ObservationBatch, WriteAnswer};
use tern_proto::http::CallError;

use crate::commit::{WriteError, FORWARDED};
use crate::node::Controller;

impl Controller {
    /// Commits a command through the leader: here if this node leads,
    /// otherwise forwarded once. Fails when no quorum commits it in time.
    pub async fn write(
        &self,
        command: Command,
        forwarded: bool,
    ) -> Result<WriteAnswer, WriteError> {
        if self.is_leader() {
            // A new leader's own first entry (LeaderChanged: leases
            // extended, the control plane named) comes before anything
            // else of its term.
            let term = self.raft.metrics().borrow().current_term;
            let mut announced = self.announced_term.subscribe();
            let waited =
                tokio::time::timeout(self.write_deadline(), announced.wait_for(|t| *t >= term))
                    .await
                    .map(|r| r.is_ok())
                    .unwrap_or(false);
            if !waited {
                return Err(WriteError::NoQuorum(format!(
                    "controller {} became the leader but could not commit its first entry in time",
                    self.id
                )));
            }
            let command = self.stamp_drill(command)?;
            return self.write_local(self.with_lag(command)).await;
        }
        if forwarded {
            return Err(WriteError::NoQuorum(format!(
                "controller {} does not lead and does not forward twice",
                self.id
            )));
        }
        let leader = self.leader_addr().ok_or_else(|| {
            WriteError::NoQuorum(format!(
                "controller {} knows no leader; it is out of quorum and commits nothing",
                self.id
            ))
        })?;
        let deadline = self.write_deadline() + self.settings.rpc_timeout;
        let answer = self
            .client
            .post_with_header::<_, WriteAnswer>(
                leader,
                "/v1/write",
                &command,
                deadline,
                (FORWARDED, "1"),
            )
            .await
            .map_err(|e| match e {
                CallError::Refused { message, .. } => WriteError::Refused(message),
                other => WriteError::NoQuorum(format!(
                    "the leader could not commit it ({other}); this node may be out of quorum"
                )),
            })?;
        // Read your writes: the client's next read usually comes to this
        // node, so answer once this node has applied the entry too. The
        // entry is committed either way; past the wait, a read here may
        // still be one entry behind. The wait is short (a heartbeat or two
        // brings the commit index), so callers' deadlines hold.
        let _ = self
            .raft
            .wait(Some(
                self.settings.rpc_timeout.min(Duration::from_millis(500)),
            ))
            .applied_index_at_least(Some(answer.index), "forwarded write applied here")
            .await;
        Ok(answer)
    }

    /// Feeds an agent's observations to the leader's verdict engine.
    pub(crate) async fn observe(
        &self,
        batch: ObservationBatch,
        forwarded: bool,
    ) -> Result<(), WriteError> {
        if !self.is_leader() {
            if forwarded {
                return Err(WriteError::NoQuorum("not the leader".into()));
            }
            let leader = self
                .leader_addr()
                .ok_or_else(|| WriteError::NoQuorum("no leader known".into()))?;
            return self
                .client
                .post_with_header::<_, serde_json::Value>(
                    leader,
                    "/v1/observations",
                    &batch,
                    self.settings.rpc_timeout,
                    (FORWARDED, "1"),
                )
                .await
                .map(|_| ())
                .map_err(|e| WriteError::NoQuorum(e.to_string()));
        }
        let at = self.cluster_now();
        let decisions = {
            let mut engine = self.engine.lock().expect("engine lock");
            let Some((_, engine)) = engine.as_mut() else {
                return Err(WriteError::NoQuorum(
                    "the leader is still taking over".into(),
                ));
            };
            let mut decisions = Vec::new();
            for r in &batch.results {
                let target = match &r.service {
                    Some(s) => service_target(s, &r.region),
                    None => r.region.clone(),
                };
                let obs = Observation {
                    vantage: batch.vantage.clone(),
                    target,
                    ok: r.ok,
                    latency: r.latency_ms.map(Duration::from_millis),
                    at,
                };
                decisions.extend(engine.observe(&obs));
            }
            decisions
        };
        self.commit_decisions(decisions).await;
        Ok(())
    }

    async fn commit_decisions(&self, decisions: Vec<tern_core::verdict::Decision>) {
        if decisions.is_empty() {
            return;
        }
        if !self.in_quorum() {
            // A leader cut off from its majority decides nothing; the engine
            // starts again from the committed verdicts if it keeps leading.
            tracing::warn!(
                "out of quorum: {} verdict decisions dropped",
                decisions.len()
            );
            self.engine.lock().expect("engine lock").take();
            return;
        }
        for d in decisions {
            let target = d.target.clone();
            if let Err(e) = self.write_local(Command::Verdict(d)).await {
                tracing::warn!("verdict on {target} not committed: {e}");
                self.engine.lock().expect("engine lock").take();
                return;
            }
        }
    }
}

/// While this node leads: starts a verdict engine per term (from the
/// committed verdicts), records the leadership change, and ticks the
/// engine so that silent vantage points go stale.
pub(crate) async fn leader_loop(node: Arc<Controller>) {
    let stop = node.stop.clone();
    let tick = (node.verdict.interval / 4).max(Duration::from_millis(50));
    let mut announced_term = *node.announced_term.borrow();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let m = node.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            node.engine.lock().expect("engine lock").take();
            continue;
        }
        let term = m.current_term;
        let fresh = {
            let engine = node.engine.lock().expect("engine lock");
            engine.as_ref().map(|(t, _)| *t) != Some(term)
        };
        if fresh {
            if !node.in_quorum() {
                continue;
            }
            if announced_term != term {
                let leader = format!("controller {} ({})", node.id, node.region);
                // The first leader of a new control plane names it.
                let cluster_id = node
                    .machine
                    .with(|m| m.state.cluster_id().is_empty())
                    .then(|| new_cluster_id(node.id));
                match node
                    .write_local(Command::LeaderChanged { leader, cluster_id })
                    .await
                {
                    Ok(_) => {
                        announced_term = term;
                        node.announced_term.send_replace(term);
                    }
                    Err(e) => {
                        tracing::warn!("leader change not committed: {e}");
                        continue;
                    }
                }
            }
            let at = node.cluster_now();
            // Targets: every service in every region (the agents report
            // per service), and the regions (from agents that report a
            // region as a whole).
            let (targets, seeds) = node.machine.with(|mach| {
                let s = &mach.state;
                let mut targets = node.regions.clone();
                let mut seeds: Vec<(String, Verdict)> = node
                    .regions
                    .iter()
                    .map(|r| (r.clone(), s.verdict(r)))
                    .collect();
                for t in s.service_targets() {
                    let v = s.service_verdicts().get(&t).copied().unwrap_or(Verdict::Up);
                    seeds.push((t.clone(), v));
                    targets.push(t);
                }
                (targets, seeds)
            });
            let mut engine =
                VerdictEngine::new(node.verdict.settings, node.vantages.clone(), &targets, at);
            for (t, v) in seeds {
                engine.seed(&t, v, at);
            }
            *node.engine.lock().expect("engine lock") = Some((term, engine));
            continue;
        }
        let now = node.cluster_now();
        let decisions = {
            let mut engine = node.engine.lock().expect("engine lock");
            match engine.as_mut() {
                Some((_, e)) => e.tick(now),
                None => Vec::new(),
            }
        };
        node.commit_decisions(decisions).await;
        if node.in_quorum() {
            node.drive_plans().await;
            node.drive_drill().await;
        }
    }
}

/// A fresh identity for a control plane: 64 random bits (the standard
/// library's randomly keyed hasher over the time and the node's id) as hex.
fn new_cluster_id(node: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(node);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}
