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
//! It also caps the connections one client holds open at
//! [`ServeLimits::max_connections_per_client`], so that a single client cannot take every slot
//! of the global cap. Clients are counted by [`client_key`]: an IPv4 address (also when it
//! arrives IPv4-mapped on an IPv6 listener), or the /64 of an IPv6 address, since one host
//! usually owns a whole /64. A connection beyond its client's cap is closed as soon as it is
//! accepted, without reading from it or answering: no task is spawned and nothing is written,
//! so a refusal costs as little as possible, and the client sees a closed (or reset)
//! connection that it may retry once one of its own closes. (A 503 would need the request
//! read first, or closing with it unread would reset the socket and could lose the answer.)
//!
//! Every request carries [`ConnectInfo<SocketAddr>`](ConnectInfo) in its extensions, as with
//! `into_make_service_with_connect_info::<SocketAddr>()`, so extractors and middleware that
//! read the client address keep working. Only HTTP/1 is served (the services build axum
//! without HTTP/2).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError};
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
    /// Connections one client ([`client_key`]) may hold open at the same time, at most; a
    /// further one is closed as soon as it is accepted. At least 1; a value of at least
    /// `max_connections` leaves the global cap alone in force.
    pub max_connections_per_client: usize,
}

/// The default of [`ServeLimits::max_connections_per_client`]: 128.
///
/// Twice the largest connection pool the project's own clients keep towards one service by
/// default (the load driver's 64 clients, the orders dispatcher's 64 deliveries per endpoint,
/// a browser's 6), so that a client churning its pool (a connection it has closed is counted
/// until the server notices the close) stays clear of it; and an eighth of the default global
/// cap of 1024, so that no fewer than 8 addresses can take every slot.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 128;

impl Default for ServeLimits {
    /// 10 s to send the headers, 1024 connections, 128 of them per client
    /// ([`DEFAULT_MAX_CONNECTIONS_PER_CLIENT`]).
    fn default() -> Self {
        ServeLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        }
    }
}

/// The client a connection is counted against: an IPv4 address (canonicalised, so
/// `::ffff:a.b.c.d` from an IPv6 listener counts as `a.b.c.d`), or an IPv6 address's /64.
///
/// One host usually owns a whole IPv6 /64, so counting single IPv6 addresses would give it
/// an unbounded number of caps. Also a sound key for other per-client limits.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::from(segments)
        }
    }
}

/// Open connections per client, for [`ServeLimits::max_connections_per_client`].
///
/// Protocol: [`ClientSlots::try_take`] counts a connection in when it is accepted, and the
/// [`ClientSlot`] it returns, held by the connection's task, counts it out when dropped. A
/// client's entry is removed when its count reaches 0, so the map holds only clients with open
/// connections: at most `max_connections` entries, however many addresses connect. The lock
/// is a std mutex held for one map operation, never across an await.
#[derive(Debug)]
struct ClientSlots {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ClientSlots {
    fn new(cap: usize) -> Arc<Self> {
        Arc::new(ClientSlots {
            cap,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Counts in a connection of `client`, or `None` if the client already holds `cap`.
    fn try_take(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        // A panic while holding the lock leaves the counts consistent (one operation each).
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            slots: Arc::clone(self),
            client,
        })
    }

    /// How many clients have a connection open.
    #[cfg(test)]
    fn clients(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One connection counted against its client; dropping it counts the connection out.
#[derive(Debug)]
struct ClientSlot {
    slots: Arc<ClientSlots>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
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
/// A connection from a client that already holds [`ServeLimits::max_connections_per_client`]
/// connections is closed at once (see the module documentation).
///
/// Accept errors are logged and do not stop the server: errors about one connection (reset,
/// aborted) are skipped; others (such as running out of file descriptors) pause accepting
/// for a second.
///
/// # Errors
///
/// `InvalidInput` when `limits` are out of range (a zero header read timeout, a connection
/// cap of zero or above [`Semaphore::MAX_PERMITS`], or a per-client cap of zero); nothing else.
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
    // With a per-client cap of at least the global one, the global cap alone binds.
    let clients = (limits.max_connections_per_client < limits.max_connections)
        .then(|| ClientSlots::new(limits.max_connections_per_client));
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
                let slot = match &clients {
                    None => None,
                    Some(clients) => match clients.try_take(client_key(remote.ip())) {
                        Some(slot) => Some(slot),
                        None => {
                            tracing::warn!(
                                client = %remote,
                                cap = limits.max_connections_per_client,
                                "connection refused: the client holds its cap of open connections"
                            );
                            // Closes it and frees the global slot it had.
                            drop(stream);
                            drop(permit);
                            continue 'accepting;
                        }
                    },
                };
                connections.spawn(serve_connection(
                    builder.clone(),
                    stream,
                    remote,
                    app.clone(),
                    stop.clone(),
                    (permit, slot),
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
    if limits.max_connections_per_client == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the per-client connection cap must be at least 1",
        ));
    }
    Ok(())
}

/// Serves one connection until the client or hyper closes it; on `stop`, lets the request in
/// flight finish and then closes. Holding `_counted` (its global permit, and its client's slot
/// when clients are counted) keeps the connection counted.
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    stop: CancellationToken,
    _counted: (OwnedSemaphorePermit, Option<ClientSlot>),
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

/// The layers every service puts around its whole router (routes and fallbacks), in one
/// place so the two services cannot drift apart. Inner to outer: a panic becomes a logged JSON
/// 500 (not a dropped connection); a request that takes longer than `request_timeout` (a
/// client trickling its body, say: the handlers read the body inside it) becomes a 408; every
/// error that is not JSON yet (extractor rejections, the timeout, the fallbacks) becomes the
/// JSON [`ErrorBody`](crate::error_body::ErrorBody); every request is counted and timed by
/// matched route; outermost, the request id and the request span every log line of the
/// request is in. Add the service's own layers (a body limit, say) before calling it.
#[cfg(all(feature = "axum", feature = "metrics"))]
pub fn with_service_layers<S>(router: Router<S>, request_timeout: Duration) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    use axum::http::StatusCode;
    use axum::middleware;
    use tower_http::catch_panic::CatchPanicLayer;
    use tower_http::timeout::TimeoutLayer;

    router
        .layer(CatchPanicLayer::custom(crate::error_body::panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(middleware::from_fn(crate::error_body::json_errors))
        .layer(middleware::from_fn(crate::metrics::track_http))
        .layer(crate::telemetry::request_tracing())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_per_ipv4_address_and_per_ipv6_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa::1")),
            client_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            client_key(ip("2001:db8:1:2::1")),
            client_key(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn a_client_holds_at_most_its_cap_and_its_entry_goes_with_its_last_connection() {
        let slots = ClientSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.try_take(a).unwrap();
        let second = slots.try_take(a).unwrap();
        assert!(slots.try_take(a).is_none());
        let other = slots.try_take(b).unwrap();
        assert_eq!(slots.clients(), 2);
        drop(first);
        let third = slots.try_take(a).unwrap();
        drop((second, third, other));
        assert_eq!(slots.clients(), 0);
    }
}
