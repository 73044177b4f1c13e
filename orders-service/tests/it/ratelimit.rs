//! The per-client rate limit of `POST /orders`: past its burst a client gets a JSON 429 with
//! `Retry-After` and no order, other routes and other clients are not limited, a rate of 0
//! turns it off, and a burst of 0 with a nonzero rate stops startup.

use std::time::{Duration, Instant};

use clap::Parser as _;
use orders_service::api::orders::OrderResponse;
use orders_service::Config;
use serde_json::Value;

use crate::support::{
    body_as, eventually, json_of, order_body, AppOptions, TestApp, ADMIN_TOKEN, DEADLINE,
};

/// The limit these tests run with: 1 order per second, 5 at once.
const RATE: u64 = 1;
const BURST: u64 = 5;

async fn limited_app() -> TestApp {
    TestApp::spawn(AppOptions {
        extra: vec![
            "--order-rate-limit-per-sec".into(),
            RATE.to_string(),
            "--order-rate-limit-burst".into(),
            BURST.to_string(),
        ],
        ..AppOptions::default()
    })
    .await
}

/// How many orders the service holds (the admin list, which is not limited).
async fn stored_orders(app: &TestApp) -> usize {
    app.orders_page("limit=100").await.items.len()
}

/// POSTs orders one after another until one is refused; returns how many were created first
/// (each checked to be a 201), the refusal, and how long that took.
async fn post_until_refused(app: &TestApp) -> (u64, reqwest::Response, Duration) {
    let start = Instant::now();
    let mut created = 0;
    loop {
        let r = app.post_order(order_body()).await;
        if r.status() != 201 {
            return (created, r, start.elapsed());
        }
        created += 1;
        assert!(
            created <= BURST + RATE * (DEADLINE.as_secs() + 1),
            "no order was refused: the limit is not applied"
        );
    }
}

#[tokio::test]
async fn an_order_past_the_burst_gets_a_json_429_with_retry_after_and_is_not_created() {
    let app = limited_app().await;
    let (created, refused, took) = post_until_refused(&app).await;
    // Exactly the burst when the posts are quick, as they are; a slow machine may have
    // earned one more order per second the burst took.
    let earned = RATE * took.as_secs();
    assert!(
        (BURST..=BURST + earned).contains(&created),
        "{created} orders before the first refusal, in {took:?}"
    );

    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    // At one order per second, the next is at most a second away.
    assert_eq!(retry_after, 1);
    assert_eq!(
        refused.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body: Value = json_of(refused).await;
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");

    // Nothing was created for the refused request: no order, no event.
    let created = usize::try_from(created).unwrap();
    assert_eq!(stored_orders(&app).await, created);
    assert_eq!(
        app.store.event_msg_ids_by_order().await.unwrap().len(),
        created
    );

    // The client retries after the wait, and that order is created.
    let retried = eventually("a retried order is accepted", || async {
        let r = app.post_order(order_body()).await;
        (r.status() == 201).then_some(r)
    })
    .await;
    let order: OrderResponse = body_as(retried).await;
    assert_eq!(stored_orders(&app).await, created + 1);
    assert_eq!(order.status, "paid");
    app.stop().await;
}

#[tokio::test]
async fn a_client_over_its_limit_can_still_read_orders_and_use_every_other_route() {
    let app = limited_app().await;
    let first = app.create_order().await;
    let (_, refused, _) = post_until_refused(&app).await;
    assert_eq!(refused.status(), 429);

    let r = app
        .http
        .get(app.url(&format!("/orders/{first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(stored_orders(&app).await >= 1);
    // A POST among the management routes is not limited either.
    app.create_endpoint("http://127.0.0.1:9/webhook", &["order.paid"])
        .await;
    app.stop().await;
}

/// Linux routes all of 127.0.0.0/8 to the loopback interface, so a client can send from
/// 127.0.0.2: another address, with a budget of its own.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn another_client_address_has_a_budget_of_its_own() {
    let app = limited_app().await;
    let (_, refused, _) = post_until_refused(&app).await;
    assert_eq!(refused.status(), 429);
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let r = other
        .post(app.url("/orders"))
        .header("content-type", "application/json")
        .body(order_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    app.stop().await;
}

#[tokio::test]
async fn with_the_rate_set_to_zero_no_order_is_limited() {
    // More than the default burst (40), all at once from one address.
    const ORDERS: usize = 60;
    let app = TestApp::spawn(AppOptions {
        extra: vec![
            "--order-rate-limit-per-sec".into(),
            "0".into(),
            // Ignored while the limit is off.
            "--order-rate-limit-burst".into(),
            "0".into(),
        ],
        ..AppOptions::default()
    })
    .await;
    let mut posts = tokio::task::JoinSet::new();
    for _ in 0..ORDERS {
        let (http, url) = (app.http.clone(), app.url("/orders"));
        posts.spawn(async move {
            http.post(url)
                .header("content-type", "application/json")
                .body(order_body().to_string())
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    while let Some(status) = posts.join_next().await {
        assert_eq!(status.unwrap(), 201);
    }
    assert_eq!(stored_orders(&app).await, ORDERS);
    app.stop().await;
}

#[tokio::test]
async fn a_burst_of_zero_with_a_nonzero_rate_stops_startup_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::try_parse_from([
        "orders-service".to_owned(),
        "--admin-token".into(),
        ADMIN_TOKEN.into(),
        "--database-url".into(),
        format!("sqlite://{}", dir.path().join("orders.db").display()),
        "--order-rate-limit-per-sec".into(),
        "20".into(),
        "--order-rate-limit-burst".into(),
        "0".into(),
    ])
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let result = tokio::time::timeout(
        DEADLINE,
        orders_service::run(config, listener, shutdown.clone()),
    )
    .await
    .expect("startup did not fail in time");
    shutdown.cancel();
    let err = format!("{:#}", result.expect_err("started with a burst of 0"));
    assert!(err.contains("ORDER_RATE_LIMIT_BURST"), "{err}");
}
