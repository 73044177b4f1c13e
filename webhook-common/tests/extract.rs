//! The axum extractor: every rejection path answers the right status with a JSON error body.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tower::ServiceExt as _;
use webhook_common::error_body::ErrorBody;
use webhook_common::extract::{VerifiedWebhook, WebhookIntake};
use webhook_common::signing::{new_message_id, unix_now, SignedHeaders};
use webhook_common::{Secret, Verifier};

async fn receive(webhook: VerifiedWebhook) -> Json<Value> {
    Json(json!({ "id": webhook.id, "type": webhook.event.type_name() }))
}

fn app(secret: &Secret, max_body_bytes: usize) -> Router {
    let intake =
        WebhookIntake::new(Verifier::new(vec![secret.clone()])).with_max_body_bytes(max_body_bytes);
    Router::new()
        .route("/webhooks", post(receive))
        .with_state(intake)
}

fn paid_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "order.paid",
        "timestamp": "2026-11-22T20:07:03Z",
        "data": {
            "order_id": "0192f4d2-7c1e-7a51-9d3b-5c1e2f3a4b5c",
            "customer_email": "ada@example.com",
            "product_name": "Keyboard",
            "quantity": 2,
            "amount": 2500,
            "currency": "EUR"
        }
    }))
    .unwrap()
}

struct Call {
    content_type: Option<&'static str>,
    body: Vec<u8>,
    signed_body: Option<Vec<u8>>,
    timestamp: i64,
    secret: Secret,
}

impl Call {
    fn new(secret: &Secret, body: Vec<u8>) -> Self {
        Call {
            content_type: Some("application/json"),
            body,
            signed_body: None,
            timestamp: unix_now(),
            secret: secret.clone(),
        }
    }

    async fn send(self, app: Router) -> (StatusCode, Value) {
        let id = new_message_id();
        let signed_over = self.signed_body.as_ref().unwrap_or(&self.body);
        let signed = SignedHeaders::sign(&[self.secret], &id, self.timestamp, signed_over);
        let mut req = Request::post("/webhooks");
        if let Some(ct) = self.content_type {
            req = req.header("content-type", ct);
        }
        for (name, value) in signed.to_header_pairs() {
            req = req.header(name, value);
        }
        let response = app
            .oneshot(req.body(Body::from(self.body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let value: Value = serde_json::from_slice(&bytes).expect("every response is JSON");
        (status, value)
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn genuine_webhook_is_accepted() {
    let secret = Secret::generate();
    let (status, body) = Call::new(&secret, paid_body())
        .send(app(&secret, 4096))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "order.paid");
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
}

#[tokio::test]
async fn charset_parameter_is_fine() {
    let secret = Secret::generate();
    let mut call = Call::new(&secret, paid_body());
    call.content_type = Some("Application/JSON; charset=utf-8");
    let (status, _) = call.send(app(&secret, 4096)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_or_missing_content_type_is_415() {
    let secret = Secret::generate();
    for ct in [Some("text/plain"), None, Some("application/jsonp")] {
        let mut call = Call::new(&secret, paid_body());
        call.content_type = ct;
        let (status, body) = call.send(app(&secret, 4096)).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_eq!(code(&body), "unsupported_media_type");
    }
}

#[tokio::test]
async fn oversize_body_is_413_before_verification() {
    let secret = Secret::generate();
    let mut body = paid_body();
    body.resize(5000, b' ');
    // Signed with the wrong key: the size check must come first.
    let mut call = Call::new(&secret, body);
    call.secret = Secret::generate();
    let (status, body) = call.send(app(&secret, 4096)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(code(&body), "payload_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("4096"));
}

#[tokio::test]
async fn bad_signature_or_stale_timestamp_is_a_uniform_401() {
    let secret = Secret::generate();
    let mut wrong_key = Call::new(&secret, paid_body());
    wrong_key.secret = Secret::generate();
    let mut stale = Call::new(&secret, paid_body());
    stale.timestamp -= 301;
    let mut future = Call::new(&secret, paid_body());
    future.timestamp += 301;
    let mut tampered = Call::new(&secret, paid_body());
    tampered.signed_body = Some(b"{}".to_vec());
    let mut messages = Vec::new();
    for call in [wrong_key, stale, future, tampered] {
        let (status, body) = call.send(app(&secret, 4096)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(code(&body), "webhook_verification_failed");
        messages.push(body["error"]["message"].clone());
    }
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "401 bodies must not reveal which check failed"
    );
}

#[tokio::test]
async fn missing_headers_are_401() {
    let secret = Secret::generate();
    let req = Request::post("/webhooks")
        .header("content-type", "application/json")
        .body(Body::from(paid_body()))
        .unwrap();
    let response = app(&secret, 4096).oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn signed_but_malformed_json_is_400() {
    let secret = Secret::generate();
    let (status, body) = Call::new(&secret, b"{\"type\": ".to_vec())
        .send(app(&secret, 4096))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(code(&body), "malformed_json");
}

#[tokio::test]
async fn signed_but_invalid_fields_are_422_with_field_messages() {
    let secret = Secret::generate();
    let mut value: Value = serde_json::from_slice(&paid_body()).unwrap();
    value["data"]["customer_email"] = "nope".into();
    value["data"]["quantity"] = 0.into();
    let (status, body) = Call::new(&secret, serde_json::to_vec(&value).unwrap())
        .send(app(&secret, 4096))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let parsed: ErrorBody = serde_json::from_value(body).unwrap();
    assert_eq!(parsed.error.code, "invalid_payload");
    assert!(parsed.error.fields.contains_key("data.customer_email"));
    assert!(parsed.error.fields.contains_key("data.quantity"));
}

#[tokio::test]
async fn signed_but_wrong_shape_is_422() {
    let secret = Secret::generate();
    let body =
        br#"{"type":"order.paid","timestamp":"2026-11-22T20:07:03Z","data":{"order_id":42}}"#;
    let (status, body) = Call::new(&secret, body.to_vec())
        .send(app(&secret, 4096))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&body), "invalid_payload");
}

#[tokio::test]
async fn unknown_event_types_pass_through() {
    let secret = Secret::generate();
    let body =
        br#"{"type":"order.shipped","timestamp":"2026-11-22T20:07:03Z","data":{"carrier":"DHL"}}"#;
    let (status, body) = Call::new(&secret, body.to_vec())
        .send(app(&secret, 4096))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["type"], "order.shipped");
}

#[tokio::test]
async fn json_errors_turns_axum_plain_text_rejections_into_error_bodies() {
    use axum::extract::Path;
    use axum::routing::get;
    let app = Router::new()
        .route(
            "/items/{id}",
            get(|Path(id): Path<u32>| async move { id.to_string() }),
        )
        .layer(axum::middleware::from_fn(
            webhook_common::error_body::json_errors,
        ));
    let cases = [
        (
            Request::get("/items/abc"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (Request::get("/nowhere"), StatusCode::NOT_FOUND, "not_found"),
        (
            Request::delete("/items/1"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (request, status, expected_code) in cases {
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(response.headers()["content-type"], "application/json");
        let keeps_allow = response.headers().contains_key("allow");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: ErrorBody = serde_json::from_slice(&bytes).expect("a JSON error body");
        assert_eq!(body.error.code, expected_code);
        assert!(!body.error.message.is_empty());
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(keeps_allow, "the Allow header survives the rewrite");
        }
    }
}
