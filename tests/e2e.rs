#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end proofs with independent tools (issue 3): a person in headless
//! Chromium against the real binary, the authentication API with codes from
//! oathtool, and the API's state machine refusing every out-of-order step.
//! Tests whose tools are missing report `SKIPPED` and return; `.ci/run` installs them.
//! One binary on purpose: each file in `tests/` links separately.

#[path = "e2e/api.rs"]
mod api;
#[path = "e2e/browser.rs"]
mod browser;
#[path = "e2e/console.rs"]
mod console;
#[path = "e2e/forward_auth.rs"]
mod forward_auth;
#[path = "support/front.rs"]
mod front;
#[path = "e2e/harness.rs"]
mod harness;
#[path = "support/skip.rs"]
mod skip;
#[path = "e2e/state_machine.rs"]
mod state_machine;
#[path = "e2e/webauthn.rs"]
mod webauthn;
