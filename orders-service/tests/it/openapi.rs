//! `GET /openapi.json`: public, OpenAPI 3.1, and it documents exactly the routes the router
//! has, with the admin token on exactly the routes that need it. The checks shared with
//! notification-service (how the routes are read from the router) are in
//! `test_support::openapi`.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use clap::Parser as _;
use orders_service::dispatcher::{Dispatcher, DispatcherSettings};
use orders_service::store::Store;
use orders_service::{api, build_app, AppState, Config};
use secrecy::ExposeSecret as _;
use serde_json::Value;
use test_support::admin_auth::{concrete, statuses_without_and_with_token};
use test_support::openapi::{
    assert_document_is_complete, assert_documents_exactly_the_routes_of, documented, documents_401,
    served_document,
};

use crate::support::{AppOptions, TestApp, ADMIN_TOKEN};

/// The router `run` serves, over a fresh database.
async fn app_router(dir: &tempfile::TempDir) -> Router {
    let db = format!("sqlite://{}", dir.path().join("orders.db").display());
    let config = Config::try_parse_from([
        "orders-service",
        "--database-url",
        &db,
        "--admin-token",
        ADMIN_TOKEN,
    ])
    .expect("config parses");
    let store = Store::connect(&db).await.expect("database");
    store.migrate().await.expect("migrations");
    let dispatcher = Dispatcher::new(store.clone(), DispatcherSettings::from_config(&config))
        .expect("dispatcher");
    build_app(AppState {
        store,
        dispatch_wake: dispatcher.waker(),
        handoff: dispatcher.handoff(),
        max_body_bytes: 64 * 1024,
        admin_token: api::admin::AdminToken::new(config.admin_token.expose_secret()),
        allow_private_targets: false,
        request_timeout: Duration::from_secs(10),
        max_concurrent_requests: 16,
        order_rate_limit: None,
        dispatcher_running: dispatcher.liveness(),
    })
}

async fn fetch_document(app: &TestApp) -> Value {
    // No token: the document is public.
    let response = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    served_document(response).await
}

#[tokio::test]
async fn openapi_json_is_openapi_3_1_and_documents_exactly_the_routes_of_the_router() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let doc = fetch_document(&app).await;
    assert_document_is_complete(&doc);
    let dir = tempfile::tempdir().unwrap();
    assert_documents_exactly_the_routes_of(&doc, app_router(&dir).await).await;
    app.stop().await;
}

#[tokio::test]
async fn the_admin_token_is_documented_on_exactly_the_routes_that_refuse_requests_without_it() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let doc = fetch_document(&app).await;
    let operations = documented(&doc);
    let management: BTreeSet<(String, String)> = api::MANAGEMENT_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    for ((method, path), secured) in operations {
        let documents_401 = documents_401(&doc, &method, &path);
        assert_eq!(documents_401, secured, "{method} {path}: 401 documented");
        assert_eq!(
            management.contains(&(method.clone(), path.clone())),
            secured,
            "{method} {path}: secured in the document vs MANAGEMENT_ROUTES"
        );
        let method: reqwest::Method = method.parse().unwrap();
        let url = app.url(&concrete(&path));
        let (without, with) =
            statuses_without_and_with_token(&app.http, method.clone(), &url, ADMIN_TOKEN).await;
        assert_eq!(
            without == 401,
            secured,
            "{method} {path} without a token: {without}"
        );
        assert_ne!(with, 401, "{method} {path} with the token");
    }
    app.stop().await;
}
