//! The service's error type and the middleware that gives every error response our JSON shape.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use webhook_common::error_body::ErrorBody;

/// Everything a handler can fail with. The `#[error]` texts are safe to show a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: missing or wrong bearer token.
    #[error("a valid admin token is required: send `Authorization: Bearer <ADMIN_TOKEN>`")]
    Unauthorized,
    /// 404: no such resource.
    #[error("{0}")]
    NotFound(String),
    /// 400: a query or path parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 500: the database failed; the body is opaque, the cause is logged.
    #[error("internal error")]
    Database(#[from] sqlx::Error),
    /// 503: a webhook could not be recorded right now; the sender should retry it.
    #[error("the webhook could not be recorded right now; please retry")]
    Unavailable(#[source] sqlx::Error),
    /// 503: too many deliveries are in progress; the sender should retry shortly.
    #[error("too many webhook deliveries in progress; please retry shortly")]
    Overloaded,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) | ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Database(_) => "internal_error",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Overloaded => "overloaded",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Database(e) | ApiError::Unavailable(e) = &self {
            // Logged once here, inside the request span; the client gets an opaque body.
            tracing::error!(error = %e, "database error while handling a request");
        }
        let mut response = (
            self.status(),
            Json(ErrorBody::new(self.code(), self.to_string())),
        )
            .into_response();
        match self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) | ApiError::Overloaded => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// A stable code for a status that axum or tower produced on its own.
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_payload",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        s if s.is_server_error() => "internal_error",
        _ => "error",
    }
}

/// Largest plain-text rejection body we read to reuse as the message; axum's are one line.
const MAX_REJECTION_TEXT: usize = 4096;

/// Rewrites any error response that is not already JSON (axum's extractor rejections, the
/// 404/405 fallbacks, a caught panic) into an [`ErrorBody`], keeping status and headers such
/// as `Allow` and `Retry-After`.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = if status == StatusCode::REQUEST_TIMEOUT {
        "the request was not completed in time; send it again without pauses".to_owned()
    } else if status.is_server_error() {
        // Never echo internals (a panic message) to the client.
        "internal error".to_owned()
    } else {
        match axum::body::to_bytes(body, MAX_REJECTION_TEXT).await {
            Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_owned(),
            _ => status
                .canonical_reason()
                .unwrap_or("request refused")
                .to_owned(),
        }
    };
    let body = ErrorBody::new(code_for(status), text);
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(bytes))
}

/// The router fallback: 404 with our JSON body.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
