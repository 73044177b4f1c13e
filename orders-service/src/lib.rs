//! orders-service: the sender side of the reliable-webhooks demo.
//!
//! - [`api`]: the HTTP routes (orders and health, public; endpoints, events and deliveries,
//!   behind the admin token) and JSON errors for unknown routes/methods;
//! - [`ssrf`]: the rules for webhook target URLs and the guard against private targets;
//! - [`store`]: all SQL (SQLite by default, PostgreSQL for several replicas), behind methods
//!   on domain types;
//! - [`dispatcher`]: the background loop that delivers signed webhooks with retries;
//! - [`rate_limit`]: the per-client limit of `POST /orders` (public, and it sends email);
//! - [`config`]: settings from flags and environment; [`error`]: the HTTP error type;
//! - [`domain`]: the types the others share.
//!
//! An order, its event and one delivery per subscribed endpoint are written in one
//! transaction (transactional outbox), so a committed order's event is never lost; the
//! dispatcher then delivers it at least once until the receiver acknowledges it or the
//! delivery is given up with every attempt recorded.

pub mod api;
pub mod config;
pub mod dispatcher;
pub mod domain;
pub mod error;
pub mod rate_limit;
pub mod ssrf;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::{middleware, Router};
use secrecy::ExposeSecret as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use webhook_common::EventType;

pub use config::Config;
use dispatcher::{Dispatcher, DispatcherSettings};
use rate_limit::OrderRateLimit;
use store::Store;

/// The key under which the subscription from `NOTIFICATION_WEBHOOK_URL` is stored.
pub const CONFIG_ENDPOINT_KEY: &str = "config:NOTIFICATION_WEBHOOK_URL";

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Poked after an order's outbox write commits, so delivery starts at once.
    pub dispatch_wake: Arc<Notify>,
    /// Lets a new order claim its delivery in its own transaction and hand it straight to
    /// the dispatcher while a dispatch slot is free.
    pub handoff: dispatcher::Handoff,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Guards the management routes.
    pub admin_token: api::admin::AdminToken,
    /// `ALLOW_PRIVATE_WEBHOOK_TARGETS`: when false, endpoint URLs must point at public addresses.
    pub allow_private_targets: bool,
    /// `REQUEST_TIMEOUT`: longest time one request may take, body upload included.
    pub request_timeout: Duration,
    /// `MAX_CONCURRENT_REQUESTS`: requests handled at once, at most (503 beyond).
    pub max_concurrent_requests: usize,
    /// `ORDER_RATE_LIMIT_PER_SEC` and `ORDER_RATE_LIMIT_BURST`: the per-client budget of
    /// `POST /orders` (429 beyond); `None` when the limit is off.
    pub order_rate_limit: Option<Arc<OrderRateLimit>>,
    /// Up while the dispatcher's loop runs; `GET /readyz` answers 503 without it.
    pub dispatcher_running: webhook_common::telemetry::Liveness,
}

/// The router with every route and the JSON fallbacks. Does no I/O.
pub fn build_app(state: AppState) -> Router {
    webhook_common::metrics::install();
    let limit = state.max_body_bytes;
    let mut orders = api::orders::router();
    if let Some(limit) = state.order_rate_limit.clone() {
        // Only `POST /orders` spends budget (the middleware checks); `GET /orders/{id}` passes.
        orders = orders.route_layer(middleware::from_fn_with_state(
            limit,
            rate_limit::limit_order_creation,
        ));
    }
    // Requests beyond the bound are shed with 503 and `Retry-After` rather than queued, so
    // slow clients cannot pile up work; `/healthz` stays outside it so probes still answer.
    let bounded = Router::new()
        .merge(orders)
        .merge(api::admin::router(state.admin_token.clone()))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                    error::ApiError::Overloaded
                }))
                .load_shed()
                .concurrency_limit(state.max_concurrent_requests),
        );
    let routes = Router::new()
        .merge(api::health::router())
        .merge(api::openapi::router())
        // Prometheus text behind the admin token, outside the bound so a scrape still answers.
        .merge(api::admin::metrics_router(state.admin_token.clone()))
        .merge(bounded)
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit));
    // The layers of both services: JSON 500 for a panic, 408 past the request timeout (the
    // body upload included), JSON errors, HTTP metrics, request id and span.
    webhook_common::server::with_service_layers(routes, state.request_timeout).with_state(state)
}

/// Opens the database, migrates, ensures the configured subscription, starts the dispatcher
/// and serves on `listener` until `shutdown` is cancelled; then stops accepting, lets
/// attempts in flight finish within `SHUTDOWN_GRACE` and returns.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let store = Store::connect_with(&config.database_url, config.database_max_connections).await?;
    store.migrate().await?;
    ensure_configured_subscription(&config, &store).await?;

    let dispatcher = Dispatcher::new(store.clone(), DispatcherSettings::from_config(&config))?;
    let order_rate_limit = config
        .order_rate_limit()?
        .map(|settings| Arc::new(OrderRateLimit::new(settings)));
    if order_rate_limit.is_none() {
        tracing::warn!("ORDER_RATE_LIMIT_PER_SEC=0: POST /orders is not rate-limited");
    }
    let state = AppState {
        store: store.clone(),
        dispatch_wake: dispatcher.waker(),
        handoff: dispatcher.handoff(),
        max_body_bytes: config.http.max_body_bytes,
        admin_token: api::admin::AdminToken::new(config.admin_token.expose_secret()),
        allow_private_targets: config.allow_private_webhook_targets,
        request_timeout: config.http.request_timeout,
        max_concurrent_requests: config.http.max_concurrent_requests,
        order_rate_limit: order_rate_limit.clone(),
        dispatcher_running: dispatcher.liveness(),
    };
    let app = build_app(state);

    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(dispatcher.run(shutdown.clone()));
    // Refreshes the outbox gauges of `/metrics` every few seconds.
    tasks.spawn(store.clone().run_outbox_gauges(shutdown.clone()));
    // On PostgreSQL, numbers newly committed events for the history (`GET /events`).
    tasks.spawn(store.clone().run_event_sequencer(shutdown.clone()));
    // Deletes expired `Idempotency-Key`s in small batches, once a minute.
    tasks.spawn(store.clone().run_idempotency_key_expiry(shutdown.clone()));
    // Deletes finished events (and their deliveries, attempts, orders) past EVENT_RETENTION.
    if let config::Retention::After(keep) = config.event_retention {
        tasks.spawn(store.clone().run_retention(keep, shutdown.clone()));
    }
    if let Some(limit) = order_rate_limit {
        tasks.spawn(limit.run_housekeeping(rate_limit::HOUSEKEEPING_EVERY, shutdown.clone()));
    }
    tasks.close();

    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    tracing::info!("listening on http://{addr}");
    let serve = webhook_common::server::serve(
        listener,
        app,
        config.serve_limits(),
        shutdown.clone().cancelled_owned(),
    );
    let grace = config.http.shutdown_grace;
    let served = tokio::select! {
        r = serve => r.context("serving HTTP"),
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("HTTP connections still open after the grace period; closing them");
            Ok(())
        }
    };
    shutdown.cancel();
    tasks.wait().await;
    store.close().await;
    tracing::info!("stopped");
    served
}

async fn ensure_configured_subscription(config: &Config, store: &Store) -> anyhow::Result<()> {
    let Some(url) = &config.notification_webhook_url else {
        // An endpoint ensured on an earlier start would otherwise keep receiving events.
        let disabled = store
            .disable_config_endpoint(CONFIG_ENDPOINT_KEY)
            .await
            .context("disabling the subscription from NOTIFICATION_WEBHOOK_URL")?;
        match disabled {
            Some(id) => tracing::warn!(
                endpoint_id = %id,
                "NOTIFICATION_WEBHOOK_URL is no longer set: disabled the subscription it created; \
                 its pending deliveries wait until it is set again"
            ),
            None => tracing::info!(
                "NOTIFICATION_WEBHOOK_URL is not set: no subscription comes from configuration"
            ),
        }
        return Ok(());
    };
    let secret = config.webhook_secret()?;
    let types: Vec<&str> = EventType::ALL.iter().map(EventType::as_str).collect();
    let ensured = store
        .ensure_config_endpoint(CONFIG_ENDPOINT_KEY, url, secret.as_ref(), &types)
        .await
        .context("ensuring the subscription from NOTIFICATION_WEBHOOK_URL")?;
    if ensured.secret_rotated {
        tracing::warn!(
            endpoint_id = %ensured.id,
            "WEBHOOK_SECRET changed: rotated to it; the previous secret keeps signing for 24 h"
        );
    }
    if ensured.secret_generated {
        tracing::info!(
            endpoint_id = %ensured.id,
            "WEBHOOK_SECRET is not set: generated and stored a signing secret for NOTIFICATION_WEBHOOK_URL"
        );
    }
    // Origin and path only: a query string may hold a token.
    let shown = reqwest::Url::parse(url)
        .map(|u| format!("{}{}", u.origin().ascii_serialization(), u.path()))
        .unwrap_or_default();
    tracing::info!(endpoint_id = %ensured.id, url = %shown, "subscription from configuration ensured");
    Ok(())
}
