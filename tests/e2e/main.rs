//! End-to-end tests: both services as real processes, talking over real sockets.
mod support;

mod durability;
mod happy_path;
