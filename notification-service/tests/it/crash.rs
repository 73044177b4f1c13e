//! The real binary, killed with SIGKILL while its worker is mid-way, then restarted on the
//! same database: every accepted email is sent, none is lost, none is queued twice.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use tokio::sync::Semaphore;
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
/// and its bind) and learns the address from its `listening on http://...` log line.
async fn start(
    db_dir: &Path,
    log: &Path,
    mailer_delay_ms: &str,
    http: &reqwest::Client,
) -> Service {
    let log_file = std::fs::File::create(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_notification-service"))
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/n.db", db_dir.display()),
        )
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WEBHOOK_SECRET", SECRET)
        .env("MAILER_DELAY_MS", mailer_delay_ms)
        .env("WORKER_CONCURRENCY", "2")
        .env("WORKER_LEASE_SECS", "1")
        .env("RUST_LOG", "info")
        .env_remove("SMTP_URL")
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file))
        .spawn()
        .unwrap();
    let mut service = Service {
        child,
        base: String::new(),
    };
    service.base = wait_for("the service to log its address", || async {
        let text = std::fs::read_to_string(log).ok()?;
        let at = text.find("listening on http://")? + "listening on ".len();
        // Only a complete line: the child may be halfway through writing it.
        let line = &text[at..at + text[at..].find('\n')?];
        Some(line.trim().to_owned())
    })
    .await;
    let health = format!("{}/healthz", service.base);
    wait_for("the service to serve", || async {
        let r = http.get(&health).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    service
}

async fn sent_count(http: &reqwest::Client, base: &str) -> usize {
    all_notifications(http, base)
        .await
        .iter()
        .filter(|n| n["status"] == "sent")
        .count()
}

/// How many times the simulated mailer logged each notification as sent.
fn simulated_sends(logs: &[&Path]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap();
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
    let mut service = start(dir.path(), &log1, "200", &http).await;

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
    let sent_before = wait_for("the worker to be under way", || async {
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

    let service = start(dir.path(), &log2, "5", &http).await;
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
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<serde_json::Value>().await.unwrap()["status"],
            "duplicate"
        );
    }
    wait_for("every email to be sent", || async {
        (sent_count(&http, &service.base).await == 200).then_some(())
    })
    .await;

    let all = all_notifications(&http, &service.base).await;
    assert_eq!(all.len(), 200, "one notification per accepted delivery");
    let webhook_ids: HashSet<&str> = all
        .iter()
        .map(|n| n["webhook_id"].as_str().unwrap())
        .collect();
    let accepted: HashSet<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(webhook_ids, accepted, "none missing, none extra");
    assert!(all.iter().all(|n| n["status"] == "sent"));

    // Delivery to the mail transport is at-least-once: only a send caught between the
    // transport's acceptance and our commit by the kill can be repeated, so at most the
    // jobs in flight at that moment (WORKER_CONCURRENCY = 2). Such repeats carry the same
    // Message-ID for downstream deduplication.
    let sends = simulated_sends(&[&log1, &log2]);
    let ids: HashSet<&str> = all.iter().map(|n| n["id"].as_str().unwrap()).collect();
    let logged: HashSet<&str> = sends.keys().map(String::as_str).collect();
    assert_eq!(logged, ids, "every notification was handed to the mailer");
    let repeated = sends.values().filter(|c| **c > 1).count();
    eprintln!(
        "crash test: {sent_before} sent before the kill, {repeated} mailer hand-offs repeated"
    );
    assert!(repeated <= 2, "{repeated} emails repeated: {sends:?}");
    assert!(sends.values().all(|c| *c <= 2));
}
