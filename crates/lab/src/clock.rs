//! Lab time: milliseconds since the load started, the one clock every
//! figure of a report is on.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The lab's clock: started when the load starts.
pub struct Clock {
    t0: Instant,
    t0_unix_ms: f64,
}

impl Clock {
    /// A clock whose zero is now.
    pub fn start() -> Clock {
        Clock {
            t0: Instant::now(),
            t0_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1_000.0),
        }
    }

    /// The instant lab time 0 stands for.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// Lab time now, in milliseconds.
    pub fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1_000.0
    }

    /// Lab time of a Unix time in milliseconds (as another process stamped it).
    pub fn lab_ms_of_unix(&self, unix_ms: f64) -> f64 {
        unix_ms - self.t0_unix_ms
    }

    /// `[ 12.3s]`, for progress lines.
    pub fn stamp(&self) -> String {
        format!("[{:>5.1}s]", self.ms() / 1_000.0)
    }
}
