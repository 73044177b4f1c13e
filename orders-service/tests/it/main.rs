//! The integration tests of orders-service: one binary, one module per area.

mod admin_auth;
mod api;
mod binary;
mod delivery;
mod durability;
mod endpoints;
mod fairness;
mod history;
mod idempotency;
mod limits;
mod metrics;
mod observability;
mod openapi;
mod ratelimit;
mod recovery;
mod rotation;
mod ssrf;
mod stuck;
mod support;
