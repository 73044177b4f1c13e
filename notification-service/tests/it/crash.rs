//! The real binary, killed with SIGKILL while its worker is mid-way or while batches of
//! intakes are being committed, then restarted on the same database: every accepted email
//! is sent, none is lost, none is queued twice.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use notification_service::store::to_ms;
use sqlx::SqlitePool;
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;
use webhook_common::Event;

use crate::support::*;

/// The child process; killed when dropped so a failing test leaves nothing running.
struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on port 0 (so no other process can take its port between our choice
/// and its bind) and learns the address from its `listening on http://...` log line. `env`
/// adds settings to the test database and secrets; the rest are the service's defaults.
async fn start(db_dir: &Path, log: &Path, env: &[(&str, &str)], http: &reqwest::Client) -> Service {
    let log_file = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_notification-service"))
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/n.db", db_dir.display()),
        )
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .env_remove("SMTP_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let mut service = Service {
        child,
        base: String::new(),
    };
    service.base = eventually("the service has logged its address", || async {
        let text = std::fs::read_to_string(log).ok()?;
        let at = text.find("listening on http://")? + "listening on ".len();
        // Only a complete line: the child may be halfway through writing it.
        let line = &text[at..at + text[at..].find('\n')?];
        Some(line.trim().to_owned())
    })
    .await;
    let health = format!("{}/healthz", service.base);
    eventually("the service serves", || async {
        let r = http.get(&health).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    service
}

/// A worker of two slots with one-second leases and sends of `delay`, so a kill surely
/// lands while it is mid-way.
fn slow_small_worker(delay: &str) -> [(&str, &str); 3] {
    [
        ("MAILER_DELAY", delay),
        ("WORKER_CONCURRENCY", "2"),
        ("WORKER_LEASE", "1s"),
    ]
}

async fn sent_count(http: &reqwest::Client, base: &str) -> usize {
    all_notifications(http, base)
        .await
        .iter()
        .filter(|n| n.status == Status::Sent)
        .count()
}

/// How many times the simulated mailer logged each notification as sent. Also checks that
/// the log, at the default level, carries no customer address and no email body.
fn simulated_sends(logs: &[&Path]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            !text.contains("ada@example.com") && !text.contains("body="),
            "a customer address or an email body reached the default log of {}",
            log.display()
        );
        for line in text
            .lines()
            .filter(|l| l.contains("email sent (simulated)"))
        {
            let at = line.find("notification_id=").unwrap() + "notification_id=".len();
            *counts.entry(line[at..at + 36].to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test]
async fn after_kill_9_mid_stream_a_restart_sends_every_accepted_email_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (log1, log2) = (dir.path().join("run1.log"), dir.path().join("run2.log"));
    let http = reqwest::Client::new();
    // Slow sends the first time, so the kill surely lands while most are still queued;
    // fast ones after the restart.
    let mut service = start(dir.path(), &log1, &slow_small_worker("200ms"), &http).await;

    let events: Vec<(String, Event)> = (0..200)
        .map(|_| (msg_id(), paid(Uuid::now_v7(), now())))
        .collect();
    let limit = Arc::new(Semaphore::new(8));
    let mut posts = tokio::task::JoinSet::new();
    for (id, event) in events.clone() {
        let (http, url, permit) = (
            http.clone(),
            format!("{}/webhooks/orders", service.base),
            limit.clone(),
        );
        posts.spawn(async move {
            let _permit = permit.acquire_owned().await.unwrap();
            let r =
                webhook_common::client::signed_event_request(&http, url, &[secret()], &id, &event)
                    .send()
                    .await
                    .unwrap();
            r.status().as_u16()
        });
    }
    while let Some(status) = posts.join_next().await {
        assert_eq!(status.unwrap(), 202);
    }

    let base = service.base.clone();
    let sent_before = eventually("the worker is under way", || async {
        let n = sent_count(&http, &base).await;
        (n >= 10).then_some(n)
    })
    .await;
    service.child.kill().unwrap(); // SIGKILL: no shutdown code runs
    service.child.wait().unwrap();
    assert!(
        sent_before < 200,
        "the kill must land mid-stream ({sent_before} sent)"
    );
    drop(service);

    let service = start(dir.path(), &log2, &slow_small_worker("5ms"), &http).await;
    // The sender's retries of already-accepted deliveries are recognised.
    for (id, event) in events.iter().take(5) {
        let r = webhook_common::client::signed_event_request(
            &http,
            format!("{}/webhooks/orders", service.base),
            &[secret()],
            id,
            event,
        )
        .send()
        .await
        .unwrap();
        let (status, answer) = read_answer(r).await;
        assert_eq!((status, answer.status), (200, Outcome::Duplicate));
    }
    eventually("every email is sent", || async {
        (sent_count(&http, &service.base).await == 200).then_some(())
    })
    .await;

    let all = all_notifications(&http, &service.base).await;
    assert_eq!(all.len(), 200, "one notification per accepted delivery");
    let webhook_ids: HashSet<&str> = all.iter().map(|n| n.webhook_id.as_str()).collect();
    let accepted: HashSet<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(webhook_ids, accepted, "none missing, none extra");
    assert!(all.iter().all(|n| n.status == Status::Sent));

    // Delivery to the mail transport is at-least-once: only a send caught between the
    // transport's acceptance and our commit by the kill can be repeated, so at most the
    // jobs in flight at that moment (WORKER_CONCURRENCY = 2). Such repeats carry the same
    // Message-ID for downstream deduplication.
    let sends = simulated_sends(&[&log1, &log2]);
    let ids: HashSet<String> = all.iter().map(|n| n.id.to_string()).collect();
    let logged: HashSet<String> = sends.keys().cloned().collect();
    assert_eq!(logged, ids, "every notification was handed to the mailer");
    let repeated = sends.values().filter(|c| **c > 1).count();
    eprintln!(
        "crash test: {sent_before} sent before the kill, {repeated} mailer hand-offs repeated"
    );
    assert!(repeated <= 2, "{repeated} emails repeated: {sends:?}");
    assert!(sends.values().all(|c| *c <= 2));
}

/// Webhooks the group-commit crash test sends, and how many are in flight at once (well
/// above one, so the writer's batches hold many intakes when the kill lands).
const BURST: usize = 300;
const IN_FLIGHT: usize = 48;

/// Posts `(id, event)` to `url` once the semaphore lets it; a 2xx adds `id` to `acked`,
/// and the acknowledgement that makes a third of [`BURST`] pokes `third`.
fn post_counted(
    posts: &mut JoinSet<()>,
    (http, url): (reqwest::Client, String),
    (id, event): (String, Event),
    limit: Arc<Semaphore>,
    acked: Arc<Mutex<HashSet<String>>>,
    third: Arc<Notify>,
) {
    posts.spawn(async move {
        let _permit = limit.acquire_owned().await.unwrap();
        let sent =
            webhook_common::client::signed_event_request(&http, url, &[secret()], &id, &event)
                .send()
                .await;
        // Refused or cut off by the kill: not acknowledged, so the sender would retry it.
        let Ok(response) = sent else { return };
        if response.status().is_success() {
            let mut acked = acked.lock().unwrap();
            acked.insert(id);
            if acked.len() == BURST / 3 {
                third.notify_one();
            }
        }
    });
}

#[tokio::test]
async fn a_kill_9_in_the_middle_of_group_commits_loses_no_acknowledged_webhook_and_sends_each_email_once(
) {
    let dir = tempfile::tempdir().unwrap();
    let (log1, log2) = (dir.path().join("run1.log"), dir.path().join("run2.log"));
    let http = reqwest::Client::new();
    // Default settings (15 s leases, 32 slots) except 10 s sends: the first run's worker
    // claims jobs, but none of its sends can finish before the kill. So every email is
    // sent in the second run, and "exactly once" is observable at the mailer (a send that
    // finished just before a kill may legitimately repeat: delivery is at-least-once).
    let mut service = start(dir.path(), &log1, &[("MAILER_DELAY", "10s")], &http).await;
    let url = format!("{}/webhooks/orders", service.base);

    let events: Vec<(String, Event)> = (0..BURST)
        .map(|_| (msg_id(), paid(Uuid::now_v7(), now())))
        .collect();
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let third = Arc::new(Notify::new());
    let limit = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut posts = JoinSet::new();
    for (i, webhook) in events.iter().enumerate() {
        // Every tenth one twice at once, as a sender's retry racing its first attempt: the
        // two may share a batch, and must still yield one notification.
        for _ in 0..if i % 10 == 0 { 2 } else { 1 } {
            post_counted(
                &mut posts,
                (http.clone(), url.clone()),
                webhook.clone(),
                limit.clone(),
                acked.clone(),
                third.clone(),
            );
        }
    }
    tokio::time::timeout(DEADLINE, third.notified())
        .await
        .expect("a third of the webhooks acknowledged");
    service.child.kill().unwrap(); // SIGKILL, with batches of intakes being committed
    let killed_at = to_ms(OffsetDateTime::now_utc());
    service.child.wait().unwrap();
    while let Some(post) = posts.join_next().await {
        post.unwrap();
    }
    drop(service);
    let acked: HashSet<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() < BURST,
        "the kill must land while webhooks are in flight"
    );

    // What the dead process left: every acknowledged webhook is durable, and the jobs its
    // worker held are free again within one lease (15 s) of the kill, renewals included.
    let db = SqlitePool::connect(&format!("sqlite://{}/n.db", dir.path().display()))
        .await
        .unwrap();
    let stored: HashSet<String> = sqlx::query_scalar("SELECT webhook_id FROM notifications")
        .fetch_all(&db)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but not stored: {lost:?}");
    let (held, held_until): (i64, Option<i64>) = sqlx::query_as(
        "SELECT COUNT(*), MAX(lease_expires_at) FROM notifications
         WHERE status = 'queued' AND lease_expires_at IS NOT NULL",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert!(
        held > 0,
        "the worker must have held jobs when it was killed"
    );
    let held_until = held_until.unwrap();
    assert!(
        held_until <= killed_at + 15_000,
        "a held job waits {} ms after the kill",
        held_until - killed_at
    );
    db.close().await;

    // The restart; the sender redelivers everything that was not acknowledged (some of it
    // was committed but never answered: a duplicate now).
    let service = start(dir.path(), &log2, &[], &http).await;
    let url = format!("{}/webhooks/orders", service.base);
    for (id, event) in events.iter().filter(|(id, _)| !acked.contains(id)) {
        let r = webhook_common::client::signed_event_request(&http, &url, &[secret()], id, event)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    for (id, event) in events.iter().filter(|(id, _)| acked.contains(id)).take(5) {
        let r = webhook_common::client::signed_event_request(&http, &url, &[secret()], id, event)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "an acknowledged webhook is a duplicate");
    }
    eventually("every email is sent", || async {
        (sent_count(&http, &service.base).await == BURST).then_some(())
    })
    .await;
    let recovered_in_ms = to_ms(OffsetDateTime::now_utc()) - killed_at;

    let all = all_notifications(&http, &service.base).await;
    assert_eq!(
        all.len(),
        BURST,
        "one notification per webhook, nothing else"
    );
    let webhook_ids: HashSet<&str> = all.iter().map(|n| n.webhook_id.as_str()).collect();
    let sent_ids: HashSet<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(webhook_ids, sent_ids, "none missing, none extra");
    assert!(all.iter().all(|n| n.status == Status::Sent));
    let sends = simulated_sends(&[&log1, &log2]);
    let ids: HashSet<String> = all.iter().map(|n| n.id.to_string()).collect();
    let logged: HashSet<String> = sends.keys().cloned().collect();
    assert_eq!(logged, ids, "every notification was handed to the mailer");
    let repeated: Vec<_> = sends.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "sent more than once: {repeated:?}");
    eprintln!(
        "group-commit crash test: {} of {BURST} acknowledged before the kill, {held} jobs held \
         by the dead worker; every email sent {recovered_in_ms} ms after the kill",
        acked.len()
    );
}
