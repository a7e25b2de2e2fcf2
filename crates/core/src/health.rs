//! Health thresholds: `fall` consecutive failures mark a target down, `rise`
//! consecutive successes mark it up again.
//!
//! [`HealthTracker`] is a sans-IO state machine: probe results and the current
//! time go in, a [`Transition`] comes out when the state changes. The runtime
//! that sends probes lives in the roles.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HealthState {
    Up,
    Down,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

/// A change of state, with the time it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: HealthState,
    pub to: HealthState,
    pub at: Duration,
}

#[derive(Debug, Clone)]
pub struct HealthTracker {
    fall: u32,
    rise: u32,
    state: HealthState,
    consecutive_ok: u32,
    consecutive_failed: u32,
    failed_total: u64,
    since: Duration,
    last_probe: Option<Duration>,
}

impl HealthTracker {
    /// A tracker that starts in `initial`, as of `now`. Edges start targets
    /// `Up`, like HAProxy: an unchecked target is assumed to serve until the
    /// first `fall` probes say otherwise.
    pub fn new(fall: u32, rise: u32, initial: HealthState, now: Duration) -> HealthTracker {
        HealthTracker {
            fall: fall.max(1),
            rise: rise.max(1),
            state: initial,
            consecutive_ok: 0,
            consecutive_failed: 0,
            failed_total: 0,
            since: now,
            last_probe: None,
        }
    }

    pub fn state(&self) -> HealthState {
        self.state
    }

    /// When the current state began.
    pub fn since(&self) -> Duration {
        self.since
    }

    pub fn consecutive_failed(&self) -> u32 {
        self.consecutive_failed
    }

    /// Failed probes since the tracker was made, in any state.
    pub fn probe_failures(&self) -> u64 {
        self.failed_total
    }

    pub fn consecutive_ok(&self) -> u32 {
        self.consecutive_ok
    }

    pub fn last_probe(&self) -> Option<Duration> {
        self.last_probe
    }

    /// Records one probe result taken at `now`.
    pub fn observe(&mut self, ok: bool, now: Duration) -> Option<Transition> {
        self.last_probe = Some(now);
        if ok {
            self.consecutive_ok = self.consecutive_ok.saturating_add(1);
            self.consecutive_failed = 0;
        } else {
            self.consecutive_failed = self.consecutive_failed.saturating_add(1);
            self.failed_total = self.failed_total.saturating_add(1);
            self.consecutive_ok = 0;
        }
        let next = match self.state {
            HealthState::Up if self.consecutive_failed >= self.fall => HealthState::Down,
            HealthState::Down if self.consecutive_ok >= self.rise => HealthState::Up,
            s => s,
        };
        if next == self.state {
            return None;
        }
        let t = Transition {
            from: self.state,
            to: next,
            at: now,
        };
        self.state = next;
        self.since = now;
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::{Down, Up};

    /// Each row: fall, rise, initial state, probe results (one per interval),
    /// expected state after each probe.
    #[test]
    fn threshold_table() {
        let table: &[(u32, u32, HealthState, &str, &str)] = &[
            // One failed probe moves nothing.
            (3, 3, Up, "x.", "UU"),
            (3, 3, Up, "x..x.", "UUUUU"),
            // fall consecutive failures mark down, on the third.
            (3, 3, Up, "xxx", "UUD"),
            (3, 2, Up, "xxxx..", "UUDDDU"),
            // Alternating results never reach either threshold.
            (2, 2, Up, "x.x.x.x.", "UUUUUUUU"),
            (2, 2, Down, ".x.x.x.x", "DDDDDDDD"),
            // rise consecutive successes mark up.
            (3, 3, Down, "..x...", "DDDDDU"),
            (1, 1, Up, "x.x", "DUD"),
        ];
        for (row, (fall, rise, initial, probes, want)) in table.iter().enumerate() {
            let mut t = HealthTracker::new(*fall, *rise, *initial, Duration::ZERO);
            let got: String = probes
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    t.observe(c == '.', Duration::from_secs(i as u64 + 1));
                    if t.state() == Up {
                        'U'
                    } else {
                        'D'
                    }
                })
                .collect();
            assert_eq!(
                got, *want,
                "row {row}: fall {fall} rise {rise} probes {probes}"
            );
        }
    }

    #[test]
    fn transition_carries_time_and_since_follows() {
        let mut t = HealthTracker::new(2, 2, Up, Duration::ZERO);
        assert_eq!(t.observe(false, Duration::from_millis(1000)), None);
        let tr = t.observe(false, Duration::from_millis(2000)).unwrap();
        assert_eq!(
            (tr.from, tr.to, tr.at),
            (Up, Down, Duration::from_millis(2000))
        );
        assert_eq!(t.since(), Duration::from_millis(2000));
        assert_eq!(t.consecutive_failed(), 2);
        t.observe(true, Duration::from_millis(3000));
        let back = t.observe(true, Duration::from_millis(4000)).unwrap();
        assert_eq!(back.to, Up);
        assert_eq!(t.since(), Duration::from_millis(4000));
    }

    /// Detection time is bounded by fall x interval once a target dies.
    #[test]
    fn detection_within_fall_intervals() {
        let interval = Duration::from_millis(250);
        for fall in 1..=5u32 {
            let mut t = HealthTracker::new(fall, 2, Up, Duration::ZERO);
            let mut now = Duration::ZERO;
            let died_at = Duration::from_millis(1_000);
            let mut detected = None;
            while detected.is_none() {
                now += interval;
                if let Some(tr) = t.observe(now < died_at, now) {
                    detected = Some(tr.at);
                }
            }
            let took = detected.unwrap() - died_at;
            assert!(took <= interval * fall, "fall {fall}: took {took:?}");
        }
    }
}
