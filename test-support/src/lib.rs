//! Dev-only helpers shared by the workspace's tests.
//!
//! - [`postgres`]: a fresh, empty PostgreSQL database for one test, or a clear "skipped" when
//!   `TEST_DATABASE_URL` is not set, so the store suites run against both backends.

pub mod postgres;
