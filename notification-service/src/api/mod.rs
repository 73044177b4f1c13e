//! HTTP routes, one file per resource, plus the admin-token extractor they share.

pub mod health;
pub mod metrics;
pub mod notifications;
pub mod openapi;
pub mod webhooks;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use secrecy::ExposeSecret;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::AppState;

/// Proof that the request carried `Authorization: Bearer <ADMIN_TOKEN>`.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized)?;
        let (scheme, token) = header.split_once(' ').ok_or(ApiError::Unauthorized)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized);
        }
        // Compare digests in constant time: timing then says nothing about how much of a
        // guess matched, nor (digests having one length) about the token's length, which a
        // byte-wise `ct_eq` reveals by returning early on a length mismatch.
        let expected = Sha256::digest(state.admin_token.expose_secret().as_bytes());
        let given = Sha256::digest(token.trim().as_bytes());
        if bool::from(given.as_slice().ct_eq(expected.as_slice())) {
            Ok(AdminAuth)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}
