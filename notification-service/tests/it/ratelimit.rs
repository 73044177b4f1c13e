//! The per-IP budget on rejected requests, and the allow-list.

use uuid::Uuid;
use webhook_common::Secret;

use crate::support::*;

#[tokio::test]
async fn a_forger_over_its_rejection_budget_gets_429_with_retry_after() {
    let app =
        TestApp::spawn_with(&["--reject-burst", "3", "--reject-rate-per-sec", "1"], None).await;
    let body = paid(Uuid::now_v7(), now()).to_json_bytes();
    let forged = [Secret::generate()];
    for _ in 0..3 {
        let r = app.deliver_bytes(&msg_id(), &body, &forged).await;
        assert_error(r, 401, "webhook_verification_failed").await;
    }
    let r = app.deliver_bytes(&msg_id(), &body, &forged).await;
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_error(r, 429, "rate_limited").await;
    // Refused up front while blocked, whatever the request carries.
    let r = app.deliver_bytes(&msg_id(), b"{}", &forged).await;
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
    let forged = [Secret::generate()];
    let body = event.to_json_bytes();
    for _ in 0..2 {
        let r = app.deliver_bytes(&msg_id(), &body, &forged).await;
        assert_error(r, 401, "webhook_verification_failed").await;
    }
    let r = app.deliver_bytes(&msg_id(), &body, &forged).await;
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
