//! A round-robin TCP balancer in front of the notification-service replicas (`--replicas`):
//! every orders-service replica delivers its webhooks to this one address, and each accepted
//! connection goes to the next replica that accepts a connection (so a dead one is skipped),
//! its bytes copied both ways until either side closes. At most a fixed number of connections
//! are proxied at once; beyond that new connections wait in the listen backlog.
//!
//! TCP, not HTTP: a keep-alive connection stays with the replica it was given, as behind any
//! layer-4 load balancer; the webhooks spread because the senders open many connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// Connections proxied at once at most.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a replica may take to accept a connection before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` (say, out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// What the balancer did, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BalancerStats {
    /// Connections given to each backend, in the backends' order.
    pub connections: Vec<u64>,
    /// Connections no backend accepted (closed at once).
    pub refused: u64,
}

struct Counters {
    connections: Vec<AtomicU64>,
    refused: AtomicU64,
}

/// A running balancer; stopped (every proxied connection with it) when dropped.
pub struct Balancer {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and spreads connections over `backends`,
    /// at most `max_connections` at once.
    pub async fn bind(
        listen: &str,
        backends: Vec<SocketAddr>,
        max_connections: usize,
    ) -> anyhow::Result<Balancer> {
        anyhow::ensure!(!backends.is_empty(), "a balancer needs a backend");
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("the webhook balancer listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters {
            connections: backends.iter().map(|_| AtomicU64::new(0)).collect(),
            refused: AtomicU64::new(0),
        });
        let task = tokio::spawn(serve(
            listener,
            backends.into(),
            Arc::clone(&counters),
            Arc::new(Semaphore::new(max_connections.max(1))),
        ));
        Ok(Balancer {
            addr,
            counters,
            task,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections given to each backend so far, and those none accepted.
    pub fn stats(&self) -> BalancerStats {
        BalancerStats {
            connections: self
                .counters
                .connections
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
            refused: self.counters.refused.load(Ordering::Relaxed),
        }
    }

    /// Stops listening and closes every proxied connection.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every proxied connection.
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    backends: Arc<[SocketAddr]>,
    counters: Arc<Counters>,
    permits: Arc<Semaphore>,
) {
    let mut next = 0_usize;
    let mut proxies = JoinSet::new();
    loop {
        while proxies.try_join_next().is_some() {}
        // A permit first: at the limit, connections wait in the kernel's backlog.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let inbound = match listener.accept().await {
            Ok((inbound, _)) => inbound,
            Err(_) => {
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let first = next;
        next = next.wrapping_add(1);
        let backends = Arc::clone(&backends);
        let counters = Arc::clone(&counters);
        proxies.spawn(async move {
            proxy(inbound, &backends, first, &counters).await;
            drop(permit);
        });
    }
}

/// Hands `inbound` to the first backend, from `first` on round the list, that accepts.
async fn proxy(mut inbound: TcpStream, backends: &[SocketAddr], first: usize, counters: &Counters) {
    let _ = inbound.set_nodelay(true);
    for index in rotation(first, backends.len()) {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backends[index]));
        if let Ok(Ok(mut outbound)) = connected.await {
            let _ = outbound.set_nodelay(true);
            counters.connections[index].fetch_add(1, Ordering::Relaxed);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            return;
        }
    }
    // No backend accepts: dropping `inbound` closes the caller's connection.
    counters.refused.fetch_add(1, Ordering::Relaxed);
}

/// The backend indices to try for the connection numbered `first`, in order.
fn rotation(first: usize, backends: usize) -> impl Iterator<Item = usize> {
    (0..backends).map(move |i| (first % backends + i) % backends)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A backend that greets each connection with its number, then echoes until EOF; it
    /// tracks how many connections it holds at once at most.
    struct Echo {
        addr: SocketAddr,
        peak: Arc<AtomicUsize>,
        _task: JoinHandle<()>,
    }

    async fn echo(number: u8) -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (active_in, peak_in) = (Arc::clone(&active), Arc::clone(&peak));
        let task = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let now = active_in.fetch_add(1, Ordering::SeqCst) + 1;
                peak_in.fetch_max(now, Ordering::SeqCst);
                let active = Arc::clone(&active_in);
                tokio::spawn(async move {
                    socket.write_all(&[number]).await.unwrap();
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Echo {
            addr,
            peak,
            _task: task,
        }
    }

    /// An address where nothing listens.
    fn dead_address() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }

    /// Connects through the balancer; returns the greeting (the backend's number) and the
    /// stream.
    async fn connect(balancer: &Balancer) -> (u8, TcpStream) {
        let mut stream = TcpStream::connect(balancer.addr()).await.unwrap();
        let greeting = stream.read_u8().await.unwrap();
        (greeting, stream)
    }

    #[test]
    fn the_rotation_starts_at_the_next_backend_and_wraps() {
        assert_eq!(rotation(0, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(rotation(4, 3).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(rotation(usize::MAX, 2).collect::<Vec<_>>(), [1, 0]);
        assert_eq!(rotation(7, 1).collect::<Vec<_>>(), [0]);
    }

    #[tokio::test]
    async fn connections_go_round_robin_and_bytes_both_ways() {
        let (a, b) = (echo(0).await, echo(1).await);
        let balancer = Balancer::bind("127.0.0.1:0", vec![a.addr, b.addr], 16)
            .await
            .unwrap();
        let mut greetings = Vec::new();
        let mut open = Vec::new();
        for _ in 0..4 {
            let (greeting, mut stream) = connect(&balancer).await;
            stream.write_all(b"ping").await.unwrap();
            let mut back = [0; 4];
            stream.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"ping");
            greetings.push(greeting);
            open.push(stream);
        }
        assert_eq!(greetings, [0, 1, 0, 1]);
        assert_eq!(
            balancer.stats(),
            BalancerStats {
                connections: vec![2, 2],
                refused: 0
            }
        );
        balancer.stop().await;
    }

    #[tokio::test]
    async fn a_backend_that_refuses_is_skipped() {
        let live = echo(7).await;
        let balancer = Balancer::bind("127.0.0.1:0", vec![dead_address(), live.addr], 16)
            .await
            .unwrap();
        for _ in 0..3 {
            assert_eq!(connect(&balancer).await.0, 7);
        }
        assert_eq!(balancer.stats().connections, [0, 3]);
    }

    #[tokio::test]
    async fn with_no_backend_the_connection_is_closed() {
        let balancer = Balancer::bind("127.0.0.1:0", vec![dead_address()], 16)
            .await
            .unwrap();
        let mut stream = TcpStream::connect(balancer.addr()).await.unwrap();
        let mut buf = [0; 1];
        // EOF or a reset, never data.
        assert!(!matches!(stream.read(&mut buf).await, Ok(n) if n > 0));
        assert_eq!(balancer.stats().refused, 1);
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let backend = echo(3).await;
        let balancer = Balancer::bind("127.0.0.1:0", vec![backend.addr], 1)
            .await
            .unwrap();
        let (_, first) = connect(&balancer).await;
        // Accepted by the kernel, not yet by the balancer: its greeting comes once the first
        // connection is closed.
        let second = tokio::spawn({
            let addr = balancer.addr();
            async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.read_u8().await.unwrap()
            }
        });
        drop(first);
        assert_eq!(second.await.unwrap(), 3);
        assert_eq!(backend.peak.load(Ordering::SeqCst), 1);
        assert_eq!(balancer.stats().connections, [2]);
    }

    #[tokio::test]
    async fn a_balancer_needs_a_backend() {
        assert!(Balancer::bind("127.0.0.1:0", Vec::new(), 1).await.is_err());
    }
}
