//! The checks both services run on their `GET /openapi.json`: an OpenAPI 3.1 document with
//! the shared pieces (the JSON error body, the `admin_token` bearer scheme), documenting
//! exactly the routes the router has.
//!
//! The router's routes are read from the router itself, not from a list kept by hand: the
//! path templates from axum's `Debug` of the router (its route table), the methods of each by
//! sending it every method on every path: only the method fallback answers 405 (no handler
//! does), so anything else is a route. A route added anywhere, documented or not, shows up.
//! The requests carry no token and no body, so no handler changes anything.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::admin_auth::concrete;

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

/// The document from the answer to `GET /openapi.json`, after checking that it was served as
/// `application/json` with 200.
pub async fn served_document(response: reqwest::Response) -> Value {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.expect("the document is read");
    serde_json::from_str(&text).expect("the document is JSON")
}

/// Checks what every document of this project has: OpenAPI 3.1, the `ErrorBody` schema and
/// the `admin_token` bearer scheme.
pub fn assert_document_is_complete(doc: &Value) {
    let version = doc["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3.1."), "openapi: {version}");
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_token"]["scheme"],
        "bearer"
    );
}

/// Checks that `doc` documents exactly the routes of `app`, no more and no fewer.
pub async fn assert_documents_exactly_the_routes_of(doc: &Value, app: Router) {
    let documented: BTreeSet<_> = documented(doc).into_keys().collect();
    let routed = routes_of(app).await;
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

/// `(METHOD, path template)` of every operation in `doc`, with whether it needs a token.
pub fn documented(doc: &Value) -> BTreeMap<(String, String), bool> {
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

/// Whether `doc` documents a 401 answer for `method` (upper case) on `path`.
pub fn documents_401(doc: &Value, method: &str, path: &str) -> bool {
    doc["paths"][path][method.to_lowercase()]["responses"]
        .get("401")
        .is_some()
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

/// `(METHOD, path template)` of every route `app` has.
pub async fn routes_of(app: Router) -> BTreeSet<(String, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use serde_json::json;

    #[tokio::test]
    async fn the_routes_of_a_router_are_read_from_the_router() {
        let app = Router::new()
            .route("/a", get(|| async {}).post(|| async {}))
            .route("/b/{id}", get(|| async {}));
        let routes = routes_of(app).await;
        let expected: BTreeSet<(String, String)> =
            [("GET", "/a"), ("POST", "/a"), ("GET", "/b/{id}")]
                .into_iter()
                .map(|(m, p)| (m.to_owned(), p.to_owned()))
                .collect();
        assert_eq!(routes, expected);
    }

    #[tokio::test]
    #[should_panic(expected = "routed but not documented")]
    async fn a_route_missing_from_the_document_fails() {
        let doc = json!({"paths": {"/a": {"get": {}}}});
        let app = Router::new().route("/a", get(|| async {}).post(|| async {}));
        assert_documents_exactly_the_routes_of(&doc, app).await;
    }

    #[test]
    fn documented_operations_say_whether_they_need_the_token() {
        let doc = json!({"paths": {"/a": {
            "get": {"security": [{"admin_token": []}], "responses": {"401": {}}},
            "post": {"security": [], "responses": {}},
        }}});
        let ops = documented(&doc);
        assert!(ops[&("GET".to_owned(), "/a".to_owned())]);
        assert!(!ops[&("POST".to_owned(), "/a".to_owned())]);
        assert!(documents_401(&doc, "GET", "/a"));
        assert!(!documents_401(&doc, "POST", "/a"));
    }
}
