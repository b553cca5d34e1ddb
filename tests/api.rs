#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The management API (Users, Factors, recovery codes), the self-service
//! factor API and the OpenAPI document over real sockets, plus the
//! compatibility runs with independent clients: the official Okta Python SDK
//! (`tests/okta/sdk_check.py`) and newman with the Postman collection in
//! `examples/`, each against the real binary. Runs whose tools are missing
//! report `SKIPPED` (tests/support/skip.rs) and return; `.ci/run` installs them. One binary on purpose:
//! each file in `tests/` links separately.

#[path = "support/skip.rs"]
mod skip;
mod support;

#[path = "api/common.rs"]
mod common;
#[path = "api/factors.rs"]
mod factors;
#[path = "api/logs.rs"]
mod logs;
#[path = "api/openapi.rs"]
mod openapi;
#[path = "api/reset.rs"]
mod reset;
#[path = "api/self_service.rs"]
mod self_service;
#[path = "api/signin.rs"]
mod signin;
#[path = "support/soft_authenticator.rs"]
mod soft;
#[path = "api/tools.rs"]
mod tools;
#[path = "api/users.rs"]
mod users;
#[path = "api/webauthn.rs"]
mod webauthn;
