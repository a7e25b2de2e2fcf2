//! The self-fence: a node that may take writes (running, not a standby)
//! without a valid lease is stopped before the lease deadline; a fenced
//! primary is started again only under a valid lease, while its region
//! holds the writer. Also resumes synchronous commits once a standby
//! streams again.
//!
//! The [`watchdog`] runs as a task of its own beside the database loop: it
//! stops the node at the deadline the loop last gave it, so the fence
//! happens on time even when the loop hangs in a call; and when the loop is
//! gone (a panic drops its end of the channel) it stops the node at once
//! and closes the writer proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_core::config::Replication;
use tern_core::failover::Step;
use tern_pg::{LocalNode, PgStatus};
use tokio::sync::watch;

use super::DbAgent;
use crate::writer_proxy::{Target, WriterProxy};

/// How long a fast shutdown of a fenced node gets before it escalates.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a node that was fenced gets to start again.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What the watchdog is told by the database loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceDeadline {
    /// Not yet: the loop has not finished its first round.
    Unarmed,
    /// Stop the node at this instant unless the deadline moves.
    At(Instant),
    /// No valid lease: the node must not take writes now.
    Now,
}

/// Stops `node` whenever it may take writes past the deadline the loop
/// gave; when the loop is gone without `stop` (it panicked), stops it at
/// once and closes the proxy. An agent that stops on purpose (`stop`
/// cancelled: a restart) leaves its node running: the next agent renews
/// its lease within its startup grace, and meanwhile the writer proxies
/// stop relaying at the lease's end.
pub async fn watchdog(
    cluster: String,
    node: Arc<LocalNode>,
    mut deadline: watch::Receiver<FenceDeadline>,
    proxy: Option<WriterProxy>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let current = *deadline.borrow_and_update();
        let due = match current {
            FenceDeadline::Unarmed => None,
            FenceDeadline::Now => Some(Instant::now()),
            FenceDeadline::At(t) => Some(t),
        };
        let fired = match due {
            None => deadline.changed().await.map(|_| false),
            Some(t) => tokio::select! {
                r = deadline.changed() => r.map(|_| false),
                () = tokio::time::sleep_until(t.into()) => Ok(true),
            },
        };
        match fired {
            Ok(false) => continue,
            Ok(true) => {
                if node.may_accept_writes() {
                    stop_node(&cluster, &node, "no renewed lease by the fence deadline").await;
                }
                // Until the loop moves the deadline, nothing more to do.
                if deadline.changed().await.is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    if stop.is_cancelled() {
        if node.may_accept_writes() {
            tracing::warn!(%cluster, "the agent stops; its primary keeps running until its next agent renews the lease (writer proxies stop relaying when it runs out)");
        }
        return;
    }
    // The loop is gone without being told to stop (it panicked): fail closed.
    if let Some(p) = &proxy {
        let _ = p.set_target(Target::Closed {
            reason: "the agent's database loop stopped".into(),
        });
    }
    if node.may_accept_writes() {
        stop_node(&cluster, &node, "the agent's database loop stopped").await;
    }
}

async fn stop_node(cluster: &str, node: &LocalNode, why: &str) {
    match node.stop(STOP_GRACE).await {
        Ok(how) => tracing::warn!(%cluster, how = how.as_str(), "fenced the local primary: {why}"),
        Err(e) => tracing::error!(
            %cluster,
            "cannot fence the local primary ({why}): {e}; it may still take writes from clients that reach it directly"
        ),
    }
}

impl DbAgent {
    /// Tells the watchdog when to fence: a fence margin before the lease
    /// deadline, or now without a valid lease.
    pub(super) fn arm_watchdog(&self) {
        let next = match self.lease {
            _ if self.rpo_exceeded().is_some() => FenceDeadline::Now,
            Some((_, until)) if self.lease_valid() => {
                let lease = until.checked_sub(self.fence_margin).unwrap_or(until);
                // The RPO time budget may run out first (a loop that hangs
                // cannot tell whether a standby confirmed meanwhile).
                FenceDeadline::At(self.rpo_deadline().map_or(lease, |r| r.min(lease)))
            }
            _ if self.in_startup_grace() => {
                FenceDeadline::At(self.started + self.db.lease.duration)
            }
            _ => FenceDeadline::Now,
        };
        self.deadline.send_if_modified(|d| {
            let changed = *d != next;
            *d = next;
            changed
        });
    }

    /// Fences a node that may take writes without a valid lease; starts a
    /// fenced primary again under a valid lease while its region holds the
    /// writer and no plan moves it.
    pub(super) async fn guard(&mut self, status: Option<&PgStatus>) {
        let rpo = self.rpo_exceeded();
        let valid = self.lease_valid() && rpo.is_none();
        if !valid && self.local.may_accept_writes() {
            if !self.self_fence || self.in_startup_grace() {
                return;
            }
            self.pg = None;
            let why = rpo.clone().unwrap_or_else(|| "no valid lease".into());
            match self.local.stop(STOP_GRACE).await {
                Ok(how) => {
                    tracing::warn!(cluster = %self.db.name, how = how.as_str(), "fenced the local primary: {why}");
                    self.audit(
                        "fence",
                        format!("primary fenced ({}): {why}", how.as_str()),
                        vec![match self.lease {
                            Some((e, _)) => format!("the lease of epoch {e} was held here"),
                            None => "no lease held".into(),
                        }],
                    )
                    .await;
                    // The node starts again once a renewal sent after the
                    // fence succeeds; the budget's clock starts afresh then.
                    if rpo.is_some() {
                        self.rpo_fenced_at = Some(Instant::now());
                    }
                    self.wal_seen.clear();
                }
                Err(e) => tracing::error!(
                    cluster = %self.db.name,
                    "cannot fence the local primary: {e}; it may still take writes from clients that reach it directly"
                ),
            }
            return;
        }
        let writer_here = self.cluster().is_some_and(|c| {
            c.writer.region == self.region
                && c.writer.epoch > 0
                && !c
                    .plan
                    .as_ref()
                    .is_some_and(|p| p.active() && p.step < Step::Done)
        });
        let renewed_since_rpo_fence = match (self.rpo_fenced_at, self.last_renewal_ok) {
            (None, _) => true,
            (Some(fenced), Some(renewed)) => renewed > fenced,
            (Some(_), None) => false,
        };
        if valid
            && renewed_since_rpo_fence
            && writer_here
            && !self.local.is_running()
            && !self.local.is_standby()
        {
            self.rpo_fenced_at = None;
            match self.local.start(START_TIMEOUT).await {
                Ok(()) => {
                    tracing::info!(cluster = %self.db.name, "lease held again: the fenced primary is started");
                    self.audit(
                        "unfence",
                        "fenced primary started again under a valid lease".into(),
                        vec![format!("epoch {}", self.lease.map_or(0, |(e, _)| e))],
                    )
                    .await;
                }
                Err(e) => tracing::warn!(cluster = %self.db.name, "start the fenced primary: {e}"),
            }
            return;
        }
        // Synchronous replication resumes once a standby streams and is
        // within the budget (it was suspended at promotion).
        let Some(s) = status else { return };
        let Some(pg) = &self.pg else { return };
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
                    tracing::warn!(cluster = %self.db.name, "resume synchronous commits: {e}")
                }
            }
        }
    }
}
