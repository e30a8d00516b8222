//! Durations on the command line (`--connect-timeout`, `--timeout` and their environment variables):
//! a number of seconds (`30`, `2.5`) or a number with a unit `ms`, `s` or `m` (`500ms`, `5s`, `1m`).
//! `0` means no bound.

use std::time::Duration;

/// Parses a duration as described in the module doc (clap's value parser).
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let bad = || format!("{text:?} is not a duration (seconds, or e.g. 500ms, 5s, 1m)");
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad())
}

/// `None` for a zero duration ("no bound").
pub fn bound(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_units_parse() {
        assert_eq!(parse("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(bound(parse("0").unwrap()), None);
        for bad in ["", "-1", "fast", "5h", "NaN", "1e400"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
