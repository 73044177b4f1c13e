//! Subscriptions (admin): create, list, read, change, delete, reveal and rotate the signing
//! secret, and recover an endpoint's failed deliveries.
//!
//! Only the create and rotate answers and `GET /endpoints/{id}/secret` carry a secret.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;
use webhook_common::error_body::ErrorBody;
use webhook_common::pagination::PageQuery;
use webhook_common::request::{AppJson, AppPath, AppQuery};
use webhook_common::{EventType, Secret};

use super::{parse_rfc3339, rfc3339, Page};
use crate::domain::{Endpoint, EndpointPatch, NewEndpoint, DEFAULT_ROTATION_GRACE};
use crate::error::ApiError;
use crate::store::{now_ms, EndpointSecret};
use crate::{ssrf, AppState};

/// Most endpoints the service keeps; every order fans out to each subscribed one.
pub const MAX_ENDPOINTS: i64 = 1000;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Longest grace period a rotation may ask for.
pub const MAX_GRACE_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most deliveries one `recover` call requeues.
pub const MAX_RECOVER_PER_CALL: u32 = 1000;

/// The subscription routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/endpoints", post(create_endpoint).get(list_endpoints))
        .route(
            "/endpoints/{id}",
            get(get_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
        .route("/endpoints/{id}/secret", get(get_secret))
        .route("/endpoints/{id}/rotate-secret", post(rotate_secret))
        .route("/endpoints/{id}/recover", post(recover))
}

/// An endpoint as the API shows it; never with its secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EndpointResponse {
    /// The endpoint's id.
    pub id: Uuid,
    /// Where events are POSTed.
    pub url: String,
    /// Free text.
    pub description: Option<String>,
    /// The event types it receives.
    pub event_types: Vec<String>,
    /// Whether deliveries are attempted.
    pub enabled: bool,
    /// Why it is disabled (a 410 from the receiver, or the API).
    pub disabled_reason: Option<String>,
    /// Ensured from `NOTIFICATION_WEBHOOK_URL` (its URL and types are reset at each start).
    pub from_configuration: bool,
    /// RFC 3339: until when the previous secret still signs, during a rotation.
    pub previous_secret_expires_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<&Endpoint> for EndpointResponse {
    fn from(e: &Endpoint) -> Self {
        EndpointResponse {
            id: e.id,
            url: e.url.clone(),
            description: e.description.clone(),
            event_types: e.event_types.clone(),
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            from_configuration: e.from_configuration,
            previous_secret_expires_at: e.previous_secret_expires_at.map(rfc3339),
            created_at: rfc3339(e.created_at),
            updated_at: rfc3339(e.updated_at),
        }
    }
}

/// The answer to `POST /endpoints`: the endpoint and its new secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedEndpoint {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointResponse,
    /// `whsec_...`: give it to the receiver.
    pub secret: String,
}

/// An endpoint's signing secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretResponse {
    /// `whsec_...`: signs every delivery.
    pub secret: String,
    /// RFC 3339: until when the previous secret also signs; `null` when it no longer does.
    pub previous_secret_expires_at: Option<String>,
}

impl From<EndpointSecret> for SecretResponse {
    fn from(s: EndpointSecret) -> Self {
        SecretResponse {
            secret: s.secret.expose_whsec(),
            previous_secret_expires_at: s.previous_expires_at.map(rfc3339),
        }
    }
}

/// Body of `POST /endpoints`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// http(s) URL.
    pub url: String,
    /// Event types, e.g. `["order.paid"]`.
    #[schema(min_items = 1, value_type = Vec<super::openapi::EventTypeName>)]
    pub event_types: Vec<String>,
    /// Free text.
    pub description: Option<String>,
}

/// Body of `PATCH /endpoints/{id}`; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// New URL.
    pub url: Option<String>,
    /// New event types.
    #[schema(min_items = 1, value_type = Option<Vec<super::openapi::EventTypeName>>)]
    pub event_types: Option<Vec<String>>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New description; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Body of `POST /endpoints/{id}/rotate-secret` (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateBody {
    /// How long the previous secret keeps signing; default 86400 (24 h), 0 for not at all.
    #[schema(maximum = 2_592_000)]
    pub grace_period_secs: Option<u64>,
}

/// Body of `POST /endpoints/{id}/recover`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecoverBody {
    /// RFC 3339: requeue failed deliveries of events created at or after this.
    pub since: String,
    /// RFC 3339: ... and before this (default: now).
    pub until: Option<String>,
}

/// The answer to a recovery.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecoverResponse {
    /// How many failed deliveries are due again.
    pub requeued: u64,
    /// Whether failed deliveries remain in the window (call again).
    pub more: bool,
}

type Fields = BTreeMap<String, Vec<String>>;

fn complain(fields: &mut Fields, field: &str, message: impl Into<String>) {
    fields
        .entry(field.to_owned())
        .or_default()
        .push(message.into());
}

/// Checks a URL with the SSRF guard as configured.
async fn check_url(state: &AppState, url: &str, fields: &mut Fields) -> Option<String> {
    match ssrf::check_target(url, state.allow_private_targets).await {
        Ok(parsed) => Some(parsed.to_string()),
        Err(e) => {
            complain(fields, "url", e.to_string());
            None
        }
    }
}

/// Known, deduplicated event types in the order given.
fn check_event_types(types: &[String], fields: &mut Fields) -> Option<Vec<String>> {
    if types.is_empty() {
        complain(
            fields,
            "event_types",
            format!(
                "must name at least one event type, e.g. [{:?}]",
                EventType::ALL[0].as_str()
            ),
        );
        return None;
    }
    let mut known = Vec::new();
    let mut ok = true;
    for (i, t) in types.iter().enumerate() {
        match t.parse::<EventType>() {
            Ok(t) if !known.contains(&t.as_str().to_owned()) => known.push(t.as_str().to_owned()),
            Ok(_) => {}
            Err(e) => {
                complain(fields, &format!("event_types[{i}]"), e.to_string());
                ok = false;
            }
        }
    }
    ok.then_some(known)
}

fn check_description(description: Option<&str>, fields: &mut Fields) -> bool {
    let ok = description.is_none_or(|d| {
        d.chars().count() <= MAX_DESCRIPTION_CHARS
            && !d.chars().any(|c| c.is_control() && c != '\n')
    });
    if !ok {
        complain(
            fields,
            "description",
            format!(
                "must be at most {MAX_DESCRIPTION_CHARS} characters without control characters"
            ),
        );
    }
    ok
}

/// `POST /endpoints`.
#[utoipa::path(
    post,
    path = "/endpoints",
    tag = "endpoints",
    security(("admin_token" = [])),
    request_body(content = CreateBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The endpoint and its new secret", body = CreatedEndpoint,
            headers(("Location" = String, description = "`/endpoints/{id}`"))),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "The service keeps its most endpoints already; delete one first", body = ErrorBody),
        (status = 413, description = "The body is over `MAX_BODY_BYTES`", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "Invalid fields (`error.fields` says which)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(endpoint_id))]
async fn create_endpoint(
    State(state): State<AppState>,
    AppJson(body): AppJson<CreateBody>,
) -> Result<impl IntoResponse, ApiError> {
    let mut fields = Fields::new();
    let types = check_event_types(&body.event_types, &mut fields);
    let described = check_description(body.description.as_deref(), &mut fields);
    let url = check_url(&state, &body.url, &mut fields).await;
    let (Some(url), Some(event_types), true) = (url, types, described) else {
        return Err(ApiError::Validation(fields));
    };
    // Checked before the insert, so concurrent creations may pass it together; the cap
    // only needs to bound the fan-out, not to be exact.
    if state.store.count_endpoints().await? >= MAX_ENDPOINTS {
        return Err(ApiError::Conflict(format!(
            "there are already {MAX_ENDPOINTS} endpoints, the most this service keeps; delete one first"
        )));
    }
    let secret = Secret::generate();
    let new = NewEndpoint {
        url,
        description: body.description,
        event_types,
    };
    let endpoint = state.store.create_endpoint(&new, &secret).await?;
    tracing::Span::current().record("endpoint_id", tracing::field::display(endpoint.id));
    tracing::info!(event_types = ?endpoint.event_types, "endpoint created");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/endpoints/{}", endpoint.id))],
        Json(CreatedEndpoint {
            endpoint: EndpointResponse::from(&endpoint),
            secret: secret.expose_whsec(),
        }),
    ))
}

/// `GET /endpoints?cursor=&limit=`: oldest first.
#[utoipa::path(
    get,
    path = "/endpoints",
    tag = "endpoints",
    params(PageQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "A page of endpoints, oldest first", body = Page<EndpointResponse>),
        (status = 400, description = "A bad `limit` or a cursor this API did not issue (the body names it)", body = ErrorBody),
    )
)]
async fn list_endpoints(
    State(state): State<AppState>,
    AppQuery(page): AppQuery<PageQuery>,
) -> Result<Json<Page<EndpointResponse>>, ApiError> {
    let limit = page.limit()?;
    let after = page.cursor(|c| c.parse::<Uuid>().ok())?;
    let endpoints = state.store.list_endpoints(after, limit + 1).await?;
    Ok(Json(Page::from_overfetched(
        endpoints,
        limit,
        |e| e.id.to_string(),
        |e| EndpointResponse::from(e),
    )))
}

async fn find(state: &AppState, id: Uuid) -> Result<Endpoint, ApiError> {
    state.store.endpoint(id).await?.ok_or_else(|| not_found(id))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound(format!("no endpoint with id \"{id}\""))
}

/// `GET /endpoints/{id}`.
#[utoipa::path(
    get,
    path = "/endpoints/{id}",
    tag = "endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The endpoint", body = EndpointResponse),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No endpoint with this id", body = ErrorBody),
    )
)]
async fn get_endpoint(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<EndpointResponse>, ApiError> {
    let endpoint = find(&state, id).await?;
    Ok(Json(EndpointResponse::from(&endpoint)))
}

/// `PATCH /endpoints/{id}`.
#[utoipa::path(
    patch,
    path = "/endpoints/{id}",
    tag = "endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("admin_token" = [])),
    request_body(content = UpdateBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The endpoint, changed", body = EndpointResponse),
        (status = 400, description = "Malformed JSON, or the id is not a UUID", body = ErrorBody),
        (status = 404, description = "No endpoint with this id", body = ErrorBody),
        (status = 413, description = "The body is over `MAX_BODY_BYTES`", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "Invalid fields (`error.fields` says which)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
async fn update_endpoint(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<UpdateBody>,
) -> Result<Json<EndpointResponse>, ApiError> {
    let mut fields = Fields::new();
    let event_types = match &body.event_types {
        Some(types) => check_event_types(types, &mut fields),
        None => None,
    };
    check_description(body.description.clone().flatten().as_deref(), &mut fields);
    let url = match &body.url {
        Some(url) => check_url(&state, url, &mut fields).await,
        None => None,
    };
    if !fields.is_empty() {
        return Err(ApiError::Validation(fields));
    }
    let patch = EndpointPatch {
        url,
        description: body.description,
        event_types,
        enabled: body.enabled,
    };
    let endpoint = state
        .store
        .update_endpoint(id, &patch)
        .await?
        .ok_or_else(|| not_found(id))?;
    tracing::info!(enabled = endpoint.enabled, "endpoint updated");
    if patch.enabled == Some(true) {
        // Deliveries held back while it was disabled are due now.
        state.dispatch_wake.notify_one();
    }
    Ok(Json(EndpointResponse::from(&endpoint)))
}

/// `DELETE /endpoints/{id}`: the endpoint, its deliveries and their attempts go; events stay.
#[utoipa::path(
    delete,
    path = "/endpoints/{id}",
    tag = "endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "Deleted, with its deliveries and their attempts"),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No endpoint with this id", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
async fn delete_endpoint(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    if !state
        .store
        .delete_endpoint(id, crate::store::DELETE_BATCH)
        .await?
    {
        return Err(not_found(id));
    }
    tracing::info!("endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /endpoints/{id}/secret`.
#[utoipa::path(
    get,
    path = "/endpoints/{id}/secret",
    tag = "endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "The endpoint's signing secret", body = SecretResponse),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No endpoint with this id", body = ErrorBody),
    )
)]
async fn get_secret(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
) -> Result<Json<SecretResponse>, ApiError> {
    let secret = state
        .store
        .endpoint_secret(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(secret.into()))
}

/// `POST /endpoints/{id}/rotate-secret` with an optional `{"grace_period_secs": N}`.
#[utoipa::path(
    post,
    path = "/endpoints/{id}/rotate-secret",
    tag = "endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("admin_token" = [])),
    request_body(content = Option<RotateBody>, content_type = "application/json",
        description = "Optional: an empty body means the default grace period"),
    responses(
        (status = 200, description = "The new secret", body = SecretResponse),
        (status = 400, description = "Malformed JSON, or the id is not a UUID", body = ErrorBody),
        (status = 404, description = "No endpoint with this id", body = ErrorBody),
        (status = 413, description = "The body is over `MAX_BODY_BYTES`", body = ErrorBody),
        (status = 422, description = "Invalid fields (`error.fields` says which)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
async fn rotate_secret(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
    body: Bytes,
) -> Result<Json<SecretResponse>, ApiError> {
    // The body is optional, so an empty one (with or without a content type) means defaults.
    let body: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        Json::<RotateBody>::from_bytes(&body)
            .map_err(ApiError::from)?
            .0
    };
    let grace = match body.grace_period_secs {
        None => DEFAULT_ROTATION_GRACE,
        Some(secs) if Duration::from_secs(secs) <= MAX_GRACE_PERIOD => Duration::from_secs(secs),
        Some(_) => {
            return Err(ApiError::field(
                "grace_period_secs",
                format!("must be from 0 to {}", MAX_GRACE_PERIOD.as_secs()),
            ))
        }
    };
    let secret = Secret::generate();
    let rotated = state
        .store
        .rotate_secret(id, &secret, grace)
        .await?
        .ok_or_else(|| not_found(id))?;
    tracing::info!(grace_secs = grace.as_secs(), "endpoint secret rotated");
    Ok(Json(rotated.into()))
}

/// `POST /endpoints/{id}/recover` with `{"since": RFC 3339, "until"?: RFC 3339}`.
#[utoipa::path(
    post,
    path = "/endpoints/{id}/recover",
    tag = "endpoints",
    params(("id" = Uuid, Path, description = "The endpoint's id")),
    security(("admin_token" = [])),
    request_body(content = RecoverBody, content_type = "application/json"),
    responses(
        (status = 200, description = "How many failed deliveries are due again", body = RecoverResponse),
        (status = 400, description = "Malformed JSON, or the id is not a UUID", body = ErrorBody),
        (status = 404, description = "No endpoint with this id", body = ErrorBody),
        (status = 413, description = "The body is over `MAX_BODY_BYTES`", body = ErrorBody),
        (status = 415, description = "Not `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "Invalid fields (`error.fields` says which)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(endpoint_id = %id))]
async fn recover(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
    AppJson(body): AppJson<RecoverBody>,
) -> Result<Json<RecoverResponse>, ApiError> {
    find(&state, id).await?;
    let mut fields = Fields::new();
    let since = parse_rfc3339(&body.since);
    if since.is_none() {
        complain(
            &mut fields,
            "since",
            "must be an RFC 3339 time such as 2026-01-31T12:00:00Z",
        );
    }
    let until = match body.until.as_deref() {
        None => Some(now_ms().saturating_add(1)),
        Some(text) => {
            let parsed = parse_rfc3339(text);
            if parsed.is_none() {
                complain(
                    &mut fields,
                    "until",
                    "must be an RFC 3339 time such as 2026-01-31T13:00:00Z",
                );
            }
            parsed
        }
    };
    let (Some(since), Some(until)) = (since, until) else {
        return Err(ApiError::Validation(fields));
    };
    if until <= since {
        return Err(ApiError::field("until", "must be later than since"));
    }
    let recovered = state
        .store
        .recover_endpoint(id, since, until, MAX_RECOVER_PER_CALL)
        .await?;
    tracing::info!(
        requeued = recovered.requeued,
        more = recovered.more,
        "failed deliveries requeued"
    );
    if recovered.requeued > 0 {
        state.dispatch_wake.notify_one();
    }
    Ok(Json(RecoverResponse {
        requeued: recovered.requeued,
        more: recovered.more,
    }))
}
