//! Leases and epochs for a database cluster's primary role (DESIGN.md
//! invariant 1).
//!
//! A node may accept writes only while it holds an unexpired lease for the
//! current epoch. The [`LeaseTable`] grants a new lease, with a new, higher
//! epoch (the fencing token), only once the previous holder's lease has
//! surely expired: its expiry plus a clock-drift margin. Epochs never
//! decrease, whatever the order of calls. A holder renews before expiry; a
//! renewal that arrives after expiry is refused, because the holder must by
//! then have fenced itself.
//!
//! Times are cluster time (the controller's `clock` module): monotonic
//! within a leadership term, never moving backward. A newly elected leader
//! cannot know how far its clock is from its predecessor's, so
//! [`LeaseTable::on_leader_change`] treats every lease as possibly valid for
//! a whole lease period from the moment it took over.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSettings {
    #[serde(with = "crate::units::serde_ms")]
    pub duration: Duration,
    #[serde(with = "crate::units::serde_ms")]
    pub drift_margin: Duration,
}

/// A granted lease: `holder` may accept writes for `cluster` in `epoch`
/// until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub cluster: String,
    pub holder: String,
    pub epoch: u64,
    #[serde(with = "crate::units::serde_ms")]
    pub expires_at: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum LeaseError {
    #[error("cluster {cluster} is leased to {holder} (epoch {epoch}); a new lease is possible at {safe_at:?}")]
    HeldByOther {
        cluster: String,
        holder: String,
        epoch: u64,
        /// Expiry plus the drift margin.
        #[serde(with = "crate::units::serde_ms")]
        safe_at: Duration,
    },
    #[error("{holder} does not hold epoch {epoch} of cluster {cluster}")]
    NotHolder {
        cluster: String,
        holder: String,
        epoch: u64,
    },
    #[error("the lease of {holder} on cluster {cluster} expired at {expired_at:?}; it must acquire a new one")]
    Expired {
        cluster: String,
        holder: String,
        #[serde(with = "crate::units::serde_ms")]
        expired_at: Duration,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClusterLease {
    /// The highest epoch ever granted.
    epoch: u64,
    holder: Option<String>,
    #[serde(with = "crate::units::serde_ms")]
    expires_at: Duration,
    /// No new epoch before this: expiry plus margin, or later after a leader change.
    #[serde(with = "crate::units::serde_ms")]
    safe_at: Duration,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTable {
    settings: Option<LeaseSettings>,
    clusters: BTreeMap<String, ClusterLease>,
}

impl LeaseTable {
    pub fn new(settings: LeaseSettings) -> LeaseTable {
        LeaseTable {
            settings: Some(settings),
            clusters: BTreeMap::new(),
        }
    }

    /// The lease period and drift margin.
    pub fn settings(&self) -> LeaseSettings {
        self.settings.expect("LeaseTable::new sets the settings")
    }

    /// The clusters that ever had a lease, by name.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.clusters.keys().map(String::as_str)
    }

    /// The current epoch of a cluster (0 before any grant).
    pub fn epoch(&self, cluster: &str) -> u64 {
        self.clusters.get(cluster).map_or(0, |c| c.epoch)
    }

    /// The current holder and expiry, if any lease was granted and not released.
    pub fn holder(&self, cluster: &str) -> Option<(String, u64, Duration)> {
        let c = self.clusters.get(cluster)?;
        c.holder.clone().map(|h| (h, c.epoch, c.expires_at))
    }

    /// Whether a new epoch may be granted now: nobody holds the lease, or
    /// the holder's lease expired more than the drift margin ago.
    pub fn grantable(&self, cluster: &str, now: Duration) -> bool {
        self.clusters
            .get(cluster)
            .is_none_or(|c| c.holder.is_none() || now >= c.safe_at)
    }

    /// Grants `holder` the lease. The current holder re-acquiring before
    /// expiry renews its lease in the same epoch; anyone else gets a new
    /// epoch, but only after the previous lease surely expired.
    pub fn acquire(
        &mut self,
        cluster: &str,
        holder: &str,
        now: Duration,
    ) -> Result<Lease, LeaseError> {
        let s = self.settings();
        let c = self.clusters.entry(cluster.to_string()).or_default();
        if let Some(current) = &c.holder {
            if current == holder && now < c.expires_at {
                c.expires_at = now + s.duration;
                c.safe_at = c.safe_at.max(c.expires_at + s.drift_margin);
                return Ok(lease(cluster, c));
            }
        }
        if now < c.safe_at {
            return Err(LeaseError::HeldByOther {
                cluster: cluster.to_string(),
                holder: c.holder.clone().unwrap_or_default(),
                epoch: c.epoch,
                safe_at: c.safe_at,
            });
        }
        c.epoch += 1;
        c.holder = Some(holder.to_string());
        c.expires_at = now + s.duration;
        c.safe_at = c.expires_at + s.drift_margin;
        Ok(lease(cluster, c))
    }

    /// Grants `holder` a lease in a *new* epoch (a failover plan's grant):
    /// allowed when the lease is grantable, or when `holder` holds it
    /// already (its own older epoch is superseded at once). A plan's target
    /// that happens to hold the lease still gets a fresh epoch, so the
    /// promotion it leads to is fenced from anything done under the old one.
    pub fn grant_new_epoch(
        &mut self,
        cluster: &str,
        holder: &str,
        now: Duration,
    ) -> Result<Lease, LeaseError> {
        let s = self.settings();
        let c = self.clusters.entry(cluster.to_string()).or_default();
        let own = c.holder.as_deref() == Some(holder);
        if !own && c.holder.is_some() && now < c.safe_at {
            return Err(LeaseError::HeldByOther {
                cluster: cluster.to_string(),
                holder: c.holder.clone().unwrap_or_default(),
                epoch: c.epoch,
                safe_at: c.safe_at,
            });
        }
        c.epoch += 1;
        c.holder = Some(holder.to_string());
        c.expires_at = now + s.duration;
        c.safe_at = c.safe_at.max(c.expires_at + s.drift_margin);
        Ok(lease(cluster, c))
    }

    /// Extends a lease that is still valid.
    pub fn renew(
        &mut self,
        cluster: &str,
        holder: &str,
        epoch: u64,
        now: Duration,
    ) -> Result<Lease, LeaseError> {
        let s = self.settings();
        let not_holder = || LeaseError::NotHolder {
            cluster: cluster.to_string(),
            holder: holder.to_string(),
            epoch,
        };
        let c = self.clusters.get_mut(cluster).ok_or_else(not_holder)?;
        if c.epoch != epoch || c.holder.as_deref() != Some(holder) {
            return Err(not_holder());
        }
        if now >= c.expires_at {
            return Err(LeaseError::Expired {
                cluster: cluster.to_string(),
                holder: holder.to_string(),
                expired_at: c.expires_at,
            });
        }
        c.expires_at = now + s.duration;
        c.safe_at = c.safe_at.max(c.expires_at + s.drift_margin);
        Ok(lease(cluster, c))
    }

    /// Gives a lease up. The holder promises it has stopped taking writes,
    /// so the next epoch may be granted at once.
    pub fn release(&mut self, cluster: &str, holder: &str, epoch: u64) -> Result<(), LeaseError> {
        let c = self.clusters.get_mut(cluster);
        match c {
            Some(c) if c.epoch == epoch && c.holder.as_deref() == Some(holder) => {
                c.holder = None;
                c.expires_at = Duration::ZERO;
                c.safe_at = Duration::ZERO;
                Ok(())
            }
            _ => Err(LeaseError::NotHolder {
                cluster: cluster.to_string(),
                holder: holder.to_string(),
                epoch,
            }),
        }
    }

    /// A new controller leader took over at `now` (on its own clock): every
    /// lease it did not release may still be valid for a full lease period
    /// plus the margin, whatever the old leader's clock said.
    pub fn on_leader_change(&mut self, now: Duration) {
        let s = self.settings();
        for c in self.clusters.values_mut() {
            if c.holder.is_some() {
                c.expires_at = c.expires_at.max(now + s.duration);
                c.safe_at = c.safe_at.max(c.expires_at + s.drift_margin);
            }
        }
    }
}

fn lease(cluster: &str, c: &ClusterLease) -> Lease {
    Lease {
        cluster: cluster.to_string(),
        holder: c.holder.clone().unwrap_or_default(),
        epoch: c.epoch,
        expires_at: c.expires_at,
    }
}

/// How often an agent runs its database round for a lease of `lease`: a
/// tenth of it, between 100 and 500 ms.
pub fn agent_tick(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(100), Duration::from_millis(500))
}

/// The longest a primary's calls to the controllers may take in one round
/// under an RPO time budget `rpo`: the budget itself, and at least one tick.
/// A slower renewal could not keep the primary writing anyway (the budget
/// counts from the last renewal that was sent and answered).
pub fn rpo_call_bound(rpo: Duration, lease: Duration) -> Duration {
    rpo.max(agent_tick(lease))
}

/// The span of acknowledged writes an RPO time budget `rpo` may lose when a
/// primary is cut off from its standbys and the quorum: the budget, plus the
/// longest a write can go unnoticed by the agent, one round (its tick, or
/// its controller calls when they hang: [`rpo_call_bound`]).
pub fn rpo_loss_window(rpo: Duration, lease: Duration) -> Duration {
    rpo + rpo_call_bound(rpo, lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(5);
    const MARGIN: Duration = Duration::from_secs(1);

    fn table() -> LeaseTable {
        LeaseTable::new(LeaseSettings {
            duration: LEASE,
            drift_margin: MARGIN,
        })
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_new_holder_waits_for_expiry_plus_margin() {
        let mut t = table();
        let first = t.acquire("db", "east", s(0)).unwrap();
        assert_eq!(first.epoch, 1);
        for at in [1, 4, 5] {
            assert!(
                matches!(
                    t.acquire("db", "west", s(at)),
                    Err(LeaseError::HeldByOther { .. })
                ),
                "at {at}"
            );
        }
        // Expired at 5, but the margin runs to 6.
        assert!(t
            .acquire("db", "west", s(6) - Duration::from_millis(1))
            .is_err());
        let second = t.acquire("db", "west", s(6)).unwrap();
        assert_eq!(second.epoch, 2);
    }

    #[test]
    fn renewal_keeps_the_epoch_and_pushes_the_wait() {
        let mut t = table();
        let l = t.acquire("db", "east", s(0)).unwrap();
        let r = t.renew("db", "east", l.epoch, s(4)).unwrap();
        assert_eq!((r.epoch, r.expires_at), (1, s(9)));
        assert!(t.acquire("db", "west", s(7)).is_err());
        assert!(t.acquire("db", "west", s(10)).is_ok());
    }

    #[test]
    fn late_renewals_and_strangers_are_refused() {
        let mut t = table();
        let l = t.acquire("db", "east", s(0)).unwrap();
        assert!(matches!(
            t.renew("db", "east", l.epoch, s(5)),
            Err(LeaseError::Expired { .. })
        ));
        assert!(matches!(
            t.renew("db", "west", l.epoch, s(1)),
            Err(LeaseError::NotHolder { .. })
        ));
        assert!(matches!(
            t.renew("db", "east", 7, s(1)),
            Err(LeaseError::NotHolder { .. })
        ));
    }

    #[test]
    fn release_allows_an_immediate_new_epoch() {
        let mut t = table();
        let l = t.acquire("db", "east", s(0)).unwrap();
        assert!(t.release("db", "west", l.epoch).is_err());
        t.release("db", "east", l.epoch).unwrap();
        assert_eq!(t.acquire("db", "west", s(1)).unwrap().epoch, 2);
    }

    #[test]
    fn a_leader_change_waits_out_a_whole_lease() {
        let mut t = table();
        t.acquire("db", "east", s(0)).unwrap();
        // The new leader's clock reads 2 s at takeover; whatever the old
        // leader thought, the lease may last until 2 + 5 s, plus the margin.
        t.on_leader_change(s(2));
        assert!(t.acquire("db", "west", s(7)).is_err());
        assert_eq!(t.acquire("db", "west", s(8)).unwrap().epoch, 2);
    }

    /// Any sequence of calls, over many seeds: epochs never decrease, and no
    /// two holders ever hold unexpired leases at the same moment.
    #[test]
    fn epochs_only_grow_and_leases_never_overlap() {
        for seed in 0..200u64 {
            let mut rng = Lcg(seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407));
            let mut t = table();
            let mut now = Duration::ZERO;
            let mut last_epoch = 0;
            let mut granted: Vec<Lease> = Vec::new();
            let holders = ["east", "west", "north"];
            for _ in 0..300 {
                now += Duration::from_millis(rng.next() % 1500);
                let h = holders[(rng.next() % 3) as usize];
                match rng.next() % 4 {
                    0 | 1 => {
                        if let Ok(l) = t.acquire("db", h, now) {
                            granted.push(l);
                        }
                    }
                    2 => {
                        let e = t.epoch("db");
                        if let Ok(l) = t.renew("db", h, e, now) {
                            granted.push(l);
                        }
                    }
                    _ => t.on_leader_change(now),
                }
                let e = t.epoch("db");
                assert!(
                    e >= last_epoch,
                    "seed {seed}: epoch went from {last_epoch} to {e}"
                );
                last_epoch = e;
            }
            // A grant of a new epoch never starts before every earlier
            // epoch's latest expiry plus the margin.
            for (i, later) in granted.iter().enumerate() {
                let start = later.expires_at - LEASE;
                for earlier in &granted[..i] {
                    if earlier.epoch < later.epoch {
                        assert!(
                            start >= earlier.expires_at + MARGIN,
                            "seed {seed}: epoch {} granted at {start:?} while epoch {} ran to {:?}",
                            later.epoch,
                            earlier.epoch,
                            earlier.expires_at
                        );
                    }
                }
            }
        }
    }

    /// A tiny deterministic generator, so the core needs no RNG dependency.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }
}
