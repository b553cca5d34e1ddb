//! `[regulation]`: failure limits and lockouts.

use super::context::Ctx;
use super::duration::duration;
use super::raw::RawRegulation;
use super::{RegulationConfig, defaults};

/// NIST SP 800-63B 5.2.2: at most 100 consecutive failed attempts per account.
const NIST_MAX_FAILURES: u32 = 100;

pub(super) fn convert_regulation(cx: &mut Ctx<'_>, raw: RawRegulation) -> RegulationConfig {
    let mut count = |field: &str, value: Option<u32>, default: u32| match value {
        None => default,
        Some(0) => {
            cx.error(format!("regulation.{field}"), "must be at least 1");
            default
        }
        Some(n) => n,
    };
    let max_factor_failures = count(
        "max_factor_failures",
        raw.max_factor_failures,
        defaults::MAX_FACTOR_FAILURES,
    );
    let max_password_failures = count(
        "max_password_failures",
        raw.max_password_failures,
        defaults::MAX_PASSWORD_FAILURES,
    );
    let max_password_failures_per_user = count(
        "max_password_failures_per_user",
        raw.max_password_failures_per_user,
        defaults::MAX_PASSWORD_FAILURES_PER_USER,
    );
    let max_failures_per_ip = count(
        "max_failures_per_ip",
        raw.max_failures_per_ip,
        defaults::MAX_FAILURES_PER_IP,
    );
    let max_transactions_per_ip_per_minute = count(
        "max_transactions_per_ip_per_minute",
        raw.max_transactions_per_ip_per_minute,
        defaults::MAX_TRANSACTIONS_PER_IP_PER_MINUTE,
    );
    if max_password_failures_per_user < max_password_failures {
        cx.error(
            "regulation.max_password_failures_per_user",
            format!(
                "must be at least regulation.max_password_failures ({max_password_failures}): otherwise a stranger locks the user before the (user, address) block applies"
            ),
        );
    }
    if max_password_failures_per_user > NIST_MAX_FAILURES {
        cx.warn(
            "regulation.max_password_failures_per_user",
            format!(
                "above {NIST_MAX_FAILURES}, the limit NIST SP 800-63B sets for failed attempts per account"
            ),
        );
    }
    if max_factor_failures > NIST_MAX_FAILURES {
        cx.warn(
            "regulation.max_factor_failures",
            format!(
                "above {NIST_MAX_FAILURES}, the limit NIST SP 800-63B sets for failed attempts per account"
            ),
        );
    }
    let window = duration(
        cx,
        "regulation.window",
        raw.window,
        defaults::REGULATION_WINDOW_SECS,
        false,
    );
    let lockout = duration(
        cx,
        "regulation.lockout",
        raw.lockout,
        defaults::LOCKOUT_SECS,
        false,
    );
    RegulationConfig {
        max_factor_failures,
        max_password_failures,
        max_password_failures_per_user,
        max_failures_per_ip,
        max_transactions_per_ip_per_minute,
        window,
        lockout,
        reveal_lockout: raw.reveal_lockout.unwrap_or(defaults::REVEAL_LOCKOUT),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn regulation_is_checked() {
        let errs = errors(&with(
            "[regulation]\nmax_factor_failures = 0\nlockout = \"-1m\"\n",
        ));
        assert_has(&errs, "regulation.max_factor_failures", "at least 1");
        assert_has(&errs, "regulation.lockout", "negative");
        let loaded = ok(&with("[regulation]\nmax_password_failures_per_user = 500\n"));
        assert_has(
            &warnings(&loaded),
            "regulation.max_password_failures_per_user",
            "NIST SP 800-63B",
        );
    }
}
