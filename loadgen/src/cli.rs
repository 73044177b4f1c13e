//! Command-line interface: one subcommand per scenario, each with its own defaults, plus the
//! hidden `baseline-server` that loadgen starts as its own child process.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const LONG_ABOUT: &str = "\
Load driver for orders-service and notification-service.

By default loadgen starts both services itself: the release binaries found next to the loadgen \
executable (or in --bin-dir), each with a temporary SQLite database and a random port, default \
settings otherwise. It sends orders (POST /orders), waits until every accepted order's email is \
sent (or --deadline passes), reads the timestamps the services recorded from their databases and \
prints a table followed by ONE line of JSON with every figure (`loadgen ... | tail -1 | jq`).

With --postgres ADMIN_URL the services run on PostgreSQL instead: loadgen creates two fresh \
databases on that server for each set of services (loadgen_orders_<random>, \
loadgen_notifications_<random>) and drops them at the end, also after a failure (--keep keeps \
them). With --replicas N it starts N orders-service and N notification-service processes on the \
same two databases: the orders go round-robin to the orders replicas, and every orders replica \
delivers its webhooks to one round-robin TCP balancer that loadgen runs in front of the \
notification replicas.

It exits 0 when no email was lost or duplicated and every answer was 2xx; 1 when a check failed; \
2 when the run could not be done. Build first with `cargo build --release --workspace`.";

const EXAMPLES: &str = "\
Examples (the binaries are in target/release, or in $CARGO_TARGET_DIR/release):
  loadgen throughput -n 5000 -c 64 --baseline      closed loop, with ratios to the baseline
  loadgen latency --rate 500 --duration 10s        open loop
  loadgen backlog -n 20000 --compare               receiver down, then the drain
  loadgen history --prefill 500000 -n 50000        a large database vs an empty one
  loadgen throughput --orders-env RUST_LOG=warn    quieter service logs
  loadgen throughput -n 20000 -c 64 --baseline \
      --postgres postgres://postgres@127.0.0.1:5432/postgres --replicas 2
                                                   2 + 2 replicas on PostgreSQL
  loadgen throughput --orders-url http://127.0.0.1:8000 \\
      --orders-db data/orders.db --notifications-db data/notifications.db";

/// Load driver for the reliable-webhooks services; see `--help` of each scenario.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Closed loop: N orders from C concurrent clients, each sending its next order once the
    /// previous one is answered. Measures the sustained rate.
    #[command(
        long_about = "Closed loop: N orders (-n, default 50,000) from C concurrent clients \
        (-c, default 64), each client sending its next order as soon as the previous one is \
        answered. Measures the sustained rate: orders accepted/s, API latency, end-to-end \
        latency (order created -> webhook accepted by notification-service -> email sent) and \
        emails sent/s (accepted orders / time from the first order to the last email)."
    )]
    Throughput(ThroughputArgs),

    /// Open loop: orders at a fixed rate for a duration; latency counts from each request's
    /// scheduled send time, so queueing delay is not hidden.
    #[command(
        long_about = "Open loop: orders at a fixed rate (--rate, default 1,000/s) for a \
        duration (--duration, default 30s). Each request is sent at its scheduled time whatever \
        happened to earlier ones, and its latency is counted from that scheduled time, so a \
        stalled server shows as latency instead of a slower send rate (no coordinated \
        omission). At most --max-in-flight requests are outstanding; a request that finds the \
        limit reached is not sent and is counted as 'not sent on schedule'."
    )]
    Latency(LatencyArgs),

    /// Receiver down: N orders pile up in orders-service, then notification-service starts and
    /// the drain rate is measured.
    #[command(
        long_about = "Receiver down: orders-service starts with its webhook URL pointing \
        at a port where notification-service is not running yet, and a retry schedule of a \
        hundred 1s retries. N orders (-n, default 200,000) pile up while loadgen prints \
        orders-service's memory; then notification-service starts on that port and loadgen \
        measures the drain rate: emails sent/s from the receiver's start to the last email. \
        With --compare a throughput run with the same -n and -c runs first, and the drain rate \
        is also shown as a ratio to its emails sent/s."
    )]
    Backlog(BacklogArgs),

    /// A database already holding many delivered orders, then the throughput scenario;
    /// compared with the same run on an empty database.
    #[command(
        long_about = "History: the databases are pre-filled with --prefill delivered \
        orders (default 500,000: orders, events, delivered deliveries and their attempts; \
        received webhooks, sent notifications and order states), written directly with SQL \
        while the services are stopped; then the throughput scenario runs. Unless \
        --skip-empty is given, the same throughput run on empty databases runs first and every \
        figure is also shown as a ratio to it."
    )]
    History(HistoryArgs),

    /// Internal: the baseline server that --baseline starts as a child process.
    #[command(hide = true)]
    BaselineServer(BaselineServerArgs),
}

impl Command {
    /// The scenario's name and its shared settings; `None` for `baseline-server`.
    pub fn scenario(&self) -> Option<(&'static str, &RunArgs)> {
        match self {
            Command::Throughput(a) => Some(("throughput", &a.run)),
            Command::Latency(a) => Some(("latency", &a.run)),
            Command::Backlog(a) => Some(("backlog", &a.run)),
            Command::History(a) => Some(("history", &a.run)),
            Command::BaselineServer(_) => None,
        }
    }
}

/// `throughput`.
#[derive(Debug, Args)]
pub struct ThroughputArgs {
    /// Orders to send.
    #[arg(short = 'n', long = "orders", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub orders: u64,
    /// Concurrent clients (requests in flight).
    #[arg(short = 'c', long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,
    /// Also run the same load against the no-storage baseline and print ratios to it.
    #[arg(long)]
    pub baseline: bool,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `latency`.
#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Orders per second.
    #[arg(short = 'r', long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate: u64,
    /// How long to send, e.g. `30s`, `2m`, `500ms`.
    #[arg(short = 'd', long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Requests outstanding at most (bounds loadgen's memory); a request due while this many
    /// are outstanding is not sent, is counted, and fails the run: its latency, a stall's,
    /// would be missing from the percentiles.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_in_flight: u64,
    /// Also run the same load against the no-storage baseline and print ratios to it.
    #[arg(long)]
    pub baseline: bool,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub target: TargetArgs,
}

/// `backlog`.
#[derive(Debug, Args)]
pub struct BacklogArgs {
    /// Orders that pile up while the receiver is down.
    #[arg(short = 'n', long = "orders", default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub orders: u64,
    /// Concurrent clients while the orders pile up.
    #[arg(short = 'c', long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,
    /// First run the throughput scenario with the same -n and -c, and show the drain rate as
    /// a ratio to its emails sent/s.
    #[arg(long)]
    pub compare: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Delivered orders written into the databases before the run.
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub prefill: u64,
    /// Orders to send after the pre-fill.
    #[arg(short = 'n', long = "orders", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub orders: u64,
    /// Concurrent clients.
    #[arg(short = 'c', long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,
    /// Do not run the comparison on empty databases first.
    #[arg(long)]
    pub skip_empty: bool,
    /// Also run the same load against the no-storage baseline and print ratios to it.
    #[arg(long)]
    pub baseline: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Settings every scenario shares.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Longest wait, after the last order was answered, for every accepted order's email.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub deadline: Duration,
    /// Directory holding the `orders-service` and `notification-service` binaries. Default:
    /// the directory of the loadgen executable.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Keep the temporary directory (SQLite databases and service logs) and print its path;
    /// with --postgres, also keep the PostgreSQL databases and print their URLs.
    #[arg(long)]
    pub keep: bool,
    /// Extra environment for orders-service, `KEY=VALUE`; repeatable. Applied last, so it can
    /// override what loadgen sets (not LISTEN_ADDR or DATABASE_URL, which it needs).
    #[arg(long = "orders-env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub orders_env: Vec<(String, String)>,
    /// Extra environment for notification-service, `KEY=VALUE`; repeatable.
    #[arg(long = "notifications-env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub notifications_env: Vec<(String, String)>,
    /// Extra environment for both services (every replica), `KEY=VALUE`; repeatable. Applied
    /// before --orders-env and --notifications-env, which win over it.
    #[arg(long = "services-env", value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub services_env: Vec<(String, String)>,
    /// Timeout of one `POST /orders`; a request that times out counts as a transport error.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Where the services loadgen starts store their data, and how many of each run.
#[derive(Debug, Args)]
#[command(
    next_help_heading = "PostgreSQL and replicas (throughput, latency, backlog; not history)"
)]
pub struct BackendArgs {
    /// Run the services on PostgreSQL: an administration URL of the server, e.g.
    /// `postgres://postgres@127.0.0.1:5432/postgres`. loadgen creates two fresh databases on
    /// it per set of services (`loadgen_orders_<random>`, `loadgen_notifications_<random>`),
    /// and drops them at the end (`DROP DATABASE ... WITH (FORCE)`), also after a failure;
    /// `--keep` keeps them and prints their URLs. Each service process gets
    /// `DATABASE_MAX_CONNECTIONS=10`, less if the server has no room for that (override with
    /// `--services-env DATABASE_MAX_CONNECTIONS=N`). Not for `history`, whose pre-fill writes
    /// SQLite files.
    #[arg(long, value_name = "ADMIN_URL", value_parser = crate::postgres::parse_admin_url)]
    pub postgres: Option<String>,
    /// Replicas of each service, all on the same two databases (needs --postgres above 1:
    /// the SQLite backend is single-writer, one file per service). The orders go round-robin
    /// to the orders-service replicas; every orders-service replica delivers to one
    /// round-robin TCP balancer (in loadgen, at most 1,024 connections at once) in front of
    /// the notification-service replicas. Peak RSS is then reported per service as the sum
    /// and the largest over its replicas. Not for `history`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub replicas: u32,
}

impl BackendArgs {
    /// Whether these options can run `scenario`; the error says why not.
    pub fn check(&self, scenario: &str) -> Result<(), String> {
        if scenario == "history" && (self.postgres.is_some() || self.replicas > 1) {
            return Err(
                "history does not support --postgres or --replicas: its pre-fill writes the \
                 services' SQLite files directly; run it without them"
                    .to_owned(),
            );
        }
        if self.replicas > 1 && self.postgres.is_none() {
            return Err(format!(
                "--replicas {} needs --postgres <ADMIN_URL>: replicas share one database per \
                 service, and the SQLite backend is single-writer (one process per file, which \
                 replicas on other machines could not share either)",
                self.replicas
            ));
        }
        Ok(())
    }
}

/// Running services to target instead of starting them (throughput and latency only). The
/// databases are opened read-only; a SQLite file must be on loadgen's machine.
#[derive(Debug, Args)]
#[command(next_help_heading = "Running services (instead of starting them)")]
pub struct TargetArgs {
    /// Base URL of a running orders-service, e.g. `http://127.0.0.1:8000`.
    #[arg(long, requires_all = ["orders_db", "notifications_db"], conflicts_with = "postgres")]
    pub orders_url: Option<String>,
    /// Base URL of the running notification-service (checked with `/healthz`).
    #[arg(long, requires = "orders_url")]
    pub notifications_url: Option<String>,
    /// orders-service's database, e.g. `sqlite://data/orders.db` or a path, or a
    /// `postgres://` URL (read with a read-only session).
    #[arg(long, requires = "orders_url")]
    pub orders_db: Option<String>,
    /// notification-service's database, e.g. `sqlite://data/notifications.db`, a path or a
    /// `postgres://` URL.
    #[arg(long, requires = "orders_url")]
    pub notifications_db: Option<String>,
    /// orders-service's admin token; when given, loadgen first checks that an enabled
    /// endpoint will receive the events.
    #[arg(
        long,
        env = "LOADGEN_ADMIN_TOKEN",
        hide_env_values = true,
        requires = "orders_url"
    )]
    pub admin_token: Option<String>,
}

/// `baseline-server`: what the baseline child process runs.
#[derive(Debug, Args)]
pub struct BaselineServerArgs {
    /// Forwards to the counter in flight at once; further orders wait for a slot before they
    /// are answered (backpressure, like a bounded outbox).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub forward_concurrency: u64,
}

/// Parses `250ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number with a unit, e.g. 30s"))?;
    let millis = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => return Err(format!("unknown unit {other:?}; use ms, s, m or h")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Parses `KEY=VALUE` (the value may contain `=`).
pub fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains(char::is_whitespace) => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "1.5s", "-1s", "5d", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_pairs_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_env_pair("RUST_LOG=warn,orders_service=info"),
            Ok(("RUST_LOG".into(), "warn,orders_service=info".into()))
        );
        assert_eq!(parse_env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(
            parse_env_pair("EMPTY="),
            Ok(("EMPTY".into(), String::new()))
        );
        assert!(parse_env_pair("=x").is_err());
        assert!(parse_env_pair("novalue").is_err());
    }

    #[test]
    fn scenarios_have_the_issue_defaults() {
        let cli = Cli::try_parse_from(["loadgen", "throughput"]).unwrap();
        let Command::Throughput(t) = cli.command else {
            panic!("not throughput")
        };
        assert_eq!((t.orders, t.concurrency), (50_000, 64));
        assert_eq!(t.run.deadline, Duration::from_secs(300));

        let cli = Cli::try_parse_from(["loadgen", "latency"]).unwrap();
        let Command::Latency(l) = cli.command else {
            panic!("not latency")
        };
        assert_eq!((l.rate, l.duration), (1_000, Duration::from_secs(30)));

        let cli = Cli::try_parse_from(["loadgen", "backlog"]).unwrap();
        let Command::Backlog(b) = cli.command else {
            panic!("not backlog")
        };
        assert_eq!(b.orders, 200_000);

        let cli = Cli::try_parse_from(["loadgen", "history", "--prefill", "1000"]).unwrap();
        let Command::History(h) = cli.command else {
            panic!("not history")
        };
        assert_eq!((h.prefill, h.orders), (1_000, 50_000));
    }

    /// The backend options of a command line, checked as `run_with_fleet` checks them.
    fn backend(args: &[&str]) -> Result<(), String> {
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        let (scenario, run) = cli.command.scenario().unwrap();
        run.backend.check(scenario)
    }

    const PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    #[test]
    fn postgres_and_replicas_are_shared_by_the_scenarios() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "throughput",
            "--postgres",
            PG,
            "--replicas",
            "2",
            "--services-env",
            "DATABASE_MAX_CONNECTIONS=4",
        ])
        .unwrap();
        let (_, run) = cli.command.scenario().unwrap();
        assert_eq!(run.backend.postgres.as_deref(), Some(PG));
        assert_eq!(run.backend.replicas, 2);
        assert_eq!(
            run.services_env,
            [("DATABASE_MAX_CONNECTIONS".to_owned(), "4".to_owned())]
        );
        let cli = Cli::try_parse_from(["loadgen", "latency"]).unwrap();
        let (_, run) = cli.command.scenario().unwrap();
        assert_eq!(
            (run.backend.postgres.as_deref(), run.backend.replicas),
            (None, 1)
        );

        for scenario in ["throughput", "latency", "backlog"] {
            assert_eq!(backend(&["loadgen", scenario, "--postgres", PG]), Ok(()));
            assert_eq!(
                backend(&["loadgen", scenario, "--postgres", PG, "--replicas", "8"]),
                Ok(())
            );
        }
    }

    #[test]
    fn replicas_need_postgres_and_say_so() {
        let e = backend(&["loadgen", "throughput", "--replicas", "2"]).unwrap_err();
        assert!(
            e.contains("--replicas 2") && e.contains("--postgres") && e.contains("SQLite"),
            "{e}"
        );
        assert_eq!(
            backend(&["loadgen", "throughput", "--replicas", "1"]),
            Ok(())
        );
        for out_of_range in ["0", "9"] {
            assert!(backend(&["loadgen", "throughput", "--replicas", out_of_range]).is_err());
        }
    }

    #[test]
    fn history_refuses_postgres_and_replicas() {
        for args in [
            &["loadgen", "history", "--postgres", PG][..],
            &["loadgen", "history", "--postgres", PG, "--replicas", "2"][..],
            &["loadgen", "history", "--replicas", "2"][..],
        ] {
            let e = backend(args).unwrap_err();
            assert!(e.starts_with("history does not support"), "{e}");
        }
        assert_eq!(backend(&["loadgen", "history"]), Ok(()));
    }

    #[test]
    fn postgres_takes_a_postgres_url_and_no_running_target() {
        assert!(
            Cli::try_parse_from(["loadgen", "throughput", "--postgres", "sqlite://x.db"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "loadgen",
            "throughput",
            "--postgres",
            PG,
            "--orders-url",
            "http://127.0.0.1:8000",
            "--orders-db",
            "a.db",
            "--notifications-db",
            "b.db",
        ])
        .is_err());
    }

    #[test]
    fn a_target_needs_both_databases() {
        assert!(Cli::try_parse_from([
            "loadgen",
            "throughput",
            "--orders-url",
            "http://127.0.0.1:8000"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "loadgen",
            "throughput",
            "--orders-url",
            "http://127.0.0.1:8000",
            "--orders-db",
            "data/orders.db",
            "--notifications-db",
            "data/notifications.db",
        ])
        .is_ok());
    }
}
