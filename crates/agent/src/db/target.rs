//! Where the region's writer proxy leads: the writer of the current epoch,
//! or nowhere while a plan is moving it.

use tern_core::failover::{ClusterState, Step};

use super::DbAgent;
use crate::writer_proxy::{Target, WriterTarget};

impl DbAgent {
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
