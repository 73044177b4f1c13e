//! The scenarios, each a short sequence of named steps: start what is measured, offer the
//! load, wait for the emails, read the results, stop. Every child process belongs to one
//! [`Fleet`] that is stopped (SIGTERM, then SIGKILL) whatever happens: success, error or
//! Ctrl-C.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::time::Instant;
use uuid::Uuid;

use crate::balancer::{Balancer, BalancerStats};
use crate::cli::{
    BacklogArgs, Command, HistoryArgs, LatencyArgs, RunArgs, TargetArgs, ThroughputArgs,
};
use crate::collect::{
    count_sends, is_postgres_url, reconcile, wait_for_emails, window_start_ms, Observed, SendCheck,
    Sink,
};
use crate::driver::{unix_us, Driver, Load};
use crate::fleet::{proc_status_kib, Fleet, Monitor, Process, Spawn};
use crate::postgres::Server;
use crate::report::{fmt_count, fmt_kib, progress, Backlog, Report, RunReport};

/// How often progress lines are printed during a run.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The backlog scenario's retry schedule: a retry about every second, a hundred times (the
/// most `RETRY_SCHEDULE` accepts). While the receiver is down each pending delivery gets an
/// attempt at most every second, and far fewer once thousands are pending (the dispatcher
/// works through them a batch at a time), so it does not run out during a pile-up of any
/// realistic length; once the receiver is up, every delivery is at most about a second away.
const BACKLOG_RETRY_DELAY: &str = "1s";
const BACKLOG_RETRIES: usize = 100;
/// Settings loadgen must control itself.
const RESERVED_ENV: [&str; 2] = ["LISTEN_ADDR", "DATABASE_URL"];

/// Runs a scenario with its own fleet and temporary directory (and, with `--postgres`, its own
/// databases), prints the report, and returns whether every check passed.
pub async fn run_with_fleet(command: Command) -> anyhow::Result<bool> {
    let (scenario, run) = command
        .scenario()
        .context("baseline-server is not a scenario")?;
    run.backend.check(scenario).map_err(anyhow::Error::msg)?;
    for (key, _) in run
        .orders_env
        .iter()
        .chain(&run.notifications_env)
        .chain(&run.services_env)
    {
        if RESERVED_ENV.contains(&key.as_str()) {
            bail!("{key} is set by loadgen itself and cannot be passed through");
        }
    }
    let bin_dir = match &run.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("locating the loadgen executable")?
            .parent()
            .context("the loadgen executable has no directory")?
            .to_owned(),
    };
    let postgres = match &run.backend.postgres {
        Some(url) => Some(Server::connect(url).await?),
        None => None,
    };
    let replicas = run.backend.replicas;
    let pool_size = postgres.as_ref().map(|server| {
        let (size, note) = server.pool_size(2 * replicas);
        if let Some(note) = note {
            progress(&note);
        }
        size
    });
    let work = tempfile::Builder::new()
        .prefix("loadgen-")
        .tempdir()
        .context("creating the temporary directory")?;
    progress(&format!("working in {}", work.path().display()));
    let fleet = Fleet::new(bin_dir);
    let ctx = Ctx {
        fleet: &fleet,
        work: work.path(),
        run,
        admin_token: Uuid::new_v4().simple().to_string(),
        secret: webhook_common::Secret::generate().expose_whsec(),
        starts: AtomicU32::new(0),
        postgres: postgres.as_ref(),
        replicas,
        pool_size,
    };

    let outcome = tokio::select! {
        outcome = run_scenario(&ctx, &command) => outcome,
        () = interrupted() => Err(anyhow::anyhow!("interrupted")),
    };
    fleet.stop_all().await;
    if let Some(server) = &postgres {
        release_databases(server, run.keep).await;
    }

    let passed = outcome.as_ref().is_ok_and(Report::passed);
    if let Ok(report) = &outcome {
        report.print().context("writing the report")?;
    }
    // A failure keeps the logs (and databases) to look at; a clean run keeps them on request.
    let logs = list_logs(work.path());
    if run.keep || (!passed && !logs.is_empty()) {
        let kept = work.keep();
        progress(&format!("kept {}", kept.display()));
        if !passed {
            progress(&format!("service logs:\n  {}", logs.join("\n  ")));
        }
    }
    outcome.map(|report| report.passed())
}

/// Drops the databases created on `server`, or with `--keep` says where they are.
async fn release_databases(server: &Server, keep: bool) {
    let urls = server.created_urls();
    if urls.is_empty() {
        return;
    }
    if keep {
        progress(&format!(
            "kept the PostgreSQL databases (drop them with DROP DATABASE ... WITH (FORCE)):\n  {}",
            urls.join("\n  ")
        ));
        return;
    }
    let failures = server.drop_all().await;
    if failures.is_empty() {
        progress(&format!(
            "dropped the {} PostgreSQL databases of this run (--keep keeps them)",
            urls.len()
        ));
    }
    for failure in failures {
        progress(&format!("warning: {failure}"));
    }
}

async fn run_scenario(ctx: &Ctx<'_>, command: &Command) -> anyhow::Result<Report> {
    match command {
        Command::Throughput(args) => throughput(ctx, args).await,
        Command::Latency(args) => latency(ctx, args).await,
        Command::Backlog(args) => backlog(ctx, args).await,
        Command::History(args) => history(ctx, args).await,
        Command::BaselineServer(_) => bail!("baseline-server is not a scenario"),
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn list_logs(dir: &Path) -> Vec<String> {
    let mut logs = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                logs.push(path.display().to_string());
            }
        }
    }
    logs.sort();
    logs
}

/// What every step needs: the fleet, the temporary directory, the shared secrets and where the
/// services store their data.
struct Ctx<'a> {
    fleet: &'a Fleet,
    work: &'a Path,
    run: &'a RunArgs,
    /// Both services' admin token for this invocation.
    admin_token: String,
    /// The `whsec_` secret orders-service signs with and notification-service verifies.
    secret: String,
    /// Numbers the log files, so a restarted service gets a new one.
    starts: AtomicU32,
    /// `--postgres`: the server the databases are created on; SQLite files otherwise.
    postgres: Option<&'a Server>,
    /// Processes of each service.
    replicas: u32,
    /// `DATABASE_MAX_CONNECTIONS` of each process, on PostgreSQL.
    pool_size: Option<u32>,
}

/// What a load is offered to, and where its emails are counted.
struct Target {
    label: String,
    /// `http://addr` of each orders-service replica; the orders go round-robin.
    base_urls: Vec<String>,
    sink: Sink,
    /// The processes whose memory is reported (none for services loadgen did not start).
    processes: Vec<(String, u32)>,
    /// `sqlite`, `postgres` or `none`.
    backend: &'static str,
    /// Replicas of each service loadgen started; `None` for services it did not.
    replicas: Option<u32>,
}

/// One set of databases for one set of services, and the directory of their logs (and, on
/// SQLite, of the databases themselves).
struct Databases {
    dir: PathBuf,
    orders_url: String,
    notifications_url: String,
}

/// Every replica of both services started for one measurement, and the balancer in front of
/// the notification-service replicas when there are several.
struct Services {
    orders: Vec<Process>,
    notifications: Vec<Process>,
    balancer: Option<Balancer>,
}

impl Services {
    /// The processes to watch: label and pid, orders-service's first.
    fn processes(&self) -> Vec<(String, u32)> {
        self.orders
            .iter()
            .chain(&self.notifications)
            .map(|p| (p.label.clone(), p.pid))
            .collect()
    }

    fn orders_urls(&self) -> Vec<String> {
        self.orders.iter().map(|p| p.url().to_owned()).collect()
    }
}

impl Ctx<'_> {
    /// A fresh subdirectory of the temporary directory for logs (and SQLite databases).
    fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// A fresh set of databases, `name` telling its logs apart: SQLite files in a new
    /// directory, or two new PostgreSQL databases.
    async fn databases(&self, name: &str) -> anyhow::Result<Databases> {
        let dir = self.dir(name)?;
        match self.postgres {
            None => Ok(Databases {
                orders_url: sqlite_url(&dir.join("orders.db")),
                notifications_url: sqlite_url(&dir.join("notifications.db")),
                dir,
            }),
            Some(server) => {
                let pair = server.create_pair().await?;
                Ok(Databases {
                    dir,
                    orders_url: pair.orders_url,
                    notifications_url: pair.notifications_url,
                })
            }
        }
    }

    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str {
        if self.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    fn log_path(&self, dir: &Path, name: &str) -> PathBuf {
        let n = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        dir.join(format!("{n:02}-{name}.log"))
    }

    /// The storage settings of every service process: its database, and on PostgreSQL its
    /// pool size.
    fn storage_env(&self, database_url: &str) -> Vec<(String, String)> {
        let mut env = owned_env(&[("DATABASE_URL", database_url)]);
        if let Some(size) = self.pool_size {
            env.push(("DATABASE_MAX_CONNECTIONS".to_owned(), size.to_string()));
        }
        env
    }

    /// `env` followed by `--services-env` and then the service's own overrides.
    fn with_user_env(
        &self,
        mut env: Vec<(String, String)>,
        own: &[(String, String)],
    ) -> Vec<(String, String)> {
        env.extend(self.run.services_env.iter().cloned());
        env.extend(own.iter().cloned());
        env
    }

    /// notification-service replica `replica` (from 0) listening on `listen`.
    async fn start_notifications(
        &self,
        dbs: &Databases,
        listen: &str,
        replica: u32,
    ) -> anyhow::Result<Process> {
        let mut env = owned_env(&[
            ("LISTEN_ADDR", listen),
            ("ADMIN_TOKEN", &self.admin_token),
            ("WEBHOOK_SECRET", &self.secret),
        ]);
        env.extend(self.storage_env(&dbs.notifications_url));
        let env = self.with_user_env(env, &self.run.notifications_env);
        let label = replica_label("notification-service", replica, self.replicas);
        self.fleet
            .start(Spawn {
                program: self.fleet.binary("notification-service")?,
                args: Vec::new(),
                env,
                log: self.log_path(&dbs.dir, &label.replace('#', "-")),
                label,
                marks: vec!["listening on http://"],
                health_path: Some("/healthz"),
            })
            .await
    }

    /// orders-service replica `replica` (from 0) on port 0, delivering to `webhook_url`, with
    /// the scenario's settings and then the user's on top of loadgen's.
    async fn start_orders(
        &self,
        dbs: &Databases,
        webhook_url: &str,
        scenario_env: &[(&str, &str)],
        replica: u32,
    ) -> anyhow::Result<Process> {
        let mut env = owned_env(&[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("ADMIN_TOKEN", &self.admin_token),
            ("NOTIFICATION_WEBHOOK_URL", webhook_url),
            ("WEBHOOK_SECRET", &self.secret),
            // The receiver is on loopback, which the SSRF guard refuses by default.
            ("ALLOW_PRIVATE_WEBHOOK_TARGETS", "true"),
            // Every order comes from this one address, far faster than the per-client limit
            // of POST /orders (20/s by default) and over as many connections as there are
            // requests in flight (`-c`, `--max-in-flight`), beyond the default per-client
            // cap; the largest accepted value leaves MAX_CONNECTIONS alone in force.
            ("ORDER_RATE_LIMIT_PER_SEC", "0"),
            ("MAX_CONNECTIONS_PER_CLIENT", "100000"),
        ]);
        env.extend(self.storage_env(&dbs.orders_url));
        env.extend(owned_env(scenario_env));
        let env = self.with_user_env(env, &self.run.orders_env);
        let label = replica_label("orders-service", replica, self.replicas);
        self.fleet
            .start(Spawn {
                program: self.fleet.binary("orders-service")?,
                args: Vec::new(),
                env,
                log: self.log_path(&dbs.dir, &label.replace('#', "-")),
                label,
                marks: vec!["listening on http://"],
                health_path: Some("/healthz"),
            })
            .await
    }

    /// Every notification-service replica, one after the other (the first one migrates the
    /// database); the first one listens on `listen` when it is the only one, the others on
    /// port 0.
    async fn start_receivers(&self, dbs: &Databases, listen: &str) -> anyhow::Result<Vec<Process>> {
        let mut notifications = Vec::new();
        for replica in 0..self.replicas {
            let listen = if self.replicas == 1 {
                listen
            } else {
                "127.0.0.1:0"
            };
            notifications.push(self.start_notifications(dbs, listen, replica).await?);
        }
        Ok(notifications)
    }

    /// Where orders-service delivers: the one notification-service, or a round-robin balancer
    /// on `listen` in front of several.
    async fn receiver(
        &self,
        notifications: &[Process],
        listen: &str,
    ) -> anyhow::Result<(String, Option<Balancer>)> {
        if let [only] = notifications {
            return Ok((only.url().to_owned(), None));
        }
        let backends = notifications
            .iter()
            .map(|p| socket_addr(p.url()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let balancer = Balancer::bind(listen, backends, crate::balancer::MAX_CONNECTIONS).await?;
        Ok((format!("http://{}", balancer.addr()), Some(balancer)))
    }

    /// notification-service (every replica, behind a balancer when several), then
    /// orders-service (every replica) delivering to it; all on port 0.
    async fn start_services(&self, dbs: &Databases) -> anyhow::Result<Services> {
        let notifications = self.start_receivers(dbs, "127.0.0.1:0").await?;
        let (receiver, balancer) = self.receiver(&notifications, "127.0.0.1:0").await?;
        let webhook_url = format!("{receiver}/webhooks/orders");
        let mut orders = Vec::new();
        for replica in 0..self.replicas {
            orders.push(self.start_orders(dbs, &webhook_url, &[], replica).await?);
        }
        Ok(Services {
            orders,
            notifications,
            balancer,
        })
    }

    /// Stops every replica (orders-service's first, so nothing is sent to a stopped receiver)
    /// and the balancer; returns what the balancer did.
    async fn stop_services(&self, services: Services) -> Option<BalancerStats> {
        for process in &services.orders {
            self.stop_quietly(process).await;
        }
        let stats = services.balancer.as_ref().map(Balancer::stats);
        if let Some(balancer) = services.balancer {
            balancer.stop().await;
        }
        for process in &services.notifications {
            self.stop_quietly(process).await;
        }
        stats
    }

    /// How often each of this run's emails was sent, from the logs of every
    /// notification-service replica loadgen started (read once they have stopped, so every
    /// send is in).
    fn count_sends(&self, notifications: &[Process], observed: &Observed) -> SendCheck {
        // The last one wins, as in the child's environment: the service's own, then
        // --services-env.
        let rust_log = self
            .run
            .notifications_env
            .iter()
            .rev()
            .chain(self.run.services_env.iter().rev())
            .find(|(key, _)| key == "RUST_LOG")
            .map(|(_, value)| value.as_str());
        let logs: Vec<&Path> = notifications.iter().map(|p| p.log.as_path()).collect();
        count_sends(&logs, &observed.notifications, rust_log)
    }

    /// Stops a child; a failure to stop cleanly is worth a warning, not the measurement.
    async fn stop_quietly(&self, process: &Process) {
        if let Err(e) = self.fleet.stop(process).await {
            progress(&format!("warning: {e:#}"));
        }
    }

    /// The services on `dbs`, started, measured, stopped.
    async fn measure_services(
        &self,
        label: &str,
        load: Load,
        dbs: &Databases,
    ) -> anyhow::Result<RunReport> {
        let services = self.start_services(dbs).await?;
        let sink = Sink::services(&dbs.orders_url, &dbs.notifications_url).await?;
        let target = Target {
            label: label.to_owned(),
            base_urls: services.orders_urls(),
            sink,
            processes: services.processes(),
            backend: self.backend(),
            replicas: Some(self.replicas),
        };
        let measured = self.measure(&target, load).await;
        target.sink.close().await;
        let notifications = services.notifications.clone();
        let balancer = self.stop_services(services).await;
        let (mut report, observed) = measured?;
        report.record_sends(self.count_sends(&notifications, &observed));
        report.balancer = balancer;
        Ok(report)
    }

    /// The same load against the baseline server (a child process of this binary).
    async fn measure_baseline(&self, load: Load) -> anyhow::Result<RunReport> {
        let dir = self.dir("baseline")?;
        let server = self
            .fleet
            .start(Spawn {
                label: "baseline-server".to_owned(),
                program: std::env::current_exe().context("locating the loadgen executable")?,
                args: vec!["baseline-server".into()],
                env: Vec::new(),
                log: self.log_path(&dir, "baseline-server"),
                marks: vec![crate::baseline::FRONT_MARK, crate::baseline::COUNTER_MARK],
                health_path: None,
            })
            .await?;
        let target = Target {
            label: "baseline".to_owned(),
            base_urls: vec![server.url().to_owned()],
            sink: Sink::baseline(&server.urls[1])?,
            processes: vec![(server.label.clone(), server.pid)],
            backend: "none",
            replicas: Some(1),
        };
        let measured = self.measure(&target, load).await;
        self.stop_quietly(&server).await;
        let (mut report, _) = measured?;
        report.record_sends(SendCheck::NotPossible(
            "the baseline sends no emails".to_owned(),
        ));
        Ok(report)
    }

    /// Services someone else runs: checked, then measured; never started or stopped.
    async fn measure_running(&self, target: &TargetArgs, load: Load) -> anyhow::Result<RunReport> {
        let (Some(orders_url), Some(orders_db), Some(notifications_db)) = (
            &target.orders_url,
            &target.orders_db,
            &target.notifications_db,
        ) else {
            bail!("--orders-url needs --orders-db and --notifications-db");
        };
        let orders_url = orders_url.trim_end_matches('/');
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        for url in std::iter::once(orders_url).chain(target.notifications_url.as_deref()) {
            let health = format!("{}/healthz", url.trim_end_matches('/'));
            let status = http
                .get(&health)
                .send()
                .await
                .with_context(|| format!("GET {health}"))?
                .status();
            if !status.is_success() {
                bail!("GET {health} answered {status}");
            }
        }
        if let Some(token) = &target.admin_token {
            check_enabled_endpoint(&http, orders_url, token).await?;
        }
        let target = Target {
            label: "services".to_owned(),
            base_urls: vec![orders_url.to_owned()],
            sink: Sink::services(orders_db, notifications_db).await?,
            processes: Vec::new(),
            backend: if is_postgres_url(orders_db) {
                "postgres"
            } else {
                "sqlite"
            },
            replicas: None,
        };
        let measured = self.measure(&target, load).await;
        target.sink.close().await;
        let (mut report, _) = measured?;
        report.record_sends(SendCheck::NotPossible(
            "loadgen did not start the services, so it has no notification-service log to \
             count sends in"
                .to_owned(),
        ));
        Ok(report)
    }

    /// Offers `load` to `target`, waits for the emails and reports; also returns what was
    /// observed, for the count of sends in the service's log.
    async fn measure(&self, target: &Target, load: Load) -> anyhow::Result<(RunReport, Observed)> {
        let driver = Driver::new(&target.base_urls, &load, self.run.request_timeout)?;
        let monitor = Monitor::start(target.processes.clone(), driver.answered(), PROGRESS_EVERY);
        progress(&format!("{}: {}", target.label, load.describe()));
        let driven = driver.run(load).await?;
        let tally = driven.tally();
        let accepted: HashSet<Uuid> = tally.accepted.iter().copied().collect();
        progress(&format!(
            "{}: {} of {} orders accepted in {:.1} s; waiting for their emails",
            target.label,
            fmt_count(accepted.len() as u64),
            fmt_count(driven.samples.len() as u64),
            driven.elapsed.as_secs_f64()
        ));
        let deadline = Instant::now() + self.run.deadline;
        let since = window_start_ms(driven.started_us);
        let (observed, timed_out) = wait_for_emails(
            &target.sink,
            &accepted,
            since,
            &driver.recipient_prefix(),
            deadline,
        )
        .await?;
        let sampled = monitor.finish().await;
        let reconciled = reconcile(&accepted, &tally.acknowledged, &observed);
        let mut report = RunReport::build(
            &target.label,
            &load,
            &driven,
            &tally,
            &reconciled,
            timed_out,
            sampled,
        );
        report.set_backend(target.backend, target.replicas);
        Ok((report, observed))
    }
}

/// The label of replica `replica` (from 0) of `service`: the service's name alone when it
/// runs once, `service#n` (from 1) when several replicas run.
fn replica_label(service: &str, replica: u32, replicas: u32) -> String {
    if replicas > 1 {
        format!("{service}#{}", replica + 1)
    } else {
        service.to_owned()
    }
}

/// The socket address of `http://addr`.
fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let addr = url.strip_prefix("http://").unwrap_or(url);
    addr.parse()
        .with_context(|| format!("{url} is not http://<ip>:<port>"))
}

/// Fails unless orders-service has an enabled endpoint (else no email would ever come).
async fn check_enabled_endpoint(
    http: &reqwest::Client,
    orders_url: &str,
    token: &str,
) -> anyhow::Result<()> {
    let url = format!("{orders_url}/endpoints?limit=100");
    let response = http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("GET {url} answered {}", response.status());
    }
    let page: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    let enabled = page["items"]
        .as_array()
        .is_some_and(|items| items.iter().any(|e| e["enabled"] == true));
    if !enabled {
        bail!("orders-service at {orders_url} has no enabled endpoint: no webhook would be sent");
    }
    Ok(())
}

fn owned_env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

async fn throughput(ctx: &Ctx<'_>, args: &ThroughputArgs) -> anyhow::Result<Report> {
    let load = Load::Closed {
        orders: args.orders,
        concurrency: args.concurrency,
    };
    compare_with_baseline(ctx, "throughput", load, args.baseline, &args.target).await
}

async fn latency(ctx: &Ctx<'_>, args: &LatencyArgs) -> anyhow::Result<Report> {
    let load = Load::Open {
        rate: args.rate,
        duration: args.duration,
        max_in_flight: args.max_in_flight,
    };
    compare_with_baseline(ctx, "latency", load, args.baseline, &args.target).await
}

/// The baseline (if asked for), then the services (started here or running).
async fn compare_with_baseline(
    ctx: &Ctx<'_>,
    scenario: &'static str,
    load: Load,
    baseline: bool,
    target: &TargetArgs,
) -> anyhow::Result<Report> {
    let mut references = Vec::new();
    if baseline {
        references.push(ctx.measure_baseline(load).await?);
    }
    let main = if target.orders_url.is_some() {
        ctx.measure_running(target, load).await?
    } else {
        ctx.measure_services("services", load, &ctx.databases("services").await?)
            .await?
    };
    Ok(Report {
        scenario,
        main,
        references,
    })
}

async fn backlog(ctx: &Ctx<'_>, args: &BacklogArgs) -> anyhow::Result<Report> {
    let load = Load::Closed {
        orders: args.orders,
        concurrency: args.concurrency,
    };
    let mut references = Vec::new();
    if args.compare {
        references.push(
            ctx.measure_services("throughput", load, &ctx.databases("throughput").await?)
                .await?,
        );
    }
    let dbs = ctx.databases("backlog").await?;
    // The receiver's address, where nothing listens yet: the notification-service, or the
    // balancer in front of its replicas.
    let port = reserve_port()?;
    let listen = format!("127.0.0.1:{port}");
    let schedule = vec![BACKLOG_RETRY_DELAY; BACKLOG_RETRIES].join(",");
    let mut orders = Vec::new();
    for replica in 0..ctx.replicas {
        orders.push(
            ctx.start_orders(
                &dbs,
                &format!("http://{listen}/webhooks/orders"),
                &[("RETRY_SCHEDULE", &schedule)],
                replica,
            )
            .await?,
        );
    }
    let orders_processes: Vec<(String, u32)> =
        orders.iter().map(|p| (p.label.clone(), p.pid)).collect();

    // Step 1: the orders pile up while nothing listens on the receiver's port.
    let orders_urls: Vec<String> = orders.iter().map(|p| p.url().to_owned()).collect();
    let driver = Driver::new(&orders_urls, &load, ctx.run.request_timeout)?;
    let pileup_monitor =
        Monitor::start(orders_processes.clone(), driver.answered(), PROGRESS_EVERY);
    progress(&format!("backlog: receiver down; {}", load.describe()));
    let driven = driver.run(load).await?;
    let tally = driven.tally();
    let accepted: HashSet<Uuid> = tally.accepted.iter().copied().collect();
    // Per process (the figure the memory target is about): the largest replica's.
    let peak_during = pileup_monitor
        .finish()
        .await
        .peak_rss
        .into_iter()
        .map(|(_, kib)| kib)
        .max();
    let rss_after = orders
        .iter()
        .filter_map(|p| proc_status_kib(p.pid, "VmRSS"))
        .max();
    progress(&format!(
        "backlog: {} orders piled up in {:.1} s; orders-service RSS {} (peak {}){}; starting \
         notification-service",
        fmt_count(accepted.len() as u64),
        driven.elapsed.as_secs_f64(),
        rss_after.map_or("n/a".into(), fmt_kib),
        peak_during.map_or("n/a".into(), fmt_kib),
        if ctx.replicas > 1 {
            " in the largest replica"
        } else {
            ""
        },
    ));

    // Step 2: the receiver starts; the drain is timed from here to the last email.
    let receiver_started_us = unix_us();
    let started = async {
        let notifications = ctx.start_receivers(&dbs, &listen).await?;
        let (_, balancer) = ctx.receiver(&notifications, &listen).await?;
        anyhow::Ok((notifications, balancer))
    };
    let (notifications, balancer) = started.await.context(
        "starting the receiver on the reserved port (if another process took the port in the \
         meantime, run again)",
    )?;
    let services = Services {
        orders,
        notifications,
        balancer,
    };
    let sink = Sink::services(&dbs.orders_url, &dbs.notifications_url).await?;
    let drain_monitor = Monitor::start(services.processes(), driver.answered(), PROGRESS_EVERY);
    let deadline = Instant::now() + ctx.run.deadline;
    let since = window_start_ms(driven.started_us);
    let waited = wait_for_emails(
        &sink,
        &accepted,
        since,
        &driver.recipient_prefix(),
        deadline,
    )
    .await;
    let sampled = drain_monitor.finish().await;
    sink.close().await;
    let (observed, timed_out) = waited?;
    let notifications = services.notifications.clone();
    let balancer = ctx.stop_services(services).await;

    let reconciled = reconcile(&accepted, &tally.acknowledged, &observed);
    let mut main = RunReport::build(
        "backlog",
        &load,
        &driven,
        &tally,
        &reconciled,
        timed_out,
        sampled,
    );
    main.set_backend(ctx.backend(), Some(ctx.replicas));
    main.record_sends(ctx.count_sends(&notifications, &observed));
    main.balancer = balancer;
    let drain = reconciled
        .last_sent_us
        .map(|last| Duration::from_micros(u64::try_from(last - receiver_started_us).unwrap_or(0)));
    main.backlog = Some(Backlog {
        pileup_s: driven.elapsed.as_secs_f64(),
        orders_rss_kib_after_pileup: rss_after,
        orders_peak_rss_kib_during_pileup: peak_during,
        drain_s: drain.map(|d| d.as_secs_f64()),
        drain_emails_per_s: drain.and_then(|d| crate::stats::per_second(reconciled.emails_sent, d)),
    });
    Ok(Report {
        scenario: "backlog",
        main,
        references,
    })
}

/// A port nothing listens on right now, for a receiver that must be addressed before it
/// starts. The port is released at once, so another process could take it before
/// notification-service (or the balancer) binds it: a small race, acceptable for a benchmark
/// (that start then fails with a clear message).
fn reserve_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("reserving a port")?;
    Ok(listener.local_addr()?.port())
}

/// History: SQLite only (the pre-fill writes the files directly); `run_with_fleet` refuses
/// `--postgres` and `--replicas` for it.
async fn history(ctx: &Ctx<'_>, args: &HistoryArgs) -> anyhow::Result<Report> {
    let load = Load::Closed {
        orders: args.orders,
        concurrency: args.concurrency,
    };
    let mut references = Vec::new();
    if args.baseline {
        references.push(ctx.measure_baseline(load).await?);
    }
    if !args.skip_empty {
        references.push(
            ctx.measure_services("empty_db", load, &ctx.databases("empty").await?)
                .await?,
        );
    }

    // A first start creates the schema (migrations) and the configured endpoint.
    let dbs = ctx.databases("history").await?;
    let services = ctx.start_services(&dbs).await?;
    for process in services.orders.iter().chain(&services.notifications) {
        ctx.fleet.stop(process).await?;
    }

    progress(&format!(
        "history: pre-filling {} delivered orders",
        fmt_count(args.prefill)
    ));
    let started = Instant::now();
    crate::prefill::prefill(
        &dbs.dir.join("orders.db"),
        &dbs.dir.join("notifications.db"),
        args.prefill,
    )
    .await?;
    progress(&format!(
        "history: pre-filled in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let main = ctx.measure_services("history", load, &dbs).await?;
    Ok(Report {
        scenario: "history",
        main,
        references,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_labelled_only_when_there_are_several() {
        assert_eq!(replica_label("orders-service", 0, 1), "orders-service");
        assert_eq!(replica_label("orders-service", 0, 2), "orders-service#1");
        assert_eq!(
            replica_label("notification-service", 7, 8),
            "notification-service#8"
        );
        assert_eq!(
            crate::report::service_of(&replica_label("orders-service", 1, 2)),
            "orders-service"
        );
    }

    #[test]
    fn receivers_are_addressed_by_their_url() {
        assert_eq!(
            socket_addr("http://127.0.0.1:8001").unwrap(),
            "127.0.0.1:8001".parse::<SocketAddr>().unwrap()
        );
        assert!(socket_addr("http://localhost:8001").is_err());
    }
}
