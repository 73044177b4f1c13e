//! The intake: every rejection path, rotation, unknown types, deduplication and ordering.

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::Semaphore;
use uuid::Uuid;
use webhook_common::signing::unix_now;
use webhook_common::Secret;

use crate::support::*;

/// Asserts nothing at all was recorded: no notification, no dedup record, no email.
async fn assert_nothing_recorded(app: &TestApp) {
    assert!(app.notifications().await.is_empty());
    let received = app.received().await;
    assert!(received.is_empty(), "{received:?}");
    app.worker.drain().await.unwrap();
    assert!(app.mailer.sent().is_empty());
}

#[tokio::test]
async fn each_missing_webhook_header_is_rejected_with_401_json() {
    let app = TestApp::spawn().await;
    let body = paid(Uuid::now_v7(), now()).to_json_bytes();
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let mut headers = signed_headers(&msg_id(), unix_now(), &body, &[secret()]);
        headers.remove(missing);
        let r = app
            .http
            .post(app.intake())
            .headers(headers)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "webhook_verification_failed").await;
    }
    assert_nothing_recorded(&app).await;
}

#[tokio::test]
async fn tampered_body_and_wrong_secret_are_rejected_with_401() {
    let app = TestApp::spawn().await;
    let body = paid(Uuid::now_v7(), now()).to_json_bytes();
    let headers = signed_headers(&msg_id(), unix_now(), &body, &[secret()]);
    let mut tampered = body.clone();
    let at = tampered.iter().position(|b| *b == b'2').unwrap();
    tampered[at] = b'9';
    let r = app
        .http
        .post(app.intake())
        .headers(headers)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "webhook_verification_failed").await;

    let r = app
        .deliver_bytes(&msg_id(), &body, &[Secret::generate()])
        .await;
    assert_error(r, 401, "webhook_verification_failed").await;
    assert_nothing_recorded(&app).await;
}

#[tokio::test]
async fn old_and_future_timestamps_are_rejected_with_401() {
    let app = TestApp::spawn().await;
    let body = paid(Uuid::now_v7(), now()).to_json_bytes();
    // A minute past the 300 s tolerance either way, so a clock tick between signing and
    // checking cannot bring a timestamp back within it.
    for ts in [unix_now() - 360, unix_now() + 360, 0] {
        let headers = signed_headers(&msg_id(), ts, &body, &[secret()]);
        let r = app
            .http
            .post(app.intake())
            .headers(headers)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "webhook_verification_failed").await;
    }
    assert_nothing_recorded(&app).await;
}

#[tokio::test]
async fn malformed_headers_are_rejected_with_401() {
    let app = TestApp::spawn().await;
    let body = paid(Uuid::now_v7(), now()).to_json_bytes();
    let good = signed_headers("msg_ok", unix_now(), &body, &[secret()]);
    let cases: [(&str, String); 5] = [
        ("webhook-timestamp", "12.5".into()),
        ("webhook-timestamp", "-1".into()),
        ("webhook-signature", "garbage".into()),
        ("webhook-signature", "v1,not-base64!!".into()),
        ("webhook-id", "x".repeat(300)),
    ];
    for (name, value) in cases {
        let mut headers = good.clone();
        headers.insert(name, value.parse().unwrap());
        let r = app
            .http
            .post(app.intake())
            .headers(headers)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_error(r, 401, "webhook_verification_failed").await;
    }
    assert_nothing_recorded(&app).await;
}

#[tokio::test]
async fn oversize_body_is_413_and_missing_content_type_is_415() {
    let app = TestApp::spawn_with(&["--max-body-bytes", "1024"], None).await;
    let body = vec![b' '; 2048];
    let r = app.deliver_bytes(&msg_id(), &body, &[secret()]).await;
    assert_error(r, 413, "payload_too_large").await;

    let body = paid(Uuid::now_v7(), now()).to_json_bytes();
    let mut headers = signed_headers(&msg_id(), unix_now(), &body, &[secret()]);
    headers.remove("content-type");
    let r = app
        .http
        .post(app.intake())
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_error(r, 415, "unsupported_media_type").await;
    assert_nothing_recorded(&app).await;
}

#[tokio::test]
async fn signed_bad_json_is_400_and_invalid_fields_are_422_with_field_messages() {
    let app = TestApp::spawn().await;
    let r = app
        .deliver_bytes(&msg_id(), b"{\"type\": \"order.paid\",", &[secret()])
        .await;
    assert_error(r, 400, "malformed_json").await;

    let mut event: Value = serde_json::to_value(paid(Uuid::now_v7(), now())).unwrap();
    event["data"]["customer_email"] = "not-an-email".into();
    event["data"]["quantity"] = 0.into();
    let r = app
        .deliver_bytes(&msg_id(), &serde_json::to_vec(&event).unwrap(), &[secret()])
        .await;
    let body = assert_error(r, 422, "invalid_payload").await;
    let fields = body["error"]["fields"].as_object().unwrap();
    assert!(fields.contains_key("data.customer_email"), "{body}");
    assert!(fields.contains_key("data.quantity"), "{body}");

    let r = app
        .deliver_bytes(
            &msg_id(),
            br#"{"type":"order.paid","data":{}}"#,
            &[secret()],
        )
        .await;
    assert_error(r, 422, "invalid_payload").await;
    assert_nothing_recorded(&app).await;
}

#[tokio::test]
async fn during_rotation_old_and_new_secrets_are_both_accepted() {
    let old = Secret::generate();
    let new = Secret::generate();
    let both = format!("{} {}", old.expose_whsec(), new.expose_whsec());
    let app = TestApp::spawn_with(&["--webhook-secret", &both], None).await;
    for signers in [vec![old.clone()], vec![new.clone()], vec![old, new]] {
        let event = paid(Uuid::now_v7(), now());
        let r = app
            .deliver_bytes(&msg_id(), &event.to_json_bytes(), &signers)
            .await;
        assert_eq!(r.status(), 202);
    }
    let r = app
        .deliver_bytes(
            &msg_id(),
            &paid(Uuid::now_v7(), now()).to_json_bytes(),
            &[secret()],
        )
        .await;
    assert_error(r, 401, "webhook_verification_failed").await;
    assert_eq!(app.worker.drain().await.unwrap(), 3);
    assert_eq!(app.mailer.sent().len(), 3);
}

#[tokio::test]
async fn unknown_event_type_is_acknowledged_and_recorded_as_ignored() {
    let app = TestApp::spawn().await;
    let id = msg_id();
    let body =
        br#"{"type":"order.shipped","timestamp":"2026-01-02T03:04:05Z","data":{"carrier":"DHL"}}"#;
    let (status, answer) = app.submit_bytes(&id, body, &[secret()]).await;
    assert_eq!((status, answer.status), (200, Outcome::Ignored));

    let received = app.received().await;
    let latest = received.first().expect("a received webhook");
    assert_eq!(latest.webhook_id, id);
    assert_eq!(latest.event_type, "order.shipped");
    assert_eq!(latest.outcome, Outcome::Ignored);
    let (_, answer) = app.submit_bytes(&id, body, &[secret()]).await;
    assert_eq!(answer.status, Outcome::Duplicate);
    assert!(app.notifications().await.is_empty());
}

#[tokio::test]
async fn first_delivery_is_queued_and_a_retry_is_a_duplicate_with_one_email() {
    let app = TestApp::spawn().await;
    let id = msg_id();
    let event = paid(Uuid::now_v7(), now());
    let (status, answer) = app.submit(&id, &event).await;
    assert_eq!((status, answer.status), (202, Outcome::Queued));
    assert!(answer.notification_id.is_some(), "{answer:?}");
    let (status, answer) = app.submit(&id, &event).await;
    assert_eq!((status, answer.status), (200, Outcome::Duplicate));

    assert_eq!(app.worker.drain().await.unwrap(), 1);
    let sent = app.mailer.sent();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].body.contains("25.00 EUR"), "{}", sent[0].body);
    let (_, answer) = app.submit(&id, &event).await;
    assert_eq!(answer.status, Outcome::Duplicate);
    assert_eq!(app.worker.drain().await.unwrap(), 0);
    assert_eq!(app.mailer.sent().len(), 1);
}

#[tokio::test]
async fn the_same_delivery_twenty_times_concurrently_yields_one_job_and_one_email() {
    let app = Arc::new(TestApp::spawn().await);
    let id = msg_id();
    let event = paid(Uuid::now_v7(), now());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (app, id, event) = (app.clone(), id.clone(), event.clone());
        tasks.spawn(async move {
            let (status, answer) = app.submit(&id, &event).await;
            (status, answer.status)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(result) = tasks.join_next().await {
        outcomes.push(result.unwrap());
    }
    let queued = outcomes
        .iter()
        .filter(|(s, o)| *s == 202 && *o == Outcome::Queued)
        .count();
    let duplicates = outcomes
        .iter()
        .filter(|(s, o)| *s == 200 && *o == Outcome::Duplicate)
        .count();
    assert_eq!((queued, duplicates), (1, 19), "{outcomes:?}");

    assert_eq!(app.notifications().await.len(), 1);
    assert_eq!(app.worker.drain().await.unwrap(), 1);
    assert_eq!(app.mailer.sent().len(), 1);
}

#[tokio::test]
async fn a_payment_failure_older_than_the_payment_is_stale_and_sends_nothing() {
    let app = TestApp::spawn().await;
    let order = Uuid::now_v7();
    let t = now();
    let r = app.deliver(&msg_id(), &paid(order, t)).await;
    assert_eq!(r.status(), 202);
    let (status, answer) = app
        .submit(
            &msg_id(),
            &payment_failed(order, t - time::Duration::seconds(30)),
        )
        .await;
    assert_eq!((status, answer.status), (200, Outcome::Stale));
    // Paid is final: a later failure contradicts the confirmation too.
    let (_, answer) = app
        .submit(
            &msg_id(),
            &payment_failed(order, t + time::Duration::seconds(30)),
        )
        .await;
    assert_eq!(answer.status, Outcome::Stale);

    app.worker.drain().await.unwrap();
    let sent = app.mailer.sent();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].subject.contains("confirmed"), "{}", sent[0].subject);
    let received = app.received().await;
    let stale = received
        .iter()
        .filter(|r| r.outcome == Outcome::Stale)
        .count();
    assert_eq!(stale, 2, "{received:?}");
}

#[tokio::test]
async fn a_payment_arriving_after_a_queued_failure_cancels_the_failure_notice() {
    let app = TestApp::spawn().await;
    let order = Uuid::now_v7();
    let t = now();
    let r = app.deliver(&msg_id(), &payment_failed(order, t)).await;
    assert_eq!(r.status(), 202);
    let r = app
        .deliver(&msg_id(), &paid(order, t + time::Duration::seconds(5)))
        .await;
    assert_eq!(r.status(), 202);
    app.worker.drain().await.unwrap();
    let sent = app.mailer.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].subject.contains("confirmed"));
    let statuses: Vec<(String, Status)> = app
        .notifications()
        .await
        .into_iter()
        .map(|n| (n.event_type, n.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("order.paid".to_owned(), Status::Sent),
            ("order.payment_failed".to_owned(), Status::Cancelled)
        ]
    );
}

#[tokio::test]
async fn a_sent_failure_notice_is_followed_by_the_confirmation_when_payment_succeeds() {
    let app = TestApp::spawn().await;
    let order = Uuid::now_v7();
    let t = now();
    app.deliver(&msg_id(), &payment_failed(order, t)).await;
    app.worker.drain().await.unwrap();
    let (_, answer) = app
        .submit(
            &msg_id(),
            &payment_failed(order, t - time::Duration::seconds(1)),
        )
        .await;
    assert_eq!(answer.status, Outcome::Stale);
    let r = app
        .deliver(&msg_id(), &paid(order, t + time::Duration::seconds(60)))
        .await;
    assert_eq!(r.status(), 202);
    app.worker.drain().await.unwrap();
    let subjects: Vec<String> = app.mailer.sent().into_iter().map(|e| e.subject).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert!(subjects[0].starts_with("Payment failed"));
    assert!(subjects[1].contains("confirmed"));
}

#[tokio::test]
async fn concurrent_deliveries_share_commits_and_each_is_recorded_once() {
    let app = TestApp::spawn().await;
    let before = app.store.write_stats().expect("SQLite");
    let limit = Arc::new(Semaphore::new(64));
    let mut posts = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (http, url, limit) = (app.http.clone(), app.intake(), limit.clone());
        posts.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let event = paid(Uuid::now_v7(), now());
            webhook_common::client::signed_event_request(&http, url, &[secret()], &msg_id(), &event)
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    while let Some(status) = posts.join_next().await {
        assert_eq!(status.unwrap(), 202);
    }
    let after = app.store.write_stats().expect("SQLite");
    let (writes, batches) = (after.writes - before.writes, after.batches - before.batches);
    eprintln!("200 concurrent deliveries: {writes} writes in {batches} transactions");
    assert_eq!(writes, 200, "one write per delivery");
    // Deliveries that arrive while a batch commits wait for the next one, together.
    assert!(
        batches < writes,
        "{batches} transactions for {writes} writes"
    );
    assert_eq!(app.notifications().await.len(), 200);
}
