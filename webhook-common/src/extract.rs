//! An axum extractor that accepts only genuine webhooks.
//!
//! [`VerifiedWebhook`] consumes the request body, so it implements `FromRequest` and must be
//! the handler's last argument. It runs the checks in this order, each failing with a JSON
//! [`ErrorBody`] and the status in brackets:
//!
//! 1. `content-type` is `application/json` (415);
//! 2. the body fits the size bound (413), checked on `content-length` and while reading;
//! 3. Standard Webhooks signature and timestamp on the raw bytes (401, with one uniform message
//!    whatever failed; the precise reason is logged);
//! 4. JSON syntax (400);
//! 5. the contract: shape and field validation (422, with per-field messages).
//!
//! ```no_run
//! use axum::{routing::post, Router};
//! use webhook_common::extract::{VerifiedWebhook, WebhookIntake};
//! use webhook_common::Verifier;
//!
//! async fn receive(webhook: VerifiedWebhook) -> &'static str {
//!     println!("{} {}", webhook.id, webhook.event.type_name());
//!     "ok"
//! }
//!
//! let verifier = Verifier::from_secrets_str("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
//! let app: Router = Router::new()
//!     .route("/webhooks", post(receive))
//!     .with_state(WebhookIntake::new(verifier));
//! ```

use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use validator::Validate;

use crate::error_body::{field_errors, ErrorBody};
use crate::event::Event;
use crate::signing::{Verifier, VerifyError};

/// Default bound on a webhook body: 256 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// What the extractor needs from the application state (via `FromRef`).
#[derive(Debug, Clone)]
pub struct WebhookIntake {
    /// Secrets and timestamp tolerance.
    pub verifier: Verifier,
    /// Bodies longer than this are refused with 413 before any verification work.
    pub max_body_bytes: usize,
}

impl WebhookIntake {
    /// Intake with the default 256 KiB body bound.
    pub fn new(verifier: Verifier) -> Self {
        WebhookIntake {
            verifier,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Sets the body size bound.
    pub fn with_max_body_bytes(mut self, max_body_bytes: usize) -> Self {
        self.max_body_bytes = max_body_bytes;
        self
    }
}

/// A webhook whose signature and timestamp verified and whose body is a valid `T`.
#[derive(Debug, Clone)]
pub struct VerifiedWebhook<T = Event> {
    /// `webhook-id`: the idempotency key, identical on every retry of one event.
    pub id: String,
    /// `webhook-timestamp` of this attempt (seconds since the Unix epoch).
    pub timestamp: i64,
    /// The parsed, validated body.
    pub event: T,
}

/// Why a request was not accepted as a webhook. Its response is a JSON [`ErrorBody`].
#[derive(Debug, thiserror::Error)]
pub enum WebhookRejection {
    /// 415: the body is not declared as JSON.
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    /// 413: the body exceeds the bound.
    #[error("body exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The bound in bytes.
        limit: usize,
    },
    /// 400: the body could not be read (client went away, broken chunking).
    #[error("the request body could not be read")]
    BodyUnreadable,
    /// 401: signature, id or timestamp did not verify.
    #[error("webhook verification failed: {0}")]
    Unverified(#[source] VerifyError),
    /// 400: the body is not well-formed JSON.
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    /// 422: well-formed JSON that breaks the contract.
    #[error("payload does not match the event contract: {message}")]
    InvalidPayload {
        /// Summary of what is wrong.
        message: String,
        /// Per-field messages (empty when the shape itself is wrong).
        fields: std::collections::BTreeMap<String, Vec<String>>,
    },
}

impl WebhookRejection {
    /// The HTTP status this rejection answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            WebhookRejection::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            WebhookRejection::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookRejection::BodyUnreadable | WebhookRejection::MalformedJson(_) => {
                StatusCode::BAD_REQUEST
            }
            WebhookRejection::Unverified(_) => StatusCode::UNAUTHORIZED,
            WebhookRejection::InvalidPayload { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The stable error code in the response body.
    pub fn code(&self) -> &'static str {
        match self {
            WebhookRejection::UnsupportedMediaType => "unsupported_media_type",
            WebhookRejection::PayloadTooLarge { .. } => "payload_too_large",
            WebhookRejection::BodyUnreadable => "body_unreadable",
            WebhookRejection::Unverified(_) => "webhook_verification_failed",
            WebhookRejection::MalformedJson(_) => "malformed_json",
            WebhookRejection::InvalidPayload { .. } => "invalid_payload",
        }
    }

    /// The JSON body. For 401 it is the same whatever failed, so it tells a forger nothing.
    pub fn body(&self) -> ErrorBody {
        match self {
            WebhookRejection::Unverified(_) => ErrorBody::new(
                self.code(),
                "The webhook signature, id or timestamp is missing or invalid. Sign \
                 \"{webhook-id}.{webhook-timestamp}.{body}\" as Standard Webhooks v1 with a \
                 current secret, and send a timestamp within a few minutes of now.",
            ),
            WebhookRejection::InvalidPayload { fields, .. } => {
                ErrorBody::with_fields(self.code(), self.to_string(), fields.clone())
            }
            _ => ErrorBody::new(self.code(), self.to_string()),
        }
    }
}

impl IntoResponse for WebhookRejection {
    fn into_response(self) -> Response {
        (self.status(), Json(self.body())).into_response()
    }
}

impl<S, T> FromRequest<S> for VerifiedWebhook<T>
where
    S: Send + Sync,
    WebhookIntake: FromRef<S>,
    T: DeserializeOwned + Validate,
{
    type Rejection = WebhookRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let intake = WebhookIntake::from_ref(state);
        let result = verify_request::<T>(req, &intake).await;
        if let Err(rejection) = &result {
            match rejection {
                WebhookRejection::Unverified(reason) => tracing::warn!(
                    reason = reason.kind(),
                    detail = %reason,
                    "webhook rejected: verification failed"
                ),
                other => tracing::info!(code = other.code(), detail = %other, "webhook rejected"),
            }
        }
        result
    }
}

async fn verify_request<T: DeserializeOwned + Validate>(
    req: Request,
    intake: &WebhookIntake,
) -> Result<VerifiedWebhook<T>, WebhookRejection> {
    let (parts, body) = req.into_parts();
    if !is_json(parts.headers.get(header::CONTENT_TYPE)) {
        return Err(WebhookRejection::UnsupportedMediaType);
    }
    let limit = intake.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(WebhookRejection::PayloadTooLarge { limit });
    }
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(WebhookRejection::PayloadTooLarge { limit });
        }
        Err(_) => return Err(WebhookRejection::BodyUnreadable),
    };

    let verified = intake
        .verifier
        .verify(&parts.headers, &bytes)
        .map_err(WebhookRejection::Unverified)?;

    let event: T = serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => WebhookRejection::InvalidPayload {
            message: e.to_string(),
            fields: Default::default(),
        },
        _ => WebhookRejection::MalformedJson(e.to_string()),
    })?;
    event
        .validate()
        .map_err(|errors| WebhookRejection::InvalidPayload {
            message: "one or more fields are invalid".into(),
            fields: field_errors(&errors),
        })?;

    Ok(VerifiedWebhook {
        id: verified.id,
        timestamp: verified.timestamp,
        event,
    })
}

/// `application/json`, optionally with parameters such as `; charset=utf-8`, any case.
fn is_json(value: Option<&axum::http::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}
