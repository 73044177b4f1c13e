//! `server::serve` over real sockets: slow or idle clients are cut off by the header read
//! timeout, the connection cap holds further clients back until a connection closes, a client
//! beyond its own connection cap is turned away at once, every request sees the client
//! address, and shutdown drains the requests in flight.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use axum::Router;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use webhook_common::server::{serve, ServeLimits};

/// How long any awaited event may take before the test fails; generous, as on a busy machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// How long a client is watched to show that something does not happen.
const QUIET_PERIOD: Duration = Duration::from_millis(500);

#[derive(Clone)]
struct Hold {
    started: mpsc::Sender<()>,
    release: Arc<Notify>,
}

/// Answers the caller's address as the server saw it.
async fn whoami(ConnectInfo(client): ConnectInfo<SocketAddr>) -> String {
    client.to_string()
}

/// Answers only once the test releases it.
async fn hold(State(hold): State<Hold>) -> &'static str {
    let _ = hold.started.send(()).await;
    hold.release.notified().await;
    "released"
}

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
    started: mpsc::Receiver<()>,
    release: Arc<Notify>,
}

async fn start(limits: ServeLimits) -> Server {
    let (started_tx, started) = mpsc::channel(8);
    let release = Arc::new(Notify::new());
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/hold", get(hold))
        .with_state(Hold {
            started: started_tx,
            release: release.clone(),
        });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        app,
        limits,
        shutdown.clone().cancelled_owned(),
    ));
    Server {
        addr,
        shutdown,
        task,
        started,
        release,
    }
}

fn limits(header_read_timeout: Duration, max_connections: usize) -> ServeLimits {
    ServeLimits {
        header_read_timeout,
        max_connections,
        ..ServeLimits::default()
    }
}

fn per_client_limits(max_connections: usize, max_connections_per_client: usize) -> ServeLimits {
    ServeLimits {
        header_read_timeout: Duration::from_secs(60),
        max_connections,
        max_connections_per_client,
    }
}

async fn send_get(stream: &mut TcpStream, path: &str) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
}

/// Reads one response (headers and a `content-length` body); returns its status line and
/// body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut data = Vec::new();
    let mut chunk = [0_u8; 1024];
    loop {
        if let Some(end) = find(&data, b"\r\n\r\n") {
            let head = String::from_utf8(data[..end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                let body = String::from_utf8(data[end + 4..end + 4 + length].to_vec()).unwrap();
                let status = head.lines().next().unwrap_or_default().to_owned();
                return (status, body);
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-response: {data:?}");
        data.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn get_within_deadline(stream: &mut TcpStream, path: &str) -> (String, String) {
    send_get(stream, path).await;
    timeout(DEADLINE, read_response(stream))
        .await
        .expect("no response within the deadline")
}

/// Waits until the server closes `stream` (end of file or reset), ignoring anything it
/// sends first.
async fn expect_closed_by_server(stream: &mut TcpStream) {
    let closed = timeout(DEADLINE, async {
        let mut chunk = [0_u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("unexpected read error: {e}"),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test]
async fn requests_are_served_and_see_the_client_address() {
    let server = start(limits(Duration::from_secs(30), 4)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let (status, body) = get_within_deadline(&mut client, "/whoami").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, client.local_addr().unwrap().to_string());
    // Keep-alive: the same connection serves a second request.
    let (status, _) = get_within_deadline(&mut client, "/whoami").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn a_client_that_stops_mid_headers_is_disconnected_after_the_header_timeout() {
    let server = start(limits(Duration::from_millis(300), 4)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    client
        .write_all(b"GET /whoami HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    expect_closed_by_server(&mut client).await;
    // The server itself carries on.
    let mut other = TcpStream::connect(server.addr).await.unwrap();
    let (status, _) = get_within_deadline(&mut other, "/whoami").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_is_disconnected_after_the_header_timeout() {
    let server = start(limits(Duration::from_millis(300), 4)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    expect_closed_by_server(&mut client).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = start(limits(Duration::from_millis(300), 4)).await;
    let mut client = TcpStream::connect(server.addr).await.unwrap();
    let (status, _) = get_within_deadline(&mut client, "/whoami").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    expect_closed_by_server(&mut client).await;
}

#[tokio::test]
async fn with_every_connection_taken_the_next_client_is_served_only_after_one_closes() {
    let server = start(limits(Duration::from_secs(60), 2)).await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    // Served, so both are accepted and hold their place (keep-alive).
    get_within_deadline(&mut first, "/whoami").await;
    get_within_deadline(&mut second, "/whoami").await;

    // The kernel completes the handshake (listen backlog), but the server does not accept.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    send_get(&mut third, "/whoami").await;
    let early = timeout(QUIET_PERIOD, read_response(&mut third)).await;
    assert!(
        early.is_err(),
        "a third connection was served while the cap of 2 was taken: {early:?}"
    );

    drop(first);
    let (status, body) = timeout(DEADLINE, read_response(&mut third))
        .await
        .expect("the waiting client was not served after a connection closed");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, third.local_addr().unwrap().to_string());
    // The connection that stayed open still works.
    let (status, _) = get_within_deadline(&mut second, "/whoami").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// Connects from `from` (an address of this host) to `to`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends a request on a fresh connection from `from`; `None` if the server closes it without
/// answering (refused), the response's status line and body otherwise.
async fn try_get_from(from: [u8; 4], to: SocketAddr, path: &str) -> Option<(String, String)> {
    let mut stream = connect_from(from, to).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    // The server may have closed the connection already: a failed write is a refusal too.
    if stream.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    let mut first = [0_u8; 1];
    let peeked = timeout(DEADLINE, stream.peek(&mut first))
        .await
        .expect("neither answered nor closed within the deadline");
    match peeked {
        Ok(0) => None,
        Ok(_) => Some(
            timeout(DEADLINE, read_response(&mut stream))
                .await
                .expect("the response did not complete within the deadline"),
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("unexpected read error: {e}"),
    }
}

const LOCALHOST: [u8; 4] = [127, 0, 0, 1];

#[tokio::test]
async fn a_connection_beyond_the_clients_cap_is_closed_at_once_and_its_others_still_work() {
    let server = start(per_client_limits(16, 2)).await;
    let mut first = connect_from(LOCALHOST, server.addr).await;
    let mut second = connect_from(LOCALHOST, server.addr).await;
    // Served, so both are accepted and counted (keep-alive holds them open).
    get_within_deadline(&mut first, "/whoami").await;
    get_within_deadline(&mut second, "/whoami").await;

    // A third from the same address is closed without an answer, again and again: a refused
    // connection gives back the global slot it had for the moment it was accepted.
    for _ in 0..20 {
        let refused = try_get_from(LOCALHOST, server.addr, "/whoami").await;
        assert_eq!(
            refused, None,
            "a third connection was served with a cap of 2"
        );
    }

    // The two that were counted still work.
    let (status, _) = get_within_deadline(&mut first, "/whoami").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (status, _) = get_within_deadline(&mut second, "/whoami").await;
    assert_eq!(status, "HTTP/1.1 200 OK");

    // Closing one frees its slot, once the server has seen the close.
    drop(first);
    let start = std::time::Instant::now();
    let (status, _) = loop {
        if let Some(answer) = try_get_from(LOCALHOST, server.addr, "/whoami").await {
            break answer;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no slot came free after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// Linux routes all of 127.0.0.0/8 to the loopback interface, so a test can connect from
/// 127.0.0.2 as another client.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn another_client_is_served_while_one_holds_its_cap() {
    // A global cap of 3: the refused connections must not leak global slots either.
    let server = start(per_client_limits(3, 2)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from(LOCALHOST, server.addr).await;
        get_within_deadline(&mut stream, "/whoami").await;
        held.push(stream);
    }
    for _ in 0..5 {
        assert_eq!(try_get_from(LOCALHOST, server.addr, "/whoami").await, None);
    }
    let other = [127, 0, 0, 2];
    let (status, body) = try_get_from(other, server.addr, "/whoami")
        .await
        .expect("another client was refused");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.starts_with("127.0.0.2:"), "{body}");
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_then_returns() {
    let mut server = start(limits(Duration::from_secs(60), 4)).await;
    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    send_get(&mut busy, "/hold").await;
    timeout(DEADLINE, server.started.recv())
        .await
        .expect("the held request never reached its handler");

    server.shutdown.cancel();
    let early = timeout(QUIET_PERIOD, &mut server.task).await;
    assert!(
        early.is_err(),
        "serve returned with a request in flight: {early:?}"
    );
    // No new connections once shutdown began.
    let refused = timeout(DEADLINE, async {
        loop {
            match TcpStream::connect(server.addr).await {
                Err(_) => return,
                // Connected before the listener was dropped; it is closed with the listener.
                Ok(stream) => drop(stream),
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "still accepting after shutdown");

    server.release.notify_one();
    let (status, body) = timeout(DEADLINE, read_response(&mut busy))
        .await
        .expect("the request in flight got no response");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "released")
    );
    expect_closed_by_server(&mut busy).await;
    let served = timeout(DEADLINE, server.task)
        .await
        .expect("serve did not return after its last connection closed");
    served.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_closes_idle_connections_without_waiting_for_their_timeout() {
    let server = start(limits(Duration::from_secs(600), 4)).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    get_within_deadline(&mut idle, "/whoami").await;
    server.shutdown.cancel();
    expect_closed_by_server(&mut idle).await;
    let served = timeout(DEADLINE, server.task)
        .await
        .expect("serve waited on an idle connection");
    served.unwrap().unwrap();
}

#[tokio::test]
async fn limits_out_of_range_are_refused() {
    for bad in [
        limits(Duration::ZERO, 4),
        limits(Duration::from_secs(1), 0),
        limits(Duration::from_secs(1), usize::MAX),
        per_client_limits(4, 0),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let result = timeout(
            DEADLINE,
            serve(listener, Router::new(), bad, std::future::pending()),
        )
        .await
        .expect("serve ran with limits it should refuse");
        let err = result.expect_err("limits out of range were accepted");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
    }
}
