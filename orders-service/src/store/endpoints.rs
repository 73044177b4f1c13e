//! Endpoints (subscriptions).

use uuid::Uuid;
use webhook_common::Secret;

use super::{now_ms, parse_uuid, Store};
use crate::domain::Endpoint;

/// What ensuring the configured subscription did.
#[derive(Debug, Clone)]
pub struct EnsuredEndpoint {
    /// The endpoint's id (stable across restarts).
    pub id: Uuid,
    /// A secret was generated and stored because none was configured and none existed.
    pub secret_generated: bool,
    /// The stored secret, current after this call.
    pub secret: Secret,
}

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: String,
    url: String,
    event_types: String,
    enabled: i64,
    disabled_reason: Option<String>,
}

impl Store {
    /// Ensures the endpoint configured under `config_key` exists with `url`, `event_types`
    /// and, when given, `secret`. Idempotent: restarts with the same settings change nothing
    /// but `updated_at`; a changed URL or secret updates the row (and a changed URL enables
    /// it again). Without a configured secret, the stored one is kept, or one is generated.
    #[tracing::instrument(skip_all, fields(config_key))]
    pub async fn ensure_config_endpoint(
        &self,
        config_key: &str,
        url: &str,
        secret: Option<&Secret>,
        event_types: &[&str],
    ) -> anyhow::Result<EnsuredEndpoint> {
        let now = now_ms();
        let generated = Secret::generate();
        let offered = secret.unwrap_or(&generated).expose_whsec();
        let types = serde_json::to_string(event_types)?;
        // One statement, so replicas starting together cannot both insert.
        let (id, stored): (String, String) = sqlx::query_as(
            "INSERT INTO endpoints (id, url, secret, event_types, enabled, config_key, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, 1, $5, $6, $6) \
             ON CONFLICT (config_key) DO UPDATE SET \
               secret = CASE WHEN $7 THEN excluded.secret ELSE endpoints.secret END, \
               enabled = CASE WHEN endpoints.url <> excluded.url THEN 1 ELSE endpoints.enabled END, \
               disabled_reason = CASE WHEN endpoints.url <> excluded.url THEN NULL \
                                 ELSE endpoints.disabled_reason END, \
               url = excluded.url, \
               event_types = excluded.event_types, \
               updated_at = excluded.updated_at \
             RETURNING id, secret",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(url)
        .bind(&offered)
        .bind(types)
        .bind(config_key)
        .bind(now)
        .bind(secret.is_some())
        .fetch_one(&self.pool)
        .await?;
        let secret_generated = secret.is_none() && stored == generated.expose_whsec();
        Ok(EnsuredEndpoint {
            id: parse_uuid(&id)?,
            secret_generated,
            secret: Secret::parse(&stored)?,
        })
    }

    /// One endpoint by id.
    pub async fn endpoint(&self, id: Uuid) -> anyhow::Result<Option<Endpoint>> {
        let row: Option<EndpointRow> = sqlx::query_as(
            "SELECT id, url, event_types, enabled, disabled_reason FROM endpoints WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Endpoint {
                id: parse_uuid(&r.id)?,
                url: r.url,
                event_types: serde_json::from_str(&r.event_types)?,
                enabled: r.enabled != 0,
                disabled_reason: r.disabled_reason,
            })
        })
        .transpose()
    }
}
