//! The admin token guard both services put in front of their management routes, as one route
//! layer over the router that holds them: a route added to that router is protected without
//! anyone remembering to ask for it.
//!
//! ```no_run
//! use axum::{middleware, routing::get, Router};
//! use webhook_common::admin_auth::{require_admin, AdminToken};
//!
//! let token = AdminToken::new("a-long-random-admin-token");
//! let admin: Router = Router::new()
//!     .route("/things", get(|| async { "secret things" }))
//!     .route_layer(middleware::from_fn_with_state(token, require_admin));
//! ```
//!
//! `route_layer` runs the check only for matched routes, so an unknown path still gets its 404.
//! A request without `Authorization: Bearer <token>` (scheme case-insensitive, RFC 9110
//! §11.1), with another scheme or with a wrong token gets a 401 with `WWW-Authenticate: Bearer`
//! and the JSON [`ErrorBody`] `unauthorized`.

use std::fmt;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::Json;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::error_body::ErrorBody;

/// The `error.code` of the 401.
pub const UNAUTHORIZED_CODE: &str = "unauthorized";
/// The `error.message` of the 401.
pub const UNAUTHORIZED_MESSAGE: &str =
    "a valid admin token is required: send `Authorization: Bearer <ADMIN_TOKEN>`";

/// The admin token, kept only as its SHA-256 digest: comparing fixed-length digests in
/// constant time reveals neither the token's bytes nor its length through timing (a byte-wise
/// `ct_eq` returns early on a length mismatch).
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    /// Keeps the digest of `token`.
    pub fn new(token: &str) -> Self {
        AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `presented` is the token, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }

    /// Whether `headers` carry `Authorization: Bearer <this token>`.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .is_some_and(|(_, token)| self.matches(token.trim()))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Middleware for `axum::middleware::from_fn_with_state(token, require_admin)`: lets the
/// request through only with the right bearer token, [`unauthorized`] otherwise.
pub async fn require_admin(
    State(token): State<AdminToken>,
    request: Request,
    next: Next,
) -> Response {
    if token.authorizes(request.headers()) {
        next.run(request).await
    } else {
        unauthorized()
    }
}

/// 401 with `WWW-Authenticate: Bearer` and the JSON body `unauthorized`.
pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        Json(ErrorBody::new(UNAUTHORIZED_CODE, UNAUTHORIZED_MESSAGE)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use axum::{middleware, Router};
    use tower::ServiceExt as _;

    use super::*;

    const TOKEN: &str = "admin-token-0123456789";

    fn app() -> Router {
        Router::new()
            .route("/admin", get(|| async { "ok" }))
            .route_layer(middleware::from_fn_with_state(
                AdminToken::new(TOKEN),
                require_admin,
            ))
    }

    async fn status_with(authorization: Option<&str>) -> (StatusCode, HeaderMap, ErrorBody) {
        let mut request = Request::get("/admin");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = app()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 4096).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| ErrorBody::new("none", String::from_utf8_lossy(&bytes)));
        (parts.status, parts.headers, body)
    }

    #[tokio::test]
    async fn only_the_bearer_token_opens_the_route() {
        for ok in [format!("Bearer {TOKEN}"), format!("bearer  {TOKEN} ")] {
            assert_eq!(status_with(Some(&ok)).await.0, StatusCode::OK, "{ok}");
        }
        let short = &TOKEN[..TOKEN.len() - 1];
        for refused in [
            None,
            Some(format!("Bearer {TOKEN}x")),
            Some(format!("Bearer {short}")),
            Some("Bearer ".to_owned()),
            Some(format!("Basic {TOKEN}")),
            Some(TOKEN.to_owned()),
        ] {
            let (status, headers, body) = status_with(refused.as_deref()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused:?}");
            assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
            assert_eq!(body.error.code, UNAUTHORIZED_CODE);
        }
    }

    #[test]
    fn debug_does_not_show_the_token() {
        assert_eq!(
            format!("{:?}", AdminToken::new(TOKEN)),
            "AdminToken(<redacted>)"
        );
    }
}
