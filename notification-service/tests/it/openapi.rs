//! `GET /openapi.json`: public, OpenAPI 3.1, and it documents exactly the routes the router
//! has, with the admin token on exactly the routes that need it. (The same checks as
//! orders-service's `tests/it/openapi.rs`.)
//!
//! The router's routes are read from the router itself, not from a list kept by hand: the
//! path templates from axum's `Debug` of the router (its route table), the methods of each by
//! sending it every method on every path: only the method fallback answers 405 (no handler
//! does), so anything else is a route. A route added anywhere, documented or not, shows up
//! here. The requests carry no token and no body, so no handler changes anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::Router;
use notification_service::{build_app, AppState, Store};
use serde_json::Value;
use tokio::sync::Notify;
use tower::ServiceExt as _;

use crate::support::{config, TestApp, ADMIN_TOKEN};

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
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn openapi_json_is_openapi_3_1_and_documents_exactly_the_routes_of_the_router() {
    let app = TestApp::spawn().await;
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
}

#[tokio::test]
async fn the_admin_token_is_documented_on_exactly_the_routes_that_refuse_requests_without_it() {
    let app = TestApp::spawn().await;
    let doc = fetch_document(&app).await;
    let operations = documented(&doc);
    for ((method, path), secured) in operations {
        let documents_401 = doc["paths"][&path][method.to_lowercase()]["responses"]
            .get("401")
            .is_some();
        // The intake answers 401 to a bad signature, and documents it, without the token.
        assert!(
            documents_401 || !secured,
            "{method} {path}: 401 not documented"
        );
        let method: reqwest::Method = method.parse().unwrap();
        let send = |token: Option<&str>| {
            let mut request = app
                .http
                .request(method.clone(), format!("{}{}", app.base, concrete(&path)))
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
            secured || documents_401,
            "{method} {path} without a token: {without}"
        );
        if secured {
            assert_ne!(with, 401, "{method} {path} with the token");
        }
    }
}
