#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests of the stores (issue 4) with the `portcullis` binary:
//! durability across SIGKILL on SQLite, two replicas on one PostgreSQL,
//! three replicas with revocations pushed, one behind PgBouncer (`fleet`),
//! failing closed while the store is unreachable, fixtures of earlier schema
//! versions, and encryption keys (start-up check, `store rotate-key`).
//! PostgreSQL tests report `SKIPPED` (a failure under `CI=true`) when
//! `PORTCULLIS_TEST_POSTGRES_URL` is not set; each one works in its own schema. One binary on purpose: each
//! file in `tests/` links separately.

#[path = "store/durability.rs"]
mod durability;
#[path = "store/fail_closed.rs"]
mod fail_closed;
#[path = "store/fixtures.rs"]
mod fixtures;
#[path = "store/fleet.rs"]
mod fleet;
#[path = "store/harness.rs"]
mod harness;
#[path = "store/keys.rs"]
mod keys;
#[path = "store/replicas.rs"]
mod replicas;
#[path = "support/skip.rs"]
mod skip;
