//! One service's state at the edge, shared by the HTTP path and the DNS
//! authority: per backend, its health tracker, measured round trip and
//! latency histogram; per service, the outlier detector, the retry budget
//! and which regions it serves now. Also the edge's [`Clock`].
//!
//! This module names neither [`crate::state::EdgeState`] nor the DNS
//! authority: both read it, so a DNS answer and an HTTP routing decision
//! about one backend read the same tracker.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::histogram::Histogram;
use tern_core::config::{Backend, Service};
use tern_core::health::{HealthState, HealthTracker};
use tern_core::outlier::OutlierDetector;
use tern_core::retry::RetryBudget;

use crate::metrics::RequestCounters;

/// The clock every decision of this edge is made on: time since the edge
/// started, which the pure core takes as `now`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_wall: SystemTime,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
            start_wall: SystemTime::now(),
        }
    }

    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Converts a clock reading to Unix milliseconds for reports.
    pub fn unix_ms(&self, at: Duration) -> u64 {
        (self.start_wall + at)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

pub struct BackendState {
    pub config: Backend,
    pub latency: Histogram,
    pub health: Mutex<HealthTracker>,
    /// Smoothed round trip of successful health probes.
    pub rtt: Mutex<Option<Duration>>,
}

/// Which regions a service is sending its first-choice traffic to, and since when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    pub regions: Vec<String>,
    pub all_unhealthy: bool,
    pub since: Duration,
}

pub struct ServiceState {
    pub config: Service,
    pub backends: Vec<BackendState>,
    pub outliers: Mutex<OutlierDetector>,
    pub retry_budget: Mutex<RetryBudget>,
    pub serving: Mutex<Serving>,
    pub requests: RequestCounters,
    /// What this service's clients saw, per second (its drill guardrails).
    pub clients: crate::guardrail::ClientWindow,
}

impl ServiceState {
    /// (backend, healthy, ejected, rtt) for every backend, read under short locks.
    pub(crate) fn views(
        &self,
        now: Duration,
    ) -> Vec<(&BackendState, bool, bool, Option<Duration>)> {
        let outliers = self.outliers.lock().expect("outlier lock");
        self.backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let healthy = b.health.lock().expect("health lock").state() == HealthState::Up;
                let rtt = *b.rtt.lock().expect("rtt lock");
                (b, healthy, outliers.is_ejected(i, now), rtt)
            })
            .collect()
    }
}
