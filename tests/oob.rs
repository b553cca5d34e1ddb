//! Out-of-band factors and passwordless sign-in over real sockets: SMS codes
//! through the portal, e-mail codes through a real SMTP server (aiosmtpd),
//! signed webhooks, a failing webhook, and push approval with the example
//! approver (`examples/push_approver.rs`, compiled in here) playing the
//! device: approved, denied, timed out, and forged, late, repeated and
//! wrong-number answers refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/skip.rs"]
mod skip;
#[path = "support/mod.rs"]
mod support;

#[allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
#[path = "../examples/push_approver.rs"]
mod push_approver;

mod oob {
    mod codes;
    mod flows;
    pub mod harness;
    mod push;
    mod timing;
}
