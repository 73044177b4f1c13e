//! Settings from flags and environment variables, checked once at startup: ranges by clap,
//! the relations between settings and the shape of secrets and URLs by [`Config::validate`].
//! Durations take a unit (`500ms`, `10s`, `5m`, `1d`; [`webhook_common::config`]).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use secrecy::{ExposeSecret, SecretString};
pub use webhook_common::config::Retention;
use webhook_common::config::{
    default_value, DatabaseUrl, DurationRange, HttpSettings, RetentionRange, MAX_MAX_CONNECTIONS,
};
use webhook_common::placeholders::{refuse_example_admin_token, refuse_example_webhook_secret};
use webhook_common::server::{ServeLimits, DEFAULT_MAX_CONNECTIONS_PER_CLIENT};
use webhook_common::Secret;

/// The default retry schedule: the delay before each retry after the first attempt. The
/// first retries come within seconds; in all it spans about three days (70 h 42 min 35 s)
/// over 12 attempts.
pub const DEFAULT_RETRY_SCHEDULE: &str = "5s,30s,2m,10m,30m,1h,3h,6h,12h,24h,24h";

/// Longest accepted duration of most duration settings (and of each retry delay).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// A duration of at most [`MAX_DURATION`], zero included.
const UP_TO_30_DAYS: DurationRange = DurationRange::between(Duration::ZERO, MAX_DURATION);

/// A positive duration of at most [`MAX_DURATION`].
const POSITIVE_UP_TO_30_DAYS: DurationRange =
    DurationRange::between(Duration::from_millis(1), MAX_DURATION);

/// What `EVENT_RETENTION` accepts besides `off`: an hour to ten years.
pub const EVENT_RETENTION_RANGE: RetentionRange = RetentionRange(DurationRange::between(
    Duration::from_secs(3600),
    Duration::from_secs(3650 * 86_400),
));

const SHUTDOWN_GRACE_HELP: &str =
    "How long shutdown waits for in-flight attempts before releasing their leases (0s to 30d)";

/// Every setting of the service. Each has a `--flag` and an environment variable of the same
/// name in upper snake case; the defaults suit the local demo. Secrets are `SecretString` and
/// the database URL a [`DatabaseUrl`], so the derived `Debug` shows none of them.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "orders-service",
    version,
    about = "Orders API with reliable signed webhooks"
)]
#[command(mut_arg("max_body_bytes", default_value("65536")))]
#[command(mut_arg("max_concurrent_requests", default_value("256")))]
// Up to 30 days here, as every other duration of this service (notification-service: 1 h).
#[command(mut_arg("shutdown_grace", |arg| arg.value_parser(UP_TO_30_DAYS).help(SHUTDOWN_GRACE_HELP)))]
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
    pub database_url: DatabaseUrl,

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

    /// Delays before each retry, comma-separated (`500ms`, `5s`, `2m`, `1h`, `1d`; each up to
    /// 30d). The number of attempts is one more than the number of delays.
    #[arg(long, env = "RETRY_SCHEDULE", default_value = DEFAULT_RETRY_SCHEDULE, value_parser = parse_schedule)]
    pub retry_schedule: RetrySchedule,

    /// Random spread applied to each retry delay, in percent (0 to 100).
    #[arg(long, env = "RETRY_JITTER_PERCENT", default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub retry_jitter_percent: u8,

    /// Longest `Retry-After` that is honoured (up to 30d); longer values are cut to this.
    #[arg(long, env = "RETRY_AFTER_MAX", default_value = "1h", value_parser = UP_TO_30_DAYS)]
    pub retry_after_max: Duration,

    /// Timeout of one delivery attempt (connect, send, response headers and body prefix).
    #[arg(long, env = "WEBHOOK_TIMEOUT", default_value = "10s", value_parser = POSITIVE_UP_TO_30_DAYS)]
    pub webhook_timeout: Duration,

    /// How many deliveries are attempted at once. Each waits on a receiver, not on a CPU, so
    /// many are cheap; they share keep-alive connections. An attempt spends most of its time
    /// waiting for commits (its claim, the receiver's intake, its outcome), so the emails a
    /// healthy receiver gets per second grow with this: 128 gave 15 % more than 64 on the
    /// benchmark machine (README "Benchmarks").
    #[arg(long, env = "DISPATCH_CONCURRENCY", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub dispatch_concurrency: u32,

    /// How many due deliveries are claimed from the database at a time.
    #[arg(long, env = "DISPATCH_BATCH_SIZE", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub dispatch_batch_size: u32,

    /// Longest wait between sweeps for due retries and expired leases.
    #[arg(long, env = "DISPATCH_SWEEP_INTERVAL", default_value = "1s", value_parser = POSITIVE_UP_TO_30_DAYS)]
    pub dispatch_sweep_interval: Duration,

    /// How long a claimed delivery belongs to its worker: one attempt and the recording of its
    /// outcome. After a crash, the dead process's deliveries are retried once their leases
    /// run out, so shorter means faster recovery. Must be at least `WEBHOOK_TIMEOUT` + 5 s.
    #[arg(long, env = "DISPATCH_LEASE", default_value = "15s", value_parser = UP_TO_30_DAYS)]
    pub dispatch_lease: Duration,

    /// The HTTP settings both services have: `MAX_BODY_BYTES` (here 65536 by default),
    /// `REQUEST_TIMEOUT`, `MAX_CONCURRENT_REQUESTS` (here 256), `HEADER_READ_TIMEOUT`,
    /// `MAX_CONNECTIONS` and `SHUTDOWN_GRACE` (how long shutdown waits for in-flight attempts
    /// before releasing their leases; here up to 30d).
    #[command(flatten)]
    pub http: HttpSettings,

    /// How long finished events are kept (every delivery delivered, or none), with their
    /// deliveries, attempts and, with the last of its events, their order: `30d`, `12h`, from
    /// `1h` up to `3650d`; `off` keeps everything. Pending, in-flight and failed deliveries are
    /// never deleted, however old. An hourly task deletes in small batches.
    #[arg(long, env = "EVENT_RETENTION", default_value = "30d", value_parser = EVENT_RETENTION_RANGE)]
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

    /// Deliveries to one endpoint attempted at the same time, at most (counted across every
    /// replica sharing the database), so that one slow receiver cannot hold every dispatch
    /// slot. Half of `DISPATCH_CONCURRENCY` when unset: a healthy endpoint alone still gets
    /// plenty, a stuck one leaves the other half to the rest.
    #[arg(long, env = "DISPATCH_PER_ENDPOINT_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub dispatch_per_endpoint_concurrency: Option<u32>,

    /// HTTP connections one client may hold open at the same time, at most (1 to 100000;
    /// clients are IPv4 addresses and IPv6 /64s); a further one is closed at once. Keeps one
    /// client from taking every `MAX_CONNECTIONS` slot. A value of at least `MAX_CONNECTIONS`
    /// leaves that cap alone in force (load tests that send from one address set it so).
    #[arg(long, env = "MAX_CONNECTIONS_PER_CLIENT", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_CLIENT, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_MAX_CONNECTIONS))]
    pub max_connections_per_client: usize,

    /// `POST /orders` requests one client (an IPv4 address or an IPv6 /64) may send per
    /// second, sustained (up to 1000000); beyond it they get 429 with `Retry-After`, and no
    /// order is created. The route is public and emails any address, so without a limit it is
    /// a spam relay. `0` turns the limit off (load tests that send from one address do).
    #[arg(long, env = "ORDER_RATE_LIMIT_PER_SEC", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_ORDER_RATE_LIMIT)))]
    pub order_rate_limit_per_sec: u32,

    /// `POST /orders` requests one client may send in a burst, above the sustained rate
    /// (up to 1000000); at least 1 while the limit is on.
    #[arg(long, env = "ORDER_RATE_LIMIT_BURST", default_value_t = 40, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_ORDER_RATE_LIMIT)))]
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
    /// (off; the burst is then ignored). Both are at most [`MAX_ORDER_RATE_LIMIT`] (clap).
    pub fn order_rate_limit(&self) -> Result<Option<OrderRateLimitSettings>, ConfigError> {
        let Some(per_second) = NonZeroU32::new(self.order_rate_limit_per_sec) else {
            return Ok(None);
        };
        let burst = NonZeroU32::new(self.order_rate_limit_burst).ok_or_else(|| {
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

    /// The connection limits of the HTTP server (`HEADER_READ_TIMEOUT`, `MAX_CONNECTIONS`,
    /// `MAX_CONNECTIONS_PER_CLIENT`).
    pub fn serve_limits(&self) -> ServeLimits {
        ServeLimits {
            max_connections_per_client: self.max_connections_per_client,
            ..self.http.serve_limits()
        }
    }

    /// Checks what clap cannot: the shape of secrets and URLs and the relations between
    /// settings. Clap has already checked every range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_admin_token()?;
        self.check_database_url()?;
        self.check_notification_webhook_url()?;
        self.webhook_secret()?;
        self.check_dispatch_lease()?;
        self.order_rate_limit()?;
        Ok(())
    }

    /// `ADMIN_TOKEN`: at least 16 characters, and not the `.env.example` placeholder.
    fn check_admin_token(&self) -> Result<(), ConfigError> {
        let token = self.admin_token.expose_secret();
        if token.trim().len() < 16 {
            return Err(invalid(
                "ADMIN_TOKEN",
                "must be at least 16 characters (generate one with `openssl rand -hex 32`)",
            ));
        }
        refuse_example_admin_token(token).map_err(|e| invalid("ADMIN_TOKEN", e))
    }

    /// `DATABASE_URL` is not blank (its scheme is checked when connecting).
    fn check_database_url(&self) -> Result<(), ConfigError> {
        if self.database_url.trim().is_empty() {
            return Err(invalid("DATABASE_URL", "must not be empty"));
        }
        Ok(())
    }

    /// `NOTIFICATION_WEBHOOK_URL`: an http(s) URL without credentials, and, unless
    /// `ALLOW_PRIVATE_WEBHOOK_TARGETS`, no literal non-public address. Names are resolved at
    /// delivery time (DNS may not be up yet at startup).
    fn check_notification_webhook_url(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.notification_webhook_url else {
            return Ok(());
        };
        let parsed = crate::ssrf::parse_target_url(url)
            .map_err(|e| invalid("NOTIFICATION_WEBHOOK_URL", e.to_string()))?;
        if !self.allow_private_webhook_targets {
            crate::ssrf::check_literal_host(&parsed)
                .map_err(|e| invalid("NOTIFICATION_WEBHOOK_URL", e.to_string()))?;
        }
        Ok(())
    }

    /// `DISPATCH_LEASE` is at least `WEBHOOK_TIMEOUT` + [`LEASE_MARGIN`].
    fn check_dispatch_lease(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// The configured webhook secret, parsed (and not the `.env.example` placeholder).
    /// `None` when unset.
    pub fn webhook_secret(&self) -> Result<Option<Secret>, ConfigError> {
        self.webhook_secret
            .as_ref()
            .map(|s| {
                let secret = Secret::parse(s.expose_secret())
                    .map_err(|e| invalid("WEBHOOK_SECRET", e.to_string()))?;
                refuse_example_webhook_secret(s.expose_secret())
                    .map_err(|e| invalid("WEBHOOK_SECRET", e))?;
                Ok(secret)
            })
            .transpose()
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

/// Parses a comma-separated list of durations, each up to 30 days; an empty list (or `none`)
/// means "never retry".
pub fn parse_schedule(text: &str) -> Result<RetrySchedule, String> {
    let text = text.trim();
    if text.is_empty() || text == "none" {
        return Ok(RetrySchedule { delays: Vec::new() });
    }
    let delays = text
        .split(',')
        .map(|part| UP_TO_30_DAYS.parse(part))
        .collect::<Result<Vec<_>, _>>()?;
    if delays.len() > 100 {
        return Err("at most 100 retries".into());
    }
    Ok(RetrySchedule { delays })
}

/// Parses `EVENT_RETENTION`: `off`, or a duration from 1 hour up to 3650 days.
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    EVENT_RETENTION_RANGE.parse(text)
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

    /// Parses `args` after the admin token.
    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(
            ["orders-service", "--admin-token", TOKEN]
                .into_iter()
                .chain(args.iter().copied()),
        )
    }

    /// The error `args` stop startup with, from clap or from [`Config::validate`].
    fn error_of(args: &[&str]) -> String {
        match parse(args) {
            Err(e) => e.to_string(),
            Ok(config) => match config.validate() {
                Err(e) => e.to_string(),
                Ok(()) => panic!("{args:?} was accepted"),
            },
        }
    }

    #[test]
    fn every_duration_setting_takes_a_unit() {
        let config = parse(&[
            "--retry-after-max",
            "90s",
            "--webhook-timeout",
            "2500ms",
            "--dispatch-sweep-interval",
            "250ms",
            "--dispatch-lease",
            "2m",
            "--shutdown-grace",
            "1d",
            "--event-retention",
            "12h",
            "--request-timeout",
            "5m",
            "--header-read-timeout",
            "30s",
        ])
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.retry_after_max, Duration::from_secs(90));
        assert_eq!(config.webhook_timeout, Duration::from_millis(2500));
        assert_eq!(config.dispatch_sweep_interval, Duration::from_millis(250));
        assert_eq!(config.dispatch_lease, Duration::from_secs(120));
        assert_eq!(config.http.shutdown_grace, Duration::from_secs(86_400));
        assert_eq!(
            config.event_retention,
            Retention::After(Duration::from_secs(12 * 3600))
        );
        assert_eq!(config.http.request_timeout, Duration::from_secs(300));
        assert_eq!(config.http.header_read_timeout, Duration::from_secs(30));
        // A number without a unit is refused, naming the setting and the format.
        let err = error_of(&["--request-timeout", "10"]);
        assert!(
            err.contains("REQUEST_TIMEOUT") && err.contains("a duration with a unit"),
            "{err}"
        );
    }

    #[test]
    fn renamed_settings_fail_with_the_new_name_and_format() {
        for (old, value, new) in [
            ("--request-timeout-secs", "30", "set REQUEST_TIMEOUT=30s"),
            (
                "--header-read-timeout-secs",
                "5",
                "set HEADER_READ_TIMEOUT=5s",
            ),
            ("--shutdown-grace-secs", "10", "set SHUTDOWN_GRACE=10s"),
        ] {
            let err = parse(&[old, value]).unwrap_err().to_string();
            assert!(err.contains("was renamed") && err.contains(new), "{err}");
            assert!(
                err.contains("a duration with a unit: 500ms, 10s, 5m"),
                "{err}"
            );
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
    fn bad_settings_fail_naming_the_setting() {
        use webhook_common::placeholders::{EXAMPLE_ADMIN_TOKEN, EXAMPLE_WEBHOOK_SECRET};
        // The placeholders `.env.example` ships are well-formed: refused by name.
        let err = Config::try_parse_from(["orders-service", "--admin-token", EXAMPLE_ADMIN_TOKEN])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("ADMIN_TOKEN"), "{err}");
        let err = Config::try_parse_from(["orders-service", "--admin-token", "short"])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("ADMIN_TOKEN"), "{err}");
        let cases: &[(&[&str], &str)] = &[
            (
                &["--webhook-secret", EXAMPLE_WEBHOOK_SECRET],
                "WEBHOOK_SECRET",
            ),
            (&["--webhook-secret", "nope"], "WEBHOOK_SECRET"),
            (&["--header-read-timeout", "0s"], "HEADER_READ_TIMEOUT"),
            (&["--header-read-timeout", "301s"], "HEADER_READ_TIMEOUT"),
            (&["--request-timeout", "0s"], "REQUEST_TIMEOUT"),
            (&["--request-timeout", "3601s"], "REQUEST_TIMEOUT"),
            (&["--max-connections", "0"], "MAX_CONNECTIONS"),
            (&["--max-connections", "100001"], "MAX_CONNECTIONS"),
            (
                &["--max-connections-per-client", "0"],
                "MAX_CONNECTIONS_PER_CLIENT",
            ),
            (
                &["--max-connections-per-client", "100001"],
                "MAX_CONNECTIONS_PER_CLIENT",
            ),
            (
                &["--max-concurrent-requests", "0"],
                "MAX_CONCURRENT_REQUESTS",
            ),
            (
                &["--max-concurrent-requests", "10001"],
                "MAX_CONCURRENT_REQUESTS",
            ),
            (&["--max-body-bytes", "1023"], "MAX_BODY_BYTES"),
            (&["--order-rate-limit-burst", "0"], "ORDER_RATE_LIMIT_BURST"),
            (
                &["--order-rate-limit-burst", "1000001"],
                "ORDER_RATE_LIMIT_BURST",
            ),
            (
                &["--order-rate-limit-per-sec", "1000001"],
                "ORDER_RATE_LIMIT_PER_SEC",
            ),
            (&["--webhook-timeout", "0s"], "WEBHOOK_TIMEOUT"),
            (&["--webhook-timeout", "31d"], "WEBHOOK_TIMEOUT"),
            (
                &["--dispatch-sweep-interval", "0ms"],
                "DISPATCH_SWEEP_INTERVAL",
            ),
            (&["--shutdown-grace", "31d"], "SHUTDOWN_GRACE"),
            (&["--retry-after-max", "31d"], "RETRY_AFTER_MAX"),
            (&["--event-retention", "10m"], "EVENT_RETENTION"),
            (
                &["--database-max-connections", "0"],
                "DATABASE_MAX_CONNECTIONS",
            ),
            (&["--database-url", " "], "DATABASE_URL"),
            (
                &["--webhook-timeout", "2s", "--dispatch-lease", "6999ms"],
                "DISPATCH_LEASE",
            ),
            (&["--webhook-timeout", "90s"], "DISPATCH_LEASE"),
            (
                &[
                    "--notification-webhook-url",
                    "http://127.0.0.1:8001/webhooks",
                ],
                "NOTIFICATION_WEBHOOK_URL",
            ),
            (
                &["--notification-webhook-url", "ftp://x"],
                "NOTIFICATION_WEBHOOK_URL",
            ),
            (
                &["--notification-webhook-url", "http://u:p@x/"],
                "NOTIFICATION_WEBHOOK_URL",
            ),
            (&["--retry-schedule", "5s,soon"], "RETRY_SCHEDULE"),
            (&["--retry-schedule", "5s,31d"], "RETRY_SCHEDULE"),
        ];
        for (args, setting) in cases {
            let err = error_of(args);
            assert!(err.contains(setting), "{args:?}: {err}");
        }
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
        assert_eq!(defaults.http.request_timeout, Duration::from_secs(10));
        assert_eq!(defaults.http.max_concurrent_requests, 256);
        assert_eq!(defaults.http.max_body_bytes, 64 * 1024);
        assert_eq!(defaults.http.shutdown_grace, Duration::from_secs(10));
        assert_eq!(defaults.webhook_timeout, Duration::from_secs(10));
        assert_eq!(defaults.retry_after_max, Duration::from_secs(3600));
        assert_eq!(defaults.dispatch_sweep_interval, Duration::from_secs(1));
        assert_eq!(
            defaults.event_retention,
            Retention::After(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(defaults.dispatch_per_endpoint_concurrency, None);
        assert_eq!(defaults.per_endpoint_cap(), 64);
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
        assert_eq!(defaults.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.http.max_connections, 1024);
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
            "--database-url",
            "postgres://orders:dbpass@db:5432/orders",
        ])
        .unwrap();
        config.validate().unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains(TOKEN) && !shown.contains(&secret) && !shown.contains("dbpass"),
            "{shown}"
        );
        assert!(shown.contains("db:5432/orders"), "{shown}");
    }
}
