//! `[factors.*]`: TOTP, the code factors (sms, call, email), push and
//! recovery codes (WebAuthn in `webauthn.rs`).

use super::context::Ctx;
use super::delivery::factor_delivery;
use super::duration::duration;
use super::fields::{choice, in_range};
use super::raw::{RawCodeFactor, RawPush, RawRecoveryCodes, RawTotp};
use super::shape::section;
use super::{
    CodeFactorConfig, FactorsConfig, PushConfig, RecoveryCodesConfig, TotpAlgorithm, TotpConfig, defaults,
};

const MIN_CODE_LENGTH: u32 = 6;
const MAX_CODE_LENGTH: u32 = 10;
const MAX_RECOVERY_CODES: u32 = 50;
const MAX_TOTP_SKEW: u8 = 3;
const TOTP_PERIODS: std::ops::RangeInclusive<u64> = 15..=120;
const TEMPLATE_PLACEHOLDERS: [&str; 4] = ["code", "app", "user", "expires_in"];

const FACTOR_KEYS: [&str; 7] = [
    "totp",
    "sms",
    "call",
    "email",
    "push",
    "recovery_codes",
    "webauthn",
];

pub(super) fn convert_factors(cx: &mut Ctx<'_>, value: Option<toml::Value>) -> Option<FactorsConfig> {
    let mut table = match value {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(other) => {
            cx.error("factors", format!("must be a table, not a {}", other.type_str()));
            return None;
        }
    };
    let mut take = |key: &str| table.remove(key);
    let (totp, sms, call, email, push, recovery) = (
        take("totp"),
        take("sms"),
        take("call"),
        take("email"),
        take("push"),
        take("recovery_codes"),
    );
    let webauthn = take("webauthn");
    for key in table.keys() {
        cx.error(
            format!("factors.{key}"),
            format!("unknown key (factor types are: {})", FACTOR_KEYS.join(", ")),
        );
    }
    let totp = section::<RawTotp>(cx, "factors.totp", totp).map(|r| convert_totp(cx, r));
    let sms = section::<RawCodeFactor>(cx, "factors.sms", sms).map(|r| convert_code_factor(cx, "sms", r));
    let call = section::<RawCodeFactor>(cx, "factors.call", call).map(|r| convert_code_factor(cx, "call", r));
    let email =
        section::<RawCodeFactor>(cx, "factors.email", email).map(|r| convert_code_factor(cx, "email", r));
    let push = section::<RawPush>(cx, "factors.push", push).map(|r| convert_push(cx, r));
    let recovery_codes =
        section::<RawRecoveryCodes>(cx, "factors.recovery_codes", recovery).map(|r| convert_recovery(cx, r));
    let webauthn = section::<super::webauthn::RawWebauthn>(cx, "factors.webauthn", webauthn)
        .map(|r| super::webauthn::convert_webauthn(cx, r));
    Some(FactorsConfig {
        totp: totp?,
        sms: sms?,
        call: call?,
        email: email?,
        push: push?,
        recovery_codes: recovery_codes?,
        webauthn: webauthn?,
    })
}

fn convert_totp(cx: &mut Ctx<'_>, raw: RawTotp) -> TotpConfig {
    let issuer = raw.issuer.unwrap_or_else(|| defaults::TOTP_ISSUER.to_owned());
    if issuer.trim().is_empty() {
        cx.error("factors.totp.issuer", "must not be empty");
    } else if issuer.contains(':') {
        // The otpauth label is "issuer:account"; a colon in the issuer breaks it.
        cx.error("factors.totp.issuer", "must not contain \":\"");
    }
    let digits = match raw.digits {
        None => defaults::TOTP_DIGITS,
        Some(6) => 6,
        Some(8) => {
            cx.warn(
                "factors.totp.digits",
                "8 digits: many authenticator apps show only 6 and ignore this setting",
            );
            8
        }
        Some(n) => {
            cx.error("factors.totp.digits", format!("must be 6 or 8 (got {n})"));
            defaults::TOTP_DIGITS
        }
    };
    let period = raw
        .period
        .and_then(|p| in_range(cx, "factors.totp.period", p, TOTP_PERIODS, " seconds"))
        .unwrap_or(defaults::TOTP_PERIOD);
    let algorithm = choice(
        cx,
        "factors.totp.algorithm",
        raw.algorithm,
        defaults::TOTP_ALGORITHM,
        &[
            ("SHA1", TotpAlgorithm::Sha1),
            ("SHA256", TotpAlgorithm::Sha256),
            ("SHA512", TotpAlgorithm::Sha512),
        ],
    );
    if algorithm != TotpAlgorithm::Sha1 {
        cx.warn(
            "factors.totp.algorithm",
            "many authenticator apps support only SHA1 and silently produce wrong codes",
        );
    }
    let skew = raw
        .skew
        .and_then(|s| in_range(cx, "factors.totp.skew", s, 0..=MAX_TOTP_SKEW, " steps"))
        .unwrap_or(defaults::TOTP_SKEW);
    TotpConfig {
        enabled: raw.enabled.unwrap_or(defaults::TOTP_ENABLED),
        issuer,
        digits,
        period,
        algorithm,
        skew,
    }
}

/// Checks `{placeholder}`s; a `{` without a closing `}` is literal text.
fn check_template(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        let name = &after[..close];
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} (allowed: {})",
                TEMPLATE_PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

fn convert_code_factor(cx: &mut Ctx<'_>, which: &str, raw: RawCodeFactor) -> CodeFactorConfig {
    let k = |field: &str| format!("factors.{which}.{field}");
    let enabled = raw.enabled.unwrap_or(defaults::CODE_FACTOR_ENABLED);
    let kinds = "webhook, command, smtp for email, or log/file for development";
    let delivery = factor_delivery(cx, &k("delivery"), raw.delivery, which == "email", enabled, kinds);
    let code_length = raw
        .code_length
        .and_then(|n| in_range(cx, &k("code_length"), n, MIN_CODE_LENGTH..=MAX_CODE_LENGTH, ""))
        .unwrap_or(defaults::CODE_LENGTH);
    let ttl = duration(cx, &k("ttl"), raw.ttl, defaults::CODE_TTL_SECS, false);
    let resend_after = duration(
        cx,
        &k("resend_after"),
        raw.resend_after,
        defaults::RESEND_AFTER_SECS,
        true,
    );
    let max_sends_per_hour = match raw.max_sends_per_hour {
        None => defaults::MAX_SENDS_PER_HOUR,
        Some(0) => {
            cx.error(
                k("max_sends_per_hour"),
                "must be at least 1 (disable the factor instead)",
            );
            defaults::MAX_SENDS_PER_HOUR
        }
        Some(n) => n,
    };
    let default_template = match which {
        "call" => defaults::CALL_TEMPLATE,
        "email" => defaults::EMAIL_TEMPLATE,
        _ => defaults::SMS_TEMPLATE,
    };
    let template = raw.template.unwrap_or_else(|| default_template.to_owned());
    if let Err(e) = check_template(&template) {
        cx.error(k("template"), e);
    } else if !template.contains("{code}") {
        cx.error(k("template"), "must contain {code}");
    }
    let subject = match raw.subject {
        Some(_) if which != "email" => {
            cx.error(k("subject"), "only used by factors.email");
            String::new()
        }
        Some(s) => s,
        None => defaults::EMAIL_SUBJECT.to_owned(),
    };
    if let Err(e) = check_template(&subject) {
        cx.error(k("subject"), e);
    }
    CodeFactorConfig {
        enabled,
        delivery,
        code_length,
        ttl,
        resend_after,
        max_sends_per_hour,
        template,
        subject,
    }
}

fn convert_push(cx: &mut Ctx<'_>, raw: RawPush) -> PushConfig {
    let enabled = raw.enabled.unwrap_or(defaults::PUSH_ENABLED);
    let kinds = "webhook, command, or log/file for development";
    let delivery = factor_delivery(cx, "factors.push.delivery", raw.delivery, false, enabled, kinds);
    let ttl = duration(cx, "factors.push.ttl", raw.ttl, defaults::PUSH_TTL_SECS, false);
    PushConfig {
        enabled,
        delivery,
        ttl,
    }
}

fn convert_recovery(cx: &mut Ctx<'_>, raw: RawRecoveryCodes) -> RecoveryCodesConfig {
    let count = raw
        .count
        .and_then(|n| in_range(cx, "factors.recovery_codes.count", n, 1..=MAX_RECOVERY_CODES, ""))
        .unwrap_or(defaults::RECOVERY_CODES);
    RecoveryCodesConfig {
        enabled: raw.enabled.unwrap_or(defaults::RECOVERY_CODES_ENABLED),
        count,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::test_support::*;
    use crate::config::*;

    #[test]
    fn totp_settings_are_checked() {
        let loaded = ok(&with(
            "[factors.totp]\ndigits = 8\nalgorithm = \"SHA256\"\nperiod = 60\nskew = 0\n",
        ));
        let t = &loaded.config.factors.totp;
        assert_eq!(
            (t.digits, t.period, t.algorithm, t.skew),
            (8, 60, TotpAlgorithm::Sha256, 0)
        );
        let w = warnings(&loaded);
        assert_has(&w, "factors.totp.digits", "only 6");
        assert_has(&w, "factors.totp.algorithm", "only SHA1");
        let errs = errors(&with(
            "[factors.totp]\nperiod = 10\nskew = 4\nalgorithm = \"MD5\"\nissuer = \"A:B\"\n",
        ));
        assert_has(&errs, "factors.totp.period", "between 15 and 120");
        assert_has(&errs, "factors.totp.skew", "between 0 and 3");
        assert_has(&errs, "factors.totp.algorithm", "must be one of");
        assert_has(&errs, "factors.totp.issuer", ":");
    }

    #[test]
    fn code_factors_and_deliveries_are_checked() {
        let text = with(
            r#"
[factors.sms]
enabled = true
delivery = { kind = "webhook", url = "https://relay.example.com/sms", secret = "hook-secret-0123456789" }
code_length = 8
ttl = "10m"
template = "{code} is your {app} code"

[factors.call]
enabled = true
delivery = { kind = "command", program = "/usr/local/bin/call", args = ["--fast"] }

[factors.email]
enabled = true
delivery = { kind = "smtp", host = "smtp.example.com", tls = "tls", from = "gw@example.com", username = "gw", password = "env:SMTP_PW" }
subject = "{code} for {app}"

[factors.push]
enabled = true
delivery = { kind = "file", path = "data/messages.jsonl" }
"#,
        );
        let env = |name: &str| match name {
            "SMTP_PW" => Some("smtp-password".to_owned()),
            other => std_env(other),
        };
        let loaded = load_str(&text, &env).unwrap();
        let f = &loaded.config.factors;
        assert!(
            matches!(&f.sms.delivery, Some(Delivery::Webhook { url, secret }) if url.host_str() == Some("relay.example.com") && secret.expose() == b"hook-secret-0123456789")
        );
        assert_eq!((f.sms.code_length, f.sms.ttl), (8, Duration::from_secs(600)));
        assert!(
            matches!(&f.call.delivery, Some(Delivery::Command { program, args }) if program == Path::new("/usr/local/bin/call") && args == &["--fast"])
        );
        match &f.email.delivery {
            Some(Delivery::Smtp(smtp)) => {
                assert_eq!(
                    (smtp.host.as_str(), smtp.port, smtp.tls),
                    ("smtp.example.com", 465, SmtpTls::Tls)
                );
                assert_eq!(smtp.username.as_deref(), Some("gw"));
                assert_eq!(
                    smtp.password.as_ref().map(Secret::expose),
                    Some(b"smtp-password".as_slice())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.email.subject, "{code} for {app}");
        assert!(
            matches!(&f.push.delivery, Some(Delivery::File { path }) if path == Path::new("data/messages.jsonl"))
        );
        assert_has(
            &warnings(&loaded),
            "factors.push.delivery.kind",
            "writes codes in clear; development only",
        );

        let errs = errors(&with(
            r#"
[factors.sms]
enabled = true
template = "Code: {pin}"
subject = "x"
code_length = 4

[factors.call]
enabled = true
delivery = { kind = "smtp", host = "h", from = "a@b" }
template = "no code here"

[factors.email]
delivery = { kind = "webhook", url = "https://x.example.com", program = "/bin/true" }
max_sends_per_hour = 0

[factors.push]
enabled = true
delivery = { kind = "carrier-pigeon" }
ttl = "0s"

[factors.recovery_codes]
count = 51
"#,
        ));
        assert_has(&errs, "factors.sms.delivery", "is required when enabled");
        assert_has(&errs, "factors.sms.template", "unknown placeholder {pin}");
        assert_has(&errs, "factors.sms.subject", "only used by factors.email");
        assert_has(&errs, "factors.sms.code_length", "between 6 and 10");
        assert_has(
            &errs,
            "factors.call.delivery.kind",
            "only valid for factors.email",
        );
        assert_has(&errs, "factors.call.template", "must contain {code}");
        assert_has(
            &errs,
            "factors.email.delivery.program",
            "not used by kind \"webhook\"",
        );
        assert_has(
            &errs,
            "factors.email.delivery.secret",
            "is required for a webhook",
        );
        assert_has(&errs, "factors.email.max_sends_per_hour", "at least 1");
        assert_has(&errs, "factors.push.delivery.kind", "must be one of");
        assert_has(&errs, "factors.push.ttl", "greater than zero");
        assert_has(&errs, "factors.recovery_codes.count", "between 1 and 50");
        assert!(
            !has(&errs, "factors.push.delivery", "is required when enabled"),
            "{errs:#?}"
        );

        let errs = errors(&with(
            "[factors.email]\ndelivery = { kind = \"smtp\", host = \"h\", from = \"nobody\", username = \"u\" }\n",
        ));
        assert_has(&errs, "factors.email.delivery.from", "sender address");
        assert_has(&errs, "factors.email.delivery.username", "together");
    }
}
