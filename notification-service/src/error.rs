//! The service's error type and the middleware that gives every error response our JSON shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use webhook_common::error_body::{ErrorBody, ParamError};
use webhook_common::request::HasApiError;

use crate::store::WriteError;

/// Everything a handler can fail with. The `#[error]` texts are safe to show a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: no such resource.
    #[error("{0}")]
    NotFound(String),
    /// 400 (`invalid_query` or `invalid_path`): a query or path parameter is malformed or out
    /// of range; the body names it.
    #[error(transparent)]
    BadParam(#[from] ParamError),
    /// 500: the database failed; the body is opaque, the cause is logged.
    #[error("internal error")]
    Database(#[source] sqlx::Error),
    /// 503: the database is busy or unreachable for now (see [`crate::store::is_transient`]);
    /// the client should retry.
    #[error("the database is unavailable right now; please retry")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// 503: a webhook could not be recorded right now (its write or its batch failed, or the
    /// writer has stopped for shutdown); nothing of it is stored and the sender should retry.
    #[error("the webhook could not be recorded right now; please retry")]
    Unavailable(#[source] WriteError),
    /// 503: too many deliveries are in progress; the sender should retry shortly.
    #[error("too many webhook deliveries in progress; please retry shortly")]
    Overloaded,
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if crate::store::is_transient(&e) {
            ApiError::DatabaseUnavailable(e)
        } else {
            ApiError::Database(e)
        }
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadParam(_) => StatusCode::BAD_REQUEST,
            ApiError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) | ApiError::DatabaseUnavailable(_) | ApiError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::BadParam(e) => e.code(),
            ApiError::Database(_) => "internal_error",
            ApiError::Unavailable(_) | ApiError::DatabaseUnavailable(_) => "unavailable",
            ApiError::Overloaded => "overloaded",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Logged once here, inside the request span; the client gets an opaque body.
        match &self {
            ApiError::Database(e) => {
                tracing::error!(error = %e, "database error while handling a request");
            }
            ApiError::DatabaseUnavailable(e) => {
                tracing::warn!(error = %e, "database unavailable while handling a request");
            }
            ApiError::Unavailable(e) if e.is_closed() => {
                tracing::warn!("webhook refused: the database is closed (shutdown)");
            }
            ApiError::Unavailable(e) => {
                tracing::error!(error = %e, "database error while handling a request");
            }
            _ => {}
        }
        let body = match &self {
            ApiError::BadParam(e) => e.body(),
            other => ErrorBody::new(other.code(), other.to_string()),
        };
        let mut response = (self.status(), Json(body)).into_response();
        match self {
            ApiError::Unavailable(_) | ApiError::DatabaseUnavailable(_) | ApiError::Overloaded => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// The typed extractors of `webhook_common::request` (`AppQuery`, `AppPath`) reject with
/// this error.
impl HasApiError for crate::AppState {
    type ApiError = ApiError;
}

/// The router fallback: 404 with our JSON body.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
