//! The settings conventions both services share: every duration is a number with a unit
//! (`500ms`, `10s`, `5m`, `7d`), read by [`parse_duration`] and bounded by [`DurationRange`];
//! a renamed setting that is still set stops startup with a message naming its new form
//! ([`Rename`], [`renamed_args`]); and the HTTP settings both services have
//! ([`HttpSettings`], flattened into each service's clap `Config`).
//!
//! The clap parts ([`HttpSettings`], [`renamed_args`] and the `TypedValueParser` impls) need
//! the `config` feature; the parsers themselves do not.

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

/// How every duration setting is written, for messages.
pub const DURATION_FORMAT: &str = "a duration with a unit: 500ms, 10s, 5m";

const MILLIS_PER_UNIT: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses a whole number followed by a unit: `250ms`, `5s`, `2m`, `1h` or `7d`. A bare `0` is
/// zero; any other number without a unit is refused, so that `10` cannot silently mean ten
/// milliseconds where seconds were meant.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit; use ms, s, m, h or d (e.g. 5s)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number followed by a unit (e.g. 5s)"))?;
    let millis_per_unit = MILLIS_PER_UNIT
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, millis)| *millis)
        .ok_or_else(|| format!("unknown unit {unit:?} in {text:?}; use ms, s, m, h or d"))?;
    let millis = n
        .checked_mul(millis_per_unit)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    Ok(Duration::from_millis(millis))
}

/// Writes `duration` the way [`parse_duration`] reads it, in the largest unit that divides it
/// (`90s` is `90s`, `3600s` is `1h`); sub-millisecond durations fall back to `Debug`.
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    if !duration.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{duration:?}");
    }
    let millis = duration.as_millis();
    MILLIS_PER_UNIT
        .iter()
        .find(|(_, per_unit)| millis.is_multiple_of(u128::from(*per_unit)))
        .map(|(unit, per_unit)| format!("{}{unit}", millis / u128::from(*per_unit)))
        .unwrap_or_else(|| format!("{millis}ms"))
}

/// The values a duration setting accepts: from `min` up to `max` (inclusive; `None` means no
/// upper bound). Used as a clap value parser (feature `config`), so an out-of-range value
/// stops startup with a message naming the setting and its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    min: Duration,
    max: Option<Duration>,
}

impl DurationRange {
    /// Any duration from `min` on.
    pub const fn at_least(min: Duration) -> Self {
        DurationRange { min, max: None }
    }

    /// Any duration from `min` to `max`, both included.
    pub const fn between(min: Duration, max: Duration) -> Self {
        DurationRange {
            min,
            max: Some(max),
        }
    }

    /// The shortest accepted duration.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The longest accepted duration, if bounded.
    pub fn max(&self) -> Option<Duration> {
        self.max
    }

    /// `Ok` if `value` is in the range; otherwise what is expected, e.g. `must be between 1s
    /// and 1h`.
    pub fn check(&self, value: Duration) -> Result<Duration, String> {
        let too_long = self.max.is_some_and(|max| value > max);
        if value >= self.min && !too_long {
            return Ok(value);
        }
        Err(match self.max {
            Some(max) => format!(
                "must be between {} and {}",
                format_duration(self.min),
                format_duration(max)
            ),
            None => format!("must be at least {}", format_duration(self.min)),
        })
    }

    /// [`parse_duration`], then [`DurationRange::check`].
    pub fn parse(&self, text: &str) -> Result<Duration, String> {
        let value = parse_duration(text).map_err(|e| format!("{e} ({DURATION_FORMAT})"))?;
        self.check(value)
            .map_err(|e| format!("{:?} is out of range: {e}", text.trim()))
    }
}

/// How long finished work is kept: a duration, or `off` for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Deleted once older than this.
    After(Duration),
    /// Kept forever (`off`).
    Forever,
}

/// The values a retention setting accepts: `off`, or a duration in the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionRange(pub DurationRange);

impl RetentionRange {
    /// Parses `off` or a duration within the range.
    pub fn parse(&self, text: &str) -> Result<Retention, String> {
        if text.trim() == "off" {
            return Ok(Retention::Forever);
        }
        self.0
            .parse(text)
            .map(Retention::After)
            .map_err(|e| format!("{e}, or `off` to keep everything"))
    }
}

/// A database URL whose `Debug` hides the password (`user:password@` becomes
/// `<redacted>@`). Dereferences to the URL itself.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL, password included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for DatabaseUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(url: String) -> Self {
        DatabaseUrl(url)
    }
}

impl From<&str> for DatabaseUrl {
    fn from(url: &str) -> Self {
        DatabaseUrl(url.to_owned())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

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

/// The unit an old, renamed setting was counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldUnit {
    /// `..._SECS`.
    Seconds,
    /// `..._MS`.
    Millis,
}

/// A setting that was renamed: setting the old name stops startup with a message naming the
/// new one and, where the old value was a number, its equivalent in the new form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rename {
    /// The old environment variable, e.g. `SHUTDOWN_GRACE_SECS`.
    pub old: &'static str,
    /// The old flag without dashes, e.g. `shutdown-grace-secs`.
    pub old_flag: &'static str,
    /// The new environment variable, e.g. `SHUTDOWN_GRACE`.
    pub new: &'static str,
    /// What a number under the old name counted.
    pub unit: OldUnit,
    /// What an old value of `0` is written as now, if not `0s` (e.g. `off`).
    pub zero: Option<&'static str>,
}

impl Rename {
    /// `old` (counted in seconds, flag `--old_flag`) is now `new`.
    pub const fn secs(old: &'static str, old_flag: &'static str, new: &'static str) -> Self {
        Rename {
            old,
            old_flag,
            new,
            unit: OldUnit::Seconds,
            zero: None,
        }
    }

    /// `old` (counted in milliseconds, flag `--old_flag`) is now `new`.
    pub const fn millis(old: &'static str, old_flag: &'static str, new: &'static str) -> Self {
        Rename {
            old,
            old_flag,
            new,
            unit: OldUnit::Millis,
            zero: None,
        }
    }

    /// An old value of `0` is written `zero` under the new name.
    pub const fn zero_means(self, zero: &'static str) -> Self {
        Rename {
            zero: Some(zero),
            ..self
        }
    }

    /// The message for someone who still sets the old name (to `old_value`, when known), e.g.
    /// `SHUTDOWN_GRACE_SECS was renamed: set SHUTDOWN_GRACE=10s (a duration with a unit:
    /// 500ms, 10s, 5m)`.
    pub fn message(&self, old_value: Option<&str>) -> String {
        let suffix = match self.unit {
            OldUnit::Seconds => "s",
            OldUnit::Millis => "ms",
        };
        let value = match old_value.map(str::trim).map(str::parse::<u64>) {
            Some(Ok(0)) => self
                .zero
                .map_or_else(|| format!("0{suffix}"), str::to_owned),
            Some(Ok(n)) => format!("{n}{suffix}"),
            _ => format!("10{suffix}"),
        };
        format!(
            "{} was renamed: set {}={value} ({DURATION_FORMAT})",
            self.old, self.new
        )
    }
}

/// The renamed settings of [`HttpSettings`], refused by both services.
pub const HTTP_RENAMES: &[Rename] = &[
    Rename::secs(
        "REQUEST_TIMEOUT_SECS",
        "request-timeout-secs",
        "REQUEST_TIMEOUT",
    ),
    Rename::secs(
        "HEADER_READ_TIMEOUT_SECS",
        "header-read-timeout-secs",
        "HEADER_READ_TIMEOUT",
    ),
    Rename::secs(
        "SHUTDOWN_GRACE_SECS",
        "shutdown-grace-secs",
        "SHUTDOWN_GRACE",
    ),
];

/// Hidden clap arguments for `renames`: each reads the old environment variable and flag and,
/// if either is set, fails parsing with [`Rename::message`]. Add them to a derived `Config`
/// with `#[command(args = renamed_args(RENAMES))]`, so the old names are refused wherever the
/// config is parsed (`main`, the demo launcher, tests), never silently ignored.
#[cfg(feature = "config")]
pub fn renamed_args(renames: &'static [Rename]) -> impl Iterator<Item = clap::Arg> {
    renames.iter().map(|rename| {
        clap::Arg::new(rename.old)
            .long(rename.old_flag)
            .env(rename.old)
            .hide(true)
            .value_parser(RenamedParser(*rename))
    })
}

/// Refuses every value with the rename message.
#[cfg(feature = "config")]
#[derive(Clone)]
struct RenamedParser(Rename);

#[cfg(feature = "config")]
impl clap::builder::TypedValueParser for RenamedParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let message = self.0.message(value.to_str());
        Err(clap::Error::raw(
            clap::error::ErrorKind::ValueValidation,
            format!("{message}\n"),
        )
        .with_cmd(cmd))
    }
}

/// The setting an argument stands for: its environment variable (`REQUEST_TIMEOUT`), else
/// its flag.
#[cfg(feature = "config")]
fn setting_name(arg: Option<&clap::Arg>) -> String {
    let Some(arg) = arg else {
        return "a setting".to_owned();
    };
    match (arg.get_env(), arg.get_long()) {
        (Some(env), Some(long)) => format!("{} (--{long})", env.to_string_lossy()),
        (Some(env), None) => env.to_string_lossy().into_owned(),
        (None, Some(long)) => format!("--{long}"),
        (None, None) => arg.get_id().to_string(),
    }
}

#[cfg(feature = "config")]
fn invalid_value(cmd: &clap::Command, arg: Option<&clap::Arg>, problem: &str) -> clap::Error {
    clap::Error::raw(
        clap::error::ErrorKind::ValueValidation,
        format!("invalid {}: {problem}\n", setting_name(arg)),
    )
    .with_cmd(cmd)
}

#[cfg(feature = "config")]
fn value_str<'a>(
    cmd: &clap::Command,
    arg: Option<&clap::Arg>,
    value: &'a std::ffi::OsStr,
) -> Result<&'a str, clap::Error> {
    value
        .to_str()
        .ok_or_else(|| invalid_value(cmd, arg, "is not UTF-8"))
}

#[cfg(feature = "config")]
impl clap::builder::TypedValueParser for DurationRange {
    type Value = Duration;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Duration, clap::Error> {
        let text = value_str(cmd, arg, value)?;
        self.parse(text).map_err(|e| invalid_value(cmd, arg, &e))
    }
}

#[cfg(feature = "config")]
impl clap::builder::TypedValueParser for RetentionRange {
    type Value = Retention;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Retention, clap::Error> {
        let text = value_str(cmd, arg, value)?;
        self.parse(text).map_err(|e| invalid_value(cmd, arg, &e))
    }
}

/// For `#[command(mut_arg("max_concurrent_requests", default_value("256")))]`: gives a
/// flattened argument (one of [`HttpSettings`] without a default) this service's default.
#[cfg(feature = "config")]
pub fn default_value(value: &'static str) -> impl FnOnce(clap::Arg) -> clap::Arg {
    move |arg| arg.required(false).default_value(value)
}

/// Longest accepted `REQUEST_TIMEOUT`.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

/// Longest accepted `HEADER_READ_TIMEOUT`.
pub const MAX_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// Longest accepted `SHUTDOWN_GRACE` (a service may allow a longer one with `mut_arg`).
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(3600);

/// Largest accepted `MAX_CONNECTIONS`.
pub const MAX_MAX_CONNECTIONS: u64 = 100_000;

/// Largest accepted `MAX_CONCURRENT_REQUESTS`.
pub const MAX_MAX_CONCURRENT_REQUESTS: u64 = 10_000;

/// Smallest and largest accepted `MAX_BODY_BYTES`.
pub const MAX_BODY_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1024..=16 * 1024 * 1024;

/// The HTTP settings both services have, flattened into each `Config` with
/// `#[command(flatten)]`. `MAX_BODY_BYTES` and `MAX_CONCURRENT_REQUESTS` have no default
/// here: each service sets its own with `#[command(mut_arg(..))]` (their defaults differ),
/// and clap refuses to start a service that forgot to.
#[cfg(feature = "config")]
#[derive(Debug, Clone, clap::Args)]
#[command(args = renamed_args(HTTP_RENAMES))]
pub struct HttpSettings {
    /// Largest accepted request body, in bytes (1024 to 16777216); larger ones get 413.
    #[arg(long, env = "MAX_BODY_BYTES", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(MAX_BODY_BYTES_RANGE))]
    pub max_body_bytes: usize,

    /// Longest time one HTTP request may take, body upload included (1s to 1h); a slower one
    /// is answered 408.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = DurationRange::between(Duration::from_secs(1), MAX_REQUEST_TIMEOUT))]
    pub request_timeout: Duration,

    /// HTTP requests handled at the same time, at most (1 to 10000; `/healthz` and `/readyz`
    /// aside); more get 503 with `Retry-After`.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_MAX_CONCURRENT_REQUESTS))]
    pub max_concurrent_requests: usize,

    /// Longest time a client may take to send a request's line and headers (1s to 5m),
    /// counted from when its connection is ready for a request; the connection is closed
    /// after it. Also how long an idle keep-alive connection stays open. Guards against
    /// clients that trickle headers to hold connections (slowloris); `REQUEST_TIMEOUT` only
    /// starts once the headers are in.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = DurationRange::between(Duration::from_secs(1), MAX_HEADER_READ_TIMEOUT))]
    pub header_read_timeout: Duration,

    /// HTTP connections open at the same time, at most (1 to 100000); beyond it no more are
    /// accepted until one closes (clients wait in the listen backlog). Keep it below the
    /// process's file descriptor limit (`ulimit -n`).
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=MAX_MAX_CONNECTIONS))]
    pub max_connections: usize,

    /// On shutdown, how long work in flight (webhook attempts, emails) may finish before it is
    /// released (0s to 1h; a service may allow longer with `mut_arg`).
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = DurationRange::between(Duration::ZERO, MAX_SHUTDOWN_GRACE))]
    pub shutdown_grace: Duration,
}

#[cfg(all(feature = "config", feature = "server"))]
impl HttpSettings {
    /// The connection limits of the HTTP server (`HEADER_READ_TIMEOUT`, `MAX_CONNECTIONS`),
    /// with the default per-client cap.
    pub fn serve_limits(&self) -> crate::server::ServeLimits {
        crate::server::ServeLimits {
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections,
            ..crate::server::ServeLimits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn durations_take_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(10 * SECOND));
        assert_eq!(parse_duration(" 2m "), Ok(120 * SECOND));
        assert_eq!(parse_duration("1h"), Ok(3600 * SECOND));
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400 * SECOND));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "5 s",
            "1.5s",
            "-1s",
            "5sec",
            "99999999999999999999d",
            "999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_are_written_in_their_largest_whole_unit() {
        for (duration, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1500), "1500ms"),
            (90 * SECOND, "90s"),
            (600 * SECOND, "10m"),
            (3600 * SECOND, "1h"),
            (30 * 86_400 * SECOND, "30d"),
        ] {
            assert_eq!(format_duration(duration), text);
            assert_eq!(parse_duration(text), Ok(duration));
        }
    }

    #[test]
    fn a_range_names_its_bounds() {
        let range = DurationRange::between(SECOND, 3600 * SECOND);
        assert_eq!(range.parse("1s"), Ok(SECOND));
        assert_eq!(range.parse("1h"), Ok(3600 * SECOND));
        let err = range.parse("999ms").unwrap_err();
        assert!(err.contains("between 1s and 1h"), "{err}");
        assert!(range.parse("61m").is_err());
        let err = range.parse("10").unwrap_err();
        assert!(err.contains(DURATION_FORMAT), "{err}");
        let open = DurationRange::at_least(60 * SECOND);
        assert_eq!(open.check(Duration::MAX), Ok(Duration::MAX));
        assert!(open.parse("59s").unwrap_err().contains("at least 1m"));
    }

    #[test]
    fn retention_is_off_or_a_duration_in_range() {
        let range = RetentionRange(DurationRange::between(
            3600 * SECOND,
            3650 * 86_400 * SECOND,
        ));
        assert_eq!(range.parse("off"), Ok(Retention::Forever));
        assert_eq!(
            range.parse("30d"),
            Ok(Retention::After(30 * 86_400 * SECOND))
        );
        let err = range.parse("10m").unwrap_err();
        assert!(
            err.contains("between 1h and 3650d") && err.contains("off"),
            "{err}"
        );
        assert!(range.parse("forever").is_err());
    }

    #[test]
    fn a_rename_message_names_both_settings_and_converts_the_old_value() {
        let grace = HTTP_RENAMES[2];
        assert_eq!(
            grace.message(Some("10")),
            "SHUTDOWN_GRACE_SECS was renamed: set SHUTDOWN_GRACE=10s \
             (a duration with a unit: 500ms, 10s, 5m)"
        );
        let poll = Rename::millis("WORKER_POLL_MS", "worker-poll-ms", "WORKER_POLL");
        assert!(poll.message(Some("250")).contains("set WORKER_POLL=250ms"));
        assert!(poll.message(Some("soon")).contains("set WORKER_POLL=10ms"));
        let keep = Rename::secs("KEEP_SECS", "keep-secs", "KEEP").zero_means("off");
        assert!(keep.message(Some("0")).contains("set KEEP=off"));
        assert!(keep.message(Some("60")).contains("set KEEP=60s"));
    }

    #[test]
    fn old_flags_are_the_old_names_in_kebab_case() {
        for rename in HTTP_RENAMES {
            assert_eq!(
                rename.old_flag,
                rename.old.to_ascii_lowercase().replace('_', "-")
            );
        }
    }

    #[test]
    fn database_url_debug_hides_the_password() {
        let url = DatabaseUrl::from("postgres://app:s3cret@db:5432/n?sslmode=require");
        assert_eq!(&*url, "postgres://app:s3cret@db:5432/n?sslmode=require");
        let shown = format!("{url:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("db:5432"), "{shown}");
        assert_eq!(
            redact_url("postgres://a:b@c@db/n"),
            "postgres://<redacted>@db/n"
        );
        assert_eq!(redact_url("sqlite://x/a@b.db"), "sqlite://x/a@b.db");
        assert_eq!(redact_url("sqlite:n.db"), "sqlite:n.db");
    }

    #[cfg(feature = "config")]
    mod clap_parsing {
        use super::*;
        use clap::Parser;

        const RENAMES: &[Rename] = &[Rename::millis(
            "WEBHOOK_COMMON_TEST_POLL_MS",
            "webhook-common-test-poll-ms",
            "POLL",
        )];

        #[derive(Debug, clap::Parser)]
        #[command(name = "svc")]
        #[command(args = renamed_args(RENAMES))]
        #[command(mut_arg("max_body_bytes", default_value("65536")))]
        #[command(mut_arg("max_concurrent_requests", default_value("256")))]
        struct Config {
            #[arg(long, env = "WEBHOOK_COMMON_TEST_POLL", default_value = "1s", value_parser = DurationRange::at_least(Duration::from_millis(1)))]
            poll: Duration,
            #[command(flatten)]
            http: HttpSettings,
        }

        const ENV_ONLY_RENAMES: &[Rename] = &[Rename::millis(
            "WEBHOOK_COMMON_TEST_ENV_ONLY_MS",
            "webhook-common-test-env-only-ms",
            "ENV_ONLY",
        )];

        /// Parsed by one test only, the one that sets its old environment variable.
        #[derive(Debug, clap::Parser)]
        #[command(name = "svc")]
        #[command(args = renamed_args(ENV_ONLY_RENAMES))]
        struct EnvOnly {}

        fn parse(args: &[&str]) -> Result<Config, String> {
            Config::try_parse_from(std::iter::once("svc").chain(args.iter().copied()))
                .map_err(|e| e.to_string())
        }

        #[test]
        fn defaults_come_from_the_shared_struct_and_the_service() {
            let config = parse(&[]).unwrap();
            assert_eq!(config.poll, SECOND);
            assert_eq!(config.http.max_body_bytes, 65536);
            assert_eq!(config.http.max_concurrent_requests, 256);
            assert_eq!(config.http.request_timeout, 10 * SECOND);
            assert_eq!(config.http.header_read_timeout, 10 * SECOND);
            assert_eq!(config.http.max_connections, 1024);
            assert_eq!(config.http.shutdown_grace, 10 * SECOND);
            let config = parse(&["--request-timeout", "1500ms", "--poll", "5m"]).unwrap();
            assert_eq!(config.http.request_timeout, Duration::from_millis(1500));
            assert_eq!(config.poll, 300 * SECOND);
        }

        #[test]
        fn out_of_range_values_name_the_setting() {
            for (args, setting) in [
                (
                    &["--header-read-timeout", "301s"][..],
                    "HEADER_READ_TIMEOUT",
                ),
                (&["--request-timeout", "0s"], "REQUEST_TIMEOUT"),
                (&["--request-timeout", "10"], "REQUEST_TIMEOUT"),
                (&["--shutdown-grace", "2h"], "SHUTDOWN_GRACE"),
                (&["--max-connections", "0"], "MAX_CONNECTIONS"),
                (&["--max-body-bytes", "10"], "MAX_BODY_BYTES"),
                (
                    &["--max-concurrent-requests", "0"],
                    "MAX_CONCURRENT_REQUESTS",
                ),
                (&["--poll", "0ms"], "WEBHOOK_COMMON_TEST_POLL"),
            ] {
                let err = parse(args).unwrap_err();
                assert!(err.contains(setting), "{args:?}: {err}");
            }
        }

        #[test]
        fn old_names_fail_with_the_rename_message() {
            let err = parse(&["--shutdown-grace-secs", "30"]).unwrap_err();
            assert!(
                err.contains("SHUTDOWN_GRACE_SECS was renamed: set SHUTDOWN_GRACE=30s"),
                "{err}"
            );
            let err = parse(&["--webhook-common-test-poll-ms", "100"]).unwrap_err();
            assert!(
                err.contains("WEBHOOK_COMMON_TEST_POLL_MS was renamed: set POLL=100ms"),
                "{err}"
            );
            // The environment variable, not only the flag. Its name belongs to `EnvOnly`, which
            // no other test parses, so setting it cannot disturb them.
            std::env::set_var("WEBHOOK_COMMON_TEST_ENV_ONLY_MS", "250");
            let err = EnvOnly::try_parse_from(["svc"])
                .map(|_| ())
                .map_err(|e| e.to_string());
            std::env::remove_var("WEBHOOK_COMMON_TEST_ENV_ONLY_MS");
            let err = err.unwrap_err();
            assert!(
                err.contains("WEBHOOK_COMMON_TEST_ENV_ONLY_MS was renamed: set ENV_ONLY=250ms"),
                "{err}"
            );
        }
    }
}
