//! The integration tests of orders-service: one binary, one module per area.

mod admin_auth;
mod api;
mod binary;
mod delivery;
mod durability;
mod endpoints;
mod fairness;
mod history;
mod limits;
mod recovery;
mod rotation;
mod ssrf;
mod support;
