//! The orders-service binary: tracing, configuration, listener, signals, then [`orders_service::run`].

use anyhow::Context as _;
use clap::Parser as _;
use orders_service::Config;

/// mimalloc, not glibc's malloc: under load glibc's `malloc`/`free` were the largest single
/// item of the services' user-space CPU, and mimalloc runs the same work in about 8 % fewer
/// instructions (README "Benchmarks").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Kept until `main` returns: dropping it flushes the OTLP exporter, if any.
    let _telemetry = match webhook_common::telemetry::init_tracing_for("orders-service") {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("orders-service: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match start().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // stderr rather than the log, so the reason shows even with RUST_LOG=off.
            eprintln!("orders-service: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn start() -> anyhow::Result<()> {
    let config = Config::parse();
    config.validate()?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding LISTEN_ADDR {}", config.listen_addr))?;
    let shutdown = webhook_common::server::shutdown_on_signals();
    orders_service::run(config, listener, shutdown).await
}
