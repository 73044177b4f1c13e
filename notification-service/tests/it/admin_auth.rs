//! The admin token: every admin route answers 401 without it, with a wrong one or with another
//! scheme, and lets the right one through; the intake, health and the document need none.

use notification_service::api::MANAGEMENT_ROUTES;
use reqwest::Method;
use test_support::admin_auth::{concrete, refused_authorizations};

use crate::support::{assert_error, TestApp, ADMIN_TOKEN};

#[tokio::test]
async fn every_admin_route_refuses_a_missing_wrong_or_non_bearer_token() {
    let app = TestApp::spawn().await;
    for (method, path) in MANAGEMENT_ROUTES {
        let method: Method = method.parse().unwrap();
        let url = format!("{}{}", app.base, concrete(path));
        for auth in refused_authorizations(ADMIN_TOKEN) {
            let mut request = app.http.request(method.clone(), &url);
            if let Some(auth) = &auth {
                request = request.header("authorization", auth);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.headers()["www-authenticate"], "Bearer", "{method} {path}");
            assert_error(r, 401, "unauthorized").await;
        }
    }
}

#[tokio::test]
async fn the_admin_token_opens_every_admin_route() {
    let app = TestApp::spawn().await;
    for (method, path) in MANAGEMENT_ROUTES {
        let method: Method = method.parse().unwrap();
        // The scheme is case-insensitive.
        let r = app
            .http
            .request(method.clone(), format!("{}{}", app.base, concrete(path)))
            .header("authorization", format!("bearer {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        // A random id is simply not found: the route exists and let the token through.
        let status = r.status().as_u16();
        assert!([200, 404].contains(&status), "{method} {path}: {status}");
    }
}

#[tokio::test]
async fn public_routes_need_no_token() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_ne!(r.status().as_u16(), 401, "{path}");
    }
    // The intake authenticates by signature, not by token: unsigned is a 401 of its own.
    let r = app
        .http
        .post(app.intake())
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "webhook_verification_failed").await;
}
