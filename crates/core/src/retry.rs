//! When a failed request may be sent again, and how many retries the edge
//! may spend (DESIGN.md invariant 6).
//!
//! A request is retried on another backend only when repeating it is safe:
//! its method is idempotent, or it carries an `Idempotency-Key` the backend
//! deduplicates on. Retries are also rationed by a [`RetryBudget`] so that a
//! failing region cannot turn into a retry storm against the healthy one.

use std::collections::VecDeque;
use std::time::Duration;

/// Methods whose repetition has the same effect as one call (RFC 9110 9.2.2).
pub fn is_idempotent_method(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" | "TRACE"
    )
}

/// Whether a request may be retried on another backend at all.
pub fn may_retry(method: &str, has_idempotency_key: bool) -> bool {
    is_idempotent_method(method) || has_idempotency_key
}

/// How one attempt against a backend ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The connection could not be made.
    ConnectFailed,
    /// The connection broke before a response head arrived.
    Reset,
    /// No response head within the attempt's timeout.
    TimedOut,
    /// A response head with this status.
    Status(u16),
    /// The backend answered, but with a head the edge cannot parse (more
    /// headers than `edge.max_response_headers`, a malformed line): the backend is
    /// alive, so this neither counts against it nor is retried (the
    /// request may have taken effect).
    Unparsable,
}

impl AttemptOutcome {
    /// Failures worth trying elsewhere: the request probably did not take
    /// effect there, or the backend says it cannot serve now.
    pub fn is_retryable_failure(self) -> bool {
        match self {
            AttemptOutcome::ConnectFailed | AttemptOutcome::Reset | AttemptOutcome::TimedOut => {
                true
            }
            AttemptOutcome::Status(s) => matches!(s, 502..=504),
            AttemptOutcome::Unparsable => false,
        }
    }

    /// Whether the request provably never reached the backend, so that
    /// sending it elsewhere is safe for every method (RFC 9110 section
    /// 9.2.2 allows a retry when the request was not sent). Only a refused or
    /// timed-out connect proves it: a pooled connection found closed before
    /// the request was written is retried on a fresh connection by the HTTP
    /// client itself.
    pub fn never_sent(self) -> bool {
        matches!(self, AttemptOutcome::ConnectFailed)
    }

    /// Failures that count against a backend in outlier detection.
    pub fn counts_as_failure(self) -> bool {
        match self {
            AttemptOutcome::Status(s) => s >= 500,
            AttemptOutcome::Unparsable => false,
            _ => true,
        }
    }
}

/// Retries allowed as a share of recent requests, plus a floor per second.
///
/// Requests and retries are counted in one-second buckets over a sliding
/// window; a retry is allowed while
/// `retries < min_per_second * window + ratio * requests`.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    window_secs: u64,
    /// (second, requests, retries), oldest first.
    buckets: VecDeque<(u64, u64, u64)>,
}

impl RetryBudget {
    pub const WINDOW: Duration = Duration::from_secs(10);

    pub fn new(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            ratio,
            min_per_second,
            window_secs: Self::WINDOW.as_secs(),
            buckets: VecDeque::new(),
        }
    }

    fn bucket(&mut self, now: Duration) -> &mut (u64, u64, u64) {
        let second = now.as_secs();
        while self
            .buckets
            .front()
            .is_some_and(|b| b.0 + self.window_secs <= second)
        {
            self.buckets.pop_front();
        }
        if self.buckets.back().is_none_or(|b| b.0 != second) {
            self.buckets.push_back((second, 0, 0));
        }
        self.buckets.back_mut().expect("just pushed")
    }

    /// Counts one original request.
    pub fn record_request(&mut self, now: Duration) {
        self.bucket(now).1 += 1;
    }

    /// Takes one retry from the budget if there is one left.
    pub fn try_withdraw(&mut self, now: Duration) -> bool {
        self.bucket(now);
        let requests: u64 = self.buckets.iter().map(|b| b.1).sum();
        let retries: u64 = self.buckets.iter().map(|b| b.2).sum();
        let allowed =
            f64::from(self.min_per_second) * self.window_secs as f64 + self.ratio * requests as f64;
        if (retries as f64) < allowed {
            self.bucket(now).2 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_safety_table() {
        let table = [
            ("GET", false, true),
            ("HEAD", false, true),
            ("PUT", false, true),
            ("DELETE", false, true),
            ("OPTIONS", false, true),
            ("POST", false, false),
            ("PATCH", false, false),
            ("POST", true, true),
            ("PATCH", true, true),
        ];
        for (method, key, want) in table {
            assert_eq!(may_retry(method, key), want, "{method} key={key}");
        }
    }

    #[test]
    fn outcome_table() {
        use AttemptOutcome::*;
        let table = [
            (ConnectFailed, true, true),
            (Reset, true, true),
            (TimedOut, true, true),
            (Status(502), true, true),
            (Status(503), true, true),
            (Status(504), true, true),
            (Status(500), false, true),
            (Status(404), false, false),
            (Status(200), false, false),
        ];
        for (o, retry, failure) in table {
            assert_eq!(o.is_retryable_failure(), retry, "{o:?}");
            assert_eq!(o.counts_as_failure(), failure, "{o:?}");
        }
    }

    #[test]
    fn budget_caps_retries_at_the_ratio() {
        let mut b = RetryBudget::new(0.2, 0);
        let mut granted = 0;
        for i in 0..1000u64 {
            let now = Duration::from_millis(i * 5);
            b.record_request(now);
            if b.try_withdraw(now) {
                granted += 1;
            }
        }
        // 1000 requests in 5 s, all failing: about 20 % may be retried.
        assert!((195..=205).contains(&granted), "granted {granted}");
    }

    #[test]
    fn budget_floor_allows_retries_at_low_traffic() {
        let mut b = RetryBudget::new(0.0, 1);
        let now = Duration::from_secs(100);
        b.record_request(now);
        let granted = (0..20).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 10, "1 per second over a 10 s window");
    }

    #[test]
    fn budget_recovers_after_the_window() {
        let mut b = RetryBudget::new(0.0, 1);
        let t0 = Duration::from_secs(0);
        while b.try_withdraw(t0) {}
        assert!(!b.try_withdraw(Duration::from_secs(9)));
        assert!(b.try_withdraw(Duration::from_secs(10)));
    }
}
