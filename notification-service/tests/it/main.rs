//! notification-service integration tests: one binary, one module per area.
mod api;
mod crash;
mod intake;
mod ratelimit;
mod smtp;
mod support;
mod worker;
