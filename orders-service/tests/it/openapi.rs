//! `GET /openapi.json`: public, OpenAPI 3.1, and it documents exactly the routes the router
//! has, with the admin token on exactly the routes that need it.
//!
//! The router's routes are read from the router itself, not from a list kept by hand: the
//! path templates from axum's `Debug` of the router (its route table), the methods of each by
//! sending it every method on every path: only the method fallback answers 405 (no handler
//! does), so anything else is a route. A route added anywhere, documented or not, shows up
//! here. The requests carry no token and no body, so no handler changes anything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::Router;
use clap::Parser as _;
use orders_service::dispatcher::{Dispatcher, DispatcherSettings};
use orders_service::store::Store;
use orders_service::{api, build_app, AppState, Config};
use secrecy::ExposeSecret as _;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::support::{json_of, AppOptions, TestApp, ADMIN_TOKEN};

/// Every method a route could have; HEAD is left out because axum answers it for every GET.
const METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
];

/// The operation keys of an OpenAPI path item.
const OPERATIONS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// `(METHOD, path template)` of every operation in `doc`, with whether it needs a token.
fn documented(doc: &Value) -> BTreeMap<(String, String), bool> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for op in OPERATIONS {
            if let Some(operation) = item.get(op) {
                let secured = operation["security"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty());
                out.insert((op.to_uppercase(), path.clone()), secured);
            }
        }
    }
    out
}

/// The path templates in the route table of `app`, from its `Debug`:
/// `Router { path_router: PathRouter { routes: .., node: Node { paths: {RouteId(0): "/a", ..} } }, fallback_router: .. }`.
fn route_table_paths(app: &Router) -> BTreeSet<String> {
    let debug = format!("{app:?}");
    let start = debug
        .find("node: Node { paths: {")
        .expect("axum's Debug of a Router shows its route table")
        + "node: Node { paths: {".len();
    let mut paths = BTreeSet::new();
    let mut chars = debug[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let path: String = chars.by_ref().take_while(|&c| c != '"').collect();
                paths.insert(path);
            }
            '}' => break,
            _ => {}
        }
    }
    assert!(!paths.is_empty(), "no paths found in {debug}");
    paths
}

/// A path template with its parameters filled in.
fn concrete(template: &str) -> String {
    template.replace("{id}", &uuid::Uuid::now_v7().to_string())
}

/// `(METHOD, path template)` of every route `app` has.
async fn routes_of(app: Router) -> BTreeSet<(String, String)> {
    let paths = route_table_paths(&app);
    let mut routes = BTreeSet::new();
    for path in paths {
        for method in METHODS {
            let request = Request::builder()
                .method(method.clone())
                .uri(concrete(&path))
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            if response.status() != StatusCode::METHOD_NOT_ALLOWED {
                routes.insert((method.to_string(), path.clone()));
            }
        }
    }
    routes
}

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
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    json_of(response).await
}

#[tokio::test]
async fn openapi_json_is_openapi_3_1_and_documents_exactly_the_routes_of_the_router() {
    let app = TestApp::spawn(AppOptions::default()).await;
    let doc = fetch_document(&app).await;
    let version = doc["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3.1."), "openapi: {version}");
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );

    let documented: BTreeSet<_> = documented(&doc).into_keys().collect();
    let dir = tempfile::tempdir().unwrap();
    let routed = routes_of(app_router(&dir).await).await;
    assert_eq!(
        documented.difference(&routed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not routed"
    );
    assert_eq!(
        routed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routed but not documented"
    );
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
        let documents_401 = doc["paths"][&path][method.to_lowercase()]["responses"]
            .get("401")
            .is_some();
        assert_eq!(documents_401, secured, "{method} {path}: 401 documented");
        assert_eq!(
            management.contains(&(method.clone(), path.clone())),
            secured,
            "{method} {path}: secured in the document vs MANAGEMENT_ROUTES"
        );
        let method: reqwest::Method = method.parse().unwrap();
        let send = |token: Option<&str>| {
            let mut request = app
                .http
                .request(method.clone(), app.url(&concrete(&path)))
                .header("content-type", "application/json")
                .body("{}");
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send()
        };
        let without = send(None).await.unwrap().status();
        let with = send(Some(ADMIN_TOKEN)).await.unwrap().status();
        assert_eq!(
            without == 401,
            secured,
            "{method} {path} without a token: {without}"
        );
        assert_ne!(with, 401, "{method} {path} with the token");
    }
    app.stop().await;
}
