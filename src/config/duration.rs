//! Durations as the config writes them: `"30s"`, `"15m"`, `"1h30m"`.
//!
//! Hand-written on purpose rather than `humantime::parse_duration`: that one
//! reads a wider grammar (`"5 s"`, `"5sec"`, `"2h 15m"`, weeks, months as
//! `M` next to minutes as `m`, even `"1 0s"` as ten seconds) with other
//! messages, and the config's strict form and its messages are pinned by
//! tests and by what `check-config` shows operators.

use std::time::Duration;

use super::context::Ctx;

/// Parses `"30s"`, `"15m"`, `"8h"`, `"1d"`, `"250ms"` and sums like `"1h30m"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "ms, s, m, h, d";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!(
            "empty duration; expected a number and a unit ({UNITS}), e.g. \"30s\""
        ));
    }
    if t.starts_with('-') {
        return Err(format!("invalid duration {s:?}: must not be negative"));
    }
    let bytes = t.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(format!(
                "invalid duration {s:?}: expected a whole number and a unit ({UNITS}), e.g. \"30s\" or \"1h30m\""
            ));
        }
        let number: u64 = t[start..i]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: too large"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u64 = match &t[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if bytes.get(i) == Some(&b'.') => {
                return Err(format!(
                    "invalid duration {s:?}: use whole numbers, e.g. \"1h30m\" or \"1500ms\""
                ));
            }
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit ({UNITS}), e.g. \"{number}s\""
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (use {UNITS})"
                ));
            }
        };
        total_ms = number
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

pub(super) fn duration(
    cx: &mut Ctx<'_>,
    key: &str,
    value: Option<String>,
    default_secs: u64,
    allow_zero: bool,
) -> Duration {
    let fallback = Duration::from_secs(default_secs);
    let Some(text) = value else { return fallback };
    match parse_duration(&text) {
        Ok(d) if d.is_zero() && !allow_zero => {
            cx.error(key, "must be greater than zero");
            fallback
        }
        Ok(d) => d,
        Err(e) => {
            cx.error(key, e);
            fallback
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::*;

    #[test]
    fn durations_parse() {
        let d = |s: &str| parse_duration(s).unwrap();
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("15m"), Duration::from_secs(900));
        assert_eq!(d("8h"), Duration::from_secs(8 * 3600));
        assert_eq!(d("1d"), Duration::from_secs(86_400));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1m30s500ms"), Duration::from_millis(90_500));
        assert_eq!(d(" 0s "), Duration::ZERO);
        for bad in [
            "",
            "30",
            "-5s",
            "5 s",
            "1.5h",
            "5sec",
            "s",
            "abc",
            "99999999999999999999s",
            "10000000000000000d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(parse_duration("-5s").unwrap_err().contains("negative"));
        assert!(parse_duration("1.5h").unwrap_err().contains("whole numbers"));
    }

    #[test]
    fn zero_durations_are_rejected_where_they_make_no_sense() {
        let errs = errors(&with(
            "[session]\nlifetime = \"0s\"\nidle_timeout = \"0m\"\n[server]\nheader_read_timeout = \"0s\"\n\
             [regulation]\nwindow = \"0s\"\n",
        ));
        assert_has(&errs, "session.lifetime", "greater than zero");
        assert_has(&errs, "session.idle_timeout", "greater than zero");
        assert_has(&errs, "server.header_read_timeout", "greater than zero");
        assert_has(&errs, "regulation.window", "greater than zero");
        // Zero is meaningful for this one.
        let loaded = ok(&with("[server]\nshutdown_timeout = \"0s\"\n"));
        assert_eq!(loaded.config.server.shutdown_timeout, Duration::ZERO);
        // Not for this one: a view of revocations never fresh (every protected
        // route 503) and refreshed without pause.
        let errs = errors(&with("[session]\nrevocation_check = \"0s\"\n"));
        assert_has(&errs, "session.revocation_check", "greater than zero");
        let errs = errors(&with("[session]\nlifetime = \"8 hours\"\n"));
        assert_has(&errs, "session.lifetime", "invalid duration");
    }
}
