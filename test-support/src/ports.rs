//! Ports on 127.0.0.1 for tests that need to know an address before anything listens on it
//! (a receiver that starts late, a service restarted on the same port).

use std::time::Duration;

/// How long [`bind_port`] retries before the test fails.
pub const BIND_DEADLINE: Duration = Duration::from_secs(20);

/// A port on 127.0.0.1 with nothing listening (yet): bound, read, released.
///
/// Another process may take it in between; tests use it for addresses that must refuse
/// connections for a while, or that they bind again with [`bind_port`].
pub async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Binds `port` on 127.0.0.1, retrying for up to [`BIND_DEADLINE`] in case the OS still holds
/// it (a listener just closed).
pub async fn bind_port(port: u16) -> tokio::net::TcpListener {
    crate::eventually(
        &format!("port {port} can be bound"),
        BIND_DEADLINE,
        || async move {
            tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .ok()
        },
    )
    .await
}
