//! The orders-service binary: tracing, configuration, listener, signals, then [`orders_service::run`].

use anyhow::Context as _;
use clap::Parser as _;
use orders_service::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Colours only on a terminal, so log files and `docker logs` stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
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
