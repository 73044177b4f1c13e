//! End-to-end tests: both services as real processes, talking over real sockets.
mod support;

mod delivery;
mod durability;
mod happy_path;
mod replicas;
