//! Settings: parsed once from flags and environment, validated at startup into [`Settings`].

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use ipnet::IpNet;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use secrecy::{ExposeSecret, SecretString};
use webhook_common::placeholders::{refuse_example_admin_token, refuse_example_webhook_secret};
use webhook_common::Verifier;

/// Every setting of the service. Each one is a `--flag` and an environment variable of the
/// same name in upper case; defaults suit the local demo. Secrets have no default: a missing
/// one fails startup (see [`Config::validate`]).
#[derive(Clone, clap::Parser)]
#[command(name = "notification-service", version, about)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8001")]
    pub listen_addr: SocketAddr,

    /// Database URL: `sqlite://path` (the file and its directory are created if missing) or
    /// `postgres://user:password@host:port/database` (`postgresql://` too) for several
    /// replicas on one database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/notifications.db"
    )]
    pub database_url: String,

    /// PostgreSQL: connections of each replica's pool (1 to 1000); one more per replica
    /// listens for wake-ups. Ignored with SQLite (one writer, fixed read pools).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = crate::store::DEFAULT_MAX_CONNECTIONS)]
    pub database_max_connections: u32,

    /// Bearer token for the read API (`Authorization: Bearer <ADMIN_TOKEN>`); at least 16 characters.
    #[arg(long, env = "ADMIN_TOKEN", value_parser = secret_arg, hide_env_values = true)]
    pub admin_token: Option<SecretString>,

    /// One or more space-separated `whsec_` secrets; a webhook signed by any of them is
    /// accepted (list old and new during a rotation).
    #[arg(long, env = "WEBHOOK_SECRET", value_parser = secret_arg, hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,

    /// How far `webhook-timestamp` may be from our clock, in seconds, either way.
    #[arg(long, env = "WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub webhook_tolerance_secs: u64,

    /// Largest webhook body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = webhook_common::extract::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Rejected requests allowed per second per client IP, sustained.
    #[arg(long, env = "REJECT_RATE_PER_SEC", default_value_t = 1)]
    pub reject_rate_per_sec: u32,

    /// Rejected requests a client IP may make in a burst before it gets 429.
    #[arg(long, env = "REJECT_BURST", default_value_t = 60)]
    pub reject_burst: u32,

    /// Optional allow-list of client networks (CIDRs, comma or space separated); others get 403.
    /// Empty allows every address.
    #[arg(long, env = "ALLOWED_CIDRS", default_value = "")]
    pub allowed_cidrs: String,

    /// How long deduplication records are kept, in seconds (must outlast the sender's retries).
    #[arg(long, env = "DEDUP_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub dedup_retention_secs: u64,

    /// How long sent and cancelled notifications (and the state of orders nothing refers to
    /// any more) are kept, in seconds; 0 keeps them forever. Queued and failed ones are never
    /// deleted. Must be at least `DEDUP_RETENTION_SECS`: a late event of an order whose state
    /// is gone is judged as the order's first.
    #[arg(long, env = "NOTIFICATION_RETENTION_SECS", default_value_t = 90 * 24 * 3600)]
    pub notification_retention_secs: u64,

    /// How often expired deduplication records are deleted, in seconds.
    #[arg(long, env = "CLEANUP_INTERVAL_SECS", default_value_t = 3600)]
    pub cleanup_interval_secs: u64,

    /// Where to send real email; unset logs emails instead. `smtp://host[:port]` is plain SMTP
    /// (port 25; e.g. Mailpit), `smtp://host[:port]?tls=required` upgrades with STARTTLS and
    /// refuses a server that does not offer it (port 587), `smtp://host[:port]?tls=opportunistic`
    /// upgrades only when offered, and `smtps://host[:port]` is TLS from the first byte
    /// (port 465). `user:password@` (percent-encoded) before the host logs in; that is refused
    /// unless TLS is required, see `SMTP_ALLOW_PLAINTEXT_AUTH`.
    #[arg(long, env = "SMTP_URL", value_parser = secret_arg, hide_env_values = true)]
    pub smtp_url: Option<SecretString>,

    /// Allow the `SMTP_URL` user and password over a connection that is not sure to be
    /// encrypted (plain `smtp://` or `tls=opportunistic`, which an attacker on the path can
    /// strip). Off by default; only for a local test server that has no TLS.
    #[arg(
        long,
        env = "SMTP_ALLOW_PLAINTEXT_AUTH",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub smtp_allow_plaintext_auth: bool,

    /// Sender address of the emails.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Shop <notifications@shop.example>"
    )]
    pub mail_from: String,

    /// Timeout of one SMTP send, in seconds.
    #[arg(long, env = "SMTP_TIMEOUT_SECS", default_value_t = 10)]
    pub smtp_timeout_secs: u64,

    /// Artificial delay of each simulated send, in milliseconds (for demos and crash tests).
    #[arg(long, env = "MAILER_DELAY_MS", default_value_t = 0)]
    pub mailer_delay_ms: u64,

    /// Emails sent at the same time, at most. Each one in flight holds a task and (with
    /// SMTP) a connection, nothing else; 32 keeps a slow SMTP server from stalling the queue
    /// while staying under common per-client connection limits (Postfix: 50).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 32)]
    pub worker_concurrency: usize,

    /// Jobs claimed from the database per round trip, at most. A claim takes no more jobs
    /// than there are free sending slots, so with the defaults this cap does not bind.
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 64)]
    pub worker_batch_size: usize,

    /// How long a claimed job stays reserved without renewal before another worker may take
    /// it, in seconds; a live worker renews it every fifth of that, so this is how soon the
    /// jobs of a crashed worker are retried.
    #[arg(long, env = "WORKER_LEASE_SECS", default_value_t = 15)]
    pub worker_lease_secs: u64,

    /// Send attempts before a notification is marked failed.
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 8)]
    pub worker_max_attempts: u32,

    /// First retry delay in milliseconds; doubles on each attempt, with jitter.
    #[arg(long, env = "WORKER_RETRY_BASE_MS", default_value_t = 2000)]
    pub worker_retry_base_ms: u64,

    /// Longest retry delay, in seconds.
    #[arg(long, env = "WORKER_RETRY_MAX_SECS", default_value_t = 600)]
    pub worker_retry_max_secs: u64,

    /// How often an idle worker looks for due jobs, in milliseconds (new jobs wake it at once).
    #[arg(long, env = "WORKER_POLL_MS", default_value_t = 1000)]
    pub worker_poll_ms: u64,

    /// On shutdown, how long in-flight sends may finish before they are released, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Longest time one HTTP request may take, body upload included, in seconds; a slower
    /// one is answered 408.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 10)]
    pub request_timeout_secs: u64,

    /// Webhook deliveries handled at the same time, at most; more get 503 with `Retry-After`.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 64)]
    pub max_concurrent_requests: usize,

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
}

/// Longest accepted `SHUTDOWN_GRACE_SECS`.
pub const MAX_SHUTDOWN_GRACE_SECS: u64 = 3600;

/// Longest accepted `REQUEST_TIMEOUT_SECS`.
pub const MAX_REQUEST_TIMEOUT_SECS: u64 = 3600;

/// Longest accepted `HEADER_READ_TIMEOUT_SECS`.
pub const MAX_HEADER_READ_TIMEOUT_SECS: u64 = 300;

/// Largest accepted `DATABASE_MAX_CONNECTIONS`.
pub const MAX_DATABASE_CONNECTIONS: u32 = 1000;

/// Largest accepted `MAX_CONNECTIONS`.
pub const MAX_MAX_CONNECTIONS: usize = 100_000;

/// `url` with any `user:password@` replaced, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}<redacted>@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn secret_arg(text: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(text))
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &Option<SecretString>| if s.is_some() { "<redacted>" } else { "<unset>" };
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field("admin_token", &redact(&self.admin_token))
            .field("webhook_secret", &redact(&self.webhook_secret))
            .field("webhook_tolerance_secs", &self.webhook_tolerance_secs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("reject_rate_per_sec", &self.reject_rate_per_sec)
            .field("reject_burst", &self.reject_burst)
            .field("allowed_cidrs", &self.allowed_cidrs)
            .field("dedup_retention_secs", &self.dedup_retention_secs)
            .field(
                "notification_retention_secs",
                &self.notification_retention_secs,
            )
            .field("cleanup_interval_secs", &self.cleanup_interval_secs)
            .field("smtp_url", &redact(&self.smtp_url))
            .field("smtp_allow_plaintext_auth", &self.smtp_allow_plaintext_auth)
            .field("mail_from", &self.mail_from)
            .field("smtp_timeout_secs", &self.smtp_timeout_secs)
            .field("mailer_delay_ms", &self.mailer_delay_ms)
            .field("worker_concurrency", &self.worker_concurrency)
            .field("worker_batch_size", &self.worker_batch_size)
            .field("worker_lease_secs", &self.worker_lease_secs)
            .field("worker_max_attempts", &self.worker_max_attempts)
            .field("worker_retry_base_ms", &self.worker_retry_base_ms)
            .field("worker_retry_max_secs", &self.worker_retry_max_secs)
            .field("worker_poll_ms", &self.worker_poll_ms)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("header_read_timeout_secs", &self.header_read_timeout_secs)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// A setting that is missing or malformed; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    /// The environment variable name, e.g. `WEBHOOK_SECRET`.
    pub setting: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

fn bad(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        message: message.into(),
    }
}

/// Where emails go.
#[derive(Clone)]
pub enum MailerSettings {
    /// Log each email and count it as sent.
    Simulated {
        /// Artificial delay per send.
        delay: Duration,
    },
    /// Send over SMTP.
    Smtp {
        /// Server host name or address; with TLS, also the name its certificate must carry.
        host: String,
        /// Server port.
        port: u16,
        /// How the connection is encrypted (the scheme and `tls=` of `SMTP_URL`); the
        /// parameters trust the bundled Mozilla root certificates.
        tls: Tls,
        /// Optional `(user, password)`, percent-decoded. Only with [`Tls::Required`] or
        /// [`Tls::Wrapper`] unless `SMTP_ALLOW_PLAINTEXT_AUTH` is set.
        credentials: Option<(String, SecretString)>,
        /// Per-send timeout.
        timeout: Duration,
    },
}

impl fmt::Debug for MailerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MailerSettings::Simulated { delay } => {
                f.debug_struct("Simulated").field("delay", delay).finish()
            }
            MailerSettings::Smtp {
                host,
                port,
                tls,
                credentials,
                timeout,
            } => f
                .debug_struct("Smtp")
                .field("host", host)
                .field("port", port)
                .field("tls", &tls_mode(tls))
                .field(
                    "credentials",
                    &if credentials.is_some() {
                        "<redacted>"
                    } else {
                        "<none>"
                    },
                )
                .field("timeout", timeout)
                .finish(),
        }
    }
}

/// How `tls` encrypts the connection, in the words of `SMTP_URL`, for logs.
pub fn tls_mode(tls: &Tls) -> &'static str {
    match tls {
        Tls::None => "none (smtp://)",
        Tls::Opportunistic(_) => "STARTTLS when offered (tls=opportunistic)",
        Tls::Required(_) => "STARTTLS required (tls=required)",
        Tls::Wrapper(_) => "implicit TLS (smtps://)",
    }
}

/// Whether `tls` guarantees that nothing, credentials included, is sent before the
/// connection is encrypted: STARTTLS required or implicit TLS.
pub fn tls_is_guaranteed(tls: &Tls) -> bool {
    matches!(tls, Tls::Required(_) | Tls::Wrapper(_))
}

/// Knobs of the email worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Sends in flight at most.
    pub concurrency: usize,
    /// Jobs claimed per query at most (and never more than the free sending slots).
    pub batch_size: usize,
    /// Claim duration without renewal; renewed every fifth of it while the worker lives.
    pub lease: Duration,
    /// Attempts before `failed`.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_base: Duration,
    /// Retry delay cap.
    pub retry_max: Duration,
    /// Idle poll interval.
    pub poll_interval: Duration,
    /// How long in-flight sends may finish on shutdown.
    pub shutdown_grace: Duration,
}

impl WorkerSettings {
    /// How long one send may take before it is cut off: three quarters of the lease. A
    /// send starts only while the job's lease (as last renewed) lasts longer than this, so
    /// it ends while the lease still holds and no other worker can have claimed the job
    /// meanwhile. Renewals every [`WorkerSettings::renew_interval`] keep a held lease above
    /// four fifths of its length, so a live worker's jobs always qualify.
    pub fn send_limit(&self) -> Duration {
        self.lease * 3 / 4
    }

    /// How often the worker renews the leases it holds: a fifth of the lease, so one
    /// failed renewal is ridden out and a lease never runs below the send limit while the
    /// database answers.
    pub fn renew_interval(&self) -> Duration {
        (self.lease / 5).max(Duration::from_millis(1))
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: 32,
            batch_size: 64,
            lease: Duration::from_secs(15),
            max_attempts: 8,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(600),
            poll_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Limits on rejected requests per client IP.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitSettings {
    /// Sustained rejections per second.
    pub per_second: NonZeroU32,
    /// Burst of rejections.
    pub burst: NonZeroU32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            per_second: NonZeroU32::MIN,
            burst: NonZeroU32::new(60).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// The validated configuration the service runs with.
#[derive(Clone)]
pub struct Settings {
    /// Where to serve (informational; `run` gets a bound listener).
    pub listen_addr: SocketAddr,
    /// Database URL.
    pub database_url: String,
    /// PostgreSQL pool size (ignored with SQLite).
    pub database_max_connections: u32,
    /// Read API token.
    pub admin_token: SecretString,
    /// Webhook secrets and tolerance.
    pub verifier: Verifier,
    /// Webhook body bound.
    pub max_body_bytes: usize,
    /// Rejection rate limit.
    pub rate_limit: RateLimitSettings,
    /// Allowed client networks; empty allows all.
    pub allowed_networks: Vec<IpNet>,
    /// Dedup record retention.
    pub dedup_retention: Duration,
    /// Finished notification retention; `None` keeps them forever.
    pub notification_retention: Option<Duration>,
    /// Cleanup period.
    pub cleanup_interval: Duration,
    /// Mail transport.
    pub mailer: MailerSettings,
    /// `From:` of the emails.
    pub mail_from: lettre::message::Mailbox,
    /// Worker knobs.
    pub worker: WorkerSettings,
    /// Longest time one HTTP request may take.
    pub request_timeout: Duration,
    /// Webhook deliveries handled at the same time, at most.
    pub max_concurrent_requests: usize,
    /// Connection limits of the HTTP server (`HEADER_READ_TIMEOUT_SECS`, `MAX_CONNECTIONS`).
    pub serve_limits: webhook_common::server::ServeLimits,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen_addr", &self.listen_addr)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field("admin_token", &"<redacted>")
            .field("verifier", &self.verifier)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("rate_limit", &self.rate_limit)
            .field("allowed_networks", &self.allowed_networks)
            .field("dedup_retention", &self.dedup_retention)
            .field("notification_retention", &self.notification_retention)
            .field("mailer", &self.mailer)
            .field("worker", &self.worker)
            .field("request_timeout", &self.request_timeout)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("serve_limits", &self.serve_limits)
            .finish_non_exhaustive()
    }
}

/// Longest accepted `WORKER_LEASE_SECS` (a day); also keeps the millisecond arithmetic far
/// from overflow.
pub const MAX_LEASE_SECS: u64 = 24 * 3600;

/// Shortest accepted admin token, so a guessable one cannot be configured by mistake.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl Config {
    /// Checks every setting and resolves it; the error names the first bad setting.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let admin_token = self.admin_token.clone().ok_or_else(|| {
            bad(
                "ADMIN_TOKEN",
                "is required (the bearer token of the read API)",
            )
        })?;
        let token = admin_token.expose_secret();
        if token.chars().count() < MIN_ADMIN_TOKEN_LEN || token.chars().any(char::is_whitespace) {
            return Err(bad(
                "ADMIN_TOKEN",
                format!("must be at least {MIN_ADMIN_TOKEN_LEN} characters without spaces"),
            ));
        }
        refuse_example_admin_token(token).map_err(|e| bad("ADMIN_TOKEN", e))?;

        let url = &self.database_url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(bad(
                "DATABASE_URL",
                format!(
                    "{:?} is neither a sqlite: URL (e.g. sqlite://data/notifications.db) nor a \
                     postgres:// or postgresql:// URL (e.g. postgres://user:password@host/db)",
                    redact_url(url)
                ),
            ));
        }
        if !(1..=MAX_DATABASE_CONNECTIONS).contains(&self.database_max_connections) {
            return Err(bad(
                "DATABASE_MAX_CONNECTIONS",
                format!("must be between 1 and {MAX_DATABASE_CONNECTIONS}"),
            ));
        }

        let secrets = self.webhook_secret.as_ref().ok_or_else(|| {
            bad(
                "WEBHOOK_SECRET",
                "is required: one or more space-separated whsec_ secrets",
            )
        })?;
        let verifier = Verifier::from_secrets_str(secrets.expose_secret())
            .map_err(|e| bad("WEBHOOK_SECRET", e.to_string()))?;
        refuse_example_webhook_secret(secrets.expose_secret())
            .map_err(|e| bad("WEBHOOK_SECRET", e))?;
        if self.webhook_tolerance_secs == 0 {
            return Err(bad("WEBHOOK_TOLERANCE_SECS", "must be at least 1"));
        }
        let verifier = verifier.with_tolerance(Duration::from_secs(self.webhook_tolerance_secs));

        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(bad("MAX_BODY_BYTES", "must be between 1024 and 16777216"));
        }
        let rate_limit = RateLimitSettings {
            per_second: NonZeroU32::new(self.reject_rate_per_sec)
                .ok_or_else(|| bad("REJECT_RATE_PER_SEC", "must be at least 1"))?,
            burst: NonZeroU32::new(self.reject_burst)
                .ok_or_else(|| bad("REJECT_BURST", "must be at least 1"))?,
        };
        let allowed_networks = parse_cidrs(&self.allowed_cidrs)?;

        if self.dedup_retention_secs < 60 {
            return Err(bad(
                "DEDUP_RETENTION_SECS",
                "must be at least 60 (and longer than the sender's retry window)",
            ));
        }
        if self.notification_retention_secs != 0
            && self.notification_retention_secs < self.dedup_retention_secs
        {
            return Err(bad(
                "NOTIFICATION_RETENTION_SECS",
                "must be 0 (keep forever) or at least DEDUP_RETENTION_SECS",
            ));
        }
        if self.cleanup_interval_secs == 0 {
            return Err(bad("CLEANUP_INTERVAL_SECS", "must be at least 1"));
        }

        let smtp_timeout = Duration::from_secs(self.smtp_timeout_secs);
        if self.smtp_timeout_secs == 0 {
            return Err(bad("SMTP_TIMEOUT_SECS", "must be at least 1"));
        }
        let mailer = match &self.smtp_url {
            None => MailerSettings::Simulated {
                delay: Duration::from_millis(self.mailer_delay_ms),
            },
            Some(url) => parse_smtp_url(
                url.expose_secret(),
                smtp_timeout,
                self.smtp_allow_plaintext_auth,
            )?,
        };
        let mail_from = self
            .mail_from
            .parse()
            .map_err(|e| bad("MAIL_FROM", format!("is not a valid mailbox: {e}")))?;

        if !(1..=256).contains(&self.worker_concurrency) {
            return Err(bad("WORKER_CONCURRENCY", "must be between 1 and 256"));
        }
        if !(1..=1000).contains(&self.worker_batch_size) {
            return Err(bad("WORKER_BATCH_SIZE", "must be between 1 and 1000"));
        }
        if !(1..=100).contains(&self.worker_max_attempts) {
            return Err(bad("WORKER_MAX_ATTEMPTS", "must be between 1 and 100"));
        }
        if self.worker_retry_base_ms == 0 {
            return Err(bad("WORKER_RETRY_BASE_MS", "must be at least 1"));
        }
        if self.worker_retry_max_secs.saturating_mul(1000) < self.worker_retry_base_ms {
            return Err(bad(
                "WORKER_RETRY_MAX_SECS",
                "must not be shorter than WORKER_RETRY_BASE_MS",
            ));
        }
        if self.worker_poll_ms == 0 {
            return Err(bad("WORKER_POLL_MS", "must be at least 1"));
        }
        if self.shutdown_grace_secs > MAX_SHUTDOWN_GRACE_SECS {
            return Err(bad(
                "SHUTDOWN_GRACE_SECS",
                format!("must be at most {MAX_SHUTDOWN_GRACE_SECS}"),
            ));
        }
        if !(1..=MAX_REQUEST_TIMEOUT_SECS).contains(&self.request_timeout_secs) {
            return Err(bad(
                "REQUEST_TIMEOUT_SECS",
                format!("must be between 1 and {MAX_REQUEST_TIMEOUT_SECS}"),
            ));
        }
        if !(1..=10_000).contains(&self.max_concurrent_requests) {
            return Err(bad(
                "MAX_CONCURRENT_REQUESTS",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=MAX_HEADER_READ_TIMEOUT_SECS).contains(&self.header_read_timeout_secs) {
            return Err(bad(
                "HEADER_READ_TIMEOUT_SECS",
                format!("must be between 1 and {MAX_HEADER_READ_TIMEOUT_SECS}"),
            ));
        }
        if !(1..=MAX_MAX_CONNECTIONS).contains(&self.max_connections) {
            return Err(bad(
                "MAX_CONNECTIONS",
                format!("must be between 1 and {MAX_MAX_CONNECTIONS}"),
            ));
        }
        // A send still running when the worker cuts it off is retried; if it was in fact
        // delivered, the customer gets it twice. So the cut-off (a share of the lease, see
        // `WorkerSettings::send_limit`) must exceed the longest legitimate send.
        let longest_send = match &mailer {
            MailerSettings::Simulated { delay } => *delay,
            MailerSettings::Smtp { timeout, .. } => *timeout,
        };
        if self.worker_lease_secs > MAX_LEASE_SECS {
            return Err(bad(
                "WORKER_LEASE_SECS",
                format!("must be at most {MAX_LEASE_SECS}"),
            ));
        }
        let worker = WorkerSettings {
            concurrency: self.worker_concurrency,
            batch_size: self.worker_batch_size,
            lease: Duration::from_secs(self.worker_lease_secs),
            max_attempts: self.worker_max_attempts,
            retry_base: Duration::from_millis(self.worker_retry_base_ms),
            retry_max: Duration::from_secs(self.worker_retry_max_secs),
            poll_interval: Duration::from_millis(self.worker_poll_ms),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
        };
        if worker.send_limit() <= longest_send {
            return Err(bad(
                "WORKER_LEASE_SECS",
                format!(
                    "must be long enough that three quarters of it ({} ms, the send cut-off) \
                     exceed one send ({} ms: SMTP_TIMEOUT_SECS or MAILER_DELAY_MS)",
                    worker.send_limit().as_millis(),
                    longest_send.as_millis()
                ),
            ));
        }

        Ok(Settings {
            listen_addr: self.listen_addr,
            database_url: self.database_url.clone(),
            database_max_connections: self.database_max_connections,
            admin_token,
            verifier,
            max_body_bytes: self.max_body_bytes,
            rate_limit,
            allowed_networks,
            dedup_retention: Duration::from_secs(self.dedup_retention_secs),
            notification_retention: (self.notification_retention_secs != 0)
                .then(|| Duration::from_secs(self.notification_retention_secs)),
            cleanup_interval: Duration::from_secs(self.cleanup_interval_secs),
            mailer,
            mail_from,
            worker,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            max_concurrent_requests: self.max_concurrent_requests,
            serve_limits: webhook_common::server::ServeLimits {
                header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
                max_connections: self.max_connections,
                // MAX_CONNECTIONS_PER_CLIENT is not a setting here (yet): the default applies.
                ..webhook_common::server::ServeLimits::default()
            },
        })
    }
}

fn parse_cidrs(text: &str) -> Result<Vec<IpNet>, ConfigError> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            // A bare address means just that host.
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    bad(
                        "ALLOWED_CIDRS",
                        format!("{s:?} is not a CIDR such as 10.0.0.0/8 or an IP address"),
                    )
                })
        })
        .collect()
}

/// The accepted `SMTP_URL` forms, for error messages.
const SMTP_URL_FORMS: &str = "expected smtp://host[:port] (plain), \
     smtp://host[:port]?tls=required (STARTTLS) or smtps://host[:port] (implicit TLS), \
     each with optional user:password@ before the host";

/// Default port of a plain `smtp://` URL (as lettre's `from_url` has it): SMTP relay.
const SMTP_PORT: u16 = 25;
/// Default port of `smtp://...?tls=`: message submission with STARTTLS (RFC 6409).
const SUBMISSION_PORT: u16 = 587;
/// Default port of `smtps://`: message submission over implicit TLS (RFC 8314).
const SUBMISSIONS_PORT: u16 = 465;

/// Parses `SMTP_URL`, following lettre's `AsyncSmtpTransport::from_url` conventions (scheme,
/// `tls=`, default ports, percent-encoded credentials), but stricter: unknown parameters
/// are refused rather than ignored (a misspelt `tls=` must not silently mean plain text),
/// and so are credentials on a connection that is not sure to be encrypted unless
/// `allow_plaintext_auth`. Errors never echo the URL: it may carry a password.
fn parse_smtp_url(
    text: &str,
    timeout: Duration,
    allow_plaintext_auth: bool,
) -> Result<MailerSettings, ConfigError> {
    let url = reqwest::Url::parse(text)
        .map_err(|e| bad("SMTP_URL", format!("is not a URL ({e}); {SMTP_URL_FORMS}")))?;

    let mut tls_param: Option<String> = None;
    for (key, value) in url.query_pairs() {
        match &*key {
            "tls" if tls_param.is_none() => tls_param = Some(value.into_owned()),
            "tls" => return Err(bad("SMTP_URL", "has more than one tls= parameter")),
            other => {
                return Err(bad(
                    "SMTP_URL",
                    format!(
                        "has an unknown parameter {other:?}; the only one is \
                         tls=required or tls=opportunistic"
                    ),
                ))
            }
        }
    }
    /// The encryption `SMTP_URL` asks for, before its parameters are built.
    enum Mode {
        Plain,
        Opportunistic,
        Required,
        Implicit,
    }
    let (mode, default_port) = match (url.scheme(), tls_param.as_deref()) {
        ("smtp", None) => (Mode::Plain, SMTP_PORT),
        ("smtp", Some("required")) => (Mode::Required, SUBMISSION_PORT),
        ("smtp", Some("opportunistic")) => (Mode::Opportunistic, SUBMISSION_PORT),
        ("smtp", Some(other)) => {
            return Err(bad(
                "SMTP_URL",
                format!(
                    "tls={other:?} is not a TLS mode; use tls=required (STARTTLS, refusing a \
                     server without it), tls=opportunistic (STARTTLS when the server offers \
                     it) or an smtps:// URL (implicit TLS)"
                ),
            ))
        }
        ("smtps", None) => (Mode::Implicit, SUBMISSIONS_PORT),
        ("smtps", Some(_)) => {
            return Err(bad(
                "SMTP_URL",
                "smtps:// is encrypted from the first byte and takes no tls= parameter \
                 (that one selects STARTTLS on smtp:// URLs)",
            ))
        }
        (other, _) => {
            return Err(bad(
                "SMTP_URL",
                format!("scheme {other:?} is not supported; {SMTP_URL_FORMS}"),
            ))
        }
    };

    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("SMTP_URL", format!("has no host; {SMTP_URL_FORMS}")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port().unwrap_or(default_port);

    let credentials = match (url.username(), url.password()) {
        ("", None) => None,
        ("", Some(_)) => return Err(bad("SMTP_URL", "has a password but no user name")),
        (user, password) => Some((
            percent_decode(user).ok_or_else(|| {
                bad(
                    "SMTP_URL",
                    "the user name is not valid percent-encoded UTF-8",
                )
            })?,
            SecretString::from(percent_decode(password.unwrap_or("")).ok_or_else(|| {
                bad(
                    "SMTP_URL",
                    "the password is not valid percent-encoded UTF-8",
                )
            })?),
        )),
    };

    let tls_parameters = || {
        if !is_certificate_name(&host) {
            return Err(bad(
                "SMTP_URL",
                format!(
                    "host {host:?} is neither a DNS name nor an IP address, so the server's \
                     TLS certificate cannot be checked against it"
                ),
            ));
        }
        TlsParameters::new(host.clone())
            .map_err(|e| bad("SMTP_URL", format!("cannot set up TLS for {host:?}: {e}")))
    };
    let tls = match mode {
        Mode::Plain => Tls::None,
        Mode::Opportunistic => Tls::Opportunistic(tls_parameters()?),
        Mode::Required => Tls::Required(tls_parameters()?),
        Mode::Implicit => Tls::Wrapper(tls_parameters()?),
    };
    if credentials.is_some() && !tls_is_guaranteed(&tls) && !allow_plaintext_auth {
        return Err(bad(
            "SMTP_URL",
            "has a user and password, but the connection is not sure to be encrypted \
             (plain smtp://, or tls=opportunistic, which an attacker on the path can strip), \
             so they could cross the network in clear text; use smtps://host (implicit TLS, \
             port 465) or smtp://host?tls=required (STARTTLS, port 587), or for a local \
             test server without TLS set SMTP_ALLOW_PLAINTEXT_AUTH=true",
        ));
    }
    Ok(MailerSettings::Smtp {
        host,
        port,
        tls,
        credentials,
        timeout,
    })
}

/// Decodes `%XX` escapes (as URLs carry user names and passwords); `None` if the result is
/// not UTF-8. A `%` not followed by two hex digits stays as it is, as lettre has it.
fn percent_decode(text: &str) -> Option<String> {
    let hex = |b: &u8| char::from(*b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).and_then(hex),
            bytes.get(i + 2).and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits: at most 0xff.
                out.extend(u8::try_from(high * 16 + low).ok());
                i += 3;
            }
            (byte, ..) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `host` can name a TLS server: an IP address, or dot-separated labels of ASCII
/// letters, digits, `-` and `_` (what rustls accepts as a DNS name, roughly; an `smtp://`
/// URL's host is otherwise almost free text).
fn is_certificate_name(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok()
        || (host.len() <= 253
            && host.trim_end_matches('.').split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn parse(extra: &[&str]) -> Result<Settings, ConfigError> {
        let mut args = vec![
            "notification-service",
            "--admin-token",
            "0123456789abcdef",
            "--webhook-secret",
            SECRET,
        ];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).unwrap().validate()
    }

    fn setting_of(result: Result<Settings, ConfigError>) -> &'static str {
        result.unwrap_err().setting
    }

    #[test]
    fn defaults_with_both_secrets_are_valid() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.listen_addr.port(), 8001);
        assert_eq!(s.rate_limit.burst.get(), 60);
        assert!(matches!(s.mailer, MailerSettings::Simulated { .. }));
        assert_eq!(s.dedup_retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!((s.worker.concurrency, s.worker.batch_size), (32, 64));
        // A crashed worker's jobs are retried within 15 s; a live one renews every 3 s.
        assert_eq!(s.worker.lease, Duration::from_secs(15));
        assert_eq!(s.worker.renew_interval(), Duration::from_secs(3));
        // The default SMTP timeout (10 s) fits under the send cut-off (11.25 s), and a
        // freshly renewed lease (at least 12 s left) always allows a send to start.
        assert!(s.worker.send_limit() > Duration::from_secs(10));
        assert!(s.worker.lease - s.worker.renew_interval() > s.worker.send_limit());
    }

    /// The token and secret `.env.example` ships are well-formed, so only their names keep
    /// a copied-but-unedited `.env` from starting a service anyone can call and forge for.
    #[test]
    fn the_example_env_placeholders_are_refused_naming_their_setting() {
        use webhook_common::placeholders::{EXAMPLE_ADMIN_TOKEN, EXAMPLE_WEBHOOK_SECRET};
        let token = Config::try_parse_from([
            "x",
            "--admin-token",
            EXAMPLE_ADMIN_TOKEN,
            "--webhook-secret",
            SECRET,
        ])
        .unwrap();
        let err = token.validate().unwrap_err();
        assert_eq!(err.setting, "ADMIN_TOKEN");
        assert!(err.to_string().contains("openssl rand"), "{err}");
        let rotating = format!("{SECRET} {EXAMPLE_WEBHOOK_SECRET}");
        let secret = Config::try_parse_from([
            "x",
            "--admin-token",
            "0123456789abcdef",
            "--webhook-secret",
            &rotating,
        ])
        .unwrap();
        assert_eq!(setting_of(secret.validate()), "WEBHOOK_SECRET");
    }

    #[test]
    fn notifications_are_kept_90_days_by_default_0_keeps_them_and_less_than_dedup_is_refused() {
        assert_eq!(
            parse(&[]).unwrap().notification_retention,
            Some(Duration::from_secs(90 * 24 * 3600))
        );
        let forever = parse(&["--notification-retention-secs", "0"]).unwrap();
        assert_eq!(forever.notification_retention, None);
        assert_eq!(
            setting_of(parse(&["--notification-retention-secs", "3600"])),
            "NOTIFICATION_RETENTION_SECS"
        );
    }

    #[test]
    fn missing_or_malformed_secrets_name_their_setting() {
        let none = Config::try_parse_from(["x"]).unwrap();
        assert_eq!(setting_of(none.validate()), "ADMIN_TOKEN");
        let no_secret = Config::try_parse_from(["x", "--admin-token", "0123456789abcdef"]).unwrap();
        assert_eq!(setting_of(no_secret.validate()), "WEBHOOK_SECRET");
        let c = Config::try_parse_from([
            "x",
            "--admin-token",
            "0123456789abcdef",
            "--webhook-secret",
            "hunter2",
        ])
        .unwrap();
        let err = c.validate().unwrap_err();
        assert_eq!(err.setting, "WEBHOOK_SECRET");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let short =
            Config::try_parse_from(["x", "--admin-token", "short", "--webhook-secret", SECRET]);
        assert_eq!(setting_of(short.unwrap().validate()), "ADMIN_TOKEN");
    }

    /// What `SMTP_URL` resolved to, in plain values.
    #[derive(Debug, PartialEq, Eq)]
    struct Smtp {
        host: String,
        port: u16,
        /// [`tls_mode`] of the TLS setting.
        tls: &'static str,
        /// The name the server's certificate must carry; `None` without TLS.
        certificate_name: Option<String>,
        /// User and password, in clear.
        credentials: Option<(String, String)>,
    }

    impl Smtp {
        fn new(host: &str, port: u16, tls: &'static str, name: Option<&str>) -> Smtp {
            Smtp {
                host: host.to_owned(),
                port,
                tls,
                certificate_name: name.map(str::to_owned),
                credentials: None,
            }
        }

        fn login(self, user: &str, password: &str) -> Smtp {
            Smtp {
                credentials: Some((user.to_owned(), password.to_owned())),
                ..self
            }
        }
    }

    const PLAIN: &str = "none (smtp://)";
    const IMPLICIT: &str = "implicit TLS (smtps://)";
    const REQUIRED: &str = "STARTTLS required (tls=required)";
    const OPPORTUNISTIC: &str = "STARTTLS when offered (tls=opportunistic)";

    /// The SMTP settings `SMTP_URL=url` (plus `extra` flags) resolves to.
    fn smtp(url: &str, extra: &[&str]) -> Smtp {
        let mut args = vec!["--smtp-url", url];
        args.extend_from_slice(extra);
        match parse(&args).unwrap().mailer {
            MailerSettings::Smtp {
                host,
                port,
                tls,
                credentials,
                ..
            } => Smtp {
                host,
                port,
                tls: tls_mode(&tls),
                certificate_name: match &tls {
                    Tls::None => None,
                    Tls::Opportunistic(p) | Tls::Required(p) | Tls::Wrapper(p) => {
                        Some(p.domain().to_owned())
                    }
                },
                credentials: credentials
                    .map(|(user, password)| (user, password.expose_secret().to_owned())),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plain_smtp_urls_keep_working_without_tls_on_port_25() {
        for (url, expected) in [
            (
                "smtp://mailpit:1025",
                Smtp::new("mailpit", 1025, PLAIN, None),
            ),
            (
                "smtp://mail.example",
                Smtp::new("mail.example", 25, PLAIN, None),
            ),
            ("smtp://[::1]:2525/", Smtp::new("::1", 2525, PLAIN, None)),
        ] {
            assert_eq!(smtp(url, &[]), expected, "{url}");
        }
    }

    #[test]
    fn smtps_is_implicit_tls_on_port_465_with_percent_decoded_credentials() {
        let example = Some("mail.example");
        for (url, expected) in [
            (
                "smtps://ada%40shop:p%40ss%3Aw%25rd@mail.example",
                Smtp::new("mail.example", 465, IMPLICIT, example).login("ada@shop", "p@ss:w%rd"),
            ),
            (
                "smtps://mail.example:2465",
                Smtp::new("mail.example", 2465, IMPLICIT, example),
            ),
            // The certificate is checked against the host as written, an IP address included.
            (
                "smtps://127.0.0.1:4650",
                Smtp::new("127.0.0.1", 4650, IMPLICIT, Some("127.0.0.1")),
            ),
        ] {
            assert_eq!(smtp(url, &[]), expected, "{url}");
        }
    }

    #[test]
    fn tls_required_is_starttls_on_port_587_and_opportunistic_is_accepted() {
        let example = Some("mail.example");
        for (url, expected) in [
            (
                "smtp://user:pw@mail.example?tls=required",
                Smtp::new("mail.example", 587, REQUIRED, example).login("user", "pw"),
            ),
            (
                "smtp://mail.example:2587?tls=required",
                Smtp::new("mail.example", 2587, REQUIRED, example),
            ),
            (
                "smtp://mail.example?tls=opportunistic",
                Smtp::new("mail.example", 587, OPPORTUNISTIC, example),
            ),
        ] {
            assert_eq!(smtp(url, &[]), expected, "{url}");
        }
    }

    #[test]
    fn credentials_without_guaranteed_tls_are_refused_unless_explicitly_allowed() {
        for url in [
            "smtp://user:topsecret@mailpit:1025",
            "smtp://user:topsecret@mail.example?tls=opportunistic",
            "smtp://user@mailpit:1025",
        ] {
            let err = parse(&["--smtp-url", url]).unwrap_err();
            assert_eq!(err.setting, "SMTP_URL", "{url}");
            let text = err.to_string();
            for needle in [
                "SMTP_URL",
                "smtps://",
                "tls=required",
                "SMTP_ALLOW_PLAINTEXT_AUTH=true",
            ] {
                assert!(text.contains(needle), "{needle:?} not in {text}");
            }
            assert!(!text.contains("topsecret"), "{text}");
            let denied = parse(&["--smtp-url", url, "--smtp-allow-plaintext-auth=false"]);
            assert_eq!(setting_of(denied), "SMTP_URL");
        }
        for allow in [
            &["--smtp-allow-plaintext-auth"][..],
            &["--smtp-allow-plaintext-auth", "true"],
        ] {
            assert_eq!(
                smtp("smtp://user:topsecret@mailpit:1025", allow),
                Smtp::new("mailpit", 1025, PLAIN, None).login("user", "topsecret")
            );
        }
        assert!(Config::try_parse_from(["x", "--smtp-allow-plaintext-auth=maybe"]).is_err());
    }

    #[test]
    fn malformed_smtp_urls_name_smtp_url_and_never_echo_the_password() {
        for (url, needle) in [
            ("smtp://u:topsecret@h?tls=starttls", "tls=required"),
            ("smtp://u:topsecret@h?tls=", "tls=required"),
            ("smtps://u:topsecret@h?tls=required", "no tls= parameter"),
            ("smtp://h?tls=required&tls=required", "more than one"),
            ("smtp://u:topsecret@h?tsl=required", "unknown parameter"),
            ("http://user:topsecret@x", "smtps://host"),
            ("mailpit:1025", "scheme"),
            ("smtp://:topsecret@h?tls=required", "no user name"),
            ("smtps://u:topsecret@bad!host", "DNS name"),
            ("smtp://u:%ff@h?tls=required", "UTF-8"),
            ("not a url", "is not a URL"),
        ] {
            let err = parse(&["--smtp-url", url]).unwrap_err();
            assert_eq!(err.setting, "SMTP_URL", "{url}");
            let text = err.to_string();
            assert!(text.contains(needle), "{url}: {needle:?} not in {text}");
            assert!(!text.contains("topsecret"), "{text}");
        }
    }

    #[test]
    fn percent_decoding_takes_only_two_hex_digits() {
        assert_eq!(percent_decode("a%40b%2fc").as_deref(), Some("a@b/c"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%+1%g0%4").as_deref(), Some("%+1%g0%4"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%ff"), None);
        assert!(is_certificate_name("mail.example.com."));
        assert!(is_certificate_name("::1") && is_certificate_name("smtp_relay.local"));
        assert!(!is_certificate_name("-bad.example") && !is_certificate_name("a..b"));
    }

    #[test]
    fn cidrs_and_numeric_knobs_are_validated() {
        let s = parse(&["--allowed-cidrs", "10.0.0.0/8, 127.0.0.1 ::1"]).unwrap();
        assert_eq!(s.allowed_networks.len(), 3);
        assert_eq!(
            setting_of(parse(&["--allowed-cidrs", "10.0.0.0/99"])),
            "ALLOWED_CIDRS"
        );
        assert_eq!(setting_of(parse(&["--reject-burst", "0"])), "REJECT_BURST");
        assert_eq!(
            setting_of(parse(&["--database-url", "mysql://a:b@db/n"])),
            "DATABASE_URL"
        );
        for url in ["postgres://a:b@db/n", "postgresql://db/n", "sqlite://n.db"] {
            assert!(parse(&["--database-url", url]).is_ok(), "{url}");
        }
        for n in ["0", "1001"] {
            assert_eq!(
                setting_of(parse(&["--database-max-connections", n])),
                "DATABASE_MAX_CONNECTIONS"
            );
        }
        assert_eq!(
            parse(&["--database-max-connections", "1000"])
                .unwrap()
                .database_max_connections,
            1000
        );
        assert_eq!(
            setting_of(parse(&["--worker-concurrency", "0"])),
            "WORKER_CONCURRENCY"
        );
        assert_eq!(
            setting_of(parse(&["--max-body-bytes", "10"])),
            "MAX_BODY_BYTES"
        );
        assert_eq!(
            setting_of(parse(&[
                "--mailer-delay-ms",
                "5000",
                "--worker-lease-secs",
                "5"
            ])),
            "WORKER_LEASE_SECS"
        );
    }

    #[test]
    fn the_send_cut_off_not_just_the_lease_must_exceed_the_longest_send() {
        // 11 s lease: cut off at 8.25 s, before a 10 s SMTP send may legitimately end.
        assert_eq!(
            setting_of(parse(&[
                "--smtp-url",
                "smtp://mailpit:1025",
                "--smtp-timeout-secs",
                "10",
                "--worker-lease-secs",
                "11",
            ])),
            "WORKER_LEASE_SECS"
        );
        assert_eq!(
            setting_of(parse(&[
                "--mailer-delay-ms",
                "800",
                "--worker-lease-secs",
                "1"
            ])),
            "WORKER_LEASE_SECS"
        );
        let s = parse(&[
            "--smtp-url",
            "smtp://mailpit:1025",
            "--smtp-timeout-secs",
            "10",
            "--worker-lease-secs",
            "14",
        ])
        .unwrap();
        assert!(s.worker.send_limit() > Duration::from_secs(10));
        assert_eq!(
            setting_of(parse(&["--worker-lease-secs", &u64::MAX.to_string()])),
            "WORKER_LEASE_SECS"
        );
    }

    #[test]
    fn shutdown_grace_timeouts_and_concurrency_are_bounded() {
        assert_eq!(
            setting_of(parse(&["--shutdown-grace-secs", &u64::MAX.to_string()])),
            "SHUTDOWN_GRACE_SECS"
        );
        assert_eq!(
            setting_of(parse(&["--request-timeout-secs", "0"])),
            "REQUEST_TIMEOUT_SECS"
        );
        assert_eq!(
            setting_of(parse(&["--max-concurrent-requests", "0"])),
            "MAX_CONCURRENT_REQUESTS"
        );
        for (flag, value, setting) in [
            (
                "--header-read-timeout-secs",
                "0",
                "HEADER_READ_TIMEOUT_SECS",
            ),
            (
                "--header-read-timeout-secs",
                "301",
                "HEADER_READ_TIMEOUT_SECS",
            ),
            ("--max-connections", "0", "MAX_CONNECTIONS"),
            ("--max-connections", "100001", "MAX_CONNECTIONS"),
        ] {
            assert_eq!(setting_of(parse(&[flag, value])), setting, "{flag} {value}");
        }
        let s = parse(&[]).unwrap();
        assert_eq!(s.serve_limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.serve_limits.max_connections, 1024);
        assert_eq!(s.request_timeout, Duration::from_secs(10));
        assert_eq!(s.max_concurrent_requests, 64);
        assert_eq!(s.worker.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn database_url_credentials_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/n?sslmode=require"),
            "postgres://<redacted>@db:5432/n?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://a:b@c@db/n"),
            "postgres://<redacted>@db/n"
        );
        assert_eq!(
            redact_url("sqlite://data/notifications.db"),
            "sqlite://data/notifications.db"
        );
        assert_eq!(redact_url("sqlite:n.db"), "sqlite:n.db");
        assert_eq!(redact_url("sqlite://x/a@b.db"), "sqlite://x/a@b.db");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let c = Config::try_parse_from([
            "x",
            "--admin-token",
            "0123456789abcdef",
            "--webhook-secret",
            SECRET,
            "--smtp-url",
            "smtps://u:pw@h:1",
            "--database-url",
            "sqlite://dbuser:dbpass@localhost/n.db",
        ])
        .unwrap();
        let text = format!("{c:?} {:?}", c.validate().unwrap());
        assert!(!text.contains("dbpass"), "{text}");
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(!text.contains("MfKQ9r8"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
        assert!(text.contains("implicit TLS"), "{text}");
        assert!(text.contains("credentials: \"<redacted>\""), "{text}");
    }
}
