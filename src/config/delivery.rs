//! `delivery = { kind = ... }` of the code and push factors.

use std::path::PathBuf;

use super::context::Ctx;
use super::fields::{choice, http_url, is_loopback_url};
use super::raw::RawDelivery;
use super::secrets::secret;
use super::{Delivery, SmtpConfig, SmtpTls};

/// A factor's `delivery`: converted when given, and required when the factor
/// is enabled (unless the one given was already reported as bad). `kinds`
/// lists the choices for the message.
pub(super) fn factor_delivery(
    cx: &mut Ctx<'_>,
    key: &str,
    raw: Option<RawDelivery>,
    allow_smtp: bool,
    enabled: bool,
    kinds: &str,
) -> Option<Delivery> {
    let delivery = raw.and_then(|d| convert_delivery(cx, key, d, allow_smtp, enabled));
    if enabled && delivery.is_none() && !cx.has_problem_under(key) {
        cx.error(key, format!("is required when enabled ({kinds})"));
    }
    delivery
}

fn convert_delivery(
    cx: &mut Ctx<'_>,
    key: &str,
    raw: RawDelivery,
    allow_smtp: bool,
    enabled: bool,
) -> Option<Delivery> {
    let k = |field: &str| format!("{key}.{field}");
    let kinds: &[&str] = if allow_smtp {
        &["webhook", "command", "smtp", "log", "file"]
    } else {
        &["webhook", "command", "log", "file"]
    };
    let Some(kind) = raw.kind.as_deref().map(|k| k.trim().to_owned()) else {
        cx.error(k("kind"), format!("is required (one of {})", kinds.join(", ")));
        return None;
    };
    let kind = kind.as_str();
    if kind == "smtp" && !allow_smtp {
        cx.error(k("kind"), "\"smtp\" is only valid for factors.email");
        return None;
    }
    if !kinds.contains(&kind) {
        cx.error(
            k("kind"),
            format!("must be one of {} (got {kind:?})", kinds.join(", ")),
        );
        return None;
    }
    let used: &[&str] = match kind {
        "webhook" => &["url", "secret"],
        "command" => &["program", "args"],
        "smtp" => &["host", "port", "tls", "from", "username", "password"],
        "file" => &["path"],
        _ => &[],
    };
    let present = [
        ("url", raw.url.is_some()),
        ("secret", raw.secret.is_some()),
        ("program", raw.program.is_some()),
        ("args", raw.args.is_some()),
        ("host", raw.host.is_some()),
        ("port", raw.port.is_some()),
        ("tls", raw.tls.is_some()),
        ("from", raw.from.is_some()),
        ("username", raw.username.is_some()),
        ("password", raw.password.is_some()),
        ("path", raw.path.is_some()),
    ];
    let before = cx.error_count();
    for (field, set) in present {
        if set && !used.contains(&field) {
            cx.error(k(field), format!("not used by kind \"{kind}\""));
        }
    }
    let delivery = match kind {
        "webhook" => {
            let url = match raw.url {
                None => {
                    cx.error(k("url"), "is required for a webhook");
                    None
                }
                Some(text) => {
                    match http_url(&text) {
                        Ok(url) => {
                            if url.scheme() == "http" && !is_loopback_url(&url) {
                                cx.warn(k("url"), "plain http to a remote host: messages (which carry codes) travel in clear");
                            }
                            Some(url)
                        }
                        Err(e) => {
                            cx.error(k("url"), e);
                            None
                        }
                    }
                }
            };
            let secret = match raw.secret {
                None => {
                    cx.error(k("secret"), "is required for a webhook (it signs each request)");
                    None
                }
                Some(text) => secret(cx, &k("secret"), &text),
            };
            Delivery::Webhook {
                url: url?,
                secret: secret?,
            }
        }
        "command" => {
            let program = raw.program.unwrap_or_default();
            if program.trim().is_empty() {
                cx.error(k("program"), "is required for a command");
            }
            Delivery::Command {
                program: PathBuf::from(program),
                args: raw.args.unwrap_or_default(),
            }
        }
        "smtp" => Delivery::Smtp(convert_smtp(cx, key, raw)?),
        "file" => {
            let path = raw.path.unwrap_or_default();
            if path.trim().is_empty() {
                cx.error(k("path"), "is required for a file delivery");
            }
            Delivery::File {
                path: PathBuf::from(path),
            }
        }
        _ => Delivery::Log,
    };
    if enabled && matches!(delivery, Delivery::Log | Delivery::File { .. }) {
        cx.warn(
            k("kind"),
            format!("\"{kind}\" writes codes in clear; development only"),
        );
    }
    (cx.error_count() == before).then_some(delivery)
}

fn convert_smtp(cx: &mut Ctx<'_>, key: &str, raw: RawDelivery) -> Option<SmtpConfig> {
    let k = |field: &str| format!("{key}.{field}");
    let host = raw.host.map(|h| h.trim().to_owned()).unwrap_or_default();
    if host.is_empty() {
        cx.error(k("host"), "is required for smtp");
    }
    let tls = choice(
        cx,
        &k("tls"),
        raw.tls,
        "starttls",
        &[
            ("starttls", SmtpTls::StartTls),
            ("tls", SmtpTls::Tls),
            ("none", SmtpTls::None),
        ],
    );
    // The well-known port for each mode (RFC 8314 for implicit TLS).
    let port = raw.port.unwrap_or(match tls {
        SmtpTls::StartTls => 587,
        SmtpTls::Tls => 465,
        SmtpTls::None => 25,
    });
    if port == 0 {
        cx.error(k("port"), "must not be 0");
    }
    let from = raw.from.unwrap_or_default();
    if !from.contains('@') {
        cx.error(
            k("from"),
            "is required: the sender address, e.g. \"Portcullis <noreply@example.com>\"",
        );
    }
    let username = raw.username.filter(|u| !u.is_empty());
    let password = match raw.password {
        None => None,
        Some(text) => secret(cx, &k("password"), &text),
    };
    if username.is_some() != password.is_some() && !cx.has_problem_at(&k("password")) {
        cx.error(k("username"), "username and password must be given together");
    }
    if tls == SmtpTls::None && password.is_some() {
        cx.warn(k("tls"), "\"none\" sends the SMTP password in clear");
    }
    Some(SmtpConfig {
        host,
        port,
        tls,
        from,
        username,
        password,
    })
}
