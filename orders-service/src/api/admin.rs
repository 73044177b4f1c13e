//! The admin token guard: every management route needs `Authorization: Bearer <ADMIN_TOKEN>`.

use std::fmt;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::Router;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::error::ApiError;
use crate::AppState;

/// The admin token, kept only as its SHA-256 digest: comparing fixed-length digests in
/// constant time reveals neither the token's bytes nor its length through timing.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    /// Keeps the digest of `token`.
    pub fn new(token: &SecretString) -> Self {
        AdminToken {
            digest: Sha256::digest(token.expose_secret().as_bytes()).into(),
        }
    }

    /// Whether `presented` is the token, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Every management route behind the guard. `route_layer` runs it only for matched routes,
/// so unknown paths still get their JSON 404.
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(super::orders::admin_router())
        .merge(super::endpoints::router())
        .merge(super::events::router())
        .merge(super::deliveries::router())
        .route_layer(axum::middleware::from_fn_with_state(state, require_admin))
}

/// Lets the request through only with the right bearer token; 401 with
/// `WWW-Authenticate: Bearer` otherwise.
pub async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(token) if state.admin_token.matches(token) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}
