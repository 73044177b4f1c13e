//! Subscriptions through the API: CRUD, secrets only where asked for, validation, and an
//! endpoint receiving only the event types it subscribed to.

use orders_service::api::endpoints::EndpointResponse;
use orders_service::api::Page;
use orders_service::domain::DeliveryStatus;
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;
use webhook_common::Event;

use crate::support::{declined_order_body, eventually, order_body, AppOptions, Receiver, TestApp};

#[tokio::test]
async fn endpoints_can_be_created_listed_read_updated_and_deleted() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let created = app
        .create_endpoint_from(json!({
            "url": "https://hooks.example.com/orders",
            "event_types": ["order.paid", "order.paid"],
            "description": "billing"
        }))
        .await;
    let id = created.endpoint.id;
    let secret = created.secret;
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created.endpoint.event_types, ["order.paid"], "deduplicated");
    assert!(created.endpoint.enabled);
    assert_eq!(created.endpoint.description.as_deref(), Some("billing"));
    assert!(!created.endpoint.from_configuration);

    let (status, raw) = app
        .admin_json(Method::GET, &format!("/endpoints/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert!(
        !raw.to_string().contains(&secret),
        "GET must not reveal the secret"
    );
    let one = app.endpoint(id).await;
    assert_eq!(one.url, "https://hooks.example.com/orders");
    assert_eq!(app.endpoint_secret(id).await.secret, secret);

    let patched = app
        .update_endpoint(
            id,
            json!({
                "event_types": ["order.payment_failed"],
                "enabled": false,
                "description": null
            }),
        )
        .await;
    assert_eq!(patched.event_types, ["order.payment_failed"]);
    assert!(!patched.enabled);
    assert_eq!(
        patched.disabled_reason.as_deref(),
        Some("disabled through the API")
    );
    assert_eq!(patched.description, None);
    assert_eq!(patched.url, "https://hooks.example.com/orders");
    let enabled = app.update_endpoint(id, json!({"enabled": true})).await;
    assert!(enabled.enabled);
    assert_eq!(enabled.disabled_reason, None);

    // Pages of one: every endpoint exactly once, then a null cursor.
    for n in 0..2 {
        app.create_endpoint(&format!("https://hooks.example.com/{n}"), &["order.paid"])
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, raw) = app
            .admin_json(
                Method::GET,
                &format!("/endpoints?limit=1&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert!(
            !raw.to_string().contains("whsec_"),
            "lists never reveal secrets"
        );
        let page: Page<EndpointResponse> = serde_json::from_value(raw).unwrap();
        seen.extend(page.items.iter().map(|item| item.id));
        match page.next_cursor {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0], id);
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 3);

    app.delete_endpoint(id).await;
    for (method, path) in [
        (Method::GET, format!("/endpoints/{id}")),
        (Method::DELETE, format!("/endpoints/{id}")),
        (Method::GET, format!("/endpoints/{id}/secret")),
        (Method::POST, format!("/endpoints/{id}/rotate-secret")),
    ] {
        let (status, body) = app.admin_json(method, &path, None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    // Not a UUID: malformed, so a 400 naming the parameter rather than a 404.
    let (status, body) = app
        .admin_json(Method::GET, "/endpoints/not-a-uuid", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_path");
    assert!(body["error"]["fields"]["id"].is_array(), "{body}");
    app.stop().await;
}

async fn assert_field_error(app: &TestApp, method: Method, path: &str, body: Value, field: &str) {
    let (status, answer) = app.admin_json(method, path, Some(body.clone())).await;
    assert_eq!(status, 422, "{body} -> {answer}");
    assert_eq!(answer["error"]["code"], "validation_failed", "{answer}");
    assert!(
        answer["error"]["fields"].get(field).is_some(),
        "{body} should name {field}: {answer}"
    );
}

#[tokio::test]
async fn bad_subscriptions_are_refused_with_a_422_naming_the_field() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let ok_url = "https://hooks.example.com/x";
    let create = |url: &str, types: Value| json!({"url": url, "event_types": types});
    let cases = [
        (
            create(ok_url, json!(["order.paid", "order.shipped"])),
            "event_types[1]",
        ),
        (create(ok_url, json!([])), "event_types"),
        (
            create("ftp://hooks.example.com/x", json!(["order.paid"])),
            "url",
        ),
        (
            create("https://u:p@hooks.example.com/", json!(["order.paid"])),
            "url",
        ),
        (create("not a url", json!(["order.paid"])), "url"),
        (
            create(
                &format!("https://hooks.example.com/{}", "a".repeat(3000)),
                json!(["order.paid"]),
            ),
            "url",
        ),
        (
            json!({"url": ok_url, "event_types": ["order.paid"], "description": "x".repeat(501)}),
            "description",
        ),
    ];
    for (body, field) in cases {
        assert_field_error(&app, Method::POST, "/endpoints", body, field).await;
    }
    let (_, answer) = app
        .admin_json(
            Method::POST,
            "/endpoints",
            Some(create(ok_url, json!(["order.shipped"]))),
        )
        .await;
    let message = answer["error"]["fields"]["event_types[0]"][0]
        .as_str()
        .unwrap();
    assert!(message.contains("order.shipped"), "{message}");

    // Shape errors come from the JSON extractor, still in our error shape.
    for (body, status) in [
        (json!({"url": ok_url}), 422),
        (
            json!({"url": ok_url, "event_types": ["order.paid"], "secret": "mine"}),
            422,
        ),
        (json!({"url": 5, "event_types": ["order.paid"]}), 422),
    ] {
        let (got, answer) = app.admin_json(Method::POST, "/endpoints", Some(body)).await;
        assert_eq!(got, status, "{answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    let r = app
        .admin(Method::POST, "/endpoints")
        .header("content-type", "application/json")
        .body("{\"url\":")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let id = app
        .create_endpoint(ok_url, &["order.paid"])
        .await
        .endpoint
        .id;
    let path = format!("/endpoints/{id}");
    assert_field_error(
        &app,
        Method::PATCH,
        &path,
        json!({"event_types": ["nope"]}),
        "event_types[0]",
    )
    .await;
    assert_field_error(
        &app,
        Method::PATCH,
        &path,
        json!({"url": "gopher://x"}),
        "url",
    )
    .await;
    assert_field_error(
        &app,
        Method::POST,
        &format!("{path}/rotate-secret"),
        json!({"grace_period_secs": 365 * 86_400}),
        "grace_period_secs",
    )
    .await;
    let recover = format!("{path}/recover");
    assert_field_error(
        &app,
        Method::POST,
        &recover,
        json!({"since": "yesterday"}),
        "since",
    )
    .await;
    assert_field_error(
        &app,
        Method::POST,
        &recover,
        json!({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}),
        "until",
    )
    .await;
    let (status, _) = app
        .admin_json(Method::GET, "/events?type=order.shipped", None)
        .await;
    assert_eq!(status, 422);
    let (status, _) = app.admin_json(Method::GET, "/events?after=abc", None).await;
    assert_eq!(status, 400);
    let (status, _) = app.admin_json(Method::GET, "/events?limit=0", None).await;
    assert_eq!(status, 400);
    let (status, body) = app
        .admin_json(Method::GET, "/endpoints?limit=201", None)
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_query");
    assert!(body["error"]["fields"]["limit"].is_array(), "{body}");
    // Nothing was half-applied.
    let unchanged = app.endpoint(id).await;
    assert_eq!(unchanged.event_types, ["order.paid"]);
    assert_eq!(unchanged.url, ok_url);
    app.stop().await;
}

#[tokio::test]
async fn an_endpoint_receives_only_the_event_types_it_subscribed_to() {
    let mut paid_only = Receiver::start(Vec::new()).await;
    let mut failed_only = Receiver::start(Vec::new()).await;
    let mut disabled = Receiver::start(Vec::new()).await;
    let app = TestApp::spawn(AppOptions::default()).await;
    let a = app.create_endpoint(&paid_only.url, &["order.paid"]).await;
    let b = app
        .create_endpoint(&failed_only.url, &["order.payment_failed"])
        .await;
    let c = app
        .create_endpoint(&disabled.url, &["order.paid", "order.payment_failed"])
        .await;
    app.update_endpoint(c.endpoint.id, json!({"enabled": false}))
        .await;

    let paid = app.place_order(order_body()).await;
    let failed = app.place_order(declined_order_body()).await;
    for (order, endpoint) in [(&paid, &a), (&failed, &b)] {
        let order_id = order.id;
        let deliveries = app.deliveries(order_id).await;
        assert_eq!(
            deliveries.len(),
            1,
            "exactly one subscribed, enabled endpoint"
        );
        assert_eq!(deliveries[0].endpoint_id, endpoint.endpoint.id);
        app.wait_for_delivery(order_id, DeliveryStatus::Delivered)
            .await;
        // The event in the history shows the same single delivery.
        let detail = app.event_of(order).await;
        assert_eq!(detail.deliveries.len(), 1);
    }
    let got = paid_only.next().await;
    assert_eq!(got.parse::<Event>().type_name(), "order.paid");
    let got = failed_only.next().await;
    assert_eq!(got.parse::<Event>().type_name(), "order.payment_failed");
    // Both deliveries are final, and nothing else was queued, so nothing else can arrive.
    assert!(paid_only.try_next().is_none());
    assert!(failed_only.try_next().is_none());
    assert!(disabled.try_next().is_none());
    let orders: Vec<Uuid> = [&paid, &failed].iter().map(|o| o.id).collect();
    eventually("all deliveries are final", || async {
        let mut all = Vec::new();
        for o in &orders {
            all.extend(app.deliveries(*o).await);
        }
        all.iter()
            .all(|d| d.status == DeliveryStatus::Delivered)
            .then_some(())
    })
    .await;
    app.stop().await;
}
