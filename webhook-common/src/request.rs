//! Typed request extractors whose rejection is the service's own error type, so a handler
//! takes `AppJson<Body>`, `AppQuery<Params>` or `AppPath<Uuid>` and never unwraps axum's
//! rejections by hand (the pattern of axum's `examples/error-handling`).
//!
//! The service names its error type once, on its state:
//!
//! ```ignore
//! impl webhook_common::request::HasApiError for AppState {
//!     type ApiError = crate::error::ApiError; // IntoResponse + From<ParamError> (+ From<JsonRejection> for AppJson)
//! }
//! ```
//!
//! A malformed query string or path parameter becomes a [`ParamError`] (400, naming the
//! parameter when it can be known); a JSON body that cannot be read is the service's own
//! answer to axum's [`JsonRejection`] (its status: 400, 413, 415 or 422).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::error_body::{ParamError, ParamLocation};

/// Names the error type the extractors of this module reject with; implemented by a service's
/// state type.
pub trait HasApiError {
    /// The service's HTTP error: `From<ParamError>` for [`AppQuery`] and [`AppPath`],
    /// `From<JsonRejection>` for [`AppJson`].
    type ApiError: IntoResponse;
}

/// A JSON body (`Content-Type: application/json`); rejected with the service's error.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: HasApiError + Send + Sync,
    S::ApiError: From<JsonRejection>,
{
    type Rejection = S::ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(AppJson(value))
    }
}

/// The query string as `T`; a malformed one is a [`ParamError`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AppQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: HasApiError + Send + Sync,
    S::ApiError: From<ParamError>,
{
    type Rejection = S::ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(AppQuery(value)),
            Err(rejection) => Err(query_error(&rejection).into()),
        }
    }
}

/// The path parameters as `T` (e.g. `Uuid`); one that does not parse is a [`ParamError`]
/// naming it: `/things/not-a-uuid` is a 400, not a 404 (see [`crate::pagination`] for why).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppPath<T>(pub T);

impl<T, S> FromRequestParts<S> for AppPath<T>
where
    T: DeserializeOwned + Send,
    S: HasApiError + Send + Sync,
    S::ApiError: From<ParamError>,
{
    type Rejection = S::ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(AppPath(value)),
            Err(rejection) => Err(path_error::<T>(&rejection).into()),
        }
    }
}

/// A query string that did not deserialise (a repeated parameter, say). serde names the
/// field in its message (``duplicate field `limit` ``), which is all there is to go on.
fn query_error(rejection: &QueryRejection) -> ParamError {
    let text = rejection.body_text();
    let name = text
        .split_once("field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name.to_owned());
    ParamError {
        location: ParamLocation::Query,
        problem: match name {
            Some(_) => text
                .split_once(": ")
                .map_or(text.clone(), |(_, why)| format!("is malformed: {why}")),
            None => text,
        },
        name,
    }
}

/// A path parameter of `T` that did not parse. Only a route whose template lacks the
/// parameter the handler asks for fails otherwise, a programming error the route tests catch.
fn path_error<T>(rejection: &PathRejection) -> ParamError {
    use axum::extract::path::ErrorKind;
    if let PathRejection::FailedToDeserializePathParams(e) = rejection {
        match e.kind() {
            ErrorKind::ParseErrorAtKey {
                key,
                value,
                expected_type,
            } => return ParamError::path(key.as_str(), must_be(expected_type, value, None)),
            // A single value (`AppPath<Uuid>`) fails here, naming its key but not its type.
            ErrorKind::DeserializeError {
                key,
                value,
                message,
            } => {
                let problem = must_be(std::any::type_name::<T>(), value, Some(message));
                return ParamError::path(key.as_str(), problem);
            }
            ErrorKind::InvalidUtf8InPathParam { key } => {
                return ParamError::path(key.as_str(), "is not valid UTF-8");
            }
            _ => {}
        }
    }
    ParamError {
        location: ParamLocation::Path,
        name: None,
        problem: rejection.body_text(),
    }
}

/// "must be a UUID, not "x"" for the types path parameters have; otherwise what serde said.
fn must_be(type_name: &str, value: &str, message: Option<&str>) -> String {
    let what = match type_name.rsplit("::").next().unwrap_or(type_name) {
        "Uuid" => "a UUID",
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "a whole number"
        }
        _ => {
            return match message {
                Some(message) => format!("is not valid, {value:?}: {message}"),
                None => format!("is not valid, {value:?}"),
            }
        }
    };
    format!("must be {what}, not {value:?}")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::response::Response;
    use axum::routing::{get, post};
    use axum::Router;
    use tower::ServiceExt as _;

    use super::*;
    use crate::error_body::ErrorBody;

    #[derive(Clone)]
    struct State;

    /// A stand-in service error: a JSON rejection keeps its status.
    struct TestError(StatusCode, ErrorBody);

    impl From<JsonRejection> for TestError {
        fn from(r: JsonRejection) -> Self {
            TestError(r.status(), ErrorBody::new("bad_json", r.body_text()))
        }
    }

    impl From<ParamError> for TestError {
        fn from(e: ParamError) -> Self {
            TestError(StatusCode::BAD_REQUEST, e.body())
        }
    }

    impl IntoResponse for TestError {
        fn into_response(self) -> Response {
            (self.0, Json(self.1)).into_response()
        }
    }

    impl HasApiError for State {
        type ApiError = TestError;
    }

    #[derive(serde::Deserialize)]
    struct Body1 {
        n: u32,
    }

    fn app() -> Router {
        Router::new()
            .route(
                "/things/{id}",
                get(|AppPath(id): AppPath<uuid::Uuid>| async move { id.to_string() }),
            )
            .route(
                "/list",
                get(
                    |AppQuery(q): AppQuery<crate::pagination::PageQuery>| async move {
                        q.limit().map(|l| l.to_string()).map_err(TestError::from)
                    },
                ),
            )
            .route(
                "/json",
                post(|AppJson(b): AppJson<Body1>| async move { b.n.to_string() }),
            )
            .with_state(State)
    }

    async fn send(request: axum::http::Request<Body>) -> (StatusCode, ErrorBody) {
        let response = app().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| ErrorBody::new("ok", String::from_utf8_lossy(&bytes)));
        (status, body)
    }

    fn get_(uri: &str) -> axum::http::Request<Body> {
        axum::http::Request::get(uri).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn a_bad_path_id_is_a_400_naming_it() {
        let (status, body) = send(get_("/things/not-a-uuid")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body.error.code, "invalid_path");
        assert!(body.error.fields.contains_key("id"), "{body:?}");
        assert!(body.error.message.contains("not-a-uuid"), "{body:?}");
        let (status, _) = send(get_(&format!("/things/{}", uuid::Uuid::nil()))).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn bad_query_parameters_are_400s_naming_them() {
        for query in ["limit=0", "limit=abc", "limit=1&limit=2"] {
            let (status, body) = send(get_(&format!("/list?{query}"))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(body.error.code, "invalid_query", "{query}");
            assert!(body.error.fields.contains_key("limit"), "{query}: {body:?}");
        }
        let (status, body) = send(get_("/list?limit=7")).await;
        assert_eq!((status, body.error.message.as_str()), (StatusCode::OK, "7"));
    }

    #[tokio::test]
    async fn a_json_rejection_is_the_services_answer() {
        let request = |content_type: &str, body: &'static str| {
            axum::http::Request::post("/json")
                .header("content-type", content_type)
                .body(Body::from(body))
                .unwrap()
        };
        let (status, body) = send(request("application/json", "{\"n\": 3}")).await;
        assert_eq!((status, body.error.message.as_str()), (StatusCode::OK, "3"));
        for (content_type, text, expected) in [
            ("application/json", "{", StatusCode::BAD_REQUEST),
            (
                "application/json",
                "{\"n\": -1}",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                "text/plain",
                "{\"n\": 3}",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
        ] {
            let (status, body) = send(request(content_type, text)).await;
            assert_eq!(status, expected, "{text}");
            assert_eq!(body.error.code, "bad_json");
        }
    }
}
