//! The admin token: every management route answers 401 without it, with a wrong one or with
//! another scheme, and lets the right one through; public routes need none.

use orders_service::api::MANAGEMENT_ROUTES;
use reqwest::Method;
use test_support::admin_auth::{concrete, refused_authorizations};

use crate::support::{json_of, AppOptions, TestApp, ADMIN_TOKEN};

#[tokio::test]
async fn every_management_route_refuses_a_missing_wrong_or_non_bearer_token() {
    let app = TestApp::spawn(AppOptions::default()).await;
    for (method, path) in MANAGEMENT_ROUTES {
        let method: Method = method.parse().unwrap();
        let url = app.url(&concrete(path));
        for auth in refused_authorizations(ADMIN_TOKEN) {
            let mut request = app
                .http
                .request(method.clone(), &url)
                .header("content-type", "application/json")
                .body("{}");
            if let Some(auth) = &auth {
                request = request.header("authorization", auth);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            let body = json_of(r).await;
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn the_admin_token_opens_every_management_route() {
    let app = TestApp::spawn(AppOptions::default()).await;
    for (method, path) in MANAGEMENT_ROUTES {
        let method: Method = method.parse().unwrap();
        // The scheme is case-insensitive.
        let r = app
            .http
            .request(method.clone(), app.url(&concrete(path)))
            .header("authorization", format!("bearer {ADMIN_TOKEN}"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        // `/metrics` answers Prometheus text, the others JSON.
        let body: serde_json::Value =
            serde_json::from_str(&r.text().await.unwrap()).unwrap_or_default();
        // A random id is simply not found (or the body is incomplete): the route exists
        // and let the token through.
        assert!(
            ![401, 405].contains(&status) && body["error"]["code"] != "no_route",
            "{method} {path}: {status} {body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn public_routes_need_no_token() {
    let app = TestApp::spawn(AppOptions::default()).await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let id = app.create_order().await;
    let r = app
        .http
        .get(app.url(&format!("/orders/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}
