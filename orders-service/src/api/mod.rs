//! HTTP routes, one file per resource, the admin-token guard of the management routes, and
//! the JSON answers for unknown routes and methods.

pub mod admin;
pub mod deliveries;
pub mod endpoints;
pub mod events;
pub mod health;
pub mod openapi;
pub mod orders;

use axum::http::{Method, Uri};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::error::ApiError;

/// Every route behind the admin token as `(method, path template)`; each needs
/// `Authorization: Bearer <ADMIN_TOKEN>`. The guard is one layer over the whole management
/// router ([`admin::router`]) and over `/metrics` ([`admin::metrics_router`]), so a route added
/// there is protected whether or not it is listed here; the list is what the tests and the
/// docs walk through.
pub const MANAGEMENT_ROUTES: [(&str, &str); 13] = [
    // It lists every customer's email address.
    ("GET", "/orders"),
    ("POST", "/endpoints"),
    ("GET", "/endpoints"),
    ("GET", "/endpoints/{id}"),
    ("PATCH", "/endpoints/{id}"),
    ("DELETE", "/endpoints/{id}"),
    ("GET", "/endpoints/{id}/secret"),
    ("POST", "/endpoints/{id}/rotate-secret"),
    ("POST", "/endpoints/{id}/recover"),
    ("GET", "/events"),
    ("GET", "/events/{id}"),
    ("POST", "/deliveries/{id}/retry"),
    // Prometheus text: outside the bound on requests in progress, but behind the token.
    ("GET", "/metrics"),
];

/// The shape every list route answers with.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// This page.
    pub items: Vec<T>,
    /// Pass it back (`cursor` or `after`, per route) for the next page; `null` on the last.
    /// Page sizes and cursors follow `webhook_common::pagination`.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from `rows` fetched with a limit of `limit + 1`: the extra row only says that
    /// more follow, so it is dropped and the last row kept names the next cursor.
    pub fn from_overfetched<R>(
        mut rows: Vec<R>,
        limit: u32,
        cursor_of: impl Fn(&R) -> String,
        item_of: impl FnMut(&R) -> T,
    ) -> Self {
        let limit = limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(cursor_of)
        } else {
            None
        };
        Page {
            items: rows.iter().map(item_of).collect(),
            next_cursor,
        }
    }
}

/// Unix milliseconds as RFC 3339.
pub fn rfc3339(unix_ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// RFC 3339 as unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// 404 for any path no route matches.
pub async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}

/// 405 for a known path with a method it does not support.
pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}
