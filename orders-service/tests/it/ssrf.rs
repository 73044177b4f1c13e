//! The SSRF guard (`ALLOW_PRIVATE_WEBHOOK_TARGETS` off): private targets are refused when an
//! endpoint is created or changed, and again at delivery time against the resolved address.

use orders_service::dispatcher::FORBIDDEN_TARGET;
use orders_service::domain::{DeliveryStatus, NewEndpoint};
use reqwest::Method;
use serde_json::json;
use webhook_common::Secret;

use crate::support::{AppOptions, Receiver, TestApp};

fn guarded() -> AppOptions {
    AppOptions {
        extra: vec!["--allow-private-webhook-targets".into(), "false".into()],
        ..AppOptions::default()
    }
}

#[tokio::test]
async fn with_the_guard_on_loopback_private_and_metadata_urls_are_refused_at_creation() {
    let app = TestApp::spawn(guarded()).await;
    for url in [
        "http://127.0.0.1:8001/webhooks",
        "http://localhost:8001/webhooks",
        "http://[::1]:8001/",
        "http://2130706433/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/",
        "http://192.168.1.10/",
        "http://[fd00::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0:8001/",
    ] {
        let (status, body) = app
            .admin_json(
                Method::POST,
                "/endpoints",
                Some(json!({"url": url, "event_types": ["order.paid"]})),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        let message = body["error"]["fields"]["url"][0].as_str().unwrap();
        assert!(
            message.contains("ALLOW_PRIVATE_WEBHOOK_TARGETS"),
            "{message}"
        );
    }
    // Changing an existing endpoint's URL is checked the same way.
    let endpoint = app
        .store
        .create_endpoint(
            &NewEndpoint {
                url: "https://hooks.example.com/".into(),
                description: None,
                event_types: vec!["order.paid".into()],
            },
            &Secret::generate(),
        )
        .await
        .unwrap();
    let (status, _) = app
        .admin_json(
            Method::PATCH,
            &format!("/endpoints/{}", endpoint.id),
            Some(json!({"url": "http://127.0.0.1/"})),
        )
        .await;
    assert_eq!(status, 422);
    app.stop().await;
}

#[tokio::test]
async fn with_the_guard_off_a_loopback_url_is_accepted() {
    let app = TestApp::spawn(AppOptions::default()).await;
    app.create_endpoint("http://127.0.0.1:8001/webhooks", &["order.paid"])
        .await;
    app.stop().await;
}

/// Stores an endpoint without the API's check, as if its name resolved to a public address
/// when it was created and to loopback now (DNS rebinding).
async fn rebound_endpoint(app: &TestApp, url: String) {
    app.store
        .create_endpoint(
            &NewEndpoint {
                url,
                description: None,
                event_types: vec!["order.paid".into()],
            },
            &Secret::generate(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn with_the_guard_on_a_name_resolving_to_loopback_is_refused_at_delivery_without_retry() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let port = receiver.url.rsplit(':').next().unwrap().to_owned();
    let app = TestApp::spawn(guarded()).await;
    // `localhost` goes through the resolver like any name; what it resolves to is refused.
    rebound_endpoint(&app, format!("http://localhost:{port}")).await;

    let order = app.create_order().await;
    let delivery = app.wait_for_delivery(order, DeliveryStatus::Failed).await;
    assert_eq!(delivery.attempts, 1, "a refused target is not retried");
    let attempts = app.attempts(delivery.id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].error_kind.as_deref(), Some(FORBIDDEN_TARGET));
    assert_eq!(attempts[0].outcome, "failed");
    let error = delivery.last_error.unwrap();
    assert!(error.contains("loopback"), "{error}");
    // The delivery is final and was refused before connecting: nothing reached the receiver.
    assert!(receiver.try_next().is_none());
    app.stop().await;
}

#[tokio::test]
async fn with_the_guard_on_a_stored_loopback_ip_is_refused_at_delivery() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = TestApp::spawn(guarded()).await;
    rebound_endpoint(&app, receiver.url.clone()).await;
    let order = app.create_order().await;
    let delivery = app.wait_for_delivery(order, DeliveryStatus::Failed).await;
    let attempts = app.attempts(delivery.id).await;
    assert_eq!(attempts[0].error_kind.as_deref(), Some(FORBIDDEN_TARGET));
    assert!(receiver.try_next().is_none());
    app.stop().await;
}
