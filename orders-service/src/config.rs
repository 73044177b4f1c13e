//! Settings from flags and environment variables, validated once at startup.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use webhook_common::placeholders::{refuse_example_admin_token, refuse_example_webhook_secret};
use webhook_common::server::{ServeLimits, DEFAULT_MAX_CONNECTIONS_PER_CLIENT};
use webhook_common::Secret;

/// The default retry schedule: the delay before each retry after the first attempt. The
/// first retries come within seconds; in all it spans about three days (70 h 42 min 35 s)
/// over 12 attempts.
pub const DEFAULT_RETRY_SCHEDULE: &str = "5s,30s,2m,10m,30m,1h,3h,6h,12h,24h,24h";

/// Every setting of the service. Each has a `--flag` and an environment variable of the same
/// name in upper snake case; the defaults suit the local demo.
#[derive(Clone, clap::Parser)]
#[command(
    name = "orders-service",
    version,
    about = "Orders API with reliable signed webhooks"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8000")]
    pub listen_addr: SocketAddr,

    /// The database: `sqlite://path/to/orders.db` (SQLite; the file and its directory are
    /// created if missing) or `postgres://user:password@host:5432/database` (PostgreSQL, for
    /// several replicas sharing one database; `postgresql://` works too). Its value is never
    /// shown (it may hold a password).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/orders.db",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Most connections of the PostgreSQL pool (per replica). Ignored on SQLite, whose writes
    /// go through one connection and whose read pool has a fixed size.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = crate::store::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Bearer token for the management routes. Required.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: SecretString,

    /// Where order events are sent; ensured as a subscription to all order events at startup.
    /// Unset: no subscription comes from configuration.
    #[arg(long, env = "NOTIFICATION_WEBHOOK_URL")]
    pub notification_webhook_url: Option<String>,

    /// `whsec_...` secret for that subscription. Unset: one is generated and stored once.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,

    /// Delays before each retry, comma-separated (`500ms`, `5s`, `2m`, `1h`, `1d`). The number
    /// of attempts is one more than the number of delays.
    #[arg(long, env = "RETRY_SCHEDULE", default_value = DEFAULT_RETRY_SCHEDULE, value_parser = parse_schedule)]
    pub retry_schedule: RetrySchedule,

    /// Random spread applied to each retry delay, in percent (0 to 100).
    #[arg(long, env = "RETRY_JITTER_PERCENT", default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub retry_jitter_percent: u8,

    /// Longest `Retry-After` that is honoured; longer values are cut to this.
    #[arg(long, env = "RETRY_AFTER_MAX", default_value = "1h", value_parser = parse_duration)]
    pub retry_after_max: Duration,

    /// Timeout of one delivery attempt (connect, send, response headers and body prefix).
    #[arg(long, env = "WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub webhook_timeout: Duration,

    /// How many deliveries are attempted at once. Each waits on a receiver, not on a CPU, so
    /// many are cheap; they share keep-alive connections.
    #[arg(long, env = "DISPATCH_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub dispatch_concurrency: u32,

    /// How many due deliveries are claimed from the database at a time.
    #[arg(long, env = "DISPATCH_BATCH_SIZE", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub dispatch_batch_size: u32,

    /// Longest wait between sweeps for due retries and expired leases.
    #[arg(long, env = "DISPATCH_SWEEP_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub dispatch_sweep_interval: Duration,

    /// How long a claimed delivery belongs to its worker: one attempt and the recording of its
    /// outcome. After a crash, the dead process's deliveries are retried once their leases
    /// run out, so shorter means faster recovery. Must be at least `WEBHOOK_TIMEOUT` + 5 s.
    #[arg(long, env = "DISPATCH_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub dispatch_lease: Duration,

    /// How long shutdown waits for in-flight attempts before releasing their leases.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// How long finished events are kept (every delivery delivered, or none), with their
    /// deliveries, attempts and, with the last of its events, their order: `30d`, `12h`, up to
    /// `3650d`; `off` keeps everything. Pending, in-flight and failed deliveries are never
    /// deleted, however old. An hourly task deletes in small batches.
    #[arg(long, env = "EVENT_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub event_retention: Retention,

    /// Allow webhooks to loopback, private (RFC 1918, ULA), link-local (cloud metadata),
    /// CGNAT and other non-public addresses. Off by default: the SSRF guard refuses them when
    /// an endpoint is created or changed and again, against the resolved addresses, at delivery
    /// time. The local demo turns it on (`true`), since its receiver runs on 127.0.0.1.
    #[arg(
        long,
        env = "ALLOW_PRIVATE_WEBHOOK_TARGETS",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_private_webhook_targets: bool,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Longest time one HTTP request may take, body upload included; slower ones get 408.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,

    /// HTTP requests handled at the same time, at most (`/healthz` aside); more get 503 with
    /// `Retry-After`.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,

    /// Deliveries to one endpoint attempted at the same time, at most (counted across every
    /// replica sharing the database), so that one slow receiver cannot hold every dispatch
    /// slot. Half of `DISPATCH_CONCURRENCY` when unset: a healthy endpoint alone still gets
    /// plenty, a stuck one leaves the other half to the rest.
    #[arg(long, env = "DISPATCH_PER_ENDPOINT_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub dispatch_per_endpoint_concurrency: Option<u32>,

    /// Longest time a client may take to send a request's line and headers, in seconds,
    /// counted from when its connection is ready for a request; the connection is closed
    /// after it. Also how long an idle keep-alive connection stays open. Guards against
    /// clients that trickle headers to hold connections (slowloris); `REQUEST_TIMEOUT_SECS`
    /// only starts once the headers are in.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,

    /// HTTP connections open at the same time, at most; beyond it no more are accepted until
    /// one closes (clients wait in the listen backlog). Keep it below the process's file
    /// descriptor limit (`ulimit -n`).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// HTTP connections one client may hold open at the same time, at most (clients are IPv4
    /// addresses and IPv6 /64s); a further one is closed at once. Keeps one client from
    /// taking every `MAX_CONNECTIONS` slot. A value of at least `MAX_CONNECTIONS` leaves that
    /// cap alone in force (load tests that send from one address set it so).
    #[arg(long, env = "MAX_CONNECTIONS_PER_CLIENT", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_CLIENT)]
    pub max_connections_per_client: usize,

    /// `POST /orders` requests one client (an IPv4 address or an IPv6 /64) may send per
    /// second, sustained; beyond it they get 429 with `Retry-After`, and no order is created.
    /// The route is public and emails any address, so without a limit it is a spam relay.
    /// `0` turns the limit off (load tests that send from one address do).
    #[arg(long, env = "ORDER_RATE_LIMIT_PER_SEC", default_value_t = 20)]
    pub order_rate_limit_per_sec: u32,

    /// `POST /orders` requests one client may send in a burst, above the sustained rate;
    /// at least 1 while the limit is on.
    #[arg(long, env = "ORDER_RATE_LIMIT_BURST", default_value_t = 40)]
    pub order_rate_limit_burst: u32,
}

/// The per-client limit of `POST /orders`, when on (see [`Config::order_rate_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderRateLimitSettings {
    /// Orders per second, sustained.
    pub per_second: NonZeroU32,
    /// Orders at once, above the sustained rate.
    pub burst: NonZeroU32,
}

/// Longest accepted `REQUEST_TIMEOUT_SECS`.
pub const MAX_REQUEST_TIMEOUT_SECS: u64 = 3600;

/// Longest accepted `HEADER_READ_TIMEOUT_SECS`.
pub const MAX_HEADER_READ_TIMEOUT_SECS: u64 = 300;

/// Largest accepted `MAX_CONNECTIONS` and `MAX_CONNECTIONS_PER_CLIENT`.
pub const MAX_MAX_CONNECTIONS: usize = 100_000;

/// Largest accepted `ORDER_RATE_LIMIT_PER_SEC` and `ORDER_RATE_LIMIT_BURST`.
pub const MAX_ORDER_RATE_LIMIT: u32 = 1_000_000;

/// How much longer than `WEBHOOK_TIMEOUT` a lease must be: an attempt that times out still
/// has to record its outcome (retrying a busy database) before another worker may claim it.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// Why the configuration was refused; each message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value that cannot work.
    #[error("{setting}: {message}")]
    Invalid {
        /// The environment variable name of the setting.
        setting: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

impl Config {
    /// `DISPATCH_PER_ENDPOINT_CONCURRENCY`, or half of `DISPATCH_CONCURRENCY` (at least 1)
    /// when it is not set.
    pub fn per_endpoint_cap(&self) -> u32 {
        self.dispatch_per_endpoint_concurrency
            .unwrap_or((self.dispatch_concurrency / 2).max(1))
    }

    /// The `POST /orders` limit per client, or `None` when `ORDER_RATE_LIMIT_PER_SEC` is 0
    /// (off; the burst is then ignored).
    pub fn order_rate_limit(&self) -> Result<Option<OrderRateLimitSettings>, ConfigError> {
        if self.order_rate_limit_per_sec > MAX_ORDER_RATE_LIMIT {
            return Err(invalid(
                "ORDER_RATE_LIMIT_PER_SEC",
                format!("must be between 0 (no limit) and {MAX_ORDER_RATE_LIMIT}"),
            ));
        }
        let Some(per_second) = NonZeroU32::new(self.order_rate_limit_per_sec) else {
            return Ok(None);
        };
        let burst = NonZeroU32::new(self.order_rate_limit_burst)
            .filter(|burst| burst.get() <= MAX_ORDER_RATE_LIMIT)
            .ok_or_else(|| {
                invalid(
                    "ORDER_RATE_LIMIT_BURST",
                    format!(
                        "must be between 1 and {MAX_ORDER_RATE_LIMIT} while ORDER_RATE_LIMIT_PER_SEC \
                         is not 0 (set that to 0 to turn the limit off)"
                    ),
                )
            })?;
        Ok(Some(OrderRateLimitSettings { per_second, burst }))
    }

    /// The connection limits of the HTTP server (`HEADER_READ_TIMEOUT_SECS`,
    /// `MAX_CONNECTIONS`, `MAX_CONNECTIONS_PER_CLIENT`).
    pub fn serve_limits(&self) -> ServeLimits {
        ServeLimits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
        }
    }

    /// Checks what clap cannot: relations between settings and the shape of URLs and secrets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let token = self.admin_token.expose_secret();
        if token.trim().len() < 16 {
            return Err(invalid(
                "ADMIN_TOKEN",
                "must be at least 16 characters (generate one with `openssl rand -hex 32`)",
            ));
        }
        refuse_example_admin_token(token).map_err(|e| invalid("ADMIN_TOKEN", e))?;
        if self.database_url.trim().is_empty() {
            return Err(invalid("DATABASE_URL", "must not be empty"));
        }
        if let Some(url) = &self.notification_webhook_url {
            let parsed = crate::ssrf::parse_target_url(url)
                .map_err(|e| invalid("NOTIFICATION_WEBHOOK_URL", e.to_string()))?;
            // Names are resolved at delivery time (DNS may not be up yet at startup); literal
            // addresses can be refused now.
            if !self.allow_private_webhook_targets {
                crate::ssrf::check_literal_host(&parsed)
                    .map_err(|e| invalid("NOTIFICATION_WEBHOOK_URL", e.to_string()))?;
            }
        }
        if let Some(secret) = &self.webhook_secret {
            Secret::parse(secret.expose_secret())
                .map_err(|e| invalid("WEBHOOK_SECRET", e.to_string()))?;
            refuse_example_webhook_secret(secret.expose_secret())
                .map_err(|e| invalid("WEBHOOK_SECRET", e))?;
        }
        if self.webhook_timeout.is_zero() {
            return Err(invalid("WEBHOOK_TIMEOUT", "must be greater than zero"));
        }
        if self.dispatch_lease < self.webhook_timeout.saturating_add(LEASE_MARGIN) {
            return Err(invalid(
                "DISPATCH_LEASE",
                format!(
                    "must be at least WEBHOOK_TIMEOUT ({:?}) + {:?}, or an attempt still running or \
                     still recording its outcome could be claimed and sent twice",
                    self.webhook_timeout, LEASE_MARGIN
                ),
            ));
        }
        if !(1..=MAX_REQUEST_TIMEOUT_SECS).contains(&self.request_timeout_secs) {
            return Err(invalid(
                "REQUEST_TIMEOUT_SECS",
                format!("must be between 1 and {MAX_REQUEST_TIMEOUT_SECS}"),
            ));
        }
        if !(1..=10_000).contains(&self.max_concurrent_requests) {
            return Err(invalid(
                "MAX_CONCURRENT_REQUESTS",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=MAX_HEADER_READ_TIMEOUT_SECS).contains(&self.header_read_timeout_secs) {
            return Err(invalid(
                "HEADER_READ_TIMEOUT_SECS",
                format!("must be between 1 and {MAX_HEADER_READ_TIMEOUT_SECS}"),
            ));
        }
        if !(1..=MAX_MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(invalid(
                "MAX_CONNECTIONS",
                format!("must be between 1 and {MAX_MAX_CONNECTIONS}"),
            ));
        }
        if !(1..=MAX_MAX_CONNECTIONS).contains(&self.max_connections_per_client) {
            return Err(invalid(
                "MAX_CONNECTIONS_PER_CLIENT",
                format!("must be between 1 and {MAX_MAX_CONNECTIONS}"),
            ));
        }
        self.order_rate_limit()?;
        if self.dispatch_sweep_interval.is_zero() {
            return Err(invalid(
                "DISPATCH_SWEEP_INTERVAL",
                "must be greater than zero",
            ));
        }
        Ok(())
    }

    /// The configured webhook secret, parsed. `None` when unset.
    pub fn webhook_secret(&self) -> Result<Option<Secret>, ConfigError> {
        self.webhook_secret
            .as_ref()
            .map(|s| {
                Secret::parse(s.expose_secret())
                    .map_err(|e| invalid("WEBHOOK_SECRET", e.to_string()))
            })
            .transpose()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field(
                "database_url",
                &crate::store::redact_url(&self.database_url),
            )
            .field("database_max_connections", &self.database_max_connections)
            .field("admin_token", &"<redacted>")
            .field("notification_webhook_url", &self.notification_webhook_url)
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("retry_schedule", &self.retry_schedule)
            .field("retry_jitter_percent", &self.retry_jitter_percent)
            .field("retry_after_max", &self.retry_after_max)
            .field("webhook_timeout", &self.webhook_timeout)
            .field("dispatch_concurrency", &self.dispatch_concurrency)
            .field("dispatch_batch_size", &self.dispatch_batch_size)
            .field("dispatch_sweep_interval", &self.dispatch_sweep_interval)
            .field("dispatch_lease", &self.dispatch_lease)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("event_retention", &self.event_retention)
            .field(
                "allow_private_webhook_targets",
                &self.allow_private_webhook_targets,
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field(
                "dispatch_per_endpoint_concurrency",
                &self.dispatch_per_endpoint_concurrency,
            )
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_client",
                &self.max_connections_per_client,
            )
            .field("order_rate_limit_per_sec", &self.order_rate_limit_per_sec)
            .field("order_rate_limit_burst", &self.order_rate_limit_burst)
            .finish()
    }
}

/// The delays before each retry; an event gets `delays.len() + 1` attempts in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Delay before retry `i + 1` (after attempt `i + 1` failed).
    pub delays: Vec<Duration>,
}

impl RetrySchedule {
    /// How many attempts an event gets in all.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays.len()).unwrap_or(u32::MAX - 1) + 1
    }

    /// The delay after the `attempts`-th failed attempt, or `None` once the schedule is used up.
    pub fn delay_after(&self, attempts: u32) -> Option<Duration> {
        let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
        self.delays.get(index).copied()
    }

    /// The sum of all delays.
    pub fn total(&self) -> Duration {
        self.delays.iter().sum()
    }
}

/// Parses a comma-separated list of durations; an empty list means "never retry".
pub fn parse_schedule(text: &str) -> Result<RetrySchedule, String> {
    let text = text.trim();
    if text.is_empty() || text == "none" {
        return Ok(RetrySchedule { delays: Vec::new() });
    }
    let delays = text
        .split(',')
        .map(|part| parse_duration(part.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if delays.len() > 100 {
        return Err("at most 100 retries".into());
    }
    Ok(RetrySchedule { delays })
}

/// Parses `250ms`, `5s`, `2m`, `1h` or `1d` (a whole number and a unit), up to 30 days.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_duration_up_to(text, 30)
}

/// How long finished work is kept (`EVENT_RETENTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Deleted once older than this.
    After(Duration),
    /// Kept forever (`off`).
    Forever,
}

/// Parses a retention: `off`, or a duration as [`parse_duration`] takes it, from 1 hour up to
/// 3650 days.
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    if text.trim() == "off" {
        return Ok(Retention::Forever);
    }
    let keep = parse_duration_up_to(text, 3650)?;
    if keep < Duration::from_secs(3600) {
        return Err(format!(
            "{text:?} is shorter than 1h; keep finished events at least an hour, or say `off`"
        ));
    }
    Ok(Retention::After(keep))
}

fn parse_duration_up_to(text: &str, max_days: u64) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit; use ms, s, m, h or d (e.g. 5s)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number followed by a unit (e.g. 5s)"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use ms, s, m, h or d"
            ))
        }
    };
    let millis = n
        .checked_mul(millis_per_unit)
        .filter(|m| *m <= max_days * 86_400_000)
        .ok_or_else(|| format!("{text:?} is longer than {max_days} days"))?;
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const TOKEN: &str = "0123456789abcdef0123";

    #[test]
    fn default_schedule_spans_about_three_days_and_starts_within_seconds() {
        let s = parse_schedule(DEFAULT_RETRY_SCHEDULE).unwrap();
        assert_eq!(s.delays[0], Duration::from_secs(5));
        let hours = s.total().as_secs() / 3600;
        assert!((66..=78).contains(&hours), "{hours} h");
        assert_eq!(s.max_attempts(), 12);
        assert_eq!(s.delay_after(1), Some(Duration::from_secs(5)));
        assert_eq!(s.delay_after(12), None);
        assert_eq!(s.delay_after(0), None);
    }

    #[test]
    fn retention_takes_days_or_off_and_refuses_less_than_an_hour() {
        assert_eq!(
            parse_retention("30d"),
            Ok(Retention::After(Duration::from_secs(30 * 86_400)))
        );
        assert_eq!(
            parse_retention("400d"),
            Ok(Retention::After(Duration::from_secs(400 * 86_400)))
        );
        assert_eq!(parse_retention("off"), Ok(Retention::Forever));
        assert!(parse_retention("10m").is_err());
        assert!(parse_retention("4000d").is_err());
        assert!(parse_retention("forever").is_err());
    }

    #[test]
    fn durations_need_a_known_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "5", "s", "5x", "1.5s", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_admin_token_names_the_setting() {
        let err = match Config::try_parse_from(["orders-service"]) {
            Ok(_) => panic!("parsed without ADMIN_TOKEN"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("--admin-token"), "{err}");
    }

    #[test]
    fn bad_settings_fail_validation_naming_the_setting() {
        use webhook_common::placeholders::{EXAMPLE_ADMIN_TOKEN, EXAMPLE_WEBHOOK_SECRET};
        let cases: [(&[&str], &str); 20] = [
            // The placeholders `.env.example` ships are well-formed: refused by name.
            (&["--admin-token", EXAMPLE_ADMIN_TOKEN], "ADMIN_TOKEN"),
            (
                &[
                    "--admin-token",
                    TOKEN,
                    "--webhook-secret",
                    EXAMPLE_WEBHOOK_SECRET,
                ],
                "WEBHOOK_SECRET",
            ),
            (
                &["--admin-token", TOKEN, "--header-read-timeout-secs", "0"],
                "HEADER_READ_TIMEOUT_SECS",
            ),
            (
                &["--admin-token", TOKEN, "--header-read-timeout-secs", "301"],
                "HEADER_READ_TIMEOUT_SECS",
            ),
            (
                &["--admin-token", TOKEN, "--max-connections", "0"],
                "MAX_CONNECTIONS",
            ),
            (
                &["--admin-token", TOKEN, "--max-connections", "100001"],
                "MAX_CONNECTIONS",
            ),
            (
                &["--admin-token", TOKEN, "--max-connections-per-client", "0"],
                "MAX_CONNECTIONS_PER_CLIENT",
            ),
            (
                &[
                    "--admin-token",
                    TOKEN,
                    "--max-connections-per-client",
                    "100001",
                ],
                "MAX_CONNECTIONS_PER_CLIENT",
            ),
            (
                &["--admin-token", TOKEN, "--order-rate-limit-burst", "0"],
                "ORDER_RATE_LIMIT_BURST",
            ),
            (
                &[
                    "--admin-token",
                    TOKEN,
                    "--order-rate-limit-burst",
                    "1000001",
                ],
                "ORDER_RATE_LIMIT_BURST",
            ),
            (
                &[
                    "--admin-token",
                    TOKEN,
                    "--order-rate-limit-per-sec",
                    "1000001",
                ],
                "ORDER_RATE_LIMIT_PER_SEC",
            ),
            (
                &[
                    "--admin-token",
                    TOKEN,
                    "--webhook-timeout",
                    "2s",
                    "--dispatch-lease",
                    "6999ms",
                ],
                "DISPATCH_LEASE",
            ),
            (
                &["--admin-token", TOKEN, "--request-timeout-secs", "0"],
                "REQUEST_TIMEOUT_SECS",
            ),
            (
                &["--admin-token", TOKEN, "--max-concurrent-requests", "0"],
                "MAX_CONCURRENT_REQUESTS",
            ),
            (
                &[
                    "--admin-token",
                    TOKEN,
                    "--notification-webhook-url",
                    "http://127.0.0.1:8001/webhooks",
                ],
                "NOTIFICATION_WEBHOOK_URL",
            ),
            (&["--admin-token", "short"], "ADMIN_TOKEN"),
            (
                &[
                    "--admin-token",
                    TOKEN,
                    "--notification-webhook-url",
                    "ftp://x",
                ],
                "NOTIFICATION_WEBHOOK_URL",
            ),
            (
                &["--admin-token", TOKEN, "--webhook-secret", "nope"],
                "WEBHOOK_SECRET",
            ),
            (
                &["--admin-token", TOKEN, "--webhook-timeout", "90s"],
                "DISPATCH_LEASE",
            ),
            (
                &[
                    "--admin-token",
                    TOKEN,
                    "--notification-webhook-url",
                    "http://u:p@x/",
                ],
                "NOTIFICATION_WEBHOOK_URL",
            ),
        ];
        for (args, setting) in cases {
            let config = Config::try_parse_from(
                std::iter::once("orders-service").chain(args.iter().copied()),
            )
            .unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with(setting), "{args:?}: {err}");
        }
        let err = Config::try_parse_from([
            "orders-service",
            "--admin-token",
            TOKEN,
            "--retry-schedule",
            "5s,soon",
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("--retry-schedule"), "{err}");
    }

    #[test]
    fn a_lease_five_seconds_longer_than_the_timeout_is_enough() {
        let config = Config::try_parse_from([
            "orders-service",
            "--admin-token",
            TOKEN,
            "--webhook-timeout",
            "2s",
            "--dispatch-lease",
            "7s",
        ])
        .unwrap();
        config.validate().unwrap();
        let defaults = Config::try_parse_from(["orders-service", "--admin-token", TOKEN]).unwrap();
        defaults.validate().unwrap();
        assert_eq!(defaults.request_timeout_secs, 10);
        assert_eq!(defaults.max_concurrent_requests, 256);
        assert_eq!(defaults.dispatch_per_endpoint_concurrency, None);
        assert_eq!(defaults.per_endpoint_cap(), 32);
        let small = Config::try_parse_from([
            "orders-service",
            "--admin-token",
            TOKEN,
            "--dispatch-concurrency",
            "1",
        ])
        .unwrap();
        assert_eq!(small.per_endpoint_cap(), 1);
        assert_eq!(defaults.dispatch_lease, Duration::from_secs(15));
        assert_eq!(defaults.header_read_timeout_secs, 10);
        assert_eq!(defaults.max_connections, 1024);
        assert_eq!(defaults.max_connections_per_client, 128);
        assert_eq!(defaults.serve_limits(), ServeLimits::default());
    }

    #[test]
    fn orders_are_limited_by_default_and_a_rate_of_zero_turns_the_limit_off() {
        let parse = |extra: &[&str]| {
            Config::try_parse_from(
                ["orders-service", "--admin-token", TOKEN]
                    .into_iter()
                    .chain(extra.iter().copied()),
            )
            .unwrap()
            .order_rate_limit()
            .map_err(|e| e.to_string())
        };
        let limit = |per_second, burst| {
            Ok(Some(OrderRateLimitSettings {
                per_second: NonZeroU32::new(per_second).unwrap(),
                burst: NonZeroU32::new(burst).unwrap(),
            }))
        };
        assert_eq!(parse(&[]), limit(20, 40));
        assert_eq!(
            parse(&[
                "--order-rate-limit-per-sec",
                "5",
                "--order-rate-limit-burst",
                "1"
            ]),
            limit(5, 1)
        );
        assert_eq!(parse(&["--order-rate-limit-per-sec", "0"]), Ok(None));
        // Off, the burst does not matter.
        assert_eq!(
            parse(&[
                "--order-rate-limit-per-sec",
                "0",
                "--order-rate-limit-burst",
                "0"
            ]),
            Ok(None)
        );
        let err = Config::try_parse_from([
            "orders-service",
            "--admin-token",
            TOKEN,
            "--order-rate-limit-per-sec",
            "many",
        ])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("--order-rate-limit-per-sec"), "{err}");
    }

    #[test]
    fn the_private_targets_switch_takes_a_bare_flag_or_a_boolean() {
        let parse = |extra: &[&str]| {
            Config::try_parse_from(
                ["orders-service", "--admin-token", TOKEN]
                    .into_iter()
                    .chain(extra.iter().copied()),
            )
            .map(|c| c.allow_private_webhook_targets)
            .map_err(|e| e.to_string())
        };
        assert_eq!(parse(&[]), Ok(false));
        assert_eq!(parse(&["--allow-private-webhook-targets"]), Ok(true));
        assert_eq!(parse(&["--allow-private-webhook-targets=true"]), Ok(true));
        assert_eq!(
            parse(&["--allow-private-webhook-targets", "false"]),
            Ok(false)
        );
        assert!(parse(&["--allow-private-webhook-targets=maybe"]).is_err());
        let local = Config::try_parse_from([
            "orders-service",
            "--admin-token",
            TOKEN,
            "--allow-private-webhook-targets",
            "--notification-webhook-url",
            "http://127.0.0.1:8001/webhooks",
        ])
        .unwrap();
        local.validate().unwrap();
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let secret = Secret::generate().expose_whsec();
        let config = Config::try_parse_from([
            "orders-service",
            "--admin-token",
            TOKEN,
            "--webhook-secret",
            &secret,
        ])
        .unwrap();
        config.validate().unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains(TOKEN) && !shown.contains(&secret),
            "{shown}"
        );
    }
}
