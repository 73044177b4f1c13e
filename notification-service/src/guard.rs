//! The intake's front door: an optional client-IP allow-list, and a per-IP rate limit that
//! counts only *rejected* requests, so forgers are throttled while verified deliveries never
//! spend budget nor get turned away.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

use crate::api::metrics;
use crate::config::RateLimitSettings;

/// Allow-list and rejection budget per client IP.
///
/// Protocol: every request is verified, also from an IP that is over its budget, because
/// a genuine sender may share its address with a forger (NAT, a proxy, one IPv6 /64) and
/// a verified sender must never be slowed down. A rejected request (any 4xx from the
/// intake) spends one cell of its IP's budget; when the budget is empty the rejection is
/// answered 429 with `Retry-After` instead. Accepted requests never touch the budget.
/// Verifying costs a bounded body read (`MAX_BODY_BYTES`, within `REQUEST_TIMEOUT`,
/// under `MAX_CONCURRENT_REQUESTS`) and one HMAC per secret, so throttled forgers stay cheap.
#[derive(Debug)]
pub struct IntakeGuard {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    allowed: Vec<IpNet>,
}

impl IntakeGuard {
    /// A guard with the given budget and allow-list (empty allows all).
    pub fn new(limits: RateLimitSettings, allowed: Vec<IpNet>) -> Self {
        let quota = Quota::per_second(limits.per_second).allow_burst(limits.burst);
        IntakeGuard {
            limiter: RateLimiter::keyed(quota),
            allowed,
        }
    }

    fn is_allowed(&self, ip: IpAddr) -> bool {
        // Listening on `[::]`, an IPv4 client arrives as `::ffff:a.b.c.d`; an IPv4 network in
        // ALLOWED_CIDRS must still match it.
        let ip = ip.to_canonical();
        self.allowed.is_empty() || self.allowed.iter().any(|net| net.contains(&ip))
    }

    /// Spends one rejection; `Some(wait)` if the IP was over budget.
    fn spend_rejection(&self, key: IpAddr) -> Option<Duration> {
        let not_until = self.limiter.check_key(&key).err()?;
        Some(not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Forgets idle IPs so memory stays bounded however many addresses knock.
    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
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

/// Middleware for the intake route: allow-list (403), then the request is handled (and so
/// verified) whatever the budget, and only a rejection is charged, or answered 429 when the
/// budget is spent. Times every delivery (`webhook_processing_seconds`) and counts each one
/// it answered with an error in `webhooks_received_total` by reason (the handler counts the
/// accepted ones).
pub async fn intake_guard(
    State(guard): State<std::sync::Arc<IntakeGuard>>,
    request: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let response = admit(&guard, request, next).await;
    if let Some(reason) = metrics::rejection_reason(response.status()) {
        metrics::count_rejected(reason);
    }
    metrics::observe_processing(started.elapsed());
    response
}

/// [`intake_guard`] without its metrics.
async fn admit(guard: &IntakeGuard, request: Request, next: Next) -> Response {
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
    let response = next.run(request).await;
    if response.status().is_client_error() {
        if let Some(wait) = guard.spend_rejection(budget_key(ip)) {
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
        // An IPv4 client seen through an IPv6 (`[::]`) listener.
        assert!(guard.is_allowed("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!guard.is_allowed("::ffff:192.168.0.1".parse().unwrap()));
        assert_eq!(guard.spend_rejection(ip), None);
        assert_eq!(guard.spend_rejection(ip), None);
        assert!(guard.spend_rejection(ip).is_some());
        assert_eq!(guard.spend_rejection("10.0.0.2".parse().unwrap()), None);
    }
}
