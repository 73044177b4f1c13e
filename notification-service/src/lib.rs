//! notification-service: receives signed order webhooks, records each delivery once, and
//! sends the customer an email — never twice, and never losing one it accepted.
//!
//! Modules, by capability:
//! - [`api`]: HTTP routes (`/webhooks/orders` intake, `/healthz`; the `/notifications` read
//!   API, `/webhooks/received` and `/metrics` behind the admin token);
//! - [`guard`]: client-IP allow-list and the rate limit on rejected requests;
//! - [`domain`]: the types and rules the others share (the ordering rule, notifications,
//!   claimed jobs, timestamps);
//! - [`store`]: all SQL (dedup records, per-order state, the email job queue), on SQLite or
//!   PostgreSQL (several replicas);
//! - [`email`]: the text of the emails;
//! - [`mailer`]: sending them (simulated, SMTP, or a recording test double);
//! - [`worker`]: the email worker and the dedup-record cleanup;
//! - [`config`] and [`error`]: settings and the error type.

pub mod api;
pub mod config;
pub mod domain;
pub mod email;
pub mod error;
pub mod guard;
pub mod mailer;
pub mod store;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::FromRef;
use axum::Router;
use secrecy::ExposeSecret as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webhook_common::admin_auth::AdminToken;
use webhook_common::extract::WebhookIntake;

pub use config::{Config, Settings};
pub use mailer::{Mailer, RecordingMailer};
pub use store::Store;
pub use worker::EmailWorker;

/// How often the rate limiter forgets idle client addresses.
const GUARD_HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Webhook verification settings, for the `VerifiedWebhook` extractor.
    pub intake: WebhookIntake,
    /// Guards the admin routes (the read API and `/metrics`).
    pub admin_token: AdminToken,
    /// Allow-list and rejection rate limit of the intake.
    pub guard: Arc<IntakeGuard>,
    /// Wakes the email worker when a job is committed.
    pub wake: Arc<Notify>,
    /// Longest time one request may take, body upload included (408 after).
    pub request_timeout: Duration,
    /// Webhook deliveries handled at once, at most (503 beyond).
    pub max_concurrent_requests: usize,
    /// Up while the email worker's loop runs (`GET /readyz` answers 503 without it); hand
    /// it to the worker with [`EmailWorker::with_liveness`].
    pub worker_running: webhook_common::telemetry::Liveness,
}

use guard::IntakeGuard;

impl AppState {
    /// State for `settings` over `store`; `wake` must be the one the worker waits on.
    pub fn new(settings: &Settings, store: Store, wake: Arc<Notify>) -> Self {
        AppState {
            store,
            intake: WebhookIntake::new(settings.verifier.clone())
                .with_max_body_bytes(settings.max_body_bytes),
            admin_token: AdminToken::new(settings.admin_token.expose_secret()),
            guard: Arc::new(IntakeGuard::new(
                settings.rate_limit,
                settings.allowed_networks.clone(),
            )),
            wake,
            request_timeout: settings.request_timeout,
            max_concurrent_requests: settings.max_concurrent_requests,
            worker_running: webhook_common::telemetry::Liveness::new(),
        }
    }
}

impl FromRef<AppState> for WebhookIntake {
    fn from_ref(state: &AppState) -> Self {
        state.intake.clone()
    }
}

/// The whole HTTP application. Pure: no I/O. Serve it with [`webhook_common::server::serve`]
/// (or `into_make_service_with_connect_info::<SocketAddr>()`) so the intake sees client IPs.
pub fn build_app(state: AppState) -> Router {
    webhook_common::metrics::install();
    let routes = Router::new()
        .merge(api::health::router())
        .merge(api::openapi::router())
        .merge(api::webhooks::router(
            state.guard.clone(),
            state.max_concurrent_requests,
        ))
        // The read API and `/metrics`: one router, behind the admin token.
        .merge(api::admin_router(state.admin_token.clone()))
        .fallback(error::not_found);
    // The layers of both services: JSON 500 for a panic, 408 past the request timeout (the
    // body upload included), JSON errors, HTTP metrics, request id and span.
    webhook_common::server::with_service_layers(routes, state.request_timeout).with_state(state)
}

/// Runs the service on `listener` until `shutdown` is cancelled: validates `config`, opens
/// and migrates the database, starts the email worker and the cleanup job, serves HTTP,
/// then drains (bounded by `SHUTDOWN_GRACE`) and returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let settings = config.validate().context("invalid configuration")?;
    let store = Store::connect(&settings.database_url, settings.database_max_connections).await?;
    store
        .migrate()
        .await
        .context("running the database migrations")?;

    let wake = Arc::new(Notify::new());
    let state = AppState::new(&settings, store.clone(), wake.clone());
    let mailer = mailer::from_settings(&settings.mailer, settings.mail_from.clone());
    tracing::info!(mailer = ?settings.mailer, "mailer configured");
    let worker = EmailWorker::new(store.clone(), mailer, settings.worker.clone(), wake)
        .with_liveness(state.worker_running.clone());

    let background = TaskTracker::new();
    background.spawn(worker.run(shutdown.clone()));
    // Refreshes `email_queue_depth` of `/metrics` every few seconds.
    background.spawn(store.clone().run_queue_gauge(shutdown.clone()));
    background.spawn(worker::run_cleanup(
        store.clone(),
        settings.dedup_retention,
        settings.notification_retention,
        settings.cleanup_interval,
        shutdown.clone(),
    ));
    background.spawn(
        state
            .guard
            .clone()
            .run_housekeeping(GUARD_HOUSEKEEPING_EVERY, shutdown.clone()),
    );
    background.close();

    let grace = settings.worker.shutdown_grace;
    let addr = listener
        .local_addr()
        .context("reading the listener address")?;
    // Puts the client address (`ConnectInfo<SocketAddr>`) on every request for the guard.
    let server = webhook_common::server::serve(
        listener,
        build_app(state),
        settings.serve_limits,
        shutdown.clone().cancelled_owned(),
    );
    tracing::info!("listening on http://{addr}");

    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let served = tokio::select! {
        result = server => result.context("serving HTTP"),
        () = drain_deadline => {
            tracing::warn!("open HTTP connections did not finish within the grace period; closing them");
            Ok(())
        }
    };
    // The worker saw the same token; give it its grace period plus a margin to release jobs.
    if tokio::time::timeout(
        grace.saturating_add(Duration::from_secs(5)),
        background.wait(),
    )
    .await
    .is_err()
    {
        tracing::warn!("background tasks did not stop in time");
    }
    // Last: the worker's final outcomes (sent, released) are writes, so the writer stops
    // only once the worker has drained; whatever is still queued then is committed.
    store.close().await;
    tracing::info!("stopped");
    served
}
