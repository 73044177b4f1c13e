//! The JSON body of every HTTP error in this project:
//! `{"error": {"code": "...", "message": "...", "fields": {...}}}`.
//!
//! `code` is stable and machine-readable; `message` is a sentence for a person; `fields` (only on
//! validation errors, and on a malformed query or path parameter: [`ParamError`]) maps a field
//! path or a parameter name to what is wrong with it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use validator::{ValidationErrors, ValidationErrorsKind};

/// The outer object: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_payload`.
    pub code: String,
    /// Human-readable explanation of what is wrong and, where it helps, what to do.
    pub message: String,
    /// Per-field messages for validation errors, keyed by field path (`data.quantity`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, Vec<String>>,
}

impl ErrorBody {
    /// An error body without field details.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                fields: BTreeMap::new(),
            },
        }
    }

    /// An error body with per-field messages.
    pub fn with_fields(
        code: impl Into<String>,
        message: impl Into<String>,
        fields: BTreeMap<String, Vec<String>>,
    ) -> Self {
        let mut body = ErrorBody::new(code, message);
        body.error.fields = fields;
        body
    }
}

/// Where a malformed request parameter was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamLocation {
    /// The query string (`?limit=...`).
    Query,
    /// A path segment (`/things/{id}`).
    Path,
}

/// A query or path parameter that does not parse or is out of range: always a 400 whose body
/// names the parameter, in `message` and as the key of `fields`, with the code
/// `invalid_query` or `invalid_path`. Both services answer these the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct ParamError {
    /// Query or path.
    pub location: ParamLocation,
    /// The parameter, when it is known (a query string that does not parse at all names none).
    pub name: Option<String>,
    /// What is wrong, e.g. `must be a whole number from 1 to 200`.
    pub problem: String,
}

impl ParamError {
    /// The query parameter `name` is wrong: `problem`.
    pub fn query(name: impl Into<String>, problem: impl Into<String>) -> Self {
        ParamError {
            location: ParamLocation::Query,
            name: Some(name.into()),
            problem: problem.into(),
        }
    }

    /// The path parameter `name` is wrong: `problem`.
    pub fn path(name: impl Into<String>, problem: impl Into<String>) -> Self {
        ParamError {
            location: ParamLocation::Path,
            name: Some(name.into()),
            problem: problem.into(),
        }
    }

    /// `invalid_query` or `invalid_path`.
    pub fn code(&self) -> &'static str {
        match self.location {
            ParamLocation::Query => "invalid_query",
            ParamLocation::Path => "invalid_path",
        }
    }

    /// A sentence naming the parameter, e.g. ``query parameter `limit` must be ...``.
    pub fn message(&self) -> String {
        let location = match self.location {
            ParamLocation::Query => "query",
            ParamLocation::Path => "path",
        };
        match &self.name {
            Some(name) => format!("{location} parameter `{name}` {}", self.problem),
            None => self.problem.clone(),
        }
    }

    /// The JSON body: the code, the message, and `fields` keyed by the parameter's name.
    pub fn body(&self) -> ErrorBody {
        let fields = self
            .name
            .iter()
            .map(|name| (name.clone(), vec![self.problem.clone()]))
            .collect();
        ErrorBody::with_fields(self.code(), self.message(), fields)
    }
}

/// Flattens `validator` errors into `field path -> messages`, nested structs joined with `.`
/// and list items as `field[i]`.
pub fn field_errors(errors: &ValidationErrors) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    collect(errors, "", &mut out);
    out
}

fn collect(errors: &ValidationErrors, prefix: &str, out: &mut BTreeMap<String, Vec<String>>) {
    for (field, kind) in errors.errors() {
        let path = if prefix.is_empty() {
            field.to_string()
        } else {
            format!("{prefix}.{field}")
        };
        match kind {
            ValidationErrorsKind::Field(list) => {
                let messages = out.entry(path).or_default();
                messages.extend(list.iter().map(|e| match &e.message {
                    Some(m) => m.to_string(),
                    None => format!("failed the `{}` check", e.code),
                }));
            }
            ValidationErrorsKind::Struct(inner) => collect(inner, &path, out),
            ValidationErrorsKind::List(items) => {
                for (index, inner) in items {
                    collect(inner, &format!("{path}[{index}]"), out);
                }
            }
        }
    }
}

#[cfg(feature = "axum")]
pub use middleware::{json_errors, panic_response};

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for ParamError {
    fn into_response(self) -> axum::response::Response {
        (axum::http::StatusCode::BAD_REQUEST, axum::Json(self.body())).into_response()
    }
}

/// Every error response as JSON, whoever produced it.
#[cfg(feature = "axum")]
mod middleware {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::middleware::Next;
    use axum::response::Response;

    use super::ErrorBody;

    /// Largest plain-text rejection body read to reuse as the message; axum's are one line.
    const MAX_REJECTION_TEXT: usize = 4096;

    /// Middleware (`axum::middleware::from_fn(json_errors)`) that rewrites any 4xx/5xx response
    /// that is not already JSON into an [`ErrorBody`]: axum's extractor rejections (a bad path
    /// or query, a body over the limit), the 404/405 fallbacks, tower's timeout and load-shed
    /// answers, a caught panic. Status and headers such as `Allow` and `Retry-After` are kept;
    /// a 503 without `Retry-After` gets one. 5xx texts are never echoed, so no internals leak.
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
        let text = match status {
            StatusCode::REQUEST_TIMEOUT => {
                "the request was not completed in time; send it again without pauses".to_owned()
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                "too many requests in progress; please retry shortly".to_owned()
            }
            s if s.is_server_error() => "internal error".to_owned(),
            _ => match axum::body::to_bytes(body, MAX_REJECTION_TEXT).await {
                Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_owned(),
                _ => status
                    .canonical_reason()
                    .unwrap_or("request refused")
                    .to_owned(),
            },
        };
        let bytes = serde_json::to_vec(&ErrorBody::new(code_for(status), text)).unwrap_or_default();
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            parts
                .headers
                .entry(header::RETRY_AFTER)
                .or_insert(HeaderValue::from_static("1"));
        }
        Response::from_parts(parts, Body::from(bytes))
    }

    /// The answer to a handler that panicked, for
    /// `tower_http::catch_panic::CatchPanicLayer::custom(panic_response)`: the panic is logged
    /// (inside the request's span) and the client gets a JSON 500 that says nothing of it,
    /// instead of a dropped connection.
    pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        tracing::error!(panic = %message, "a request handler panicked; answered 500");
        let bytes = serde_json::to_vec(&ErrorBody::new("internal_error", "internal error"))
            .unwrap_or_default();
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    /// A stable code for a status that axum or tower produced on its own.
    fn code_for(status: StatusCode) -> &'static str {
        match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            s if s.is_server_error() => "internal_error",
            _ => "error",
        }
    }
}
