//! `loadgen`: drives orders-service and notification-service with orders and measures what
//! comes out the other end.
//!
//! It starts both release binaries itself (temporary SQLite databases, or fresh PostgreSQL
//! databases with `--postgres` and then optionally several replicas of each service with
//! `--replicas`; port 0) or targets running ones, sends orders in a closed loop (N orders at
//! concurrency C) or an open loop (a fixed rate for a duration, latency counted from each
//! request's scheduled send time), waits until every accepted order's email is sent, and reads
//! the end-to-end timestamps straight from the services' databases. `--baseline` runs the same scenario against a server with no
//! storage and no signing, so every figure also reads as a ratio to "just the HTTP hop".
//!
//! Module map: [`cli`] (flags and `--help`), [`scenario`] (what each scenario does),
//! [`fleet`] (child processes, their logs and RSS), [`driver`] (the closed and open loops),
//! [`collect`] (waiting for the emails and reading what the services recorded, from SQLite
//! or PostgreSQL), [`postgres`] (`--postgres`: the databases loadgen creates and drops),
//! [`balancer`] (the round-robin TCP balancer in front of notification-service replicas),
//! [`prefill`] (the history scenario's bulk insert), [`baseline`] (the no-storage server),
//! [`stats`] (percentiles and ratios) and [`report`] (the table and the final JSON line).

mod balancer;
mod baseline;
mod cli;
mod collect;
mod cpu;
mod driver;
mod fleet;
mod postgres;
mod prefill;
mod report;
mod scenario;
mod stats;

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

/// Exit status when a run finished but lost or duplicated an email, saw a non-2xx answer or a
/// transport error, or hit the deadline.
const EXIT_CHECKS_FAILED: u8 = 1;
/// Exit status when loadgen itself could not run the scenario (a binary missing, a service
/// that did not start, an interrupt).
const EXIT_ERROR: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BaselineServer(args) => baseline::serve(args).await.map(|()| true),
        command => scenario::run_with_fleet(command).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_CHECKS_FAILED),
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "loadgen: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
