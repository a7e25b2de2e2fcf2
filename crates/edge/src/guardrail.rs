//! What this edge's clients see, per second, for a drill's guardrails:
//! requests, failures (5xx, or no answer) and a latency histogram of the
//! time to response headers, in a ring of one-second slots updated with
//! atomics (no lock on the request path). `follow::report_guardrails`
//! sends the controllers the last window's figures: once a second while
//! the committed routing table says a drill runs, once a window otherwise
//! (the load a drill's capacity check reads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Seconds kept: the longest window a drill can be judged over.
const SLOTS: usize = 64;
/// Histogram bucket upper bounds: 1 ms doubling up to about 33 s.
const BUCKETS: usize = 16;

fn bucket_of(latency: Duration) -> usize {
    let ms = latency.as_millis().max(1) as u64;
    (64 - (ms - 1).leading_zeros() as usize).min(BUCKETS - 1)
}

fn bucket_bound_ms(b: usize) -> u64 {
    1u64 << b
}

struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            second: AtomicU64::new(u64::MAX),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// The per-second ring of client outcomes.
pub struct ClientWindow {
    slots: Vec<Slot>,
}

impl Default for ClientWindow {
    fn default() -> Self {
        ClientWindow::new()
    }
}

/// Totals over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    /// Upper bounds of the buckets holding the median and the 99th
    /// percentile, in ms (0 without requests).
    pub p50_ms: u64,
    pub p99_ms: u64,
}

impl ClientWindow {
    pub fn new() -> ClientWindow {
        ClientWindow {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        }
    }

    /// Counts one answered request at `second` (the edge clock's whole
    /// seconds). A slot reused for a new second is cleared first; a count
    /// racing that clear may be lost, which a guardrail can bear.
    pub fn record(&self, second: u64, failed: bool, latency: Duration) {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let seen = slot.second.load(Ordering::Acquire);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            for b in &slot.buckets {
                b.store(0, Ordering::Relaxed);
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.buckets[bucket_of(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// The whole seconds before `now_second` within `window` (the current,
    /// unfinished second left out).
    pub fn totals(&self, now_second: u64, window: Duration) -> Totals {
        let n = window.as_secs().clamp(1, SLOTS as u64 - 1);
        let mut t = Totals::default();
        let mut buckets = [0u64; BUCKETS];
        for second in now_second.saturating_sub(n)..now_second {
            let slot = &self.slots[(second % SLOTS as u64) as usize];
            if slot.second.load(Ordering::Acquire) != second {
                continue;
            }
            t.requests += slot.requests.load(Ordering::Relaxed);
            t.errors += slot.errors.load(Ordering::Relaxed);
            for (sum, b) in buckets.iter_mut().zip(&slot.buckets) {
                *sum += b.load(Ordering::Relaxed);
            }
        }
        let total: u64 = buckets.iter().sum();
        // Ranks from 1: the median's, and the 99th percentile's.
        t.p50_ms = percentile(&buckets, total.div_ceil(2));
        t.p99_ms = percentile(&buckets, total - total / 100);
        t
    }
}

/// The upper bound of the bucket holding the `rank`-th smallest latency
/// (from 1), in ms; 0 for an empty histogram.
fn percentile(buckets: &[u64; BUCKETS], rank: u64) -> u64 {
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if rank > 0 && seen >= rank {
            return bucket_bound_ms(i);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_cover_the_whole_seconds_of_the_window() {
        let w = ClientWindow::new();
        for s in 100..110 {
            for i in 0..100 {
                // One failure and one slow request in every hundred.
                let latency = if i == 0 {
                    Duration::from_millis(900)
                } else {
                    Duration::from_millis(3)
                };
                w.record(s, i == 1, latency);
            }
        }
        let t = w.totals(110, Duration::from_secs(5));
        assert_eq!((t.requests, t.errors), (500, 5));
        // 99% of requests took at most 4 ms (the bucket above 3 ms), and
        // so did the median.
        assert_eq!((t.p50_ms, t.p99_ms), (4, 4));
        // The unfinished second is left out; seconds never recorded count nothing.
        w.record(110, true, Duration::from_secs(5));
        assert_eq!(w.totals(110, Duration::from_secs(5)).errors, 5);
        assert_eq!(w.totals(200, Duration::from_secs(5)).requests, 0);
        // A slot reused 64 s later starts from nothing.
        w.record(164, false, Duration::from_millis(1));
        assert_eq!(w.totals(165, Duration::from_secs(1)).requests, 1);
    }

    #[test]
    fn a_slow_tail_shows_in_the_p99() {
        let w = ClientWindow::new();
        for i in 0..100 {
            let latency = if i < 5 {
                Duration::from_millis(1500)
            } else {
                Duration::from_millis(10)
            };
            w.record(7, false, latency);
        }
        assert_eq!(w.totals(8, Duration::from_secs(5)).p99_ms, 2048);
        assert_eq!(w.totals(8, Duration::from_secs(5)).p50_ms, 16);
        assert_eq!(w.totals(9, Duration::from_secs(1)).p50_ms, 0, "no requests");
    }
}
