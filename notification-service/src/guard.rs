//! The intake's front door: an optional client-IP allow-list, and a per-IP rate limit that
//! counts only *rejected* requests, so forgers are throttled while verified deliveries never
//! spend budget.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::Clock as _;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use webhook_common::error_body::ErrorBody;

use crate::config::RateLimitSettings;

/// Most client IPs remembered as "over budget" at once; beyond that a blocked IP is still
/// refused by the limiter after verification, only the early refusal is skipped.
const MAX_BLOCKED_ENTRIES: usize = 100_000;

/// Allow-list and rejection budget per client IP.
///
/// Protocol: a rejected request (any 4xx from the intake) spends one cell of its IP's budget.
/// When the budget is empty, that request is answered 429 and the IP is remembered as
/// blocked until the budget refills; while blocked, its requests get 429 *before* any body
/// is read or signature checked. Accepted requests never touch the budget. The limit is per
/// IP (IPv6 per /64), so a genuine sender behind the same address as a forger shares its
/// budget; its deliveries are retried by the sender after `Retry-After` and nothing is lost.
#[derive(Debug)]
pub struct IntakeGuard {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    allowed: Vec<IpNet>,
}

impl IntakeGuard {
    /// A guard with the given budget and allow-list (empty allows all).
    pub fn new(limits: RateLimitSettings, allowed: Vec<IpNet>) -> Self {
        let quota = Quota::per_second(limits.per_second).allow_burst(limits.burst);
        IntakeGuard {
            limiter: RateLimiter::keyed(quota),
            blocked: Mutex::new(HashMap::new()),
            allowed,
        }
    }

    fn is_allowed(&self, ip: IpAddr) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|net| net.contains(&ip))
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.blocked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the IP is still blocked, if it is.
    fn blocked_for(&self, key: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut blocked = self.blocked();
        match blocked.get(&key) {
            Some(until) if *until > now => Some(*until - now),
            Some(_) => {
                blocked.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Spends one rejection; `Some(wait)` if the IP was over budget.
    fn spend_rejection(&self, key: IpAddr) -> Option<Duration> {
        let not_until = self.limiter.check_key(&key).err()?;
        let wait = not_until.wait_time_from(self.limiter.clock().now());
        let mut blocked = self.blocked();
        if blocked.len() < MAX_BLOCKED_ENTRIES || blocked.contains_key(&key) {
            blocked.insert(key, Instant::now() + wait);
        }
        Some(wait)
    }

    /// Forgets idle IPs so memory stays bounded however many addresses knock.
    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let now = Instant::now();
        self.blocked().retain(|_, until| *until > now);
    }

    /// Runs [`IntakeGuard::housekeeping`] every `every` until `shutdown`.
    pub async fn run_housekeeping(
        self: std::sync::Arc<Self>,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => self.housekeeping(),
            }
        }
    }
}

/// The budget key: the address, or its /64 for IPv6 (one host usually owns a whole /64).
fn budget_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::from(segments)
            }
        },
    }
}

fn too_many(wait: Duration) -> Response {
    // Round up: retrying a little late is fine, a little early just earns another 429.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut response = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(ErrorBody::new(
            "rate_limited",
            format!("too many rejected requests from this address; retry after {secs} s"),
        )),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Middleware for the intake route: allow-list (403), early 429 for blocked IPs, and
/// charging rejections to the client's budget.
pub async fn intake_guard(
    State(guard): State<std::sync::Arc<IntakeGuard>>,
    request: Request,
    next: Next,
) -> Response {
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let Some(ip) = ip else {
        // Served without connect info (a unit test calling the router directly): nothing
        // to key on, so no limit.
        return next.run(request).await;
    };
    if !guard.is_allowed(ip) {
        tracing::warn!(client_ip = %ip, "webhook refused: address not in ALLOWED_CIDRS");
        return (
            StatusCode::FORBIDDEN,
            Json(ErrorBody::new(
                "forbidden",
                "this client address is not allowed to deliver webhooks here",
            )),
        )
            .into_response();
    }
    let key = budget_key(ip);
    if let Some(wait) = guard.blocked_for(key) {
        return too_many(wait);
    }
    let response = next.run(request).await;
    if response.status().is_client_error() {
        if let Some(wait) = guard.spend_rejection(key) {
            tracing::warn!(client_ip = %ip, "client over its rejection budget");
            return too_many(wait);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn ipv6_clients_share_a_budget_per_64_and_mapped_v4_is_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(budget_key(a), budget_key(b));
        assert_ne!(budget_key(a), budget_key(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(budget_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn budget_blocks_after_the_burst_and_allow_list_matches_networks() {
        let guard = IntakeGuard::new(
            RateLimitSettings {
                per_second: NonZeroU32::MIN,
                burst: NonZeroU32::new(2).unwrap(),
            },
            vec!["10.0.0.0/8".parse().unwrap()],
        );
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(guard.is_allowed(ip));
        assert!(!guard.is_allowed("192.168.0.1".parse().unwrap()));
        assert_eq!(guard.spend_rejection(ip), None);
        assert_eq!(guard.spend_rejection(ip), None);
        assert!(guard.spend_rejection(ip).is_some());
        assert!(guard.blocked_for(ip).is_some());
        assert!(guard.blocked_for("10.0.0.2".parse().unwrap()).is_none());
    }
}
