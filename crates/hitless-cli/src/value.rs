//! Parsers for the values of command-line flags and configuration keys: durations, rates,
//! fractions and counts, each bounded so that no later arithmetic on them can overflow.
//!
//! Why bounds and not checked arithmetic everywhere: a duration becomes an `Instant` deadline,
//! a `tokio` timer, an X.509 validity period or a `Duration::mul_f64` in many places; refusing
//! an absurd value once, where it is read, with a message naming the flag, is clearer than a
//! dozen error paths deep inside (and was a panic before: `call --duration 500000000000y`
//! overflowed `Instant + Duration`). Every bound here is far beyond any sensible setting.
//!
//! Each parser has the signature clap wants for `value_parser = ...` (`&str` in, `String`
//! error out); the configuration file uses the same functions so that a flag and its TOML key
//! accept exactly the same values.

use std::time::Duration;

/// The longest duration any flag or key accepts: 100 years (of 365.25 days, as `humantime`
/// counts them). An `Instant` or `SystemTime` plus this cannot overflow, nor can a certificate
/// validity ending this far away.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A duration such as `10s`, `200ms`, `1h 30m`, from zero to [`MAX_DURATION`].
pub fn duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("not a duration: {e} (write e.g. \"10s\", \"200ms\", \"1h 30m\")"))?;
    check_duration(d)
}

/// A duration as [`duration`] parses it, but more than zero.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    check_positive(duration(text)?)
}

/// Refuses a duration longer than [`MAX_DURATION`].
pub fn check_duration(d: Duration) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!(
            "{} is too long: at most 100 years",
            humantime::format_duration(d)
        ));
    }
    Ok(d)
}

/// Refuses a zero duration (a poll interval, a timeout: zero would spin or time out at once).
pub fn check_positive(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A rate in events per second: a finite number above zero whose interval (1 / rate) is at
/// most [`MAX_DURATION`].
pub fn rate(text: &str) -> Result<f64, String> {
    let r = number(text)?;
    if !(r.is_finite() && r > 0.0) {
        return Err(format!(
            "{r} is not a positive number of requests per second"
        ));
    }
    match Duration::try_from_secs_f64(1.0 / r) {
        Ok(interval) if interval <= MAX_DURATION => Ok(r),
        _ => Err(format!(
            "{r:e} per second is one request every {:e} s: too slow, at most one every 100 years",
            1.0 / r
        )),
    }
}

/// A fraction from 0 to 1 inclusive (0.33 = a third).
pub fn fraction(text: &str) -> Result<f64, String> {
    check_fraction(number(text)?)
}

/// Refuses a number outside 0..=1 (NaN included).
pub fn check_fraction(f: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!(
            "must be a fraction between 0 and 1 (0.33 = a third), not {f}"
        ))
    }
}

fn number(text: &str) -> Result<f64, String> {
    text.trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a number: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded() {
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("0s"), Ok(Duration::ZERO));
        assert_eq!(duration("100y"), Ok(MAX_DURATION));
        for bad in [
            "500000000000y",
            "101y",
            "-1s",
            "NaN",
            "inf",
            "",
            "10 parsecs",
        ] {
            let e = duration(bad).expect_err(bad);
            assert!(!e.is_empty(), "{bad}");
        }
        assert!(duration("101y").unwrap_err().contains("too long"));
        assert_eq!(
            positive_duration("0s"),
            Err("must be more than zero".to_string())
        );
        assert_eq!(positive_duration("1ms"), Ok(Duration::from_millis(1)));
    }

    #[test]
    fn rates_are_positive_finite_and_not_absurdly_slow() {
        assert_eq!(rate("100"), Ok(100.0));
        assert_eq!(rate("0.5"), Ok(0.5));
        assert!(
            rate("1e300").is_ok(),
            "very fast is allowed: as fast as it goes"
        );
        for bad in ["0", "-1", "NaN", "inf", "-inf", "1e-20", "abc", ""] {
            assert!(rate(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn fractions_are_between_zero_and_one() {
        assert_eq!(fraction("0.33"), Ok(0.33));
        assert_eq!(fraction("0"), Ok(0.0));
        assert_eq!(fraction("1"), Ok(1.0));
        for bad in ["1.5", "-0.1", "NaN", "inf", "x"] {
            assert!(fraction(bad).is_err(), "{bad} accepted");
        }
    }
}
