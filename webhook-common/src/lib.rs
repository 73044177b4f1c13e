//! What both services share, and what a third party can lift into its own service:
//!
//! - [`config`]: the settings conventions (durations with a unit, renamed settings refused at
//!   startup) and, with feature `config`, the HTTP settings both services flatten in;
//! - [`event`]: the event contracts (`order.paid`, `order.payment_failed`) in a Standard
//!   Webhooks style envelope, with validation and a lossless path for unknown types;
//! - [`money`]: exact money (integer minor units plus an ISO 4217 currency);
//! - [`signing`]: Standard Webhooks v1 signing and verification (HMAC-SHA256, `whsec_` secrets,
//!   key rotation, timestamp tolerance, constant-time comparison);
//! - [`extract`] (feature `axum`): an axum extractor that verifies and parses a webhook;
//! - [`client`] (feature `reqwest`): build a signed webhook request with reqwest;
//! - [`error_body`]: the JSON error body every HTTP error of this project uses, and
//!   [`error_body::ParamError`], the 400 for a malformed query or path parameter;
//! - [`pagination`]: the one rule of list routes (`limit` 1 to 200, default 50, and an opaque
//!   `cursor`; a bad one is a 400 naming it);
//! - [`admin_auth`] (feature `axum`): the admin token check, a route layer over the router of
//!   management routes (401 with `WWW-Authenticate: Bearer`);
//! - [`request`] (feature `axum`): `AppJson`, `AppQuery`, `AppPath`, extractors whose
//!   rejection is the service's own error type;
//! - [`placeholders`]: the example credentials of `.env.example`, refused at startup;
//! - [`group_commit`] (feature `group-commit`): one writer thread per SQLite database that
//!   commits the writes of many callers in one transaction (one fsync for many requests);
//! - [`pg_listen`] (feature `pg-listen`): PostgreSQL `LISTEN/NOTIFY` as a local wake-up, so
//!   work committed on one replica wakes the loops of every replica;
//! - [`outcome_retry`] (feature `server`): recording a job's outcome again after a database
//!   error while its lease lasts, the same way in the dispatcher and the email worker;
//! - [`readiness`] (feature `readiness`): the `GET /readyz` check both services answer;
//! - [`health`] (feature `readiness`): the `GET /healthz` and `GET /readyz` routes, over the
//!   service's own [`health::ReadinessCheck`];
//! - [`openapi`] (feature `openapi`): the OpenAPI pieces both documents share (the admin
//!   token's security scheme, the docs of the shared routes) and `GET /openapi.json`;
//! - [`server`] (feature `server`): serve an axum router with a header read timeout and a
//!   connection cap, and (with `axum` and `metrics`) the layers around every service's router;
//! - [`metrics`] (feature `metrics`): the Prometheus recorder, `/metrics` text and HTTP metrics;
//! - [`telemetry`] (feature `server`): log setup (`LOG_FORMAT`), request ids and spans, W3C
//!   `traceparent`, and the liveness flag of background loops.

pub mod config;
pub mod error_body;
pub mod event;
pub mod money;
pub mod pagination;
pub mod placeholders;
pub mod signing;

#[cfg(feature = "axum")]
pub mod admin_auth;
#[cfg(feature = "reqwest")]
pub mod client;
#[cfg(feature = "axum")]
pub mod extract;
#[cfg(feature = "group-commit")]
pub mod group_commit;
#[cfg(feature = "readiness")]
pub mod health;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "openapi")]
pub mod openapi;
#[cfg(feature = "server")]
pub mod outcome_retry;
#[cfg(feature = "pg-listen")]
pub mod pg_listen;
#[cfg(feature = "readiness")]
pub mod readiness;
#[cfg(feature = "axum")]
pub mod request;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod telemetry;

pub use event::{Event, EventPayload, EventType, OrderPaid, OrderPaymentFailed};
pub use money::{Currency, Money};
pub use signing::{Secret, SignedHeaders, Verifier, VerifyError};
