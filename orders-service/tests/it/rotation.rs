//! Secret rotation: both secrets sign during the grace period, only the new one after; API
//! rotations survive restarts, and a changed `WEBHOOK_SECRET` rotates with a grace period.

use orders_service::domain::DeliveryStatus;
use serde_json::json;
use uuid::Uuid;
use webhook_common::{Secret, Verifier};

use crate::support::{eventually, AppOptions, Received, Receiver, TestApp};

fn verifies_with(got: &Received, secret: &str) -> bool {
    let secret = Secret::parse(secret).unwrap();
    Verifier::new(vec![secret])
        .verify(&got.headers, &got.body)
        .is_ok()
}

fn signature_count(got: &Received) -> usize {
    got.headers["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .count()
}

async fn config_endpoint_id(app: &TestApp, receiver: &mut Receiver) -> Uuid {
    let order = app.create_order().await;
    receiver.next().await;
    app.wait_for_delivery(order, DeliveryStatus::Delivered)
        .await
        .endpoint_id
}

#[tokio::test]
async fn during_the_grace_period_both_secrets_sign_and_afterwards_only_the_new_one() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let old = receiver.secret.expose_whsec();
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let id = config_endpoint_id(&app, &mut receiver).await;

    let rotated = app
        .rotate_secret(id, Some(json!({"grace_period_secs": 1})))
        .await;
    let new = rotated.secret;
    assert_ne!(new, old);
    assert!(rotated.previous_secret_expires_at.is_some());
    assert_eq!(app.endpoint_secret(id).await.secret, new);

    // During the grace period: one signature per secret, each verifies on its own.
    app.create_order().await;
    let during = receiver.next().await;
    assert_eq!(signature_count(&during), 2);
    assert!(
        verifies_with(&during, &old),
        "a receiver that only knows the old secret"
    );
    assert!(
        verifies_with(&during, &new),
        "a receiver that already has the new secret"
    );

    eventually("the grace period ends", || async {
        app.endpoint_secret(id)
            .await
            .previous_secret_expires_at
            .is_none()
            .then_some(())
    })
    .await;
    app.create_order().await;
    let after = receiver.next().await;
    assert_eq!(signature_count(&after), 1);
    assert!(verifies_with(&after, &new));
    assert!(
        !verifies_with(&after, &old),
        "the old secret no longer signs"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_rotation_without_grace_drops_the_old_secret_at_once_and_an_empty_body_means_24_hours() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = TestApp::spawn(AppOptions::to(&receiver)).await;
    let id = config_endpoint_id(&app, &mut receiver).await;

    let body = app.rotate_secret(id, None).await;
    let expires = body
        .previous_secret_expires_at
        .expect("the old secret still signs");
    let expires =
        time::OffsetDateTime::parse(&expires, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::hours(23) && left <= time::Duration::hours(24),
        "{left}"
    );

    let rotated = app
        .rotate_secret(id, Some(json!({"grace_period_secs": 0})))
        .await;
    assert_eq!(rotated.previous_secret_expires_at, None);
    app.create_order().await;
    let got = receiver.next().await;
    assert_eq!(signature_count(&got), 1);
    assert!(verifies_with(&got, &rotated.secret));
    app.stop().await;
}

#[tokio::test]
async fn an_api_rotation_survives_a_restart_and_a_changed_webhook_secret_rotates_with_a_grace_period(
) {
    let mut receiver = Receiver::start(Vec::new()).await;
    let first = TestApp::spawn(AppOptions::to(&receiver)).await;
    let id = config_endpoint_id(&first, &mut receiver).await;
    let api_secret = first
        .rotate_secret(id, Some(json!({"grace_period_secs": 0})))
        .await
        .secret;
    let dir = first.dir.clone();
    first.stop().await;

    // (a) Same WEBHOOK_SECRET: the API's rotation stands.
    let again = TestApp::spawn(AppOptions {
        dir: Some(dir.clone()),
        ..AppOptions::to(&receiver)
    })
    .await;
    let shown = again.endpoint_secret(id).await;
    assert_eq!(shown.secret, api_secret);
    assert_eq!(shown.previous_secret_expires_at, None);
    again.stop().await;

    // (b) A new WEBHOOK_SECRET: rotated to it, the replaced secret signing for 24 h.
    let env_secret = Secret::generate();
    let changed = TestApp::spawn(AppOptions {
        dir: Some(dir.clone()),
        secret: Some(env_secret.clone()),
        ..AppOptions::to(&receiver)
    })
    .await;
    let shown = changed.endpoint_secret(id).await;
    assert_eq!(shown.secret, env_secret.expose_whsec());
    assert!(shown.previous_secret_expires_at.is_some());
    changed.create_order().await;
    let got = receiver.next().await;
    assert!(
        verifies_with(&got, &api_secret),
        "receivers still on the old secret keep accepting"
    );
    assert!(verifies_with(&got, &env_secret.expose_whsec()));
    changed.stop().await;

    // Restarting with that new secret again changes nothing more.
    let settled = TestApp::spawn(AppOptions {
        dir: Some(dir),
        secret: Some(env_secret.clone()),
        ..AppOptions::to(&receiver)
    })
    .await;
    let again = settled.endpoint_secret(id).await;
    assert_eq!(
        (again.secret, again.previous_secret_expires_at),
        (shown.secret, shown.previous_secret_expires_at),
        "no second rotation"
    );
    settled.stop().await;
}
