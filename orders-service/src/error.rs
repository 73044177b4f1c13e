//! The service's HTTP error type: every failure a handler can meet, each with its status and a
//! JSON body in the project's shape (`webhook_common::error_body::ErrorBody`).

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use webhook_common::error_body::ErrorBody;

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
    /// 400: the query string is malformed.
    #[error("{0}")]
    BadQuery(String),
    /// 401: a management route without the right `Authorization: Bearer <ADMIN_TOKEN>`.
    #[error("this route needs `Authorization: Bearer <ADMIN_TOKEN>`")]
    Unauthorized,
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
    /// 500: a failure of ours; the body says nothing more, the log says everything.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(e.into())
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

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadQuery(rejection.body_text())
    }
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
            ApiError::BadQuery(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotFound(_) | ApiError::NoRoute(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
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
            ApiError::BadQuery(_) => "invalid_query",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Conflict(_) => "conflict",
            ApiError::NotFound(_) => "not_found",
            ApiError::NoRoute(_) => "no_route",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = format!("{e:#}"), "request failed");
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
            ref other => ErrorBody::new(other.code(), message),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
