//! Settings: parsed once from flags and environment (clap checks each value and its range),
//! then validated at startup into [`Settings`] (secrets, URLs and the relations between
//! settings). Durations take a unit (`500ms`, `10s`, `5m`, `7d`; [`webhook_common::config`]).

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use ipnet::IpNet;
use lettre::message::Mailbox;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use secrecy::{ExposeSecret, SecretString};
pub use webhook_common::config::redact_url;
use webhook_common::config::{
    default_value, renamed_args, DatabaseUrl, DurationRange, HttpSettings, Rename, Retention,
    RetentionRange,
};
use webhook_common::placeholders::{refuse_example_admin_token, refuse_example_webhook_secret};
use webhook_common::Verifier;

/// Settings of this service that were renamed when every duration got a unit; setting one
/// stops startup with its new name. (The HTTP settings' renames come with [`HttpSettings`].)
pub const RENAMES: &[Rename] = &[
    Rename::secs(
        "WEBHOOK_TOLERANCE_SECS",
        "webhook-tolerance-secs",
        "WEBHOOK_TOLERANCE",
    ),
    Rename::secs(
        "DEDUP_RETENTION_SECS",
        "dedup-retention-secs",
        "DEDUP_RETENTION",
    ),
    Rename::secs(
        "NOTIFICATION_RETENTION_SECS",
        "notification-retention-secs",
        "NOTIFICATION_RETENTION",
    )
    .zero_means("off"),
    Rename::secs(
        "CLEANUP_INTERVAL_SECS",
        "cleanup-interval-secs",
        "CLEANUP_INTERVAL",
    ),
    Rename::secs("SMTP_TIMEOUT_SECS", "smtp-timeout-secs", "SMTP_TIMEOUT"),
    Rename::millis("MAILER_DELAY_MS", "mailer-delay-ms", "MAILER_DELAY"),
    Rename::secs("WORKER_LEASE_SECS", "worker-lease-secs", "WORKER_LEASE"),
    Rename::millis(
        "WORKER_RETRY_BASE_MS",
        "worker-retry-base-ms",
        "WORKER_RETRY_BASE",
    ),
    Rename::secs(
        "WORKER_RETRY_MAX_SECS",
        "worker-retry-max-secs",
        "WORKER_RETRY_MAX",
    ),
    Rename::millis("WORKER_POLL_MS", "worker-poll-ms", "WORKER_POLL"),
];

/// Longest accepted `WORKER_LEASE` (a day); also keeps the millisecond arithmetic far from
/// overflow.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// Shortest accepted `DEDUP_RETENTION` (and retained `NOTIFICATION_RETENTION`).
pub const MIN_DEDUP_RETENTION: Duration = Duration::from_secs(60);

const ONE_MS: Duration = Duration::from_millis(1);
const ONE_S: Duration = Duration::from_secs(1);

/// Every setting of the service. Each one is a `--flag` and an environment variable of the
/// same name in upper case; defaults suit the local demo. Secrets have no default: a missing
/// one fails startup (see [`Config::validate`]). Secrets are `SecretString` and the database
/// URL a [`DatabaseUrl`], so the derived `Debug` shows none of them.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "notification-service", version, about)]
#[command(args = renamed_args(RENAMES))]
#[command(mut_arg("max_body_bytes", default_value("262144")))]
#[command(mut_arg("max_concurrent_requests", default_value("128")))]
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
    pub database_url: DatabaseUrl,

    /// PostgreSQL: connections of each replica's pool (1 to 1000); one more per replica
    /// listens for wake-ups. Ignored with SQLite (one writer, fixed read pools).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = crate::store::DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_max_connections: u32,

    /// Bearer token for the read API (`Authorization: Bearer <ADMIN_TOKEN>`); at least 16 characters.
    #[arg(long, env = "ADMIN_TOKEN", value_parser = secret_arg, hide_env_values = true)]
    pub admin_token: Option<SecretString>,

    /// One or more space-separated `whsec_` secrets; a webhook signed by any of them is
    /// accepted (list old and new during a rotation).
    #[arg(long, env = "WEBHOOK_SECRET", value_parser = secret_arg, hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,

    /// How far `webhook-timestamp` may be from our clock, either way: whole seconds, at least
    /// `1s`.
    #[arg(long, env = "WEBHOOK_TOLERANCE", default_value = "5m", value_parser = DurationRange::at_least(ONE_S))]
    pub webhook_tolerance: Duration,

    /// The HTTP settings both services have: `MAX_BODY_BYTES` (here 262144 by default),
    /// `REQUEST_TIMEOUT`, `MAX_CONCURRENT_REQUESTS` (here 128: webhook deliveries handled at
    /// once, twice the 64 that orders-service attempts at once to one endpoint by default), `HEADER_READ_TIMEOUT`, `MAX_CONNECTIONS` and `SHUTDOWN_GRACE` (how long
    /// in-flight sends may finish on shutdown before they are released; up to 1h).
    #[command(flatten)]
    pub http: HttpSettings,

    /// Rejected requests allowed per second per client IP, sustained (at least 1).
    #[arg(long, env = "REJECT_RATE_PER_SEC", default_value = "1")]
    pub reject_rate_per_sec: NonZeroU32,

    /// Rejected requests a client IP may make in a burst before it gets 429 (at least 1).
    #[arg(long, env = "REJECT_BURST", default_value = "60")]
    pub reject_burst: NonZeroU32,

    /// Optional allow-list of client networks (CIDRs, comma or space separated); others get 403.
    /// Empty allows every address.
    #[arg(long, env = "ALLOWED_CIDRS", default_value = "")]
    pub allowed_cidrs: String,

    /// How long deduplication records are kept (at least `1m`; must outlast the sender's
    /// retries).
    #[arg(long, env = "DEDUP_RETENTION", default_value = "7d", value_parser = DurationRange::at_least(MIN_DEDUP_RETENTION))]
    pub dedup_retention: Duration,

    /// How long sent and cancelled notifications (and the state of orders nothing refers to
    /// any more) are kept; `off` keeps them forever. Queued and failed ones are never
    /// deleted. Must be at least `DEDUP_RETENTION`: a late event of an order whose state is
    /// gone is judged as the order's first.
    #[arg(long, env = "NOTIFICATION_RETENTION", default_value = "90d", value_parser = RetentionRange(DurationRange::at_least(MIN_DEDUP_RETENTION)))]
    pub notification_retention: Retention,

    /// How often expired deduplication records are deleted (at least `1s`).
    #[arg(long, env = "CLEANUP_INTERVAL", default_value = "1h", value_parser = DurationRange::at_least(ONE_S))]
    pub cleanup_interval: Duration,

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
    pub mail_from: Mailbox,

    /// Timeout of one SMTP send (at least `1s`).
    #[arg(long, env = "SMTP_TIMEOUT", default_value = "10s", value_parser = DurationRange::at_least(ONE_S))]
    pub smtp_timeout: Duration,

    /// Artificial delay of each simulated send (for demos and crash tests).
    #[arg(long, env = "MAILER_DELAY", default_value = "0ms", value_parser = DurationRange::at_least(Duration::ZERO))]
    pub mailer_delay: Duration,

    /// Emails sent at the same time, at most (1 to 256). Each one in flight holds a task and
    /// (with SMTP) a connection, nothing else. Unset: 32 with `SMTP_URL`, which keeps a slow
    /// SMTP server from stalling the queue while staying under common per-client connection
    /// limits (Postfix: 50); 64 with the simulated mailer, whose sends cost nothing, so the
    /// queue keeps up with 128 webhooks at a time (`MAX_CONCURRENT_REQUESTS`).
    #[arg(long, env = "WORKER_CONCURRENCY", value_parser = RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub worker_concurrency: Option<usize>,

    /// Jobs claimed from the database per round trip, at most (1 to 1000). A claim takes no
    /// more jobs than there are free sending slots, so with the defaults this cap does not
    /// bind.
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub worker_batch_size: usize,

    /// How long a claimed job stays reserved without renewal before another worker may take
    /// it (`1s` to `1d`); a live worker renews it every fifth of that, so this is how soon the
    /// jobs of a crashed worker are retried.
    #[arg(long, env = "WORKER_LEASE", default_value = "15s", value_parser = DurationRange::between(ONE_S, MAX_LEASE))]
    pub worker_lease: Duration,

    /// Send attempts before a notification is marked failed (1 to 100).
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub worker_max_attempts: u32,

    /// First retry delay; doubles on each attempt, with jitter.
    #[arg(long, env = "WORKER_RETRY_BASE", default_value = "2s", value_parser = DurationRange::at_least(ONE_MS))]
    pub worker_retry_base: Duration,

    /// Longest retry delay; at least `WORKER_RETRY_BASE`.
    #[arg(long, env = "WORKER_RETRY_MAX", default_value = "10m", value_parser = DurationRange::at_least(ONE_MS))]
    pub worker_retry_max: Duration,

    /// How often an idle worker looks for due jobs (new jobs wake it at once).
    #[arg(long, env = "WORKER_POLL", default_value = "1s", value_parser = DurationRange::at_least(ONE_MS))]
    pub worker_poll: Duration,
}

fn secret_arg(text: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(text))
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

/// `WORKER_CONCURRENCY` when unset and `SMTP_URL` is set: one connection per send, under
/// Postfix's default limit of 50 connections per client.
pub const DEFAULT_WORKER_CONCURRENCY_SMTP: usize = 32;

/// `WORKER_CONCURRENCY` when unset and emails are simulated: a send costs nothing, and half
/// of the default `MAX_CONCURRENT_REQUESTS` keeps the queue up with the intake (with 32 the
/// queue fell behind by up to half a second at full load, README "Benchmarks").
pub const DEFAULT_WORKER_CONCURRENCY_SIMULATED: usize = 64;

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
    /// The settings' defaults with `SMTP_URL` set (the simulated mailer's concurrency is
    /// [`DEFAULT_WORKER_CONCURRENCY_SIMULATED`]).
    fn default() -> Self {
        WorkerSettings {
            concurrency: DEFAULT_WORKER_CONCURRENCY_SMTP,
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

/// The validated configuration the service runs with. Its `Debug` shows no secret: the
/// token is a `SecretString`, the verifier and the mailer redact theirs, the database URL is a
/// [`DatabaseUrl`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to serve (informational; `run` gets a bound listener).
    pub listen_addr: SocketAddr,
    /// Database URL.
    pub database_url: DatabaseUrl,
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
    pub mail_from: Mailbox,
    /// Worker knobs.
    pub worker: WorkerSettings,
    /// Longest time one HTTP request may take.
    pub request_timeout: Duration,
    /// Webhook deliveries handled at the same time, at most.
    pub max_concurrent_requests: usize,
    /// Connection limits of the HTTP server (`HEADER_READ_TIMEOUT`, `MAX_CONNECTIONS`).
    pub serve_limits: webhook_common::server::ServeLimits,
}

/// Shortest accepted admin token, so a guessable one cannot be configured by mistake.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl Config {
    /// Checks what clap cannot (secrets, URLs, the relations between settings) and resolves
    /// the settings; the error names the first bad setting. Clap has checked every range.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let admin_token = self.admin_token()?;
        self.check_database_url()?;
        let verifier = self.verifier()?;
        let allowed_networks = parse_cidrs(&self.allowed_cidrs)?;
        let notification_retention = self.notification_retention()?;
        let mailer = self.mailer()?;
        let worker = self.worker_settings(&mailer)?;
        Ok(Settings {
            listen_addr: self.listen_addr,
            database_url: self.database_url.clone(),
            database_max_connections: self.database_max_connections,
            admin_token,
            verifier,
            max_body_bytes: self.http.max_body_bytes,
            rate_limit: RateLimitSettings {
                per_second: self.reject_rate_per_sec,
                burst: self.reject_burst,
            },
            allowed_networks,
            dedup_retention: self.dedup_retention,
            notification_retention,
            cleanup_interval: self.cleanup_interval,
            mailer,
            mail_from: self.mail_from.clone(),
            worker,
            request_timeout: self.http.request_timeout,
            max_concurrent_requests: self.http.max_concurrent_requests,
            // MAX_CONNECTIONS_PER_CLIENT is not a setting here (yet): the default applies.
            serve_limits: self.http.serve_limits(),
        })
    }

    /// `ADMIN_TOKEN`: required, at least [`MIN_ADMIN_TOKEN_LEN`] characters without spaces,
    /// and not the `.env.example` placeholder.
    fn admin_token(&self) -> Result<SecretString, ConfigError> {
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
        Ok(admin_token)
    }

    /// `DATABASE_URL` is a `sqlite:` or `postgres(ql)://` URL (shown without its password).
    fn check_database_url(&self) -> Result<(), ConfigError> {
        let url = &self.database_url;
        if url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://")
        {
            return Ok(());
        }
        Err(bad(
            "DATABASE_URL",
            format!(
                "{url:?} is neither a sqlite: URL (e.g. sqlite://data/notifications.db) nor a \
                 postgres:// or postgresql:// URL (e.g. postgres://user:password@host/db)"
            ),
        ))
    }

    /// `WEBHOOK_SECRET` (required, well-formed, not the placeholder) with `WEBHOOK_TOLERANCE`
    /// (whole seconds: the timestamp it is compared with counts seconds).
    fn verifier(&self) -> Result<Verifier, ConfigError> {
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
        if self.webhook_tolerance.subsec_nanos() != 0 {
            return Err(bad(
                "WEBHOOK_TOLERANCE",
                "must be whole seconds (e.g. 300s or 5m)",
            ));
        }
        Ok(verifier.with_tolerance(self.webhook_tolerance))
    }

    /// `NOTIFICATION_RETENTION`: `off` (`None`), or at least `DEDUP_RETENTION`.
    fn notification_retention(&self) -> Result<Option<Duration>, ConfigError> {
        match self.notification_retention {
            Retention::Forever => Ok(None),
            Retention::After(keep) if keep >= self.dedup_retention => Ok(Some(keep)),
            Retention::After(_) => Err(bad(
                "NOTIFICATION_RETENTION",
                "must be off (keep forever) or at least DEDUP_RETENTION",
            )),
        }
    }

    /// The mail transport: `SMTP_URL` (with `SMTP_TIMEOUT`), or simulated with `MAILER_DELAY`.
    fn mailer(&self) -> Result<MailerSettings, ConfigError> {
        match &self.smtp_url {
            None => Ok(MailerSettings::Simulated {
                delay: self.mailer_delay,
            }),
            Some(url) => parse_smtp_url(
                url.expose_secret(),
                self.smtp_timeout,
                self.smtp_allow_plaintext_auth,
            ),
        }
    }

    /// The worker's knobs, checking `WORKER_RETRY_MAX` against `WORKER_RETRY_BASE` and
    /// `WORKER_LEASE` against the longest send of `mailer`.
    fn worker_settings(&self, mailer: &MailerSettings) -> Result<WorkerSettings, ConfigError> {
        if self.worker_retry_max < self.worker_retry_base {
            return Err(bad(
                "WORKER_RETRY_MAX",
                "must not be shorter than WORKER_RETRY_BASE",
            ));
        }
        let default_concurrency = match mailer {
            MailerSettings::Simulated { .. } => DEFAULT_WORKER_CONCURRENCY_SIMULATED,
            MailerSettings::Smtp { .. } => DEFAULT_WORKER_CONCURRENCY_SMTP,
        };
        let worker = WorkerSettings {
            concurrency: self.worker_concurrency.unwrap_or(default_concurrency),
            batch_size: self.worker_batch_size,
            lease: self.worker_lease,
            max_attempts: self.worker_max_attempts,
            retry_base: self.worker_retry_base,
            retry_max: self.worker_retry_max,
            poll_interval: self.worker_poll,
            shutdown_grace: self.http.shutdown_grace,
        };
        check_send_limit(&worker, mailer)?;
        Ok(worker)
    }
}

/// A send still running when the worker cuts it off is retried; if it was in fact delivered,
/// the customer gets it twice. So the cut-off (a share of the lease, see
/// [`WorkerSettings::send_limit`]) must exceed the longest legitimate send.
fn check_send_limit(worker: &WorkerSettings, mailer: &MailerSettings) -> Result<(), ConfigError> {
    let longest_send = match mailer {
        MailerSettings::Simulated { delay } => *delay,
        MailerSettings::Smtp { timeout, .. } => *timeout,
    };
    if worker.send_limit() > longest_send {
        return Ok(());
    }
    Err(bad(
        "WORKER_LEASE",
        format!(
            "must be long enough that three quarters of it ({} ms, the send cut-off) exceed \
             one send ({} ms: SMTP_TIMEOUT or MAILER_DELAY)",
            worker.send_limit().as_millis(),
            longest_send.as_millis()
        ),
    ))
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

    /// The message startup stops with for `extra`: clap's (a value out of range, a renamed
    /// setting) or [`Config::validate`]'s.
    fn refusal(extra: &[&str]) -> String {
        let mut args = vec![
            "notification-service",
            "--admin-token",
            "0123456789abcdef",
            "--webhook-secret",
            SECRET,
        ];
        args.extend_from_slice(extra);
        match Config::try_parse_from(args) {
            Err(e) => e.to_string(),
            Ok(config) => match config.validate() {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{extra:?} was accepted"),
            },
        }
    }

    #[track_caller]
    fn assert_refused(extra: &[&str], setting: &str) {
        let err = refusal(extra);
        assert!(err.contains(setting), "{extra:?}: {setting} not in {err}");
    }

    #[test]
    fn every_duration_setting_takes_a_unit() {
        let s = parse(&[
            "--webhook-tolerance",
            "2m",
            "--dedup-retention",
            "36h",
            "--notification-retention",
            "30d",
            "--cleanup-interval",
            "90s",
            "--mailer-delay",
            "250ms",
            "--worker-lease",
            "30s",
            "--worker-retry-base",
            "500ms",
            "--worker-retry-max",
            "5m",
            "--worker-poll",
            "100ms",
            "--shutdown-grace",
            "0s",
            "--request-timeout",
            "1m",
            "--header-read-timeout",
            "5s",
        ])
        .unwrap();
        assert_eq!(s.dedup_retention, Duration::from_secs(36 * 3600));
        assert_eq!(
            s.notification_retention,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(s.cleanup_interval, Duration::from_secs(90));
        assert!(
            matches!(s.mailer, MailerSettings::Simulated { delay } if delay == Duration::from_millis(250))
        );
        assert_eq!(s.worker.lease, Duration::from_secs(30));
        assert_eq!(s.worker.retry_base, Duration::from_millis(500));
        assert_eq!(s.worker.retry_max, Duration::from_secs(300));
        assert_eq!(s.worker.poll_interval, Duration::from_millis(100));
        assert_eq!(s.worker.shutdown_grace, Duration::ZERO);
        assert_eq!(s.request_timeout, Duration::from_secs(60));
        assert_eq!(s.serve_limits.header_read_timeout, Duration::from_secs(5));
        let smtp = parse(&["--smtp-url", "smtp://mailpit:1025", "--smtp-timeout", "3s"]).unwrap();
        assert!(
            matches!(smtp.mailer, MailerSettings::Smtp { timeout, .. } if timeout == Duration::from_secs(3))
        );
        // The tolerance reaches the verifier (it counts whole seconds).
        let tolerance = format!("{:?}", s.verifier);
        assert!(tolerance.contains("tolerance_secs: 120"), "{tolerance}");
        assert_refused(&["--webhook-tolerance", "1500ms"], "WEBHOOK_TOLERANCE");
        // A number without a unit is refused, naming the setting and the format.
        let err = refusal(&["--worker-poll", "100"]);
        assert!(
            err.contains("WORKER_POLL") && err.contains("a duration with a unit"),
            "{err}"
        );
    }

    #[test]
    fn renamed_settings_fail_with_the_new_name_and_format() {
        for (old, value, new) in [
            (
                "--webhook-tolerance-secs",
                "300",
                "set WEBHOOK_TOLERANCE=300s",
            ),
            (
                "--dedup-retention-secs",
                "604800",
                "set DEDUP_RETENTION=604800s",
            ),
            (
                "--notification-retention-secs",
                "0",
                "set NOTIFICATION_RETENTION=off",
            ),
            (
                "--cleanup-interval-secs",
                "3600",
                "set CLEANUP_INTERVAL=3600s",
            ),
            ("--smtp-timeout-secs", "10", "set SMTP_TIMEOUT=10s"),
            ("--mailer-delay-ms", "500", "set MAILER_DELAY=500ms"),
            ("--worker-lease-secs", "15", "set WORKER_LEASE=15s"),
            (
                "--worker-retry-base-ms",
                "2000",
                "set WORKER_RETRY_BASE=2000ms",
            ),
            (
                "--worker-retry-max-secs",
                "600",
                "set WORKER_RETRY_MAX=600s",
            ),
            ("--worker-poll-ms", "1000", "set WORKER_POLL=1000ms"),
            ("--shutdown-grace-secs", "10", "set SHUTDOWN_GRACE=10s"),
            ("--request-timeout-secs", "10", "set REQUEST_TIMEOUT=10s"),
            (
                "--header-read-timeout-secs",
                "10",
                "set HEADER_READ_TIMEOUT=10s",
            ),
        ] {
            let err = refusal(&[old, value]);
            assert!(
                err.contains("_SECS was renamed") || err.contains("_MS was renamed"),
                "{err}"
            );
            assert!(err.contains(new), "{old}: {new:?} not in {err}");
            assert!(
                err.contains("a duration with a unit: 500ms, 10s, 5m"),
                "{err}"
            );
        }
        for rename in RENAMES {
            assert_eq!(
                rename.old_flag,
                rename.old.to_ascii_lowercase().replace('_', "-")
            );
        }
    }

    #[test]
    fn defaults_with_both_secrets_are_valid() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.listen_addr.port(), 8001);
        assert_eq!(s.rate_limit.burst.get(), 60);
        assert!(matches!(s.mailer, MailerSettings::Simulated { .. }));
        assert_eq!(s.dedup_retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!((s.worker.concurrency, s.worker.batch_size), (64, 64));
        // With SMTP, each send is a connection: the default stays under Postfix's 50.
        let smtp = parse(&["--smtp-url", "smtp://mailpit:1025"]).unwrap();
        assert_eq!(smtp.worker.concurrency, DEFAULT_WORKER_CONCURRENCY_SMTP);
        let set = parse(&[
            "--smtp-url",
            "smtp://mailpit:1025",
            "--worker-concurrency",
            "40",
        ]);
        assert_eq!(set.unwrap().worker.concurrency, 40);
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
    fn notifications_are_kept_90_days_by_default_off_keeps_them_and_less_than_dedup_is_refused() {
        assert_eq!(
            parse(&[]).unwrap().notification_retention,
            Some(Duration::from_secs(90 * 24 * 3600))
        );
        let forever = parse(&["--notification-retention", "off"]).unwrap();
        assert_eq!(forever.notification_retention, None);
        assert_eq!(
            setting_of(parse(&["--notification-retention", "1h"])),
            "NOTIFICATION_RETENTION"
        );
        assert_refused(&["--notification-retention", "0"], "NOTIFICATION_RETENTION");
        assert_refused(&["--dedup-retention", "59s"], "DEDUP_RETENTION");
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
        assert_refused(&["--reject-burst", "0"], "REJECT_BURST");
        assert_refused(&["--reject-rate-per-sec", "0"], "REJECT_RATE_PER_SEC");
        assert_eq!(
            setting_of(parse(&["--database-url", "mysql://a:b@db/n"])),
            "DATABASE_URL"
        );
        assert!(!refusal(&["--database-url", "mysql://a:b@db/n"]).contains(":b@"));
        for url in ["postgres://a:b@db/n", "postgresql://db/n", "sqlite://n.db"] {
            assert!(parse(&["--database-url", url]).is_ok(), "{url}");
        }
        for n in ["0", "1001"] {
            assert_refused(
                &["--database-max-connections", n],
                "DATABASE_MAX_CONNECTIONS",
            );
        }
        assert_eq!(
            parse(&["--database-max-connections", "1000"])
                .unwrap()
                .database_max_connections,
            1000
        );
        assert_refused(&["--worker-concurrency", "0"], "WORKER_CONCURRENCY");
        assert_refused(&["--worker-concurrency", "257"], "WORKER_CONCURRENCY");
        assert_refused(&["--worker-batch-size", "1001"], "WORKER_BATCH_SIZE");
        assert_refused(&["--worker-max-attempts", "101"], "WORKER_MAX_ATTEMPTS");
        assert_refused(&["--max-body-bytes", "10"], "MAX_BODY_BYTES");
        assert_refused(&["--mail-from", "not a mailbox"], "MAIL_FROM");
        assert_refused(
            &["--mailer-delay", "5s", "--worker-lease", "5s"],
            "WORKER_LEASE",
        );
        assert_refused(
            &["--worker-retry-base", "2s", "--worker-retry-max", "1999ms"],
            "WORKER_RETRY_MAX",
        );
        assert_refused(&["--worker-retry-base", "0ms"], "WORKER_RETRY_BASE");
        assert_refused(&["--worker-poll", "0s"], "WORKER_POLL");
        assert_refused(&["--cleanup-interval", "0s"], "CLEANUP_INTERVAL");
        assert_refused(&["--smtp-timeout", "999ms"], "SMTP_TIMEOUT");
        assert_refused(&["--webhook-tolerance", "0s"], "WEBHOOK_TOLERANCE");
    }

    #[test]
    fn the_send_cut_off_not_just_the_lease_must_exceed_the_longest_send() {
        // 11 s lease: cut off at 8.25 s, before a 10 s SMTP send may legitimately end.
        assert_eq!(
            setting_of(parse(&[
                "--smtp-url",
                "smtp://mailpit:1025",
                "--smtp-timeout",
                "10s",
                "--worker-lease",
                "11s",
            ])),
            "WORKER_LEASE"
        );
        assert_eq!(
            setting_of(parse(&["--mailer-delay", "800ms", "--worker-lease", "1s"])),
            "WORKER_LEASE"
        );
        let s = parse(&[
            "--smtp-url",
            "smtp://mailpit:1025",
            "--smtp-timeout",
            "10s",
            "--worker-lease",
            "14s",
        ])
        .unwrap();
        assert!(s.worker.send_limit() > Duration::from_secs(10));
        assert_refused(&["--worker-lease", "999ms"], "WORKER_LEASE");
        assert_refused(&["--worker-lease", "25h"], "WORKER_LEASE");
        assert_refused(
            &["--worker-lease", &format!("{}d", u64::MAX)],
            "WORKER_LEASE",
        );
    }

    #[test]
    fn shutdown_grace_timeouts_and_concurrency_are_bounded() {
        for (flag, value, setting) in [
            ("--shutdown-grace", "61m", "SHUTDOWN_GRACE"),
            ("--request-timeout", "0s", "REQUEST_TIMEOUT"),
            ("--request-timeout", "2h", "REQUEST_TIMEOUT"),
            ("--max-concurrent-requests", "0", "MAX_CONCURRENT_REQUESTS"),
            (
                "--max-concurrent-requests",
                "10001",
                "MAX_CONCURRENT_REQUESTS",
            ),
            ("--header-read-timeout", "0s", "HEADER_READ_TIMEOUT"),
            ("--header-read-timeout", "301s", "HEADER_READ_TIMEOUT"),
            ("--max-connections", "0", "MAX_CONNECTIONS"),
            ("--max-connections", "100001", "MAX_CONNECTIONS"),
        ] {
            assert_refused(&[flag, value], setting);
        }
        let s = parse(&[]).unwrap();
        assert_eq!(s.serve_limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(s.serve_limits.max_connections, 1024);
        assert_eq!(s.serve_limits.max_connections_per_client, 128);
        assert_eq!(s.request_timeout, Duration::from_secs(10));
        assert_eq!(s.max_concurrent_requests, 128);
        assert_eq!(s.max_body_bytes, 256 * 1024);
        assert_eq!(s.worker.shutdown_grace, Duration::from_secs(10));
        assert_eq!(s.worker.retry_base, Duration::from_secs(2));
        assert_eq!(s.worker.retry_max, Duration::from_secs(600));
        assert_eq!(s.worker.poll_interval, Duration::from_secs(1));
        assert_eq!(s.cleanup_interval, Duration::from_secs(3600));
        assert!(matches!(s.mailer, MailerSettings::Simulated { delay } if delay.is_zero()));
        let smtp = parse(&["--smtp-url", "smtp://mailpit:1025"]).unwrap();
        assert!(
            matches!(smtp.mailer, MailerSettings::Smtp { timeout, .. } if timeout == Duration::from_secs(10))
        );
        assert!(format!("{:?}", s.verifier).contains("tolerance_secs: 300"));
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
