//! Cluster time: the clock every lease, plan step and verdict is counted on
//! (DESIGN.md invariant 1: no wall-clock step shortens a lease).
//!
//! Cluster time is milliseconds since the Unix epoch, like a wall clock,
//! but it is read from the wall clock only once per leadership term. A
//! leader starts its term's clock at the later of the replicated state's
//! time (the time of the last applied entry) and its own wall clock, then
//! counts monotonic time ([`Instant`]) from there, so:
//!
//! - a wall-clock step during a term changes nothing;
//! - a backward step between terms cannot move cluster time back (the state
//!   machine also applies every entry at no earlier than the last one);
//! - a forward step on a node that becomes leader moves cluster time ahead,
//!   but the new leader's first entry (`LeaderChanged`) extends every lease
//!   to a whole period from then, so the old holder still gets its full
//!   lease in real time.
//!
//! The wall clock itself is a [`WallClock`], the system clock plus an
//! offset that tests step to play a clock step on one controller.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A node's wall clock: the system clock plus a step (0 unless a test
/// stepped it).
#[derive(Debug, Default)]
pub struct WallClock {
    step_ms: AtomicI64,
}

impl WallClock {
    pub fn new() -> Arc<WallClock> {
        Arc::new(WallClock::default())
    }

    /// Time since the Unix epoch on this clock.
    pub fn now(&self) -> Duration {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let step = self.step_ms.load(Ordering::Relaxed);
        if step >= 0 {
            system + Duration::from_millis(step as u64)
        } else {
            system.saturating_sub(Duration::from_millis(step.unsigned_abs()))
        }
    }

    /// Steps the clock by `ms` (negative: backward), as an operator or a
    /// misbehaving time service would.
    pub fn step(&self, ms: i64) {
        self.step_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

/// The term this node leads and where its cluster time started.
#[derive(Debug, Clone, Copy)]
struct TermClock {
    term: u64,
    base: Duration,
    started: Instant,
}

/// One node's reading of cluster time.
#[derive(Debug)]
pub struct ClusterClock {
    wall: Arc<WallClock>,
    term: Mutex<Option<TermClock>>,
    /// The state's time when it last advanced, and when that was (for the
    /// estimate a node that does not lead answers with).
    applied: Mutex<Option<(Duration, Instant)>>,
}

impl ClusterClock {
    pub fn new(wall: Arc<WallClock>) -> ClusterClock {
        ClusterClock {
            wall,
            term: Mutex::new(None),
            applied: Mutex::new(None),
        }
    }

    pub fn wall(&self) -> &Arc<WallClock> {
        &self.wall
    }

    /// The leader's cluster time in `term`, given the replicated state's
    /// time: the term's clock starts at the first call.
    pub fn leader_now(&self, term: u64, state_time: Duration) -> Duration {
        let mut clock = self.term.lock().expect("clock lock");
        match *clock {
            Some(c) if c.term == term => (c.base + c.started.elapsed()).max(state_time),
            _ => {
                let base = state_time.max(self.wall.now());
                *clock = Some(TermClock {
                    term,
                    base,
                    started: Instant::now(),
                });
                base
            }
        }
    }

    /// Notes the replicated state's time after an apply.
    pub fn applied(&self, state_time: Duration) {
        let mut applied = self.applied.lock().expect("clock lock");
        if applied.is_none_or(|(t, _)| state_time > t) {
            *applied = Some((state_time, Instant::now()));
        }
    }

    /// An estimate of cluster time on a node that does not lead: the
    /// state's time plus the monotonic time since it last advanced. It
    /// trails the leader's by the replication delay, never the other way.
    pub fn follower_now(&self, state_time: Duration) -> Duration {
        let applied = *self.applied.lock().expect("clock lock");
        match applied {
            Some((t, at)) if t >= state_time => t + at.elapsed(),
            _ => state_time,
        }
    }
}
