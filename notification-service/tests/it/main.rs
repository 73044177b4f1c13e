//! notification-service integration tests: one binary, one module per area.
mod admin_auth;
mod api;
mod crash;
mod intake;
mod limits;
mod metrics;
mod observability;
mod openapi;
mod ordering;
mod ratelimit;
mod replicas;
mod run;
mod smtp;
mod support;
mod worker;
