//! Serving an axum [`Router`] over HTTP/1.1 with the connection limits `axum::serve` lacks.
//!
//! `axum::serve` gives hyper no timer, so hyper's header read timeout never fires, and it
//! accepts connections without bound. A client that opens connections and sends its request
//! headers a byte a minute (slowloris), or merely leaves them idle, then holds a socket and a
//! task each for ever, can exhaust file descriptors, and makes graceful shutdown wait.
//!
//! [`serve`] closes a connection whose request line and headers are not complete within
//! [`ServeLimits::header_read_timeout`]. The clock runs whenever hyper waits for a request
//! (on a fresh connection, and after each response), so an idle keep-alive connection is
//! closed after the same time. Once the headers are in, the body and the handler are the
//! application's to bound (the services use tower-http's `TimeoutLayer`).
//!
//! It also holds at most [`ServeLimits::max_connections`] connections open: with all of them
//! taken it stops accepting, so further clients wait in the kernel's bounded listen backlog
//! until a connection closes, instead of costing a task and a descriptor each.
//!
//! Every request carries [`ConnectInfo<SocketAddr>`](ConnectInfo) in its extensions, as with
//! `into_make_service_with_connect_info::<SocketAddr>()`, so extractors and middleware that
//! read the client address keep working. Only HTTP/1 is served (the services build axum
//! without HTTP/2).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How long to pause accepting after an accept error that is not about one connection
/// (`EMFILE`, `ENFILE`, `ENOMEM`): retrying at once would spin while nothing has been freed.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// The connection-level limits of [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Longest time a client may take to send a request line and its headers, counted from
    /// when the connection is ready for a request (just accepted, or the previous response
    /// sent); the connection is closed after it. Must be greater than zero.
    pub header_read_timeout: Duration,
    /// Connections open at the same time, at most; beyond it, [`serve`] stops accepting until
    /// one closes. Between 1 and [`Semaphore::MAX_PERMITS`].
    pub max_connections: usize,
}

impl Default for ServeLimits {
    /// 10 s to send the headers, 1024 connections.
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, within `limits`.
///
/// Then it stops accepting, asks every open connection to finish gracefully (a request in
/// flight gets its response, an idle connection is closed) and returns once all are closed.
/// That wait is not bounded here: bound it by dropping this future (e.g. in a `select!` with
/// a grace-period timer); dropping it aborts every connection task.
///
/// Accept errors are logged and do not stop the server: errors about one connection (reset,
/// aborted) are skipped; others (such as running out of file descriptors) pause accepting
/// for a second.
///
/// # Errors
///
/// `InvalidInput` when `limits` are out of range (a zero header read timeout, or a
/// connection cap of zero or above [`Semaphore::MAX_PERMITS`]); nothing else.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    check(&limits)?;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);

    'accepting: loop {
        // A permit first, so that with every connection taken nothing more is accepted.
        let permit = tokio::select! {
            () = &mut shutdown => break 'accepting,
            Some(ended) = connections.join_next() => {
                report_end(ended);
                continue 'accepting;
            }
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                // Never closed while this function runs.
                Err(_) => break 'accepting,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break 'accepting,
            Some(ended) = connections.join_next() => {
                report_end(ended);
                continue 'accepting;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                connections.spawn(serve_connection(
                    builder.clone(),
                    stream,
                    remote,
                    app.clone(),
                    stop.clone(),
                    permit,
                ));
            }
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "a connection failed while being accepted");
            }
            Err(e) => {
                tracing::error!(error = %e, "accepting connections failed; pausing before retrying");
                drop(permit);
                tokio::select! {
                    () = &mut shutdown => break 'accepting,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                }
            }
        }
    }

    drop(listener);
    stop.cancel();
    tracing::debug!(
        open = connections.len(),
        "stopped accepting; waiting for open connections to finish"
    );
    while let Some(ended) = connections.join_next().await {
        report_end(ended);
    }
    Ok(())
}

fn check(limits: &ServeLimits) -> io::Result<()> {
    if limits.header_read_timeout.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the header read timeout must be greater than zero",
        ));
    }
    if !(1..=Semaphore::MAX_PERMITS).contains(&limits.max_connections) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the connection cap must be between 1 and {}",
                Semaphore::MAX_PERMITS
            ),
        ));
    }
    Ok(())
}

/// Serves one connection until the client or hyper closes it; on `stop`, lets the request in
/// flight finish and then closes. Holding `_permit` keeps the connection counted.
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let service = app.map_request(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        request
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .with_upgrades();
    let mut connection = pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    // Header timeouts, resets and malformed requests all end here; none is the server's fault.
    if let Err(e) = ended {
        tracing::debug!(client = %remote, error = %e, "connection closed with an error");
    }
}

/// Reaps a finished connection task; a panic in one would otherwise go unnoticed.
fn report_end(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        if e.is_panic() {
            tracing::error!(error = %e, "a connection task panicked");
        }
    }
}

/// Errors that concern the one connection being accepted, not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A token cancelled on the first Ctrl-C (SIGINT) or SIGTERM: the shutdown signal of a service
/// binary, handed to its `run`, whose [`serve`] then stops accepting and drains.
///
/// The listening task lives until the first signal; there is nothing to join.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        first_signal().await;
        tracing::info!("shutdown requested; finishing in-flight work");
        cancel.cancel();
    });
    token
}

/// Resolves on the first SIGINT or SIGTERM. A signal that cannot be listened for is logged and
/// never fires, so the other still works.
async fn first_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
