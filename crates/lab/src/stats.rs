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

/// `x` rounded to two decimals.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A count with a comma every three digits, as the report prints counts: `4,068`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds as the report prints them: whole, with thousands separated (`7,221 ms`).
pub fn ms(v: f64) -> String {
    format!("{} ms", thousands(v.max(0.0).round() as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_have_a_comma_every_three_digits() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (4_068, "4,068"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), s);
        }
        assert_eq!(ms(7_220.6), "7,221 ms");
    }
}
