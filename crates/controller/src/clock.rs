//! The controller's clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock time as the control state counts it.
pub fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
