//! Figures over samples, as every report of the lab computes them.

use serde::Serialize;

/// Nearest-rank percentiles of a set of samples (milliseconds, rounded to
/// two decimals); all zero with `count` 0 when there is no sample.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentiles.
pub fn percentiles(values: &mut [f64]) -> Percentiles {
    if values.is_empty() {
        return Percentiles {
            count: 0,
            p50: 0.0,
            p99: 0.0,
            max: 0.0,
        };
    }
    values.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        round2(values[i])
    };
    Percentiles {
        count: values.len(),
        p50: rank(0.50),
        p99: rank(0.99),
        max: round2(values[values.len() - 1]),
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
