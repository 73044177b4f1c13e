//! What a run found, as a human-readable table on stdout followed by exactly ONE line of JSON
//! (the last line, nothing before it on that line, so `loadgen ... | tail -1 | jq` works).
//! Progress goes to stderr.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::collect::{Reconciled, SendCheck};
use crate::driver::{Driven, Load, Tally};
use crate::fleet::Sampled;
use crate::stats::{micros_per, per_second, ratio, Percentiles};

/// End-to-end latency legs, from the services' own timestamps.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EndToEnd {
    /// Order created → webhook accepted by notification-service.
    pub created_to_received: Option<Percentiles>,
    /// Webhook accepted → email sent.
    pub received_to_sent: Option<Percentiles>,
    /// Order created → email sent.
    pub created_to_sent: Option<Percentiles>,
}

/// The backlog scenario's own figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Backlog {
    /// How long the orders took to pile up, seconds.
    pub pileup_s: f64,
    /// orders-service's RSS when the pile-up ended, KiB (the largest replica's).
    pub orders_rss_kib_after_pileup: Option<u64>,
    /// orders-service's peak RSS during the pile-up, KiB (the largest replica's).
    pub orders_peak_rss_kib_during_pileup: Option<u64>,
    /// From the receiver's start to the last email, seconds.
    pub drain_s: Option<f64>,
    /// Emails sent per second from the receiver's start to the last email.
    pub drain_emails_per_s: Option<f64>,
}

/// One run of one load against one target.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunReport {
    /// `services`, `baseline`, `empty_db`, `throughput`.
    pub label: String,
    /// The load, in words.
    pub load: String,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests sent.
    pub sent: u64,
    /// Orders accepted (2xx with an id).
    pub accepted: u64,
    /// Open loop: requests due while the in-flight limit was reached, never sent. Must be
    /// 0: their latency (a stall's) is missing from the percentiles.
    pub not_sent_on_schedule: u64,
    /// Accepted orders per second, first send to last answer.
    pub orders_accepted_per_s: Option<f64>,
    /// `POST /orders` latency (open loop: from the scheduled send time).
    pub api_latency_ms: Option<Percentiles>,
    /// End-to-end latency legs.
    pub e2e_ms: EndToEnd,
    /// Accepted orders whose email was sent.
    pub emails_sent: u64,
    /// Emails sent per second, from the first order to the last email.
    pub emails_sent_per_s: Option<f64>,
    /// Accepted orders without a sent email. Must be 0.
    pub lost: u64,
    /// Notifications beyond the first per request (or per accepted order), plus this run's
    /// notifications of no known request. Must be 0.
    pub duplicated: u64,
    /// Requests answered with no 2xx whose order was committed anyway and its email sent
    /// (the client timed out or lost the connection first). Not a failure by itself.
    pub delivered_unacknowledged: u64,
    /// Sends beyond the first per email, counted in notification-service's log (one line per
    /// simulated send), which shows what the notifications table (one row per webhook) cannot.
    /// `null` when the log could not tell: see `duplicated_sends_unchecked`. Must be 0.
    pub duplicated_sends: Option<u64>,
    /// Emails sent more than once, from the same log; `null` as `duplicated_sends`.
    pub emails_sent_more_than_once: Option<u64>,
    /// Why `duplicated_sends` is `null`: services loadgen did not start, a RUST_LOG that hides
    /// the mailer's lines, the baseline…
    pub duplicated_sends_unchecked: Option<String>,
    /// Non-2xx answers by status code. Must be empty.
    pub non_2xx: BTreeMap<String, u64>,
    /// 2xx answers without an order id.
    pub invalid_answers: u64,
    /// Requests without an HTTP answer (refused, reset, timed out).
    pub transport_errors: u64,
    /// Whether the deadline passed before every email was sent.
    pub timed_out: bool,
    /// Peak RSS (`VmHWM`) of each service, KiB: with several replicas, the sum of each
    /// replica's peak (see `peak_rss_max_kib`). Empty for services loadgen did not start.
    pub peak_rss_kib: BTreeMap<String, u64>,
    /// The largest replica's peak RSS of each service, KiB (with one replica, the same as
    /// `peak_rss_kib`).
    pub peak_rss_max_kib: BTreeMap<String, u64>,
    /// Peak RSS of each process, KiB, by process (`orders-service#2` with several replicas).
    pub peak_rss_kib_by_process: BTreeMap<String, u64>,
    /// CPU time each process spent during the run, ms, by process, loadgen's own as
    /// `loadgen`: from the first order to the last email (backlog: from the receiver's start).
    /// Only loadgen's for services loadgen did not start.
    pub cpu_ms_by_process: BTreeMap<String, f64>,
    /// CPU time per email sent, µs, by service (replicas summed) and `loadgen`.
    pub cpu_us_per_email: BTreeMap<String, f64>,
    /// The whole machine's busy CPU time per email sent, µs, over the same window: every
    /// process that ran meanwhile, PostgreSQL's backends included. On a noisy machine this
    /// moves much less than the rate, so it is the figure that tells whether the work got
    /// cheaper.
    pub machine_cpu_us_per_email: Option<f64>,
    /// The share of the machine's CPU time that was busy over the same window, 0 to 1: well
    /// below 1, the run was bound by waiting (fsync, concurrency), not by the cores.
    pub machine_busy_share: Option<f64>,
    /// Where the services stored their data: `sqlite`, `postgres`, or `none` (the baseline).
    pub backend: String,
    /// Replicas of each service loadgen started; `null` for services it did not start.
    pub replicas: Option<u32>,
    /// With several notification-service replicas: the webhook connections the balancer
    /// gave each replica, and those no replica accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balancer: Option<crate::balancer::BalancerStats>,
    /// The backlog scenario's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<Backlog>,
}

impl RunReport {
    /// Puts together what the driver, the databases and `/proc` said.
    pub fn build(
        label: &str,
        load: &Load,
        driven: &Driven,
        tally: &Tally,
        reconciled: &Reconciled,
        timed_out: bool,
        sampled: Sampled,
    ) -> RunReport {
        let Sampled { peak_rss, cpu } = sampled;
        let accepted = tally.accepted.len() as u64;
        let emails_span = reconciled.last_sent_us.map(|last| {
            Duration::from_micros(u64::try_from(last - driven.started_us).unwrap_or(0))
        });
        RunReport {
            label: label.to_owned(),
            load: load.describe(),
            scheduled: load.scheduled(),
            sent: driven.samples.len() as u64,
            accepted,
            not_sent_on_schedule: driven.not_sent_on_schedule,
            orders_accepted_per_s: per_second(accepted, driven.elapsed),
            api_latency_ms: Percentiles::of_micros(driven.samples.iter().map(|s| s.latency_us)),
            e2e_ms: EndToEnd {
                created_to_received: Percentiles::of_micros(
                    reconciled.created_to_received_us.iter().copied(),
                ),
                received_to_sent: Percentiles::of_micros(
                    reconciled.received_to_sent_us.iter().copied(),
                ),
                created_to_sent: Percentiles::of_micros(
                    reconciled.created_to_sent_us.iter().copied(),
                ),
            },
            emails_sent: reconciled.emails_sent,
            emails_sent_per_s: emails_span.and_then(|d| per_second(reconciled.emails_sent, d)),
            lost: reconciled.lost,
            duplicated: reconciled.duplicated,
            delivered_unacknowledged: reconciled.delivered_unacknowledged,
            duplicated_sends: None,
            emails_sent_more_than_once: None,
            duplicated_sends_unchecked: Some("not checked".to_owned()),
            non_2xx: tally
                .non_2xx
                .iter()
                .map(|(code, n)| (code.to_string(), *n))
                .collect(),
            invalid_answers: tally.invalid,
            transport_errors: tally.transport_errors,
            timed_out,
            peak_rss_kib: rss_per_service(&peak_rss, |kib| kib.iter().sum()),
            peak_rss_max_kib: rss_per_service(&peak_rss, |kib| {
                kib.iter().copied().max().unwrap_or(0)
            }),
            peak_rss_kib_by_process: peak_rss.into_iter().collect(),
            cpu_ms_by_process: cpu
                .by_process
                .iter()
                .filter_map(|(process, spent)| Some((process.clone(), ms(*spent.as_ref()?))))
                .collect(),
            cpu_us_per_email: cpu_per_email(&cpu.by_process, reconciled.emails_sent),
            machine_cpu_us_per_email: cpu
                .machine
                .and_then(|m| micros_per(m.busy, reconciled.emails_sent)),
            machine_busy_share: cpu.machine.and_then(|m| m.busy_share()),
            backlog: None,
            ..RunReport::default()
        }
    }

    /// Says where the services stored their data and how many replicas of each ran.
    pub fn set_backend(&mut self, backend: &str, replicas: Option<u32>) {
        self.backend = backend.to_owned();
        self.replicas = replicas;
    }

    /// Replicas of `service` measured, from the processes' labels.
    fn replicas_of(&self, service: &str) -> usize {
        self.peak_rss_kib_by_process
            .keys()
            .filter(|process| service_of(process) == service)
            .count()
    }

    /// The backend and replicas in words, e.g. `PostgreSQL, 2 replicas of each service`.
    pub fn describe_backend(&self) -> String {
        let backend = match self.backend.as_str() {
            "sqlite" => "SQLite",
            "postgres" => "PostgreSQL",
            "none" => "no storage",
            other => other,
        };
        match self.replicas {
            Some(1) => format!("{backend}, 1 replica of each service"),
            Some(n) => format!("{backend}, {n} replicas of each service"),
            None => format!("{backend}, services loadgen did not start"),
        }
    }

    /// Records what notification-service's log says about repeated sends.
    pub fn record_sends(&mut self, check: SendCheck) {
        match check {
            SendCheck::Counted {
                extra_sends,
                repeated_emails,
            } => {
                self.duplicated_sends = Some(extra_sends);
                self.emails_sent_more_than_once = Some(repeated_emails);
                self.duplicated_sends_unchecked = None;
            }
            SendCheck::NotPossible(why) => {
                self.duplicated_sends = None;
                self.emails_sent_more_than_once = None;
                self.duplicated_sends_unchecked = Some(why);
            }
        }
    }

    /// Whether the run passed every check: nothing lost or duplicated (in the database or in
    /// the service's log), every answer a 2xx with an id, every request sent on schedule, and
    /// every email in before the deadline.
    pub fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// What failed, in words.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.lost > 0 {
            failures.push(format!("{} lost emails", fmt_count(self.lost)));
        }
        if self.duplicated > 0 {
            failures.push(format!("{} duplicated emails", fmt_count(self.duplicated)));
        }
        if let Some(extra) = self.duplicated_sends.filter(|n| *n > 0) {
            failures.push(format!(
                "{} duplicated sends ({} emails sent more than once, per notification-service's \
                 log)",
                fmt_count(extra),
                fmt_count(self.emails_sent_more_than_once.unwrap_or(0))
            ));
        }
        if self.not_sent_on_schedule > 0 {
            failures.push(format!(
                "{} requests could not be sent on schedule (more than --max-in-flight \
                 outstanding): the latency figures leave out a stall; raise --max-in-flight or \
                 lower --rate",
                fmt_count(self.not_sent_on_schedule)
            ));
        }
        if !self.non_2xx.is_empty() {
            failures.push(format!("non-2xx answers ({})", fmt_statuses(&self.non_2xx)));
        }
        if self.invalid_answers > 0 {
            failures.push(format!(
                "{} answers without an order id",
                fmt_count(self.invalid_answers)
            ));
        }
        if self.transport_errors > 0 {
            failures.push(format!(
                "{} transport errors",
                fmt_count(self.transport_errors)
            ));
        }
        if self.timed_out {
            failures.push("the deadline passed before every email was sent".to_owned());
        }
        failures
    }

    /// The figures compared across runs, in table order: (JSON key, label, unit, value).
    fn metrics(&self) -> Vec<Metric> {
        let mut metrics = vec![Metric::new(
            "orders_accepted_per_s",
            "orders accepted/s".into(),
            Unit::Rate,
            self.orders_accepted_per_s,
        )];
        let mut latency = |key: &str, label: &str, p: &Option<Percentiles>| {
            for (i, name) in Percentiles::NAMES.iter().enumerate() {
                metrics.push(Metric::new(
                    &format!("{key}.{}", name.replace('.', "")),
                    format!("{label} {name}"),
                    Unit::Ms,
                    p.map(|p| p.named()[i].1),
                ));
            }
        };
        latency("api_latency_ms", "API latency", &self.api_latency_ms);
        latency(
            "e2e_ms.created_to_received",
            "created → webhook accepted",
            &self.e2e_ms.created_to_received,
        );
        latency(
            "e2e_ms.received_to_sent",
            "webhook accepted → email sent",
            &self.e2e_ms.received_to_sent,
        );
        latency(
            "e2e_ms.created_to_sent",
            "created → email sent",
            &self.e2e_ms.created_to_sent,
        );
        metrics.push(Metric::new(
            "emails_sent_per_s",
            "emails sent/s".into(),
            Unit::Rate,
            self.emails_sent_per_s,
        ));
        if let Some(backlog) = &self.backlog {
            let mut drain = Metric::new(
                "backlog.drain_emails_per_s",
                "drain: emails sent/s".into(),
                Unit::Rate,
                backlog.drain_emails_per_s,
            );
            // A run without a backlog is compared by its steady rate.
            drain.fallback = Some("emails_sent_per_s");
            metrics.push(drain);
        }
        for (service, kib) in &self.peak_rss_kib {
            let replicas = self.replicas_of(service);
            let label = if replicas > 1 {
                format!("peak RSS {service} (sum of {replicas} replicas)")
            } else {
                format!("peak RSS {service}")
            };
            metrics.push(Metric::new(
                &format!("peak_rss_kib.{service}"),
                label,
                Unit::KiB,
                Some(*kib as f64),
            ));
            if replicas > 1 {
                metrics.push(Metric::new(
                    &format!("peak_rss_max_kib.{service}"),
                    format!("peak RSS {service} (largest replica)"),
                    Unit::KiB,
                    self.peak_rss_max_kib.get(service).map(|kib| *kib as f64),
                ));
            }
        }
        metrics.push(Metric::new(
            "machine_cpu_us_per_email",
            "CPU per email, whole machine".into(),
            Unit::Us,
            self.machine_cpu_us_per_email,
        ));
        for (service, us) in &self.cpu_us_per_email {
            metrics.push(Metric::new(
                &format!("cpu_us_per_email.{service}"),
                format!("CPU per email, {service}"),
                Unit::Us,
                Some(*us),
            ));
        }
        metrics.push(Metric::new(
            "machine_busy_share",
            "machine busy".into(),
            Unit::Share,
            self.machine_busy_share,
        ));
        if !self.peak_rss_kib.is_empty() {
            // The one memory figure comparable across targets with different processes.
            metrics.push(Metric::new(
                "peak_rss_kib.total",
                "peak RSS, all processes".into(),
                Unit::KiB,
                Some(self.peak_rss_kib.values().sum::<u64>() as f64),
            ));
        }
        metrics
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    Rate,
    Ms,
    /// Microseconds (of CPU time).
    Us,
    /// A share, 0 to 1, shown as a percentage.
    Share,
    KiB,
}

#[derive(Debug, Clone, PartialEq)]
struct Metric {
    key: String,
    /// Key to compare with in a run that lacks `key`.
    fallback: Option<&'static str>,
    label: String,
    unit: Unit,
    value: Option<f64>,
}

impl Metric {
    fn new(key: &str, label: String, unit: Unit, value: Option<f64>) -> Metric {
        Metric {
            key: key.to_owned(),
            fallback: None,
            label,
            unit,
            value,
        }
    }

    /// The same figure in another run's metrics.
    fn counterpart<'m>(&self, theirs: &'m [Metric]) -> Option<&'m Metric> {
        theirs.iter().find(|t| t.key == self.key).or_else(|| {
            let fallback = self.fallback?;
            theirs.iter().find(|t| t.key == fallback)
        })
    }

    fn show(&self, value: Option<f64>) -> String {
        match (value, self.unit) {
            (None, _) => "n/a".to_owned(),
            (Some(v), Unit::Rate) => fmt_rate(v),
            (Some(v), Unit::Ms) => format!("{} ms", fmt_ms(v)),
            (Some(v), Unit::Us) => format!("{} µs", fmt_ms(v)),
            (Some(v), Unit::Share) => format!("{:.0} %", v * 100.0),
            (Some(v), Unit::KiB) => fmt_kib(v as u64),
        }
    }
}

/// A whole invocation: the scenario's main run and the runs it is compared with.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `throughput`, `latency`, `backlog` or `history`.
    pub scenario: &'static str,
    /// The run the scenario is about.
    pub main: RunReport,
    /// Runs to compare it with (baseline, empty database, throughput), each by its label.
    pub references: Vec<RunReport>,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    scenario: &'a str,
    ok: bool,
    #[serde(flatten)]
    main: &'a RunReport,
    references: BTreeMap<&'a str, &'a RunReport>,
    ratios: BTreeMap<&'a str, BTreeMap<String, f64>>,
}

impl Report {
    /// Every run passed every check (see [`RunReport::passed`]).
    pub fn passed(&self) -> bool {
        self.main.passed() && self.references.iter().all(RunReport::passed)
    }

    /// Per reference label: main / reference for every figure both have.
    pub fn ratios(&self) -> BTreeMap<&str, BTreeMap<String, f64>> {
        let main = self.main.metrics();
        self.references
            .iter()
            .map(|reference| {
                let theirs = reference.metrics();
                let ratios = main
                    .iter()
                    .filter_map(|m| {
                        let other = m.counterpart(&theirs)?;
                        Some((m.key.clone(), ratio(m.value, other.value)?))
                    })
                    .collect();
                (reference.label.as_str(), ratios)
            })
            .collect()
    }

    /// The one-line JSON with every figure.
    pub fn json_line(&self) -> String {
        let line = JsonLine {
            scenario: self.scenario,
            ok: self.passed(),
            main: &self.main,
            references: self
                .references
                .iter()
                .map(|r| (r.label.as_str(), r))
                .collect(),
            ratios: self.ratios(),
        };
        serde_json::to_string(&line).expect("a report always serialises")
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            out.push_str(&format!("  {:<40} {value}\n", format!("{label}:")));
        };
        let header = format!(
            "loadgen {} ({}; {}) — {}\n",
            self.scenario,
            self.main.label,
            self.main.describe_backend(),
            self.main.load
        );
        line(
            "orders accepted",
            format!(
                "{} of {} sent ({} scheduled)",
                fmt_count(self.main.accepted),
                fmt_count(self.main.sent),
                fmt_count(self.main.scheduled)
            ),
        );
        if self.main.not_sent_on_schedule > 0 {
            line(
                "not sent on schedule (in-flight limit)",
                format!(
                    "{} (FAIL: their latency is missing from the figures below)",
                    fmt_count(self.main.not_sent_on_schedule)
                ),
            );
        }
        let references: Vec<(&RunReport, Vec<Metric>)> =
            self.references.iter().map(|r| (r, r.metrics())).collect();
        for metric in self.main.metrics() {
            let mut shown = metric.show(metric.value);
            let compared: Vec<String> = references
                .iter()
                .filter_map(|(reference, theirs)| {
                    let other = metric.counterpart(theirs)?;
                    let r = ratio(metric.value, other.value)?;
                    Some(format!(
                        "{} × {} {}",
                        fmt_ratio(r),
                        reference.label.replace('_', " "),
                        metric.show(other.value)
                    ))
                })
                .collect();
            if !compared.is_empty() {
                shown.push_str(&format!(" ({})", compared.join("; ")));
            }
            line(&metric.label, shown);
        }
        if let Some(backlog) = &self.main.backlog {
            line("pile-up time", format!("{:.1} s", backlog.pileup_s));
            line(
                if self.main.replicas.unwrap_or(1) > 1 {
                    "orders-service RSS after pile-up (largest replica)"
                } else {
                    "orders-service RSS after pile-up"
                },
                backlog
                    .orders_rss_kib_after_pileup
                    .map_or("n/a".into(), fmt_kib),
            );
            line(
                "drain time",
                backlog
                    .drain_s
                    .map_or("n/a".into(), |s| format!("{s:.1} s")),
            );
        }
        if let Some(balancer) = &self.main.balancer {
            let spread: Vec<String> = balancer.connections.iter().map(|n| fmt_count(*n)).collect();
            line(
                "webhook connections per receiver",
                format!(
                    "{} (round-robin balancer; {} refused by every replica)",
                    spread.join(" / "),
                    fmt_count(balancer.refused)
                ),
            );
        }
        line("emails sent", fmt_count(self.main.emails_sent));
        line("lost emails", fmt_count(self.main.lost));
        line("duplicated emails", fmt_count(self.main.duplicated));
        line(
            "duplicated sends (service log)",
            match (
                self.main.duplicated_sends,
                &self.main.duplicated_sends_unchecked,
            ) {
                (Some(extra), _) => format!(
                    "{} ({} emails sent more than once)",
                    fmt_count(extra),
                    fmt_count(self.main.emails_sent_more_than_once.unwrap_or(0))
                ),
                (None, Some(why)) => format!("not possible: {why}"),
                (None, None) => "not possible".to_owned(),
            },
        );
        line(
            "delivered although not acknowledged",
            format!(
                "{} (orders committed and emailed whose request got no 2xx)",
                fmt_count(self.main.delivered_unacknowledged)
            ),
        );
        line("non-2xx answers", fmt_statuses(&self.main.non_2xx));
        line("transport errors", fmt_count(self.main.transport_errors));
        for reference in &self.references {
            let failures = reference.failures();
            if !failures.is_empty() {
                line(
                    &format!("{} run failed", reference.label.replace('_', " ")),
                    failures.join(", "),
                );
            }
        }
        let failures = self.main.failures();
        line(
            "result",
            if self.passed() {
                "PASS".to_owned()
            } else if failures.is_empty() {
                "FAIL (a reference run failed)".to_owned()
            } else {
                format!("FAIL: {}", failures.join(", "))
            },
        );
        format!("{header}{out}")
    }

    /// Writes the table and then the JSON line to stdout.
    pub fn print(&self) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        write!(out, "{}", self.table())?;
        writeln!(out, "{}", self.json_line())?;
        out.flush()
    }
}

/// The service a process label names: `orders-service#2` → `orders-service`.
pub fn service_of(process: &str) -> &str {
    process
        .split_once('#')
        .map_or(process, |(service, _)| service)
}

/// Per service, `combine` of its processes' peaks.
fn rss_per_service(peaks: &[(String, u64)], combine: fn(&[u64]) -> u64) -> BTreeMap<String, u64> {
    let mut by_service: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (process, kib) in peaks {
        by_service
            .entry(service_of(process))
            .or_default()
            .push(*kib);
    }
    by_service
        .into_iter()
        .map(|(service, kibs)| (service.to_owned(), combine(&kibs)))
        .collect()
}

/// CPU time per email, µs, by service (its replicas' times summed); a process whose time
/// could not be read leaves its service out rather than under-count it.
fn cpu_per_email(by_process: &[(String, Option<Duration>)], emails: u64) -> BTreeMap<String, f64> {
    let mut by_service: BTreeMap<&str, Option<Duration>> = BTreeMap::new();
    for (process, spent) in by_process {
        let sum = by_service
            .entry(service_of(process))
            .or_insert(Some(Duration::ZERO));
        *sum = sum.zip(*spent).map(|(a, b)| a + b);
    }
    by_service
        .into_iter()
        .filter_map(|(service, spent)| Some((service.to_owned(), micros_per(spent?, emails)?)))
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A progress line on stderr.
pub fn progress(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "loadgen: {message}");
}

/// `12345` → `12,345`.
pub fn fmt_count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A rate: whole numbers with separators from 100 up, one decimal below.
pub fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        fmt_count(v.round() as u64)
    } else {
        format!("{v:.1}")
    }
}

/// Milliseconds with about three significant digits.
pub fn fmt_ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        fmt_count(v.round() as u64)
    }
}

/// KiB as MiB with one decimal.
pub fn fmt_kib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A ratio with two decimals (whole from 100 up).
pub fn fmt_ratio(r: f64) -> String {
    if r >= 100.0 {
        fmt_count(r.round() as u64)
    } else {
        format!("{r:.2}")
    }
}

fn fmt_statuses(statuses: &BTreeMap<String, u64>) -> String {
    if statuses.is_empty() {
        return "none".to_owned();
    }
    statuses
        .iter()
        .map(|(code, n)| format!("{code}: {}", fmt_count(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuUse;

    fn run(label: &str, accepted_per_s: f64, p50: f64) -> RunReport {
        let p = Percentiles {
            count: 10,
            p50,
            p90: p50 * 2.0,
            p99: p50 * 3.0,
            p999: p50 * 4.0,
            max: p50 * 5.0,
        };
        RunReport {
            label: label.to_owned(),
            load: "closed loop: 200 orders, concurrency 8".to_owned(),
            scheduled: 200,
            sent: 200,
            accepted: 200,
            orders_accepted_per_s: Some(accepted_per_s),
            api_latency_ms: Some(p),
            e2e_ms: EndToEnd {
                created_to_received: Some(p),
                received_to_sent: None,
                created_to_sent: Some(p),
            },
            emails_sent: 200,
            emails_sent_per_s: Some(accepted_per_s / 2.0),
            peak_rss_kib: BTreeMap::from([("orders-service".to_owned(), 20_480)]),
            ..RunReport::default()
        }
    }

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1_000), "1,000");
        assert_eq!(fmt_count(50_000), "50,000");
        assert_eq!(fmt_count(1_234_567), "1,234,567");
    }

    #[test]
    fn rates_latencies_and_ratios_read_well() {
        assert_eq!(fmt_rate(2_345.4), "2,345");
        assert_eq!(fmt_rate(12.34), "12.3");
        assert_eq!(fmt_ms(3.126), "3.13");
        assert_eq!(fmt_ms(31.25), "31.2");
        assert_eq!(fmt_ms(1_234.4), "1,234");
        assert_eq!(fmt_ratio(2_345.0 / 5_720.0), "0.41");
        assert_eq!(fmt_kib(20_480), "20.0 MiB");
    }

    #[test]
    fn a_clean_run_passes_and_any_loss_duplicate_or_error_fails_it() {
        assert!(run("services", 100.0, 1.0).passed());
        for broken in [
            RunReport {
                lost: 1,
                ..run("services", 100.0, 1.0)
            },
            RunReport {
                duplicated: 1,
                ..run("services", 100.0, 1.0)
            },
            RunReport {
                non_2xx: BTreeMap::from([("503".to_owned(), 1)]),
                ..run("services", 100.0, 1.0)
            },
            RunReport {
                transport_errors: 1,
                ..run("services", 100.0, 1.0)
            },
            RunReport {
                timed_out: true,
                ..run("services", 100.0, 1.0)
            },
            RunReport {
                not_sent_on_schedule: 1,
                ..run("services", 100.0, 1.0)
            },
            RunReport {
                duplicated_sends: Some(1),
                emails_sent_more_than_once: Some(1),
                ..run("services", 100.0, 1.0)
            },
        ] {
            assert!(!broken.passed(), "{broken:?}");
        }
    }

    #[test]
    fn requests_not_sent_on_schedule_fail_the_run_and_say_why() {
        let report = Report {
            scenario: "latency",
            main: RunReport {
                not_sent_on_schedule: 1_234,
                ..run("services", 100.0, 1.0)
            },
            references: Vec::new(),
        };
        assert!(!report.passed());
        let table = report.table();
        assert!(
            table.contains(
                "FAIL: 1,234 requests could not be sent on schedule (more than --max-in-flight \
                 outstanding): the latency figures leave out a stall; raise --max-in-flight or \
                 lower --rate"
            ),
            "{table}"
        );
        assert!(
            table.contains("1,234 (FAIL: their latency is missing"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        assert_eq!(json["ok"], false);
        assert_eq!(json["not_sent_on_schedule"], 1_234);
    }

    #[test]
    fn sends_counted_in_the_log_or_not_possible() {
        let mut report = Report {
            scenario: "throughput",
            main: RunReport {
                delivered_unacknowledged: 3,
                ..run("services", 100.0, 1.0)
            },
            references: Vec::new(),
        };
        report.main.record_sends(SendCheck::Counted {
            extra_sends: 0,
            repeated_emails: 0,
        });
        // Emails of unacknowledged requests are reported, not failed.
        assert!(report.passed(), "{:?}", report.main.failures());
        let table = report.table();
        assert!(
            table.contains("delivered although not acknowledged:"),
            "{table}"
        );
        assert!(table.contains("duplicated sends (service log):"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        assert_eq!(json["duplicated_sends"], 0);
        assert_eq!(json["delivered_unacknowledged"], 3);
        assert_eq!(json["duplicated_sends_unchecked"], serde_json::Value::Null);

        report
            .main
            .record_sends(SendCheck::NotPossible("RUST_LOG hides it".into()));
        assert!(report.passed());
        assert!(report.table().contains("not possible: RUST_LOG hides it"));
        let json: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        assert_eq!(json["duplicated_sends"], serde_json::Value::Null);
        assert_eq!(json["duplicated_sends_unchecked"], "RUST_LOG hides it");

        report.main.record_sends(SendCheck::Counted {
            extra_sends: 2,
            repeated_emails: 1,
        });
        assert!(!report.passed());
        assert!(
            report
                .table()
                .contains("FAIL: 2 duplicated sends (1 emails sent more than once"),
            "{}",
            report.table()
        );
    }

    #[test]
    fn a_failed_reference_fails_the_report() {
        let report = Report {
            scenario: "throughput",
            main: run("services", 100.0, 1.0),
            references: vec![RunReport {
                lost: 3,
                ..run("baseline", 400.0, 0.5)
            }],
        };
        assert!(!report.passed());
        assert!(report.table().contains("baseline run failed:"));
    }

    #[test]
    fn ratios_divide_the_main_run_by_each_reference() {
        let report = Report {
            scenario: "throughput",
            main: run("services", 100.0, 3.0),
            references: vec![run("baseline", 400.0, 1.5)],
        };
        let ratios = report.ratios();
        let baseline = &ratios["baseline"];
        assert_eq!(baseline["orders_accepted_per_s"], 0.25);
        assert_eq!(baseline["emails_sent_per_s"], 0.25);
        assert_eq!(baseline["api_latency_ms.p50"], 2.0);
        assert_eq!(baseline["api_latency_ms.p999"], 2.0);
        assert_eq!(baseline["e2e_ms.created_to_sent.max"], 2.0);
        assert_eq!(baseline["peak_rss_kib.orders-service"], 1.0);
        // No figure on either side: no ratio rather than a made-up one.
        assert!(!baseline.contains_key("e2e_ms.received_to_sent.p50"));
    }

    #[test]
    fn the_table_shows_ratios_the_way_the_issue_asks() {
        let report = Report {
            scenario: "throughput",
            main: run("services", 4_690.0, 3.0),
            references: vec![run("baseline", 11_440.0, 1.5)],
        };
        let table = report.table();
        assert!(
            table.contains("emails sent/s:") && table.contains("2,345 (0.41 × baseline 5,720)"),
            "{table}"
        );
        assert!(table.contains("API latency p99.9:"), "{table}");
        assert!(table.contains("PASS"), "{table}");
    }

    #[test]
    fn the_json_line_is_one_line_with_every_figure() {
        let report = Report {
            scenario: "throughput",
            main: run("services", 100.0, 3.0),
            references: vec![run("baseline", 400.0, 1.5)],
        };
        let line = report.json_line();
        assert!(!line.contains('\n'));
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["scenario"], "throughput");
        assert_eq!(json["ok"], true);
        assert_eq!(json["accepted"], 200);
        assert_eq!(json["lost"], 0);
        assert_eq!(json["duplicated"], 0);
        assert_eq!(json["api_latency_ms"]["p50"], 3.0);
        assert_eq!(json["api_latency_ms"]["p999"], 12.0);
        assert_eq!(json["e2e_ms"]["received_to_sent"], serde_json::Value::Null);
        assert_eq!(json["peak_rss_kib"]["orders-service"], 20_480);
        assert_eq!(
            json["references"]["baseline"]["orders_accepted_per_s"],
            400.0
        );
        assert_eq!(json["ratios"]["baseline"]["orders_accepted_per_s"], 0.25);
        assert!(json.get("backlog").is_none());
    }

    #[test]
    fn replicas_peak_rss_is_reported_as_sum_and_largest_per_service() {
        let peaks = vec![
            ("orders-service#1".to_owned(), 30_000),
            ("orders-service#2".to_owned(), 40_000),
            ("notification-service#1".to_owned(), 20_000),
            ("notification-service#2".to_owned(), 10_000),
        ];
        let mut main = RunReport {
            peak_rss_kib: rss_per_service(&peaks, |kib| kib.iter().sum()),
            peak_rss_max_kib: rss_per_service(&peaks, |kib| kib.iter().copied().max().unwrap_or(0)),
            peak_rss_kib_by_process: peaks.into_iter().collect(),
            ..run("services", 100.0, 1.0)
        };
        main.set_backend("postgres", Some(2));
        main.balancer = Some(crate::balancer::BalancerStats {
            connections: vec![64, 63],
            refused: 0,
        });
        let report = Report {
            scenario: "throughput",
            main,
            references: vec![],
        };
        let json: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        // The old key keeps its place: per service, now the sum over the replicas.
        assert_eq!(json["peak_rss_kib"]["orders-service"], 70_000);
        assert_eq!(json["peak_rss_kib"]["notification-service"], 30_000);
        assert_eq!(json["peak_rss_max_kib"]["orders-service"], 40_000);
        assert_eq!(json["peak_rss_max_kib"]["notification-service"], 20_000);
        assert_eq!(json["peak_rss_kib_by_process"]["orders-service#2"], 40_000);
        assert_eq!(json["backend"], "postgres");
        assert_eq!(json["replicas"], 2);
        assert_eq!(json["balancer"]["connections"], serde_json::json!([64, 63]));
        let table = report.table();
        assert!(
            table.starts_with(
                "loadgen throughput (services; PostgreSQL, 2 replicas of each service) — closed loop"
            ),
            "{table}"
        );
        assert!(
            table.contains("peak RSS orders-service (sum of 2 replicas):"),
            "{table}"
        );
        assert!(
            table.contains("peak RSS orders-service (largest replica):"),
            "{table}"
        );
        assert!(table.contains("peak RSS, all processes:"), "{table}");
        assert!(table.contains("64 / 63 (round-robin balancer"), "{table}");
    }

    #[test]
    fn one_replica_keeps_the_single_process_figures() {
        let peaks = vec![
            ("orders-service".to_owned(), 30_000),
            ("notification-service".to_owned(), 20_000),
        ];
        let mut main = RunReport {
            peak_rss_kib: rss_per_service(&peaks, |kib| kib.iter().sum()),
            peak_rss_max_kib: rss_per_service(&peaks, |kib| kib.iter().copied().max().unwrap_or(0)),
            peak_rss_kib_by_process: peaks.into_iter().collect(),
            ..run("services", 100.0, 1.0)
        };
        main.set_backend("sqlite", Some(1));
        let report = Report {
            scenario: "throughput",
            main,
            references: vec![],
        };
        let table = report.table();
        assert!(
            table.contains("(services; SQLite, 1 replica of each service)"),
            "{table}"
        );
        assert!(table.contains("peak RSS orders-service:"), "{table}");
        assert!(!table.contains("largest replica"), "{table}");
        assert!(!table.contains("webhook connections"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        assert_eq!(json["peak_rss_kib"]["orders-service"], 30_000);
        assert_eq!(json["backend"], "sqlite");
        assert_eq!(json["replicas"], 1);
        assert!(json.get("balancer").is_none());
        assert_eq!(service_of("orders-service"), "orders-service");
        assert_eq!(service_of("orders-service#3"), "orders-service");
    }

    #[test]
    fn building_a_run_report_from_parts() {
        use crate::driver::{Answer, Sample};
        let id = uuid::Uuid::now_v7();
        let driven = Driven {
            samples: vec![
                Sample {
                    request: 0,
                    answer: Answer::Accepted(id),
                    latency_us: 2_000,
                },
                Sample {
                    request: 1,
                    answer: Answer::Status(503),
                    latency_us: 4_000,
                },
            ],
            started_us: 10_000_000,
            elapsed: Duration::from_millis(500),
            not_sent_on_schedule: 0,
        };
        let tally = driven.tally();
        let reconciled = Reconciled {
            emails_sent: 1,
            created_to_sent_us: vec![30_000],
            last_sent_us: Some(10_250_000),
            ..Reconciled::default()
        };
        let load = Load::Closed {
            orders: 2,
            concurrency: 1,
        };
        let report = RunReport::build(
            "services",
            &load,
            &driven,
            &tally,
            &reconciled,
            false,
            Sampled {
                peak_rss: vec![("orders-service".into(), 1_024)],
                cpu: CpuUse::default(),
            },
        );
        assert_eq!((report.sent, report.accepted), (2, 1));
        assert_eq!(report.orders_accepted_per_s, Some(2.0));
        assert_eq!(report.emails_sent_per_s, Some(4.0));
        assert_eq!(report.non_2xx, BTreeMap::from([("503".to_owned(), 1)]));
        assert_eq!(report.api_latency_ms.unwrap().max, 4.0);
        assert_eq!(report.e2e_ms.created_to_sent.unwrap().max, 30.0);
        assert!(!report.passed());
    }

    #[test]
    fn cpu_is_reported_per_email_by_service_and_for_the_whole_machine() {
        use crate::cpu::MachineCpu;
        let secs = |s: u64| Some(Duration::from_secs(s));
        let cpu = CpuUse {
            by_process: vec![
                ("orders-service#1".into(), secs(3)),
                ("orders-service#2".into(), secs(1)),
                ("notification-service#1".into(), secs(2)),
                // One replica could not be read: its service is left out, not under-counted.
                ("notification-service#2".into(), None),
                ("loadgen".into(), secs(1)),
            ],
            machine: Some(MachineCpu {
                busy: Duration::from_secs(9),
                idle: Duration::from_secs(3),
            }),
        };
        let mut report = RunReport::build(
            "services",
            &Load::Closed {
                orders: 1_000,
                concurrency: 8,
            },
            &Driven::default(),
            &Tally::default(),
            &Reconciled {
                emails_sent: 1_000,
                ..Reconciled::default()
            },
            false,
            Sampled {
                peak_rss: Vec::new(),
                cpu,
            },
        );
        report.set_backend("sqlite", Some(2));
        assert_eq!(report.cpu_ms_by_process["orders-service#1"], 3_000.0);
        assert!(!report
            .cpu_ms_by_process
            .contains_key("notification-service#2"));
        assert_eq!(
            report.cpu_us_per_email,
            BTreeMap::from([
                ("loadgen".to_owned(), 1_000.0),
                ("orders-service".to_owned(), 4_000.0),
            ])
        );
        assert_eq!(report.machine_cpu_us_per_email, Some(9_000.0));
        assert_eq!(report.machine_busy_share, Some(0.75));

        let mut baseline = report.clone();
        baseline.label = "baseline".into();
        baseline.machine_cpu_us_per_email = Some(1_000.0);
        let whole = Report {
            scenario: "throughput",
            main: report,
            references: vec![baseline],
        };
        let table = whole.table();
        assert!(
            table.contains("CPU per email, whole machine:")
                && table.contains("9,000 µs (9.00 × baseline 1,000 µs)"),
            "{table}"
        );
        assert!(table.contains("machine busy:"), "{table}");
        assert_eq!(whole.ratios()["baseline"]["machine_cpu_us_per_email"], 9.0);
        let json: serde_json::Value = serde_json::from_str(&whole.json_line()).unwrap();
        assert_eq!(json["cpu_us_per_email"]["orders-service"], 4_000.0);
        assert_eq!(json["machine_busy_share"], 0.75);
    }
}
