//! Human units in the policy file: durations (`30m`, `1h30m`, `250ms`), sizes (`256MiB`, `65536`),
//! CPU counts (`0.5`), whole numbers and booleans.
//!
//! Each parser returns the reason a value was refused as a lowercase sentence fragment.

use std::time::Duration;

/// The longest duration any policy setting accepts.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The most CPUs a profile may ask for.
const MAX_CPUS: f64 = 1024.0;

/// Parses `0` or one or more `<whole number><unit>` parts, unit one of `ms`, `s`, `m`, `h`, `d`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "use a whole number and a unit (ms, s, m, h, d), such as 250ms, 30s, 30m or 1h30m";
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(format!("expected a duration: {HINT}"));
    }
    let mut rest = s;
    let mut total_ms: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("{s:?} is not a duration: {HINT}"));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if tail.starts_with('.') => {
                return Err(format!("{s:?} is not a duration: fractions are not accepted; {HINT}"));
            }
            "" => return Err(format!("{s:?} has no unit: {HINT}")),
            _ => return Err(format!("{s:?} has an unknown unit {unit:?}: {HINT}")),
        };
        let part = number.parse::<u64>().ok().and_then(|n| n.checked_mul(per_unit));
        total_ms = match part.and_then(|p| total_ms.checked_add(p)) {
            Some(t) => t,
            None => return Err(format!("{s:?} is too long: the limit is 365d")),
        };
        rest = tail;
    }
    let d = Duration::from_millis(total_ms);
    if d > MAX_DURATION {
        return Err(format!("{s:?} is too long: the limit is 365d"));
    }
    Ok(d)
}

/// Parses a plain number of bytes or `<whole number><unit>`, unit one of `B`, `KiB`, `MiB`, `GiB`, `TiB`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    const HINT: &str = "use a number of bytes or a whole number and a unit (B, KiB, MiB, GiB, TiB), such as 64KiB";
    let s = s.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("{s:?} is not a size: {HINT}"));
    }
    let (number, unit) = s.split_at(digits);
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        u @ ("k" | "K" | "KB" | "kB" | "m" | "M" | "MB" | "g" | "G" | "GB" | "T" | "TB" | "Ki" | "Mi" | "Gi") => {
            return Err(format!("{s:?}: the unit {u:?} is ambiguous; {HINT}"));
        }
        u if u.starts_with('.') => return Err(format!("{s:?} is not a size: fractions are not accepted; {HINT}")),
        u => return Err(format!("{s:?} has an unknown unit {u:?}: {HINT}")),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| i64::try_from(*n).is_ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses a CPU count such as `0.5` or `2` into billionths of a CPU, between 0.01 and 1024.
pub(crate) fn parse_cpus(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let plain = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') && s.bytes().any(|b| b != b'.');
    let value: f64 = match s.parse() {
        Ok(v) if plain => v,
        _ => return Err(format!("{s:?} is not a CPU count: use a decimal number such as 0.5 or 2")),
    };
    if !value.is_finite() || !(0.01..=MAX_CPUS).contains(&value) {
        return Err(format!("{s:?} CPUs is out of range: use 0.01 to 1024"));
    }
    #[allow(clippy::cast_possible_truncation)]
    let nanos = (value * 1e9).round() as i64;
    Ok(nanos)
}

/// Parses a whole number, allowing `_` between digits, within `min..=max`.
pub(crate) fn parse_count(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let t = s.trim();
    let ok_shape = t.bytes().next().is_some_and(|b| b.is_ascii_digit())
        && t.bytes().last().is_some_and(|b| b.is_ascii_digit())
        && t.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    let n = if ok_shape { t.replace('_', "").parse::<u64>().ok() } else { None };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(_) | None if t.starts_with('-') => Err(format!("{t} is negative: use {min} to {max}")),
        Some(_) => Err(format!("{t} is out of range: use {min} to {max}")),
        None => Err(format!("{t:?} is not a whole number: use {min} to {max}")),
    }
}

/// Parses `true` or `false` (YAML 1.1 spellings such as `yes` are refused).
pub(crate) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        other => Err(format!("{other:?} is not a boolean: use true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_whole_numbers_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_without_units_or_with_fractions_are_refused() {
        for bad in ["", "30", "1.5h", "-1s", "10 parsecs", "s", "5w", "NaN", ".inf", "1h 30m", "400d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn sizes_take_bytes_or_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("256 MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("12B"), Ok(12));
        for bad in ["", "-1", "1.5GiB", "64MB", "64m", "lots", "NaN", "99999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cpus_become_nano_cpus_and_refuse_nan_infinity_and_zero() {
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_cpus("1"), Ok(1_000_000_000));
        assert_eq!(parse_cpus("2.25"), Ok(2_250_000_000));
        for bad in ["NaN", "nan", ".nan", "inf", "-inf", ".inf", "infinity", "0", "0.0", "-1", "1e3", "2000", "", "."] {
            assert!(parse_cpus(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn counts_are_whole_numbers_in_range() {
        assert_eq!(parse_count("65_536", 1, 100_000), Ok(65_536));
        assert_eq!(parse_count("1", 1, 1), Ok(1));
        for bad in ["0", "-3", "1.5", "", "_1", "1_", "x", "100001"] {
            assert!(parse_count(bad, 1, 100_000).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn booleans_are_strict() {
        assert_eq!(parse_bool("true"), Ok(true));
        assert_eq!(parse_bool("false"), Ok(false));
        for bad in ["yes", "no", "on", "1", "tRUE", ""] {
            assert!(parse_bool(bad).is_err(), "{bad:?}");
        }
    }
}
