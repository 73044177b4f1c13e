//! The dispatcher against a receiver stub: signatures, retries, Retry-After, 410, 4xx,
//! dead letters, and a receiver that comes up late.

use std::time::Duration;

use orders_service::domain::DeliveryStatus;
use webhook_common::{Event, EventPayload};

use crate::support::{bind_port, eventually, free_port, AppOptions, Receiver, Reply, TestApp};

#[tokio::test]
async fn a_paid_order_is_delivered_once_with_a_signature_that_verifies() {
    let mut receiver = Receiver::start(Vec::new()).await;
    // The sweep is far longer than the test's deadline, so only the wake-up after the
    // order's commit can get the webhook out in time.
    let app = TestApp::spawn(AppOptions {
        extra: vec!["--dispatch-sweep-interval".into(), "60s".into()],
        ..AppOptions::to(&receiver)
    })
    .await;
    let order = app.create_order().await;

    let got = receiver.next().await;
    assert!(got.verified, "signature did not verify");
    assert!(got.id.starts_with("msg_"));
    assert_eq!(got.headers["content-type"], "application/json");
    let ua = got.headers["user-agent"].to_str().unwrap();
    assert!(ua.starts_with("orders-service/"), "{ua}");
    let event: Event = serde_json::from_slice(&got.body).unwrap();
    match event.payload {
        EventPayload::OrderPaid(paid) => {
            assert_eq!(paid.order_id, order);
            assert_eq!(paid.amount, 2500);
            assert_eq!(paid.quantity, 2);
        }
        other => panic!("expected order.paid, got {other:?}"),
    }

    let delivery = app
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    assert_eq!(delivery.attempts, 1);
    let attempts = app.attempts(delivery.id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status_code, Some(200));
    assert_eq!(
        attempts[0].response_body.as_deref(),
        Some("receiver says 200")
    );
    // Delivered is final: nothing else was sent.
    assert!(receiver.try_next().is_none());
    app.stop().await;
}

#[tokio::test]
async fn two_server_errors_then_success_records_three_attempts_and_delivers() {
    let mut receiver = Receiver::start(vec![Reply::status(500), Reply::status(500)]).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.create_order().await;

    let first = receiver.next().await;
    let second = receiver.next().await;
    let third = receiver.next().await;
    assert_eq!(
        first.id, second.id,
        "webhook-id must be stable across attempts"
    );
    assert_eq!(second.id, third.id);
    assert!(first.verified && second.verified && third.verified);
    assert_eq!(
        first.body, third.body,
        "the signed bytes must not change between attempts"
    );

    let delivery = app
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    assert_eq!(delivery.attempts, 3);
    let attempts = app.attempts(delivery.id).await;
    let statuses: Vec<_> = attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)]);
    let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "retry", "delivered"]);
    assert_eq!(
        attempts[0].response_body.as_deref(),
        Some("receiver says 500")
    );
    assert!(attempts
        .windows(2)
        .all(|w| w[0].started_at <= w[1].started_at));
    app.stop().await;
}

#[tokio::test]
async fn retry_after_from_the_receiver_is_honoured() {
    let mut receiver = Receiver::start(vec![Reply {
        retry_after: Some("1".into()),
        ..Reply::status(503)
    }])
    .await;
    // The schedule alone would retry after 20 ms.
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.create_order().await;

    let first = receiver.next().await;
    let second = receiver.next().await;
    let gap = second.at - first.at;
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, before Retry-After"
    );
    let delivery = app
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    assert_eq!(delivery.attempts, 2);
    app.stop().await;
}

#[tokio::test]
async fn gone_410_fails_the_delivery_and_disables_the_endpoint() {
    let mut receiver = Receiver::start(vec![Reply::status(410)]).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.create_order().await;
    receiver.next().await;

    let delivery = app.wait_for_delivery(order, DeliveryStatus::Failed).await;
    assert_eq!(delivery.attempts, 1);
    assert_eq!(delivery.last_status, Some(410));
    let endpoint = app
        .store
        .endpoint(delivery.endpoint_id)
        .await
        .unwrap()
        .unwrap();
    assert!(!endpoint.enabled);
    assert!(endpoint.disabled_reason.unwrap().contains("410"));

    // A disabled endpoint gets no deliveries for new orders.
    let later = app.create_order().await;
    assert!(app.deliveries(later).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn client_errors_are_retried_until_the_receiver_accepts() {
    // A bad deploy (400), a rotation in progress (401), an allow-list (403), a schema
    // mismatch (422): each is retried on the schedule, and the endpoint stays enabled.
    let mut receiver = Receiver::start(vec![
        Reply::status(400),
        Reply::status(401),
        Reply::status(403),
        Reply::status(422),
    ])
    .await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.create_order().await;
    for _ in 0..5 {
        assert!(receiver.next().await.verified);
    }

    let delivery = app
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    assert_eq!(delivery.attempts, 5);
    let outcomes: Vec<String> = app
        .attempts(delivery.id)
        .await
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "retry", "retry", "delivered"]);
    let endpoint = app
        .store
        .endpoint(delivery.endpoint_id)
        .await
        .unwrap()
        .unwrap();
    assert!(endpoint.enabled);
    app.stop().await;
}

#[tokio::test]
async fn exhausted_retries_dead_letter_the_delivery_with_every_attempt_kept() {
    let receiver = Receiver::always(Reply::status(502)).await;
    let mut options = AppOptions::to(&receiver);
    options.schedule = "10ms,10ms".into();
    let app = TestApp::spawn(options).await;
    let order = app.create_order().await;

    let delivery = app.wait_for_delivery(order, DeliveryStatus::Failed).await;
    assert_eq!(delivery.attempts, 3);
    assert!(delivery
        .last_error
        .unwrap()
        .contains("gave up after 3 attempts"));
    let outcomes: Vec<_> = app
        .attempts(delivery.id)
        .await
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "failed"]);
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_then_up_gets_the_event() {
    let port = free_port().await;
    let secret = webhook_common::Secret::generate();
    let app = TestApp::spawn(AppOptions {
        webhook_url: Some(format!("http://127.0.0.1:{port}/webhook")),
        secret: Some(secret.clone()),
        schedule: ["50ms"; 40].join(","),
        ..AppOptions::default()
    })
    .await;
    let order = app.create_order().await;
    let failed_attempts = eventually("two connection errors are recorded", || async {
        let d = app.deliveries(order).await.into_iter().next()?;
        let attempts = app.attempts(d.id).await;
        (attempts.len() >= 2).then_some(attempts)
    })
    .await;
    assert!(failed_attempts
        .iter()
        .all(|a| a.error_kind.as_deref() == Some("connect") && a.status_code.is_none()));

    let mut receiver = Receiver::start_on(
        bind_port(port).await,
        secret,
        Vec::new(),
        Reply::status(200),
    );
    let got = receiver.next().await;
    assert!(got.verified);
    app.wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    app.stop().await;
}

#[tokio::test]
async fn a_declined_payment_sends_order_payment_failed() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let body = crate::support::declined_order_body();
    assert_eq!(app.post_order(body).await.status(), 201);

    let got = receiver.next().await;
    assert!(got.verified);
    let event: Event = got.parse();
    let EventPayload::OrderPaymentFailed(failed) = event.payload else {
        panic!("not order.payment_failed: {event:?}");
    };
    assert!(failed.reason.contains("declined"), "{}", failed.reason);
    assert_eq!(failed.amount, 2500);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_orders_are_all_accepted_and_each_delivered() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = std::sync::Arc::new(TestApp::spawn(AppOptions::to(&receiver)).await);
    let mut posts = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let app = app.clone();
        posts.spawn(async move { app.create_order().await });
    }
    let mut orders = Vec::new();
    while let Some(order) = posts.join_next().await {
        orders.push(order.unwrap());
    }
    let mut ids = std::collections::HashSet::new();
    while ids.len() < orders.len() {
        let got = receiver.next().await;
        assert!(got.verified);
        ids.insert(got.id);
    }
    for order in orders {
        let delivery = app
            .wait_for_delivery(order, DeliveryStatus::Delivered)
            .await;
        assert_eq!(delivery.attempts, 1);
    }
    assert!(
        receiver.try_next().is_none(),
        "an event was delivered twice"
    );
    match std::sync::Arc::try_unwrap(app) {
        Ok(app) => app.stop().await,
        Err(_) => panic!("app still shared"),
    }
}

#[tokio::test]
async fn throttling_and_request_timeout_answers_are_retried() {
    let receiver = Receiver::start(vec![Reply::status(429), Reply::status(408)]).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.create_order().await;
    let delivery = app
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    let statuses: Vec<_> = app
        .attempts(delivery.id)
        .await
        .into_iter()
        .map(|a| a.status_code)
        .collect();
    assert_eq!(statuses, [Some(429), Some(408), Some(200)]);
    app.stop().await;
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let mut elsewhere = Receiver::start(Vec::new()).await;
    let redirect = Reply {
        headers: vec![("location", elsewhere.url.clone())],
        ..Reply::status(307)
    };
    let mut receiver = Receiver::start(vec![redirect]).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.create_order().await;
    let delivery = app
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    let statuses: Vec<_> = app
        .attempts(delivery.id)
        .await
        .into_iter()
        .map(|a| a.status_code)
        .collect();
    assert_eq!(statuses, [Some(307), Some(200)]);
    assert!(receiver.next().await.verified);
    assert!(elsewhere.try_next().is_none(), "the redirect was followed");
    app.stop().await;
}

#[tokio::test]
async fn only_the_first_kibibyte_of_a_response_body_is_kept() {
    let noisy = Reply {
        body: Some("é".repeat(3000)),
        ..Reply::status(500)
    };
    let receiver = Receiver::start(vec![noisy]).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let order = app.create_order().await;
    let delivery = app
        .wait_for_delivery(order, DeliveryStatus::Delivered)
        .await;
    let first = app.attempts(delivery.id).await.remove(0);
    let kept = first.response_body.unwrap();
    assert_eq!(kept, "é".repeat(512), "1024 bytes of two-byte characters");
    app.stop().await;
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_and_is_retried() {
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hanging.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    let app = TestApp::spawn(AppOptions {
        webhook_url: Some(format!("http://127.0.0.1:{port}/webhook")),
        secret: Some(webhook_common::Secret::generate()),
        extra: vec!["--webhook-timeout".into(), "200ms".into()],
        ..AppOptions::default()
    })
    .await;
    let order = app.create_order().await;
    let attempts = eventually("two attempts time out", || async {
        let d = app.deliveries(order).await.into_iter().next()?;
        let attempts = app.attempts(d.id).await;
        (attempts.len() >= 2).then_some(attempts)
    })
    .await;
    assert!(attempts
        .iter()
        .all(|a| a.error_kind.as_deref() == Some("timeout") && a.outcome == "retry"));
    app.stop().await;
    holder.abort();
}
