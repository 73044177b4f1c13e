//! The service's HTTP error type: every failure a handler can meet, each with its status and a
//! JSON body in the project's shape (`webhook_common::error_body::ErrorBody`).

use std::collections::BTreeMap;
use webhook_common::group_commit::WriteError;

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use webhook_common::error_body::{ErrorBody, ParamError};
use webhook_common::request::HasApiError;

/// What can go wrong while answering a request. `#[error]` texts are safe to show a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 422: the request is well-formed JSON but some fields are wrong.
    #[error("the request has invalid fields")]
    Validation(BTreeMap<String, Vec<String>>),
    /// 400 (or 413/415/422, per the rejection): the body could not be read as JSON.
    #[error("{message}")]
    BadBody {
        /// The status the rejection calls for.
        status: StatusCode,
        /// What is wrong with the body.
        message: String,
    },
    /// 400 (`invalid_query` or `invalid_path`): a query or path parameter is malformed or out
    /// of range; the body names it.
    #[error(transparent)]
    BadParam(#[from] ParamError),
    /// 400: a request header is malformed; the message names it.
    #[error("{0}")]
    BadHeader(String),
    /// 422: the `Idempotency-Key` was used within the last 24 h with a different request.
    /// Nothing was created.
    #[error(
        "this Idempotency-Key was already used with a different request body; \
         send a new key for a different order"
    )]
    IdempotencyKeyReused,
    /// 409: the request conflicts with the resource's current state.
    #[error("{0}")]
    Conflict(String),
    /// 404: no such resource.
    #[error("{0}")]
    NotFound(String),
    /// 404: no route matches the path.
    #[error("no route for {0}")]
    NoRoute(String),
    /// 405: the route exists but not with this method.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// 503 with `Retry-After`: the database is busy (locked by a long write, no pooled
    /// connection came free in time, a transient PostgreSQL condition such as a deadlock or a
    /// lost connection). Nothing was changed; the same request can be sent again.
    #[error("the service is busy right now; please retry shortly")]
    Unavailable(anyhow::Error),
    /// 503 with `Retry-After`: too many requests are in progress.
    #[error("too many requests in progress; please retry shortly")]
    Overloaded,
    /// 429 with `Retry-After`: this client sent more orders than `ORDER_RATE_LIMIT_PER_SEC`
    /// and `ORDER_RATE_LIMIT_BURST` allow. Nothing was created; the same request can be sent
    /// again after the wait.
    #[error("too many orders from this address; retry after {retry_after_secs} s")]
    RateLimited {
        /// Whole seconds to wait, at least 1 (the `Retry-After` value).
        retry_after_secs: u64,
    },
    /// 500: a failure of ours; the body says nothing more, the log says everything.
    #[error("internal error")]
    Internal(anyhow::Error),
}

/// Whether `e` is a condition that passes, so the client is told to retry (503 with
/// `Retry-After`) rather than given a 500:
/// - SQLite saying "busy" or "locked" (primary codes 5 and 6, including extended codes such
///   as 517 `SQLITE_BUSY_SNAPSHOT`);
/// - PostgreSQL's transient SQLSTATEs: serialization failure (40001), deadlock (40P01), lock
///   not available (55P03), too many connections (53300), the server shutting down or
///   starting (57P01, 57P02, 57P03), and every connection exception (class 08);
/// - the pool running out of time for a connection, the pool closing (shutdown), or the
///   connection failing (I/O: a network database that went away).
pub fn is_transient_db_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                return is_transient_sqlstate(pg.code());
            }
            db.code()
                .and_then(|code| code.parse::<i64>().ok())
                .is_some_and(|code| matches!(code & 0xff, 5 | 6))
        }
        _ => false,
    }
}

/// Whether a PostgreSQL SQLSTATE names a condition that passes (see
/// [`is_transient_db_error`]).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "53300" | "57P01" | "57P02" | "57P03"
        )
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        // A write refused because the writer is stopping (shutdown) is worth retrying
        // elsewhere or later, like a busy database; so is a batch that failed to commit for
        // being busy.
        let transient = e.chain().any(|c| {
            if let Some(e) = c.downcast_ref::<sqlx::Error>() {
                return is_transient_db_error(e);
            }
            c.downcast_ref::<WriteError>()
                .is_some_and(WriteError::is_transient)
        });
        if transient {
            ApiError::Unavailable(e)
        } else {
            ApiError::Internal(e)
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::from(anyhow::Error::from(e))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".to_owned(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                "the request body must be JSON with `content-type: application/json`".to_owned()
            }
            _ => rejection.body_text(),
        };
        ApiError::BadBody { status, message }
    }
}

/// The typed extractors of `webhook_common::request` (`AppJson`, `AppQuery`, `AppPath`)
/// reject with this error.
impl HasApiError for crate::AppState {
    type ApiError = ApiError;
}

impl ApiError {
    /// A 422 naming one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        ApiError::Validation(BTreeMap::from([(field.to_owned(), vec![message.into()])]))
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadBody { status, .. } => *status,
            ApiError::BadParam(_) | ApiError::BadHeader(_) => StatusCode::BAD_REQUEST,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) | ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "validation_failed",
            ApiError::BadBody { status, .. } => match *status {
                StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
                _ => "malformed_json",
            },
            ApiError::BadParam(e) => e.code(),
            ApiError::BadHeader(_) => "invalid_header",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::Conflict(_) => "conflict",
            ApiError::NotFound(_) => "not_found",
            ApiError::NoRoute(_) => "no_route",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Overloaded => "overloaded",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_secs } => Some((*retry_after_secs).max(1)),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        match &self {
            ApiError::Internal(e) => tracing::error!(error = format!("{e:#}"), "request failed"),
            ApiError::Unavailable(e) => {
                tracing::warn!(error = format!("{e:#}"), "database busy; answered 503");
            }
            _ => {}
        }
        let message = match &self {
            ApiError::Validation(fields) => {
                let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                format!("invalid fields: {}", names.join(", "))
            }
            other => other.to_string(),
        };
        let body = match self {
            ApiError::Validation(fields) => {
                ErrorBody::with_fields("validation_failed", message, fields)
            }
            ApiError::BadParam(e) => e.body(),
            ref other => ErrorBody::new(other.code(), message),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;
    use std::time::Duration;

    use sqlx::sqlite::SqliteConnectOptions;
    use sqlx::{Connection as _, SqliteConnection};

    use super::*;

    #[tokio::test]
    async fn a_locked_database_is_a_503_with_retry_after_not_a_500() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("busy.db").display());
        let options = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .busy_timeout(Duration::ZERO);
        let mut holder = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&mut holder)
            .await
            .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut holder)
            .await
            .unwrap();
        let mut other = SqliteConnection::connect_with(&options).await.unwrap();
        let err = sqlx::query("INSERT INTO t VALUES (1)")
            .execute(&mut other)
            .await
            .unwrap_err();
        assert!(is_transient_db_error(&err), "{err:?}");
        // As the store returns it: wrapped in anyhow with context.
        let api = ApiError::from(anyhow::Error::from(err).context("creating an order"));
        let response = api.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");

        let timed_out = ApiError::from(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE);
        let other = ApiError::from(sqlx::Error::RowNotFound).into_response();
        assert_eq!(other.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn transient_postgres_states_are_503s_and_others_are_not() {
        for code in ["40001", "40P01", "08006", "57P01", "53300"] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        // Unique and check violations, syntax errors: not worth a retry.
        for code in ["23505", "23514", "42601"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
        let closed = ApiError::from(sqlx::Error::PoolClosed).into_response();
        assert_eq!(closed.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn rate_limited_is_a_429_whose_retry_after_is_at_least_a_second() {
        for (secs, header) in [(0, "1"), (1, "1"), (7, "7")] {
            let response = ApiError::RateLimited {
                retry_after_secs: secs,
            }
            .into_response();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()[header::RETRY_AFTER], header);
        }
    }
}
