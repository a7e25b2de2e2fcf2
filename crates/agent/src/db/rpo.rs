//! The RPO time budget (DESIGN.md invariant 2, in time as well as bytes):
//! a primary whose standbys have confirmed none of the WAL it wrote more
//! than `rpo_time` ago, *and* whose own last lease renewal is older than
//! the loss window (`rpo_time` + one round), stops taking writes (the fence), so a primary cut off from
//! both its standbys and the quorum loses at most that much.
//! A primary whose standby region simply died keeps writing: it still
//! renews its lease. Aurora Global Database's `rds.global_db_rpo` is the
//! reference; it holds commits back until the lag is within the budget,
//! where tern refuses them (the node is stopped) and starts the node
//! again once a lease is renewed.
//!
//! The clock: every round the agent notes the primary's WAL position and
//! when it read it, and the most WAL a standby confirmed flushed. The
//! oldest unconfirmed write is the first position noted beyond the
//! confirmed one; it is noted up to one round after it was written, so the
//! bound is the budget plus one agent round
//! (`tern_core::lease::rpo_loss_window`). Two things keep a round that
//! short on a cut network: the WAL is noted and the watchdog armed from the
//! local status before the controllers are called, and a primary's calls to
//! the controllers get at most the budget (at least one tick) per round.

use std::time::{Duration, Instant};

use tern_pg::{PgStatus, Role};

use super::DbAgent;

impl DbAgent {
    /// Notes the primary's WAL position and what a standby confirmed.
    pub(super) fn note_wal(&mut self, status: Option<&PgStatus>) {
        let Some(s) = status else { return };
        if s.role != Role::Primary {
            self.wal_seen.clear();
            return;
        }
        if let Some(c) = s.confirmed_lsn {
            self.confirmed_lsn = self.confirmed_lsn.max(c);
        }
        let confirmed = self.confirmed_lsn;
        // Only the positions not yet confirmed matter.
        while self
            .wal_seen
            .front()
            .is_some_and(|(_, lsn)| *lsn <= confirmed)
        {
            self.wal_seen.pop_front();
        }
        if s.lsn > confirmed && self.wal_seen.back().is_none_or(|(_, lsn)| *lsn < s.lsn) {
            self.wal_seen.push_back((Instant::now(), s.lsn));
        }
    }

    /// How long the oldest WAL no standby confirmed has been waiting.
    pub(super) fn unconfirmed_for(&self) -> Option<Duration> {
        self.wal_seen.front().map(|(at, _)| at.elapsed())
    }

    /// When the budget runs out, if it is running: the later of the oldest
    /// unconfirmed write and the last renewal, plus the budget.
    ///
    /// The renewal counts as stale only after the whole loss window
    /// (`rpo_loss_window`: budget + one round), not after the budget: a
    /// renewal that is merely slow (a loaded host, a WAN) must not fence a
    /// primary whose standby is gone but which still reaches the quorum,
    /// and the loss stays within the same window either way.
    pub(super) fn rpo_deadline(&self) -> Option<Instant> {
        let budget = self.db.rpo_time?;
        let (since, _) = self.wal_seen.front()?;
        let renewed = self.last_renewal_ok.unwrap_or(*since);
        Some((*since + budget).max(renewed + self.rpo_window(budget)))
    }

    fn rpo_window(&self, budget: Duration) -> Duration {
        tern_core::lease::rpo_loss_window(budget, self.db.lease.duration)
    }

    /// Whether the primary must stop taking writes for the time budget, and
    /// why.
    pub(super) fn rpo_exceeded(&self) -> Option<String> {
        let budget = self.db.rpo_time?;
        let unconfirmed = self.unconfirmed_for()?;
        let renewed = self.last_renewal_ok.map(|t| t.elapsed());
        let stale = renewed.is_none_or(|r| r > self.rpo_window(budget));
        (unconfirmed > budget && stale).then(|| {
            format!(
                "no standby confirmed WAL written {} ms ago and the lease was last renewed {} ago: over the RPO budget of {} ms",
                unconfirmed.as_millis(),
                renewed.map_or("never".to_string(), |r| format!("{} ms", r.as_millis())),
                budget.as_millis()
            )
        })
    }
}
