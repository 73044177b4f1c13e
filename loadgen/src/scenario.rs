//! The scenarios, each a short sequence of named steps: start what is measured, offer the
//! load, wait for the emails, read the results, stop. Every child process belongs to one
//! [`Fleet`] that is stopped (SIGTERM, then SIGKILL) whatever happens: success, error or
//! Ctrl-C.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::time::Instant;
use uuid::Uuid;

use crate::cli::{
    BacklogArgs, Command, HistoryArgs, LatencyArgs, RunArgs, TargetArgs, ThroughputArgs,
};
use crate::collect::{
    count_sends, reconcile, wait_for_emails, window_start_ms, Observed, SendCheck, Sink,
};
use crate::driver::{unix_us, Driver, Load};
use crate::fleet::{proc_status_kib, Fleet, Monitor, Process, Spawn};
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

/// Runs a scenario with its own fleet and temporary directory, prints the report, and returns
/// whether every check passed.
pub async fn run_with_fleet(command: Command) -> anyhow::Result<bool> {
    let run = match &command {
        Command::Throughput(a) => &a.run,
        Command::Latency(a) => &a.run,
        Command::Backlog(a) => &a.run,
        Command::History(a) => &a.run,
        Command::BaselineServer(_) => bail!("baseline-server is not a scenario"),
    };
    for (key, _) in run.orders_env.iter().chain(&run.notifications_env) {
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
    };

    let outcome = tokio::select! {
        outcome = run_scenario(&ctx, &command) => outcome,
        () = interrupted() => Err(anyhow::anyhow!("interrupted")),
    };
    fleet.stop_all().await;

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

/// What every step needs: the fleet, the temporary directory and the shared secrets.
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
}

/// What a load is offered to, and where its emails are counted.
struct Target {
    label: String,
    base_url: String,
    sink: Sink,
    /// The processes whose memory is reported (none for services loadgen did not start).
    processes: Vec<(String, u32)>,
}

impl Ctx<'_> {
    /// A fresh subdirectory of the temporary directory for one set of databases.
    fn dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    fn log_path(&self, dir: &Path, name: &str) -> PathBuf {
        let n = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        dir.join(format!("{n:02}-{name}.log"))
    }

    async fn start_notifications(&self, dir: &Path, listen: &str) -> anyhow::Result<Process> {
        let database_url = sqlite_url(&dir.join("notifications.db"));
        let mut env = owned_env(&[
            ("LISTEN_ADDR", listen),
            ("DATABASE_URL", &database_url),
            ("ADMIN_TOKEN", &self.admin_token),
            ("WEBHOOK_SECRET", &self.secret),
        ]);
        env.extend(self.run.notifications_env.iter().cloned());
        self.fleet
            .start(Spawn {
                label: "notification-service".to_owned(),
                program: self.fleet.binary("notification-service")?,
                args: Vec::new(),
                env,
                log: self.log_path(dir, "notification-service"),
                marks: vec!["listening on http://"],
                health_path: Some("/healthz"),
            })
            .await
    }

    /// orders-service on port 0, delivering to `webhook_url`, with the scenario's settings
    /// and then the user's on top of loadgen's.
    async fn start_orders(
        &self,
        dir: &Path,
        webhook_url: &str,
        scenario_env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let database_url = sqlite_url(&dir.join("orders.db"));
        let mut env = owned_env(&[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", &database_url),
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
        env.extend(owned_env(scenario_env));
        env.extend(self.run.orders_env.iter().cloned());
        self.fleet
            .start(Spawn {
                label: "orders-service".to_owned(),
                program: self.fleet.binary("orders-service")?,
                args: Vec::new(),
                env,
                log: self.log_path(dir, "orders-service"),
                marks: vec!["listening on http://"],
                health_path: Some("/healthz"),
            })
            .await
    }

    /// notification-service, then orders-service pointing at it; both on port 0.
    async fn start_pair(&self, dir: &Path) -> anyhow::Result<(Process, Process)> {
        let notifications = self.start_notifications(dir, "127.0.0.1:0").await?;
        let webhook_url = format!("{}/webhooks/orders", notifications.url());
        let orders = self.start_orders(dir, &webhook_url, &[]).await?;
        Ok((notifications, orders))
    }

    /// How often each of this run's emails was sent, from the log of a notification-service
    /// loadgen started (read once it has stopped, so every send is in).
    fn count_sends(&self, notifications: &Process, observed: &Observed) -> SendCheck {
        // The last one wins, as in the child's environment.
        let rust_log = self
            .run
            .notifications_env
            .iter()
            .rev()
            .find(|(key, _)| key == "RUST_LOG")
            .map(|(_, value)| value.as_str());
        count_sends(&notifications.log, &observed.notifications, rust_log)
    }

    /// Stops a child; a failure to stop cleanly is worth a warning, not the measurement.
    async fn stop_quietly(&self, process: &Process) {
        if let Err(e) = self.fleet.stop(process).await {
            progress(&format!("warning: {e:#}"));
        }
    }

    /// The services on the databases in `dir` (created if new), started, measured, stopped.
    async fn measure_services(
        &self,
        label: &str,
        load: Load,
        dir: &Path,
    ) -> anyhow::Result<RunReport> {
        let (notifications, orders) = self.start_pair(dir).await?;
        let sink = Sink::services(
            &sqlite_url(&dir.join("orders.db")),
            &sqlite_url(&dir.join("notifications.db")),
        )
        .await?;
        let target = Target {
            label: label.to_owned(),
            base_url: orders.url().to_owned(),
            sink,
            processes: vec![
                (orders.label.clone(), orders.pid),
                (notifications.label.clone(), notifications.pid),
            ],
        };
        let measured = self.measure(&target, load).await;
        target.sink.close().await;
        self.stop_quietly(&orders).await;
        self.stop_quietly(&notifications).await;
        let (mut report, observed) = measured?;
        report.record_sends(self.count_sends(&notifications, &observed));
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
            base_url: server.url().to_owned(),
            sink: Sink::baseline(&server.urls[1])?,
            processes: vec![(server.label.clone(), server.pid)],
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
            base_url: orders_url.to_owned(),
            sink: Sink::services(orders_db, notifications_db).await?,
            processes: Vec::new(),
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
        let driver = Driver::new(&target.base_url, &load, self.run.request_timeout)?;
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
        let peak_rss = monitor.finish().await;
        let reconciled = reconcile(&accepted, &tally.acknowledged, &observed);
        let report = RunReport::build(
            &target.label,
            &load,
            &driven,
            &tally,
            &reconciled,
            timed_out,
            peak_rss,
        );
        Ok((report, observed))
    }
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
        ctx.measure_services("services", load, &ctx.dir("services")?)
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
            ctx.measure_services("throughput", load, &ctx.dir("throughput")?)
                .await?,
        );
    }
    let dir = ctx.dir("backlog")?;
    let port = reserve_port()?;
    let listen = format!("127.0.0.1:{port}");
    let schedule = vec![BACKLOG_RETRY_DELAY; BACKLOG_RETRIES].join(",");
    let orders = ctx
        .start_orders(
            &dir,
            &format!("http://{listen}/webhooks/orders"),
            &[("RETRY_SCHEDULE", &schedule)],
        )
        .await?;

    // Step 1: the orders pile up while nothing listens on the receiver's port.
    let driver = Driver::new(orders.url(), &load, ctx.run.request_timeout)?;
    let pileup_monitor = Monitor::start(
        vec![(orders.label.clone(), orders.pid)],
        driver.answered(),
        PROGRESS_EVERY,
    );
    progress(&format!("backlog: receiver down; {}", load.describe()));
    let driven = driver.run(load).await?;
    let tally = driven.tally();
    let accepted: HashSet<Uuid> = tally.accepted.iter().copied().collect();
    let peak_during = pileup_monitor.finish().await.first().map(|(_, kib)| *kib);
    let rss_after = proc_status_kib(orders.pid, "VmRSS");
    progress(&format!(
        "backlog: {} orders piled up in {:.1} s; orders-service RSS {} (peak {}); starting \
         notification-service",
        fmt_count(accepted.len() as u64),
        driven.elapsed.as_secs_f64(),
        rss_after.map_or("n/a".into(), fmt_kib),
        peak_during.map_or("n/a".into(), fmt_kib),
    ));

    // Step 2: the receiver starts; the drain is timed from here to the last email.
    let receiver_started_us = unix_us();
    let notifications = ctx.start_notifications(&dir, &listen).await.context(
        "starting notification-service on the reserved port (if another process took the \
         port in the meantime, run again)",
    )?;
    let sink = Sink::services(
        &sqlite_url(&dir.join("orders.db")),
        &sqlite_url(&dir.join("notifications.db")),
    )
    .await?;
    let drain_monitor = Monitor::start(
        vec![
            (orders.label.clone(), orders.pid),
            (notifications.label.clone(), notifications.pid),
        ],
        driver.answered(),
        PROGRESS_EVERY,
    );
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
    let peak_rss = drain_monitor.finish().await;
    sink.close().await;
    let (observed, timed_out) = waited?;
    ctx.stop_quietly(&orders).await;
    ctx.stop_quietly(&notifications).await;

    let reconciled = reconcile(&accepted, &tally.acknowledged, &observed);
    let mut main = RunReport::build(
        "backlog",
        &load,
        &driven,
        &tally,
        &reconciled,
        timed_out,
        peak_rss,
    );
    main.record_sends(ctx.count_sends(&notifications, &observed));
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
/// notification-service binds it: a small race, acceptable for a benchmark (that start then
/// fails with a clear message).
fn reserve_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("reserving a port")?;
    Ok(listener.local_addr()?.port())
}

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
            ctx.measure_services("empty_db", load, &ctx.dir("empty")?)
                .await?,
        );
    }

    // A first start creates the schema (migrations) and the configured endpoint.
    let dir = ctx.dir("history")?;
    let (notifications, orders) = ctx.start_pair(&dir).await?;
    ctx.fleet.stop(&orders).await?;
    ctx.fleet.stop(&notifications).await?;

    progress(&format!(
        "history: pre-filling {} delivered orders",
        fmt_count(args.prefill)
    ));
    let started = Instant::now();
    crate::prefill::prefill(
        &dir.join("orders.db"),
        &dir.join("notifications.db"),
        args.prefill,
    )
    .await?;
    progress(&format!(
        "history: pre-filled in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let main = ctx.measure_services("history", load, &dir).await?;
    Ok(Report {
        scenario: "history",
        main,
        references,
    })
}
