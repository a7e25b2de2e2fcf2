//! Keeping the primary's lease: renew it while this region holds it, take
//! it when this region is the writer and nobody holds it, and count it
//! from when the renewal was *sent*, so the local deadline is never later
//! than the controllers'.

use std::time::Instant;

use tern_core::control::{Applied, Command};
use tern_core::failover::{ClusterState, Step};
use tern_proto::api::ClustersView;
use tern_proto::http::CallError;

use super::DbAgent;

impl DbAgent {
    pub(super) fn holder(view: &ClustersView, cluster: &str) -> Option<(String, u64)> {
        view.leases
            .iter()
            .find(|l| l.cluster == cluster)
            .and_then(|l| l.holder.clone().map(|h| (h, l.epoch)))
    }

    /// Renews the lease this region holds, or takes it when this region is
    /// the writer and nobody holds it.
    pub(super) async fn keep_lease(&mut self, view: &ClustersView, c: &ClusterState) {
        let name = self.db.name.clone();
        let holder = Self::holder(view, &name);
        let period = self.db.lease.duration;
        // Every quarter period; with a time budget for the RPO, often enough
        // that a primary still reaching the quorum never looks cut off.
        let every = match self.db.rpo_time {
            Some(budget) => (period / 4).min(budget / 3),
            None => period / 4,
        };
        let due = self.last_renewal.is_none_or(|t| t.elapsed() >= every);
        let mine = holder.as_ref().is_some_and(|(h, _)| *h == self.region);
        let promoting = c
            .plan
            .as_ref()
            .is_some_and(|p| p.active() && p.step == Step::Promote && p.to == self.region);
        // A primary's data directory (running or fenced) may hold the
        // writer's lease; a standby's only when a plan promotes it.
        let eligible = c.may_acquire(&self.region) && (promoting || !self.local.is_standby());
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
                    self.last_renewal_ok = Some(sent);
                }
            }
            Err(CallError::Refused { message, .. }) => {
                tracing::warn!(cluster = %name, "lease refused: {message}");
                self.lease = None;
            }
            Err(e) => tracing::debug!(cluster = %name, "lease not renewed: {e}"),
        }
    }

    /// Whether this agent holds a lease it may still write under.
    pub(super) fn lease_valid(&self) -> bool {
        self.lease
            .is_some_and(|(_, until)| Instant::now() + self.fence_margin < until)
    }
}
