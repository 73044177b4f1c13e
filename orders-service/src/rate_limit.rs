//! The per-client rate limit of `POST /orders`. The route is public and has the service email
//! any address with text of the caller's choosing, so without a limit it is a spam relay; with
//! it, each client address gets `ORDER_RATE_LIMIT_BURST` orders at once and
//! `ORDER_RATE_LIMIT_PER_SEC` sustained, and is answered 429 with `Retry-After` beyond that.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;
use webhook_common::server::client_key;

use crate::config::OrderRateLimitSettings;
use crate::error::ApiError;

/// How often [`OrderRateLimit::housekeeping`] runs in [`crate::run`].
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// The path whose `POST` is limited (the only route that creates orders).
const LIMITED_PATH: &str = "/orders";

/// Order budget per client (an IPv4 address or an IPv6 /64, see [`client_key`]).
///
/// Protocol: every `POST /orders` spends one cell of its client's budget before the handler
/// runs, whatever the outcome; a request that finds the budget empty is answered 429 and never
/// reaches the handler, so no order is created and the client can send the same request again
/// after `Retry-After`. The limiter keeps one entry per client seen recently; the periodic
/// [`OrderRateLimit::housekeeping`] forgets clients whose budget is full again, so memory
/// stays bounded however many addresses send.
#[derive(Debug)]
pub struct OrderRateLimit {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl OrderRateLimit {
    /// A limit with the given rate and burst per client.
    pub fn new(settings: OrderRateLimitSettings) -> Self {
        let quota = Quota::per_second(settings.per_second).allow_burst(settings.burst);
        OrderRateLimit {
            limiter: RateLimiter::keyed(quota),
        }
    }

    /// Spends one order of `ip`'s client's budget; `Err(wait)`, spending nothing, when the
    /// budget is empty and the next order is allowed only after `wait`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        match self.limiter.check_key(&client_key(ip)) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(not_until.wait_time_from(self.limiter.clock().now())),
        }
    }

    /// Forgets clients whose budget is full again, so memory stays bounded.
    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// How many clients the limiter currently remembers.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }

    /// Runs [`OrderRateLimit::housekeeping`] every `every` until `shutdown`.
    pub async fn run_housekeeping(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => self.housekeeping(),
            }
        }
    }
}

/// Whole seconds to wait, rounded up and at least 1: retrying a little late is fine, a little
/// early just earns another 429.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Route-layer middleware: `POST /orders` spends its client's budget, or is answered 429
/// with `Retry-After` when that is empty. Other methods and paths pass untouched.
pub async fn limit_order_creation(
    State(limit): State<Arc<OrderRateLimit>>,
    request: Request,
    next: Next,
) -> Response {
    let limited = request.method() == Method::POST
        && request
            .extensions()
            .get::<MatchedPath>()
            .is_some_and(|path| path.as_str() == LIMITED_PATH);
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    // Without connect info (a test calling the router directly) there is nothing to key on.
    let (true, Some(ip)) = (limited, ip) else {
        return next.run(request).await;
    };
    match limit.check(ip) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            tracing::warn!(client_ip = %ip, "POST /orders over the client's rate limit; answered 429");
            ApiError::RateLimited {
                retry_after_secs: retry_after_secs(wait),
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn limit(per_second: u32, burst: u32) -> OrderRateLimit {
        OrderRateLimit::new(OrderRateLimitSettings {
            per_second: NonZeroU32::new(per_second).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        })
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_while_others_are_unaffected() {
        let limit = limit(1, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limit.check(ip), Ok(()));
        }
        let wait = limit.check(ip).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(limit.check("192.0.2.2".parse().unwrap()), Ok(()));
    }

    #[test]
    fn mapped_ipv4_and_one_ipv6_64_share_a_budget() {
        let limit = limit(1, 1);
        assert_eq!(limit.check("192.0.2.1".parse().unwrap()), Ok(()));
        assert!(limit.check("::ffff:192.0.2.1".parse().unwrap()).is_err());
        assert_eq!(limit.check("2001:db8:1:2::1".parse().unwrap()), Ok(()));
        assert!(limit
            .check("2001:db8:1:2:ffff::9".parse().unwrap())
            .is_err());
        assert_eq!(limit.check("2001:db8:1:3::1".parse().unwrap()), Ok(()));
    }

    #[test]
    fn housekeeping_forgets_clients_whose_budget_is_full_again() {
        let limit = limit(1_000_000, 1);
        for i in 0..100_u8 {
            assert_eq!(limit.check(IpAddr::from([198, 51, 100, i])), Ok(()));
        }
        assert_eq!(limit.clients(), 100);
        // At a million per second, every budget refills within a microsecond.
        let start = std::time::Instant::now();
        while limit.clients() > 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "housekeeping kept {} clients",
                limit.clients()
            );
            limit.housekeeping();
            std::thread::yield_now();
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(50)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
