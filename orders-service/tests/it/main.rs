//! The integration tests of orders-service: one binary, one module per area.

mod api;
mod binary;
mod delivery;
mod durability;
mod support;
