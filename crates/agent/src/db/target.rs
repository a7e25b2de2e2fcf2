//! Where the region's writer proxy leads: the writer of the current epoch,
//! or nowhere while a plan is moving it; and until when. The deadline is
//! the writer's lease as this agent last saw it renewed, less the fence
//! margin: this region's own lease (counted from when its renewal was
//! sent), or another region's as the controllers reported it (its time
//! left, counted from when this agent asked). A proxy whose agent stops
//! hearing from the controllers stops relaying by then.

use std::time::{Duration, Instant};

use tern_core::failover::{ClusterState, Step};

use super::DbAgent;
use crate::writer_proxy::{Target, WriterTarget};

impl DbAgent {
    /// Points the writer proxy at the target of the last view, with the
    /// writer's lease as its deadline.
    pub(super) fn point_proxy(&self) {
        let Some(proxy) = &self.proxy else { return };
        let Some((sent, view)) = &self.last_view else {
            return;
        };
        let Some(c) = view.clusters.get(&self.db.name) else {
            return;
        };
        let target = self.proxy_target(c);
        if proxy.target() != target {
            if let Err(e) = proxy.set_target(target.clone()) {
                tracing::warn!(cluster = %self.db.name, "writer proxy kept its target: {e}");
                return;
            }
        }
        let Target::Writable(w) = &target else { return };
        if !self.self_fence {
            // The oracle's own test: an agent that never fences leaves its
            // proxy unbounded too (the deadline is a fence of its own).
            return;
        }
        let until = if c.writer.region == self.region {
            self.lease
                .filter(|(epoch, _)| *epoch == w.epoch)
                .map(|(_, until)| until)
        } else {
            view.leases
                .iter()
                .find(|l| {
                    l.cluster == self.db.name
                        && l.epoch == w.epoch
                        && l.holder.as_deref() == Some(c.writer.region.as_str())
                })
                .and_then(|l| l.expires_at_ms)
                .map(|expires| *sent + Duration::from_millis(expires.saturating_sub(view.now_ms)))
        };
        // No lease seen for the writer: usable until now, so not at all.
        let until = until
            .and_then(|u| u.checked_sub(self.fence_margin))
            .unwrap_or_else(Instant::now);
        proxy.set_valid_until(w.epoch, until.into());
    }

    /// Where this region's writer proxy leads: the writer of the current
    /// epoch, or nowhere while a plan is moving it.
    pub(super) fn proxy_target(&self, c: &ClusterState) -> Target {
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
