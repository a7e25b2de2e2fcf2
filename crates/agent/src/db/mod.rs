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
use std::time::{Duration, Instant};

use anyhow::Result;
use tern_core::config::Database;
use tern_core::failover::{ClusterState, Step};
use tern_pg::{Pg, PgStatus, Role};
use tern_proto::api::ReplicationReport;
use tern_proto::ControllerClient;
pub use tern_proto::UNSAFE_NO_SELF_FENCE;
use tokio_util::sync::CancellationToken;

use crate::writer_proxy::WriterProxy;

mod fence;
mod lease;
mod steps;
mod target;

/// Whether this process was asked not to fence ([`UNSAFE_NO_SELF_FENCE`]
/// set to `1`). Honoured only by builds with the `fault-injection`
/// feature (the test builds); a normal build refuses it, loudly.
fn fault_injection_asked() -> bool {
    let asked = std::env::var(UNSAFE_NO_SELF_FENCE).is_ok_and(|v| v == "1");
    if asked && !cfg!(feature = "fault-injection") {
        tracing::error!(
            "{UNSAFE_NO_SELF_FENCE}=1 ignored: this build of tern has no fault injection; the agent fences as always"
        );
        return false;
    }
    asked
}

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
            self_fence: !fault_injection_asked(),
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
    /// tests and the lab's oracle catch what that lets through. Exists only
    /// in builds with the `fault-injection` feature, which tests turn on.
    #[cfg(feature = "fault-injection")]
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
}
