#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests over real sockets: the gateway in front of the demo echo
//! app (and a few purpose-built upstreams). One test binary on purpose: each
//! file in `tests/` links separately and slowly. The harness is in
//! `tests/support`, the tests in `tests/gateway/`.

#[path = "support/skip.rs"]
mod skip;
mod support;

#[path = "gateway/cli.rs"]
mod cli;
#[path = "gateway/console.rs"]
mod console;
#[path = "gateway/demo.rs"]
mod demo;
#[path = "gateway/differential.rs"]
mod differential;
#[path = "gateway/flood.rs"]
mod flood;
#[path = "gateway/forward_auth.rs"]
mod forward_auth;
#[path = "gateway/hostile.rs"]
mod hostile;
#[path = "gateway/ldap.rs"]
mod ldap;
#[path = "gateway/limits.rs"]
mod limits;
#[path = "gateway/listeners.rs"]
mod listeners;
#[path = "gateway/login.rs"]
mod login;
#[path = "gateway/logs.rs"]
mod logs;
#[path = "gateway/mfa.rs"]
mod mfa;
#[path = "gateway/pages.rs"]
mod pages;
#[path = "gateway/paths.rs"]
mod paths;
#[path = "gateway/portal_polish.rs"]
mod portal_polish;
#[path = "gateway/proxying.rs"]
mod proxying;
#[path = "gateway/reload.rs"]
mod reload;
#[path = "gateway/sessions.rs"]
mod sessions;
#[path = "gateway/websocket.rs"]
mod websocket;
