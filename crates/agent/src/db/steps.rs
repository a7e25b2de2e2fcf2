//! The steps of a failover plan that fall to this region: fence (the old
//! primary), catch up and promote (the target), and the scale hook.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tern_core::config::Replication;
use tern_core::control::Command;
use tern_core::failover::{ClusterState, Step};
use tern_pg::{PgStatus, Role, Stopped};

use super::DbAgent;

impl DbAgent {
    /// Carries out the current step of a plan when it falls to this region.
    pub(super) async fn plan_steps(&mut self, c: &ClusterState, status: Option<&PgStatus>) {
        let Some(plan) = c.plan.as_ref().filter(|p| p.active()) else {
            return;
        };
        let key = (plan.id, plan.step);
        if self.done.get(&key) == Some(&plan.attempts) {
            return;
        }
        let name = self.db.name.clone();
        let outcome: Option<(bool, String, Option<u64>)> = match plan.step {
            Step::Fence if plan.from == self.region => {
                // The switchover's fence is the same stop as the self-fence;
                // only a fast shutdown tells where the old primary's WAL
                // ends (its shutdown checkpoint), which the target must
                // replay for nothing to be lost.
                self.pg = None;
                let stopped = match self.local.stop(Duration::from_secs(10)).await {
                    // Stopped already (by the self-fence, a fast shutdown
                    // too): what counts is whether it went down cleanly.
                    Ok(Stopped::NotRunning) => match self.local.shut_down_cleanly().await {
                        Ok(true) => Ok(Stopped::Fast),
                        Ok(false) => Ok(Stopped::NotRunning),
                        Err(e) => Err(e),
                    },
                    other => other,
                };
                match stopped {
                    Ok(Stopped::Fast) => {
                        self.lease = None;
                        match self.local.checkpoint_lsn().await {
                            Ok(lsn) => Some((
                                true,
                                format!("{} fenced (fast shutdown at WAL {lsn})", self.region),
                                Some(lsn),
                            )),
                            Err(e) => Some((false, format!("fenced, but its WAL end is unknown: {e}"), None)),
                        }
                    }
                    Ok(other) => Some((
                        false,
                        format!(
                            "{} fenced, but not by a clean shutdown ({}): where its WAL ends is unknown, so a switchover cannot promise zero loss",
                            self.region,
                            other.as_str()
                        ),
                        None,
                    )),
                    Err(e) => Some((false, format!("fence failed: {e}"), None)),
                }
            }
            Step::CatchUp if plan.to == self.region => {
                let Some(s) = status else { return };
                let target = plan.fence_lsn.unwrap_or(0);
                if s.role == Role::Standby && s.lsn >= target {
                    Some((
                        true,
                        format!("{} replayed {} >= {target}", self.region, s.lsn),
                        Some(s.lsn),
                    ))
                } else {
                    return;
                }
            }
            Step::Promote if plan.to == self.region => {
                if self.lease.is_none_or(|(e, _)| Some(e) != plan.epoch) {
                    // The lease comes first (renewed by keep_lease this round or the next).
                    return;
                }
                let Some(s) = status else { return };
                if s.role == Role::Primary {
                    // Only a promotion this plan made counts: a node that
                    // was a primary already (an old writer that never
                    // rejoined) is not a standby of the current writer.
                    if self.local.promoted_by() == Some(plan.id) {
                        Some((
                            true,
                            format!("{} was promoted by this plan", self.region),
                            Some(s.lsn),
                        ))
                    } else {
                        Some((
                            false,
                            format!(
                                "{} is a primary that this plan did not promote: not a standby of the current writer",
                                self.region
                            ),
                            None,
                        ))
                    }
                } else if let Err(e) = self.local.mark_promotion(plan.id) {
                    Some((false, format!("promotion not recorded: {e}"), None))
                } else {
                    let Some(pg) = &self.pg else { return };
                    let started = Instant::now();
                    match pg.promote(Duration::from_secs(30)).await {
                        Ok(()) => {
                            // The new primary has no standby yet: waiting for
                            // one would stop every write. Synchronous commits
                            // resume once a standby streams again.
                            let note = if self.db.replication == Replication::Sync {
                                match pg.set_synchronous(false).await {
                                    Ok(()) => {
                                        ", synchronous commits suspended until a standby streams"
                                    }
                                    Err(_) => ", synchronous commits still on (could not suspend)",
                                }
                            } else {
                                ""
                            };
                            Some((
                                true,
                                format!(
                                    "{} promoted in {} ms at WAL {}{note}",
                                    self.region,
                                    started.elapsed().as_millis(),
                                    s.lsn
                                ),
                                Some(s.lsn),
                            ))
                        }
                        Err(e) => Some((false, format!("promotion failed: {e:#}"), None)),
                    }
                }
            }
            Step::ScaleHook if plan.to == self.region => {
                let epoch = plan.epoch.unwrap_or(0);
                Some(self.scale_hook(epoch).await)
            }
            _ => None,
        };
        let Some((ok, detail, lsn)) = outcome else {
            return;
        };
        self.done.insert(key, plan.attempts);
        let command = Command::PlanStep {
            cluster: name.clone(),
            plan_id: plan.id,
            step: plan.step,
            ok,
            detail: detail.clone(),
            lsn,
        };
        tracing::info!(cluster = %name, plan = plan.id, step = plan.step.as_str(), ok, "{detail}");
        if let Err(e) = self.controllers.write(&command).await {
            tracing::warn!(cluster = %name, "step report not committed: {e}");
            // Reported again next round.
            self.done.remove(&key);
        }
    }

    pub(super) async fn scale_hook(&self, epoch: u64) -> (bool, String, Option<u64>) {
        let Some(hook) = &self.db.scale_hook else {
            return (true, "no scale hook configured".into(), None);
        };
        let timeout = self.db.scale_hook_timeout;
        let started = Instant::now();
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(hook)
            .env("TERN_CLUSTER", &self.db.name)
            .env("TERN_REGION", &self.region)
            .env("TERN_EPOCH", epoch.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return (false, format!("scale hook did not start: {e}"), None),
        };
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => (
                false,
                format!("scale hook killed after {} ms", timeout.as_millis()),
                None,
            ),
            Ok(Err(e)) => (false, format!("scale hook: {e}"), None),
            Ok(Ok(out)) => {
                let tail = String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .chain(String::from_utf8_lossy(&out.stdout).lines())
                    .last()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>();
                (
                    out.status.success(),
                    format!(
                        "scale hook {} in {} ms{}",
                        out.status,
                        started.elapsed().as_millis(),
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!(": {tail}")
                        }
                    ),
                    None,
                )
            }
        }
    }
}
