//! Human-friendly durations ("500ms", "1s", "2m") and sizes ("64KiB", "1MiB").

use std::time::Duration;

/// Parses a duration such as `250ms`, `1s`, `1.5s`, `2m` or `1h`.
///
/// A unit is required: a bare number is ambiguous and a classic source of
/// "why is my timeout 1000 seconds" incidents.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!("`{text}` has no unit; expected a duration such as \"500ms\", \"1s\", \"2m\"")
        })?;
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a duration; expected a number and a unit such as \"500ms\""
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{number}` is not a number"))?;
    let millis_per_unit = match unit.trim() {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}`; expected one of ms, s, m, h"
            ))
        }
    };
    let millis = value * millis_per_unit;
    if !millis.is_finite() || millis > 1e12 {
        return Err(format!("`{text}` is too long"));
    }
    Ok(Duration::from_micros((millis * 1_000.0).round() as u64))
}

/// Parses a size in bytes such as `512B`, `64KiB`, `1MiB`, `10MB` or a bare integer.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a size; expected a number and a unit such as \"64KiB\""
        ));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{number}` is not a number"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit `{other}`; expected one of B, KiB, MiB, GiB, KB, MB, GB"
            ))
        }
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Formats a duration the way the configuration writes it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1_000.0;
    if ms >= 1_000.0 && (ms % 1_000.0).abs() < f64::EPSILON {
        format!("{}s", ms / 1_000.0)
    } else {
        format!("{}ms", ms.round())
    }
}

/// Serde helpers that write a [`Duration`] as whole milliseconds, which is
/// what the controller's API and stored state use.
pub mod serde_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&(d.as_millis() as u64)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table = [
            ("500ms", Ok(Duration::from_millis(500))),
            ("1s", Ok(Duration::from_secs(1))),
            ("1.5s", Ok(Duration::from_millis(1500))),
            ("2m", Ok(Duration::from_secs(120))),
            ("1h", Ok(Duration::from_secs(3600))),
            (" 10 ms ", Ok(Duration::from_millis(10))),
        ];
        for (text, want) in table {
            assert_eq!(parse_duration(text), want, "{text}");
        }
        for bad in ["", "10", "ms", "1d", "1..2s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        for bad in ["", "KiB", "1TiB", "-1", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn format_round_trips() {
        for d in [Duration::from_millis(250), Duration::from_secs(3)] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }
}
