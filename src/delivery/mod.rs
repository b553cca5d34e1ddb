//! How codes and push challenges leave the gateway.
//!
//! Every out-of-band message is one JSON object (SPEC section 2):
//! `{kind, to, text, subject?, user, app, expires_at, transaction_id?, code?}`
//! plus, for pushes, the requesting context (`factor_id`, `client`, `time`).
//! The code travels only inside `text` (the rendered template): the separate
//! `code` field is written by the development kinds `log` and `file` alone,
//! which the config loader warns about at start.
//!
//! Kinds ([`crate::config::Delivery`]):
//! - `webhook` ([`webhook`]): POST of the JSON with a `Portcullis-Signature`
//!   header, a timeout, and bounded retries with backoff on connect errors
//!   and 5xx answers only (a timed-out request may have been delivered, so it
//!   is not repeated: nobody wants two codes from one click);
//! - `command` ([`command`]): a program gets the JSON on stdin; exit status 0
//!   means delivered;
//! - `smtp` ([`smtp`]): e-mail through lettre on the same rustls provider
//!   (aws-lc-rs) as the rest of the gateway;
//! - `log` / `file`: development only, codes in clear.
//!
//! A failed delivery is an error the caller turns into a clear answer; it is
//! also an audit event (`delivery.failed`, without the message).

pub mod command;
pub mod smtp;
pub mod webhook;

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::clock::{UnixTime, rfc3339};
use crate::config::Delivery;
use crate::secret::Secret;

/// What a message is for; also the `kind` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A text message with a code.
    Sms,
    /// A voice call: `text` is to be spoken.
    Call,
    /// An e-mail with a code (`subject` set).
    Email,
    /// A push challenge for a device (no code, no number).
    Push,
}

impl Kind {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sms => "sms",
            Kind::Call => "call",
            Kind::Email => "email",
            Kind::Push => "push",
        }
    }

    /// The kind for a code factor type (`sms`, `call`, `email`).
    pub fn for_factor_type(factor_type: &str) -> Option<Self> {
        match factor_type {
            "sms" => Some(Kind::Sms),
            "call" => Some(Kind::Call),
            "email" => Some(Kind::Email),
            "push" => Some(Kind::Push),
            _ => None,
        }
    }
}

/// One out-of-band message.
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: Kind,
    /// Phone number, e-mail address, or (push) the device's opaque address.
    pub to: String,
    /// The rendered text (for a call: the words to speak).
    pub text: String,
    /// E-mail subject.
    pub subject: Option<String>,
    /// The user's login.
    pub user: String,
    /// The application (host) the user signs in to.
    pub app: String,
    pub expires_at: UnixTime,
    /// Push transaction id.
    pub transaction_id: Option<String>,
    /// The code, written only by the `log` and `file` kinds.
    pub code: Option<Secret>,
    /// Extra fields (push context: `factor_id`, `client`, `time`).
    pub context: Map<String, Value>,
}

impl Message {
    /// The JSON object; `with_code` adds the `code` field (log/file only).
    pub fn to_value(&self, with_code: bool) -> Value {
        let mut v = json!({
            "kind": self.kind.as_str(),
            "to": self.to,
            "text": self.text,
            "user": self.user,
            "app": self.app,
            "expires_at": rfc3339(self.expires_at),
        });
        if let Some(o) = v.as_object_mut() {
            if let Some(s) = &self.subject {
                o.insert("subject".into(), json!(s));
            }
            if let Some(t) = &self.transaction_id {
                o.insert("transaction_id".into(), json!(t));
            }
            if with_code && let Some(c) = self.code.as_ref().and_then(|c| c.expose_str()) {
                o.insert("code".into(), json!(c));
            }
            for (k, val) in &self.context {
                o.entry(k.clone()).or_insert_with(|| val.clone());
            }
        }
        v
    }

    /// The JSON body as bytes.
    pub fn to_json(&self, with_code: bool) -> Vec<u8> {
        serde_json::to_vec(&self.to_value(with_code)).unwrap_or_default()
    }
}

/// Why a message was not delivered. The text is for logs: it never carries
/// the message, a code or a secret.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("webhook: {0}")]
    Webhook(String),
    #[error("command: {0}")]
    Command(String),
    #[error("smtp: {0}")]
    Smtp(String),
    #[error("file: {0}")]
    File(String),
    #[error("this delivery kind cannot send {0} messages")]
    Unsupported(&'static str),
}

/// Sends `msg` through `delivery`; `now` signs webhooks.
pub async fn deliver(delivery: &Delivery, msg: &Message, now: UnixTime) -> Result<(), DeliveryError> {
    let result = match delivery {
        Delivery::Webhook { url, secret } => {
            webhook::send(
                url,
                secret,
                &msg.to_json(false),
                now,
                &webhook::RetryPolicy::default(),
            )
            .await
        }
        Delivery::Command { program, args } => {
            command::run(program, args, &msg.to_json(false), command::TIMEOUT).await
        }
        Delivery::Smtp(cfg) => {
            if msg.kind == Kind::Email {
                smtp::send(cfg, msg).await
            } else {
                Err(DeliveryError::Unsupported(msg.kind.as_str()))
            }
        }
        Delivery::Log => {
            // Development only (the config loader warns): the code in clear.
            let line = String::from_utf8_lossy(&msg.to_json(true)).into_owned();
            tracing::warn!(target: "portcullis::delivery", message = %line, "development delivery (log): message written in clear");
            Ok(())
        }
        Delivery::File { path } => append_line(path, &msg.to_json(true)).await,
    };
    match &result {
        Ok(()) => {
            tracing::debug!(kind = msg.kind.as_str(), user = %msg.user, "message delivered");
        }
        Err(e) => {
            crate::audit!("delivery.failed", kind = msg.kind.as_str(), user = %msg.user, error = %e);
        }
    }
    result
}

/// Appends one JSON line to `path` (created with mode 0600).
async fn append_line(path: &std::path::Path, json: &[u8]) -> Result<(), DeliveryError> {
    use tokio::io::AsyncWriteExt;
    // One writer at a time, so lines never interleave.
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = LOCK.lock().await;
    let mut opts = tokio::fs::OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut file = opts
        .open(path)
        .await
        .map_err(|e| DeliveryError::File(format!("{}: {e}", path.display())))?;
    let mut line = json.to_vec();
    line.push(b'\n');
    file.write_all(&line)
        .await
        .map_err(|e| DeliveryError::File(format!("{}: {e}", path.display())))?;
    file.flush()
        .await
        .map_err(|e| DeliveryError::File(format!("{}: {e}", path.display())))
}

/// Fills `{code}`, `{app}`, `{user}` and `{expires_in}` in a template. Other
/// braces stay as they are (the config loader refused unknown placeholders).
pub fn render(template: &str, code: &str, app: &str, user: &str, expires_in: &str) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        match &after[..close] {
            "code" => out.push_str(code),
            "app" => out.push_str(app),
            "user" => out.push_str(user),
            "expires_in" => out.push_str(expires_in),
            other => {
                out.push('{');
                out.push_str(other);
                out.push('}');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A duration as people say it: "30 seconds", "5 minutes", "1 hour",
/// "1 minute 30 seconds".
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let unit = |n: u64, one: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {one}s")
        }
    };
    if secs == 0 {
        return "a moment".into();
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(unit(h, "hour"));
    }
    if m > 0 {
        parts.push(unit(m, "minute"));
    }
    if s > 0 {
        parts.push(unit(s, "second"));
    }
    parts.join(" ")
}

/// A code as a voice says it: digits separated by spaces ("1 2 3 4 5 6").
pub fn spoken(code: &str) -> String {
    let chars: Vec<String> = code.chars().map(String::from).collect();
    chars.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: Kind) -> Message {
        Message {
            kind,
            to: "+15555550100".into(),
            text: "Your code is 123456".into(),
            subject: None,
            user: "alice".into(),
            app: "app.example.com".into(),
            expires_at: 1_795_000_000,
            transaction_id: None,
            code: Some(Secret::new("123456")),
            context: Map::new(),
        }
    }

    #[test]
    fn renders_every_placeholder_and_leaves_other_braces() {
        assert_eq!(
            render(
                "{app}: {code} for {user}, {expires_in}. {x} {",
                "123456",
                "App",
                "alice",
                "5 minutes"
            ),
            "App: 123456 for alice, 5 minutes. {x} {"
        );
        assert_eq!(render("{code}{code}", "1", "", "", ""), "11");
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(human_duration(Duration::from_secs(300)), "5 minutes");
        assert_eq!(human_duration(Duration::from_secs(60)), "1 minute");
        assert_eq!(human_duration(Duration::from_secs(30)), "30 seconds");
        assert_eq!(human_duration(Duration::from_secs(90)), "1 minute 30 seconds");
        assert_eq!(human_duration(Duration::from_secs(3600)), "1 hour");
    }

    #[test]
    fn calls_speak_digits() {
        assert_eq!(spoken("120034"), "1 2 0 0 3 4");
    }

    #[test]
    fn the_code_field_is_only_written_when_asked() {
        let m = msg(Kind::Sms);
        let plain = m.to_value(false);
        assert!(plain.get("code").is_none());
        assert_eq!(plain["kind"], "sms");
        assert_eq!(plain["expires_at"], "2026-11-18T11:06:40.000Z");
        assert!(plain.get("subject").is_none() && plain.get("transaction_id").is_none());
        assert_eq!(m.to_value(true)["code"], "123456");
    }

    #[tokio::test]
    async fn file_delivery_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let d = Delivery::File { path: path.clone() };
        deliver(&d, &msg(Kind::Sms), 0).await.unwrap();
        deliver(&d, &msg(Kind::Call), 0).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["code"], "123456");
        assert_eq!(lines[1]["kind"], "call");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn smtp_refuses_non_email_messages() {
        let d = Delivery::Smtp(crate::config::SmtpConfig {
            host: "127.0.0.1".into(),
            port: 9,
            tls: crate::config::SmtpTls::None,
            from: "noreply@example.com".into(),
            username: None,
            password: None,
        });
        assert!(matches!(
            deliver(&d, &msg(Kind::Sms), 0).await,
            Err(DeliveryError::Unsupported("sms"))
        ));
    }
}
