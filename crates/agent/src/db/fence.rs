//! The self-fence: a primary without a valid lease is fenced before the
//! lease deadline; a fence is lifted only under a valid lease. Also
//! resumes synchronous commits once a standby streams again.

use tern_core::config::Replication;
use tern_pg::{PgStatus, Role};

use super::DbAgent;

impl DbAgent {
    /// Fences a primary that may not take writes; lifts a fence this agent
    /// may lift (it holds a valid lease).
    pub(super) async fn guard(&mut self, status: Option<&PgStatus>) {
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
}
