//! Demo launcher: runs orders-service and notification-service in one process.
//!
//! `cargo run` starts both on 127.0.0.1:8000 and :8001 with SQLite files under `data/`, a fresh
//! shared `whsec_` secret and admin token (unless given in the environment), subscribes the
//! notification-service to order events, and prints what to `curl`. One Ctrl-C stops both.
//!
//! `webhooks-demo orders-service [FLAGS]` and `webhooks-demo notification-service [FLAGS]` run
//! one service alone with exactly the flags and environment of its own binary; the end-to-end
//! tests use them to run each service as its own process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use webhook_common::Secret;

/// mimalloc, not glibc's malloc: under load glibc's `malloc`/`free` were the largest single
/// item of the services' user-space CPU, and mimalloc runs the same work in about 8 % fewer
/// instructions (README "Benchmarks").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "webhooks-demo",
    version,
    about = "Reliable webhooks demo: orders-service + notification-service"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run only orders-service (same flags and environment as the `orders-service` binary).
    OrdersService(orders_service::Config),
    /// Run only notification-service (same flags and environment as its binary).
    NotificationService(notification_service::Config),
}

/// Settings of the two-services-in-one-process demo.
#[derive(Args)]
struct DemoArgs {
    /// Where orders-service listens.
    #[arg(long, env = "DEMO_ORDERS_ADDR", default_value = "127.0.0.1:8000")]
    orders_addr: SocketAddr,
    /// Where notification-service listens.
    #[arg(
        long,
        env = "DEMO_NOTIFICATIONS_ADDR",
        default_value = "127.0.0.1:8001"
    )]
    notifications_addr: SocketAddr,
    /// Directory for the two SQLite databases.
    #[arg(long, env = "DEMO_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Admin token for both services' management routes; generated when unset.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Shared `whsec_` webhook secret; generated when unset.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Kept until `main` returns: dropping it flushes the OTLP exporter, if any.
    let _telemetry = match webhook_common::telemetry::init_tracing_for("webhooks-demo") {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let shutdown = webhook_common::server::shutdown_on_signals();
    let result = match cli.command {
        Some(Command::OrdersService(config)) => {
            async {
                let listener = bind(config.listen_addr, "LISTEN_ADDR").await?;
                orders_service::run(config, listener, shutdown).await
            }
            .await
        }
        Some(Command::NotificationService(config)) => {
            async {
                let listener = bind(config.listen_addr, "LISTEN_ADDR").await?;
                notification_service::run(config, listener, shutdown).await
            }
            .await
        }
        None => run_demo(cli.demo, shutdown).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_demo(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let admin_token = args.admin_token.unwrap_or_else(generate_token);
    let (secret, secret_origin) = match args.webhook_secret {
        Some(text) => (
            Secret::parse(&text).context("WEBHOOK_SECRET is not a valid whsec_ secret")?,
            "from WEBHOOK_SECRET",
        ),
        None => (
            Secret::generate(),
            "freshly generated (set WEBHOOK_SECRET to choose one)",
        ),
    };
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {} (DEMO_DATA_DIR)",
            args.data_dir.display()
        )
    })?;

    let notifications_listener = bind(args.notifications_addr, "DEMO_NOTIFICATIONS_ADDR").await?;
    let orders_listener = bind(args.orders_addr, "DEMO_ORDERS_ADDR").await?;
    let notifications_url = base_url(notifications_listener.local_addr()?);
    let orders_url = base_url(orders_listener.local_addr()?);

    let notifications_config = notification_service::Config::try_parse_from([
        "notification-service".to_owned(),
        format!("--listen-addr={}", args.notifications_addr),
        format!(
            "--database-url={}",
            sqlite_url(&args.data_dir, "notifications.db")
        ),
        format!("--admin-token={admin_token}"),
        format!("--webhook-secret={}", secret.expose_whsec()),
    ])
    .context("invalid notification-service settings")?;
    let orders_config = orders_service::Config::try_parse_from([
        "orders-service".to_owned(),
        format!("--listen-addr={}", args.orders_addr),
        format!("--database-url={}", sqlite_url(&args.data_dir, "orders.db")),
        format!("--admin-token={admin_token}"),
        format!("--notification-webhook-url={notifications_url}/webhooks/orders"),
        format!("--webhook-secret={}", secret.expose_whsec()),
        // The receiver is on 127.0.0.1, which the SSRF guard refuses by default.
        "--allow-private-webhook-targets=true".to_owned(),
    ])
    .context("invalid orders-service settings")?;

    // If either service stops on its own, stop the other too.
    let notifications = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let result = notification_service::run(
                notifications_config,
                notifications_listener,
                shutdown.clone(),
            )
            .await;
            shutdown.cancel();
            result.context("notification-service")
        }
    });
    let orders = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let result =
                orders_service::run(orders_config, orders_listener, shutdown.clone()).await;
            shutdown.cancel();
            result.context("orders-service")
        }
    });
    print_banner(&orders_url, &notifications_url, &admin_token, secret_origin);

    let (orders, notifications) = tokio::join!(orders, notifications);
    orders.context("orders-service task panicked")??;
    notifications.context("notification-service task panicked")??;
    Ok(())
}

async fn bind(addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (set {setting} to another address, or stop what uses that port)"))
}

fn base_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    format!("http://{host}:{}", addr.port())
}

fn sqlite_url(dir: &Path, file: &str) -> String {
    format!("sqlite://{}", dir.join(file).display())
}

/// 40 random alphanumeric characters (about 238 bits).
fn generate_token() -> String {
    use rand::distr::{Alphanumeric, SampleString as _};
    Alphanumeric.sample_string(&mut rand::rng(), 40)
}

#[allow(clippy::print_stdout)] // The banner is for the person at the terminal, not the log.
fn print_banner(orders: &str, notifications: &str, token: &str, secret_origin: &str) {
    println!(
        r#"
Reliable webhooks demo is running.

  orders-service        {orders}
  notification-service  {notifications}
  admin token           {token}
  webhook secret        {secret_origin}; shared by both services, never printed

Create an order (its order.paid webhook is signed and delivered in the background):

  curl -s -X POST {orders}/orders -H 'content-type: application/json' \
    -d '{{"product_name": "Mechanical keyboard", "quantity": 2, "price_per_item": "12.50", "customer_email": "ada@example.com"}}'

See the confirmation email the notification-service queued and sent:

  curl -s {notifications}/notifications -H 'authorization: Bearer {token}'

Press Ctrl-C to stop both services.
"#,
    );
}
