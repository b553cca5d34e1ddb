//! The `smtp` delivery for e-mail codes, through lettre on the gateway's one
//! rustls provider (aws-lc-rs; lettre is built without `ring`).
//!
//! `tls = "starttls"` (port 587 by default) requires the upgrade, `"tls"`
//! (465) connects with TLS from the first byte, `"none"` speaks plain SMTP
//! (local relays and tests; the config loader warns when a password would
//! travel in clear).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::{DeliveryError, Message};
use crate::config::{SmtpConfig, SmtpTls};

/// Bounds the whole SMTP conversation.
pub const TIMEOUT: Duration = Duration::from_secs(15);

fn err(e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Smtp(e.to_string())
}

/// Builds the e-mail for `msg`.
pub fn build(cfg: &SmtpConfig, msg: &Message) -> Result<lettre::Message, DeliveryError> {
    let from = cfg.from.parse().map_err(|e| err(format!("from address: {e}")))?;
    let to = msg
        .to
        .parse()
        .map_err(|e| err(format!("recipient address: {e}")))?;
    lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(msg.subject.clone().unwrap_or_default())
        .header(ContentType::TEXT_PLAIN)
        .body(msg.text.clone())
        .map_err(err)
}

/// Sends `msg` (an e-mail) through the configured server.
pub async fn send(cfg: &SmtpConfig, msg: &Message) -> Result<(), DeliveryError> {
    let email = build(cfg, msg)?;
    let builder = match cfg.tls {
        SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.host).map_err(err)?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.host).map_err(err)?,
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&cfg.host),
    };
    let mut builder = builder.port(cfg.port).timeout(Some(TIMEOUT));
    if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
        let pass = pass
            .expose_str()
            .ok_or_else(|| err("the password is not UTF-8"))?
            .to_owned();
        builder = builder.credentials(Credentials::new(user.clone(), pass));
    }
    let transport = builder.build();
    match tokio::time::timeout(TIMEOUT, transport.send(email)).await {
        Err(_) => Err(err(format!("{}:{}: no answer in time", cfg.host, cfg.port))),
        Ok(Err(e)) => Err(err(format!("{}:{}: {e}", cfg.host, cfg.port))),
        Ok(Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Kind;

    fn cfg() -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: 2525,
            tls: SmtpTls::None,
            from: "Portcullis <noreply@example.com>".into(),
            username: None,
            password: None,
        }
    }

    fn msg(to: &str) -> Message {
        Message {
            kind: Kind::Email,
            to: to.into(),
            text: "Your code is 123456".into(),
            subject: Some("Your sign-in code".into()),
            user: "alice".into(),
            app: "app".into(),
            expires_at: 0,
            transaction_id: None,
            code: None,
            context: Default::default(),
        }
    }

    #[test]
    fn builds_a_plain_text_mail() {
        let m = build(&cfg(), &msg("alice@example.com")).unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(text.contains("Subject: Your sign-in code"));
        assert!(text.contains("To: alice@example.com"));
        assert!(text.contains("Your code is 123456"));
        assert!(build(&cfg(), &msg("not an address")).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = SmtpConfig { port, ..cfg() };
        assert!(matches!(
            send(&c, &msg("alice@example.com")).await,
            Err(DeliveryError::Smtp(_))
        ));
    }
}
