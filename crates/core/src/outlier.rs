//! Passive outlier detection: backends that fail real requests are ejected
//! without waiting for the next health probe.
//!
//! Consecutive failures (connect error, reset, timeout, 5xx) eject a backend
//! for `base_ejection` times the number of times it has been ejected, capped
//! at `max_ejection`. At most `max_ejected_share` of a service's backends are
//! ejected at once, but one backend may always be.

use std::time::Duration;

use crate::config::OutlierSettings;

#[derive(Debug, Clone, Default)]
struct BackendOutlier {
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Duration>,
    returned_at: Option<Duration>,
}

/// An ejection the detector decided; the runtime logs and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub backend: usize,
    pub until: Duration,
    /// How many times this backend has now been ejected in a row.
    pub count: u32,
}

#[derive(Debug, Clone)]
pub struct OutlierDetector {
    settings: OutlierSettings,
    backends: Vec<BackendOutlier>,
}

impl OutlierDetector {
    pub fn new(settings: OutlierSettings, backends: usize) -> OutlierDetector {
        OutlierDetector {
            settings,
            backends: vec![BackendOutlier::default(); backends],
        }
    }

    pub fn is_ejected(&self, backend: usize, now: Duration) -> bool {
        self.backends[backend]
            .ejected_until
            .is_some_and(|until| now < until)
    }

    pub fn ejected_until(&self, backend: usize, now: Duration) -> Option<Duration> {
        self.backends[backend].ejected_until.filter(|u| now < *u)
    }

    pub fn ejection_count(&self, backend: usize) -> u32 {
        self.backends[backend].ejections
    }

    fn ejected_now(&self, now: Duration) -> usize {
        (0..self.backends.len())
            .filter(|i| self.is_ejected(*i, now))
            .count()
    }

    /// Records the outcome of one request to `backend`.
    pub fn record(&mut self, backend: usize, ok: bool, now: Duration) -> Option<Ejection> {
        let settings = self.settings;
        let b = &mut self.backends[backend];
        if let Some(until) = b.ejected_until {
            if now >= until {
                b.ejected_until = None;
                b.returned_at = Some(until);
            }
        }
        if ok {
            b.consecutive_failures = 0;
            // A backend that has behaved for a full max_ejection since it came
            // back starts over at the base ejection time.
            if b.ejected_until.is_none()
                && b.returned_at
                    .is_some_and(|r| now.saturating_sub(r) >= settings.max_ejection)
            {
                b.ejections = 0;
                b.returned_at = None;
            }
            return None;
        }
        b.consecutive_failures = b.consecutive_failures.saturating_add(1);
        if b.ejected_until.is_some() || b.consecutive_failures < settings.consecutive_failures {
            return None;
        }
        let total = self.backends.len();
        let allowed = ((total as f64 * settings.max_ejected_share).floor() as usize).max(1);
        if self.ejected_now(now) >= allowed {
            return None;
        }
        let b = &mut self.backends[backend];
        b.ejections = b.ejections.saturating_add(1);
        let time = settings
            .base_ejection
            .saturating_mul(b.ejections)
            .min(settings.max_ejection);
        let until = now + time;
        b.ejected_until = Some(until);
        b.consecutive_failures = 0;
        Some(Ejection {
            backend,
            until,
            count: b.ejections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> OutlierSettings {
        OutlierSettings {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(12),
            max_ejected_share: 0.5,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn consecutive_failures_eject_and_success_resets() {
        let mut d = OutlierDetector::new(settings(), 2);
        assert_eq!(d.record(0, false, ms(1)), None);
        assert_eq!(d.record(0, false, ms(2)), None);
        assert_eq!(d.record(0, true, ms(3)), None);
        assert_eq!(d.record(0, false, ms(4)), None);
        assert_eq!(d.record(0, false, ms(5)), None);
        let e = d.record(0, false, ms(6)).unwrap();
        assert_eq!(e.until, ms(5006));
        assert!(d.is_ejected(0, ms(5005)));
        assert!(!d.is_ejected(0, ms(5006)));
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let mut d = OutlierDetector::new(settings(), 2);
        let mut now = ms(0);
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let mut ejected = None;
            while ejected.is_none() {
                now += ms(1);
                ejected = d.record(0, false, now);
            }
            let e = ejected.unwrap();
            lengths.push((e.until - now).as_secs());
            now = e.until;
        }
        assert_eq!(lengths, vec![5, 10, 12, 12]);
    }

    #[test]
    fn growth_resets_after_good_behaviour() {
        let mut d = OutlierDetector::new(settings(), 2);
        for i in 0..3 {
            d.record(0, false, ms(i));
        }
        assert_eq!(d.ejection_count(0), 1);
        // Back at 5 s; healthy for 12 s (max_ejection) afterwards.
        d.record(0, true, ms(5_002));
        d.record(0, true, ms(17_003));
        assert_eq!(d.ejection_count(0), 0);
    }

    #[test]
    fn share_limit_keeps_some_backends() {
        // Two of four may be ejected at 50 %.
        let mut d = OutlierDetector::new(settings(), 4);
        let mut ejected = 0;
        for b in 0..4 {
            for i in 0..3 {
                if d.record(b, false, ms(i)).is_some() {
                    ejected += 1;
                }
            }
        }
        assert_eq!(ejected, 2);
        // With a single backend and a share of 0, one may still be ejected.
        let mut one = OutlierDetector::new(
            OutlierSettings {
                max_ejected_share: 0.0,
                ..settings()
            },
            1,
        );
        let got: Vec<_> = (0..3).filter_map(|i| one.record(0, false, ms(i))).collect();
        assert_eq!(got.len(), 1);
    }
}
