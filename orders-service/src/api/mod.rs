//! HTTP routes, one file per resource, and the JSON answers for unknown routes and methods.

pub mod health;
pub mod orders;

use axum::http::{Method, Uri};

use crate::error::ApiError;

/// 404 for any path no route matches.
pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}

/// 405 for a known path with a method it does not support.
pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
