//! Demo launcher: starts orders-service and notification-service in one process.
fn main() {}
