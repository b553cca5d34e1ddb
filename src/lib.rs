//! Portcullis: an MFA gateway.
//!
//! A reverse proxy that sits in front of web applications without multi-factor
//! authentication, decides per request whether the caller must sign in, runs the
//! sign-in (password, then a second factor) and forwards authenticated requests to
//! the upstream with identity headers.
//!
//! The request path, outermost first (see `ARCHITECTURE.md`):
//! [`server`] accepts connections (TCP or rustls) and serves them with hyper;
//! [`gateway`] prepares each request (client address, path normalization, host
//! routing) and splits portal traffic from application traffic; [`portal`] serves
//! the sign-in pages and JSON APIs; [`enforce`] applies [`policy`] with the
//! [`session`] cookie; [`proxy`] forwards allowed requests upstream.

pub mod admin;
pub mod api;
pub mod audit;
pub mod authz;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod context;
pub mod crypto;
pub mod delivery;
pub mod demo;
pub mod enforce;
pub mod error;
pub mod factors;
pub mod gateway;
pub mod i18n;
pub mod identity;
pub mod ids;
pub mod ldap_escape;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod pages;
pub mod passwords;
pub mod policy;
pub mod portal;
pub mod proxy;
pub mod regulation;
pub mod sealing;
pub mod secret;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod users;

pub use gateway::Gateway;
