//! A handler that panics answers a JSON 500 that reveals nothing of the panic, through the
//! layers both services use, instead of dropping the connection.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{middleware, Router};
use tower::ServiceExt as _;
use tower_http::catch_panic::CatchPanicLayer;
use webhook_common::error_body::{json_errors, panic_response};

#[tokio::test]
async fn a_panicking_handler_answers_a_json_500_without_the_panic_text() {
    let app = Router::new()
        .route(
            "/boom",
            get(|| async {
                panic!("secret internal detail");
                #[allow(unreachable_code)]
                ()
            }),
        )
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(json_errors));
    let response = app
        .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "internal_error");
    assert!(!body.to_string().contains("secret"), "{body}");
}
