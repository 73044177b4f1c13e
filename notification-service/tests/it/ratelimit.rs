//! The per-IP budget on rejected requests, and the allow-list.
//!
//! The budget refills at one cell per second (the lowest rate the setting allows), so these
//! tests never count on the requests landing within a refill interval: a forger keeps
//! trying until it is throttled, and what must hold is that the first `burst` rejections
//! are never throttled.

use std::time::Instant;

use uuid::Uuid;
use webhook_common::Secret;

use crate::support::*;

/// Sends forged deliveries from this address until one gets 429; checks the first `burst`
/// were plain 401s and returns the 429 response.
async fn forge_until_throttled(app: &TestApp, burst: usize) -> reqwest::Response {
    let body = paid(Uuid::now_v7(), now()).to_json_bytes();
    let forged = [Secret::generate()];
    let start = Instant::now();
    let mut rejected = 0;
    loop {
        let r = app.deliver_bytes(&msg_id(), &body, &forged).await;
        if r.status() == 429 {
            assert!(rejected >= burst, "throttled after {rejected} < {burst}");
            return r;
        }
        assert_error(r, 401, "webhook_verification_failed").await;
        rejected += 1;
        assert!(start.elapsed() < DEADLINE, "the forger was never throttled");
    }
}

#[tokio::test]
async fn a_forger_over_its_rejection_budget_gets_429_with_retry_after() {
    let app =
        TestApp::spawn_with(&["--reject-burst", "3", "--reject-rate-per-sec", "1"], None).await;
    let r = forge_until_throttled(&app, 3).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_error(r, 429, "rate_limited").await;
}

#[tokio::test]
async fn a_genuine_sender_sharing_an_address_with_a_throttled_forger_is_still_accepted() {
    let app =
        TestApp::spawn_with(&["--reject-burst", "3", "--reject-rate-per-sec", "1"], None).await;
    forge_until_throttled(&app, 3).await;
    // The same address (127.0.0.1) now delivers genuine webhooks: each is verified and
    // accepted, none is turned away.
    for _ in 0..5 {
        let r = app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
        assert_eq!(r.status(), 202);
    }
    // Unverified requests from it are still throttled, whatever they carry.
    let r = app
        .deliver_bytes(&msg_id(), b"{}", &[Secret::generate()])
        .await;
    assert_error(r, 429, "rate_limited").await;
}

#[tokio::test]
async fn verified_deliveries_never_spend_the_rejection_budget() {
    let app =
        TestApp::spawn_with(&["--reject-burst", "2", "--reject-rate-per-sec", "1"], None).await;
    for _ in 0..50 {
        let r = app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
        assert_eq!(r.status(), 202);
    }
    // Duplicates are successes too.
    let id = msg_id();
    let event = paid(Uuid::now_v7(), now());
    for _ in 0..10 {
        let r = app.deliver(&id, &event).await;
        assert!(r.status().is_success());
    }
    // Had those 60 spent the budget of 2, the forger would be throttled at once.
    let r = forge_until_throttled(&app, 2).await;
    assert_error(r, 429, "rate_limited").await;
}

#[tokio::test]
async fn an_address_outside_the_allow_list_gets_403() {
    let app = TestApp::spawn_with(&["--allowed-cidrs", "10.0.0.0/8,192.168.0.0/16"], None).await;
    let r = app.deliver(&msg_id(), &paid(Uuid::now_v7(), now())).await;
    assert_error(r, 403, "forbidden").await;
    assert!(app.notifications().await.is_empty());

    let allowed = TestApp::spawn_with(&["--allowed-cidrs", "10.0.0.0/8 127.0.0.0/8"], None).await;
    let r = allowed
        .deliver(&msg_id(), &paid(Uuid::now_v7(), now()))
        .await;
    assert_eq!(r.status(), 202);
}
