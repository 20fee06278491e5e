//! Values given on the command line that every component parses alike.

use std::time::Duration;

/// Parses `500ms`, `5s`, `2m`, `1h`, or a plain number of seconds
/// (fractions allowed: `1.5s`). Negative and non-finite values are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration like 500ms, 5s, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses a Gateway API duration (GEP-2257): one to four groups of one to
/// five digits and a unit `h`, `m`, `s` or `ms` (`1h30m`, `500ms`, `0s`).
///
/// # Errors
/// Text of another form.
pub fn parse_gateway_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{text:?} is not a Gateway API duration (1 to 4 groups of up to 5 digits and h, m, s or ms: 1h30m, 500ms)"
        )
    };
    let mut rest = text;
    let mut total = Duration::ZERO;
    let mut groups = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 || groups == 4 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * u32::try_from(value).map_err(|_| bad())?;
        groups += 1;
    }
    if groups == 0 {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_durations() {
        assert_eq!(
            parse_gateway_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            parse_gateway_duration("1h30m"),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(
            parse_gateway_duration("1m1s1ms"),
            Ok(Duration::from_millis(61_001))
        );
        assert_eq!(parse_gateway_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "1", "1.5s", "100000s", "1s1s1s1s1s", "-1s", "1d", "s"] {
            assert!(parse_gateway_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration(" 5 "), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["5x", "", "-1s", "s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
