//! Dev-only helpers shared by the workspace's tests.
//!
//! - [`postgres`]: a fresh, empty PostgreSQL database for one test, or a clear "skipped" when
//!   `TEST_DATABASE_URL` is not set, so the store suites run against both backends.
//! - [`poll`]: [`eventually`], the one way a test waits on a condition, with a deadline.
//! - [`logging`]: [`init_test_logging`], the test binary's tracing subscriber, so a failing
//!   test shows what the service logged.
//! - [`openapi`], [`metrics`], [`admin_auth`]: the checks both services run on their
//!   `GET /openapi.json`, their `GET /metrics` and their admin-token guard; each service's test
//!   calls them with its own routes and series.
//! - [`receiver`]: a scriptable webhook receiver that verifies every signature (Standard
//!   Webhooks) and answers what the test scripted; [`ports`]: free and re-bindable ports.
//! - [`migrations`]: a database at an earlier release's schema, and what SQLite compiles a
//!   statement into.

pub mod admin_auth;
pub mod logging;
pub mod metrics;
pub mod migrations;
pub mod openapi;
pub mod poll;
pub mod ports;
pub mod postgres;
pub mod receiver;

pub use logging::{captured_logs, init_test_logging};
pub use poll::{eventually, poll_within};
