//! The agent's database loop: for each cluster with a node in the agent's
//! region it reads the node (role, WAL position, fenced or not), reports it
//! to every controller, keeps the primary's lease, fences the node itself
//! when the lease cannot be renewed in time, carries out the steps of
//! failover plans that fall to its region (fence, catch up, promote, scale
//! hook), and points the region's writer proxy at the current writer.
//!
//! Self-fencing (DESIGN.md invariant 1): the agent counts its lease from the
//! moment it *sent* the renewal, so its deadline is never later than the
//! controllers'. It fences a primary `fence_margin` before that deadline;
//! the controllers grant a new epoch only after their own expiry plus a
//! drift margin. So once a new epoch can exist, the old primary has stopped
//! taking writes.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Result;
use tern_controller::api::{ClustersView, ReplicationReport};
use tern_controller::http::CallError;
use tern_controller::ControllerClient;
use tern_core::config::{Database, Replication};
use tern_core::control::{Applied, Command};
use tern_core::failover::{ClusterState, Step};
use tokio_util::sync::CancellationToken;

use crate::pg::{Pg, PgStatus, Role};
use crate::writer_proxy::{Target, WriterProxy, WriterTarget};

/// Environment switch for the oracle's own test: an agent that never fences
/// its node, to show that the lab counts the writes this lets through.
pub const UNSAFE_NO_SELF_FENCE: &str = "TERN_UNSAFE_NO_SELF_FENCE";

pub struct DbAgent {
    region: String,
    db: Database,
    controllers: ControllerClient,
    proxy: Option<WriterProxy>,
    self_fence: bool,
    tick: Duration,
    /// Fence this long before the lease deadline.
    fence_margin: Duration,
    pg: Option<Pg>,
    /// The local deadline of the lease held, and its epoch.
    lease: Option<(u64, Instant)>,
    last_renewal: Option<Instant>,
    /// Plan steps already carried out here: (plan, step, attempt).
    done: BTreeMap<(u64, Step), u32>,
    last_view: Option<ClusterState>,
}

impl DbAgent {
    pub fn new(
        region: &str,
        db: Database,
        controllers: ControllerClient,
        proxy: Option<WriterProxy>,
    ) -> DbAgent {
        let lease = db.lease.duration;
        DbAgent {
            region: region.to_string(),
            controllers,
            proxy,
            self_fence: std::env::var(UNSAFE_NO_SELF_FENCE).map_or(true, |v| v != "1"),
            tick: (lease / 10).clamp(Duration::from_millis(100), Duration::from_millis(500)),
            fence_margin: (lease / 5).max(Duration::from_millis(300)),
            pg: None,
            lease: None,
            last_renewal: None,
            done: BTreeMap::new(),
            last_view: None,
            db,
        }
    }

    /// An agent that never fences its node: only for showing that the
    /// tests and the lab's oracle catch what that lets through.
    pub fn without_self_fence(mut self) -> DbAgent {
        self.self_fence = false;
        self
    }

    fn conninfo(&self) -> Option<String> {
        let node = self.db.node(&self.region)?;
        Some(format!(
            "host={} port={} user=postgres dbname=postgres connect_timeout=2",
            node.addr.ip(),
            node.addr.port()
        ))
    }

    async fn status(&mut self) -> Option<PgStatus> {
        if self.pg.is_none() {
            let conninfo = self.conninfo()?;
            match Pg::connect(&conninfo, Duration::from_secs(2)).await {
                Ok(pg) => self.pg = Some(pg),
                Err(e) => {
                    tracing::debug!(cluster = %self.db.name, "local node unreachable: {e:#}");
                    return None;
                }
            }
        }
        match self.pg.as_ref()?.status().await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(cluster = %self.db.name, "local node status: {e:#}");
                self.pg = None;
                None
            }
        }
    }

    /// Runs until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if !self.self_fence {
            tracing::warn!(
                cluster = %self.db.name,
                "{UNSAFE_NO_SELF_FENCE}=1: this agent will not fence its node when its lease runs out"
            );
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.round().await {
                tracing::debug!(cluster = %self.db.name, "database round: {e:#}");
            }
        }
    }

    async fn round(&mut self) -> Result<()> {
        let status = self.status().await;
        // The controllers' part is bounded so that a hanging controller
        // (a partition) cannot delay the fence past the lease deadline.
        let budget = self
            .lease
            .map_or(Duration::from_secs(2), |(_, until)| {
                until.saturating_duration_since(Instant::now() + self.fence_margin)
            })
            .clamp(Duration::from_millis(300), Duration::from_secs(2));
        let cluster = tokio::time::timeout(budget, self.sync(status.as_ref()))
            .await
            .ok()
            .flatten();
        self.guard(status.as_ref()).await;
        if let (Some(c), Some(s)) = (&cluster, status.as_ref()) {
            self.plan_steps(c, s).await;
        }
        if let Some(c) = &self.last_view {
            let target = self.proxy_target(c);
            if let Some(p) = &self.proxy {
                if p.target() != target {
                    if let Err(e) = p.set_target(target) {
                        tracing::warn!(cluster = %self.db.name, "writer proxy kept its target: {e}");
                    }
                }
            }
        }
        Ok(())
    }

    /// Reports the node, reads the cluster's committed state and keeps the lease.
    async fn sync(&mut self, status: Option<&PgStatus>) -> Option<ClusterState> {
        if let Some(s) = status {
            let report = ReplicationReport {
                cluster: self.db.name.clone(),
                region: self.region.clone(),
                role: s.role.as_str().to_string(),
                lsn: s.lsn,
                received_lsn: (s.role == Role::Standby).then(|| s.lsn + s.lag_bytes.unwrap_or(0)),
                lag_bytes: s.lag_bytes,
                lag_ms: s.lag_seconds.map(|l| (l.max(0.0) * 1000.0) as u64),
                read_only: s.read_only,
            };
            self.controllers.report_replication(&report).await;
        }
        let view = match self.controllers.clusters().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!("controllers unreachable: {e}");
                return None;
            }
        };
        let cluster = view.clusters.get(&self.db.name).cloned()?;
        self.last_view = Some(cluster.clone());
        self.keep_lease(&view, &cluster, status).await;
        Some(cluster)
    }

    fn holder(view: &ClustersView, cluster: &str) -> Option<(String, u64)> {
        view.leases
            .iter()
            .find(|l| l.cluster == cluster)
            .and_then(|l| l.holder.clone().map(|h| (h, l.epoch)))
    }

    /// Renews the lease this region holds, or takes it when this region is
    /// the writer and nobody holds it.
    async fn keep_lease(
        &mut self,
        view: &ClustersView,
        c: &ClusterState,
        status: Option<&PgStatus>,
    ) {
        let name = self.db.name.clone();
        let holder = Self::holder(view, &name);
        let period = self.db.lease.duration;
        let due = self.last_renewal.is_none_or(|t| t.elapsed() >= period / 4);
        let mine = holder.as_ref().is_some_and(|(h, _)| *h == self.region);
        let promoting = c
            .plan
            .as_ref()
            .is_some_and(|p| p.active() && p.step == Step::Promote && p.to == self.region);
        let eligible = c.may_acquire(&self.region)
            && (promoting || status.is_some_and(|s| s.role == Role::Primary));
        let command = match &holder {
            Some((_, epoch)) if mine && self.lease.is_some() => {
                if !due {
                    return;
                }
                Command::RenewLease {
                    cluster: name.clone(),
                    holder: self.region.clone(),
                    epoch: *epoch,
                }
            }
            // Not believed held (a restart, or a refused renewal): acquiring
            // renews a still-valid lease in its epoch, or takes a new epoch
            // once the table allows it.
            _ if eligible && due => Command::AcquireLease {
                cluster: name.clone(),
                holder: self.region.clone(),
            },
            _ => {
                if !mine {
                    self.lease = None;
                }
                return;
            }
        };
        let sent = Instant::now();
        self.last_renewal = Some(sent);
        match self.controllers.write(&command).await {
            Ok(answer) => {
                if let Applied::Lease(l) = answer.applied {
                    if self.lease.is_none_or(|(e, _)| e != l.epoch) {
                        tracing::info!(cluster = %name, epoch = l.epoch, "lease held");
                    }
                    self.lease = Some((l.epoch, sent + period));
                }
            }
            Err(CallError::Status {
                status: 409,
                message,
                ..
            }) => {
                tracing::warn!(cluster = %name, "lease refused: {message}");
                self.lease = None;
            }
            Err(e) => tracing::debug!(cluster = %name, "lease not renewed: {e}"),
        }
    }

    /// Whether this agent holds a lease it may still write under.
    fn lease_valid(&self) -> bool {
        self.lease
            .is_some_and(|(_, until)| Instant::now() + self.fence_margin < until)
    }

    /// Fences a primary that may not take writes; lifts a fence this agent
    /// may lift (it holds a valid lease).
    async fn guard(&mut self, status: Option<&PgStatus>) {
        let Some(s) = status else { return };
        if s.role != Role::Primary {
            return;
        }
        let valid = self.lease_valid();
        let Some(pg) = &self.pg else { return };
        if !valid && !s.read_only {
            if !self.self_fence {
                return;
            }
            match pg.fence().await {
                Ok(ended) => tracing::warn!(
                    cluster = %self.db.name,
                    sessions = ended,
                    "fenced the local primary: no valid lease"
                ),
                Err(e) => {
                    tracing::error!(cluster = %self.db.name, "self-fence failed: {e:#}");
                    self.pg = None;
                    return;
                }
            }
        } else if valid && s.read_only {
            match pg.unfence().await {
                Ok(()) => tracing::info!(cluster = %self.db.name, "lease held: fence lifted"),
                Err(e) => tracing::warn!(cluster = %self.db.name, "unfence: {e:#}"),
            }
        }
        // Synchronous replication resumes once a standby streams and is
        // within the budget (it was suspended at promotion).
        if valid
            && self.db.replication == Replication::Sync
            && !s.synchronous
            && s.streaming > 0
            && s.lag_bytes.is_some_and(|l| l <= self.db.rpo_budget)
        {
            match pg.set_synchronous(true).await {
                Ok(()) => {
                    tracing::info!(cluster = %self.db.name, "a standby streams: synchronous commits resumed")
                }
                Err(e) => {
                    tracing::warn!(cluster = %self.db.name, "resume synchronous commits: {e:#}")
                }
            }
        }
    }

    /// Carries out the current step of a plan when it falls to this region.
    async fn plan_steps(&mut self, c: &ClusterState, s: &PgStatus) {
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
                let Some(pg) = &self.pg else { return };
                match pg.fence().await {
                    Ok(ended) => {
                        // The position after the fence: what the standby must reach.
                        let lsn = pg.status().await.map(|s| s.lsn).ok();
                        self.lease = None;
                        Some((
                            true,
                            format!("{} fenced, {ended} sessions ended", self.region),
                            lsn,
                        ))
                    }
                    Err(e) => Some((false, format!("fence failed: {e:#}"), None)),
                }
            }
            Step::CatchUp if plan.to == self.region => {
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
                if s.role == Role::Primary {
                    Some((
                        true,
                        format!("{} already primary", self.region),
                        Some(s.lsn),
                    ))
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

    async fn scale_hook(&self, epoch: u64) -> (bool, String, Option<u64>) {
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

    /// Where this region's writer proxy leads: the writer of the current
    /// epoch, or nowhere while a plan is moving it.
    fn proxy_target(&self, c: &ClusterState) -> Target {
        if let Some(p) = c.plan.as_ref().filter(|p| p.active()) {
            if p.step <= Step::Promote {
                return Target::Closed {
                    reason: format!(
                        "failover in progress (plan {}, {} -> {}, step {})",
                        p.id,
                        p.from,
                        p.to,
                        p.step.as_str()
                    ),
                };
            }
        }
        if c.writer.epoch == 0 {
            return Target::Closed {
                reason: format!("no lease granted yet to {}", c.writer.region),
            };
        }
        match self.db.node(&c.writer.region) {
            Some(node) => Target::Writable(WriterTarget {
                addr: node.addr,
                epoch: c.writer.epoch,
                cluster: self.db.name.clone(),
            }),
            None => Target::Closed {
                reason: format!("no node of region {} in the configuration", c.writer.region),
            },
        }
    }
}
