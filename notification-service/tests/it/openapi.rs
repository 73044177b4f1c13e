//! `GET /openapi.json`: public, OpenAPI 3.1, and it documents exactly the routes the router
//! has, with the admin token on exactly the routes that need it. The checks shared with
//! orders-service (how the routes are read from the router) are in `test_support::openapi`.

use std::sync::Arc;

use axum::Router;
use notification_service::{build_app, AppState, Store};
use serde_json::Value;
use test_support::admin_auth::{concrete, statuses_without_and_with_token};
use test_support::openapi::{
    assert_document_is_complete, assert_documents_exactly_the_routes_of, documented, documents_401,
    served_document,
};
use tokio::sync::Notify;

use crate::support::{config, TestApp, ADMIN_TOKEN};

/// The router the service serves, over a fresh database.
async fn app_router(dir: &tempfile::TempDir) -> Router {
    let settings = config(dir, &[]).validate().expect("config");
    let store = Store::connect(&settings.database_url, settings.database_max_connections)
        .await
        .expect("database");
    store.migrate().await.expect("migrations");
    build_app(AppState::new(&settings, store, Arc::new(Notify::new())))
}

async fn fetch_document(app: &TestApp) -> Value {
    // No token: the document is public.
    let response = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    served_document(response).await
}

#[tokio::test]
async fn openapi_json_is_openapi_3_1_and_documents_exactly_the_routes_of_the_router() {
    let app = TestApp::spawn().await;
    let doc = fetch_document(&app).await;
    assert_document_is_complete(&doc);
    let dir = tempfile::tempdir().unwrap();
    assert_documents_exactly_the_routes_of(&doc, app_router(&dir).await).await;
}

#[tokio::test]
async fn the_admin_token_is_documented_on_exactly_the_routes_that_refuse_requests_without_it() {
    let app = TestApp::spawn().await;
    let doc = fetch_document(&app).await;
    let operations = documented(&doc);
    for ((method, path), secured) in operations {
        let documents_401 = documents_401(&doc, &method, &path);
        // The intake answers 401 to a bad signature, and documents it, without the token.
        assert!(
            documents_401 || !secured,
            "{method} {path}: 401 not documented"
        );
        let method: reqwest::Method = method.parse().unwrap();
        let url = format!("{}{}", app.base, concrete(&path));
        let (without, with) =
            statuses_without_and_with_token(&app.http, method.clone(), &url, ADMIN_TOKEN).await;
        assert_eq!(
            without == 401,
            secured || documents_401,
            "{method} {path} without a token: {without}"
        );
        if secured {
            assert_ne!(with, 401, "{method} {path} with the token");
        }
    }
}
