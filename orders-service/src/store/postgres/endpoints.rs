//! Endpoints (subscriptions) on PostgreSQL: the one ensured from configuration, API
//! management, and secret rotation. Secrets leave this module only through the methods whose
//! name says so.

use std::time::Duration;

use sqlx::PgConnection;
use uuid::Uuid;
use webhook_common::Secret;

use super::deliveries::{pause_endpoint, resume_endpoint};
use super::PgStore;
use crate::domain::{Endpoint, EndpointPatch, NewEndpoint, DEFAULT_ROTATION_GRACE};
use crate::store::{
    fingerprint, millis, now_ms, EndpointSecret, EnsuredEndpoint, CONFIG_UNSET_REASON,
};

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: Uuid,
    url: String,
    description: Option<String>,
    event_types: String,
    enabled: bool,
    disabled_reason: Option<String>,
    config_key: Option<String>,
    previous_secret_expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

const ENDPOINT_COLUMNS: &str = "id, url, description, event_types::text AS event_types, \
     enabled, disabled_reason, config_key, previous_secret_expires_at, created_at, updated_at";

impl TryFrom<EndpointRow> for Endpoint {
    type Error = anyhow::Error;

    fn try_from(r: EndpointRow) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            id: r.id,
            url: r.url,
            description: r.description,
            event_types: serde_json::from_str(&r.event_types)?,
            enabled: r.enabled,
            disabled_reason: r.disabled_reason,
            from_configuration: r.config_key.is_some(),
            previous_secret_expires_at: r.previous_secret_expires_at.filter(|at| *at > now_ms()),
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// The next deliveries of endpoint `$1` to delete, at most `$2`; each batch deletes the rows
/// it read, so this reads on from where the previous batch stopped.
const NEXT_DELIVERIES: &str = "SELECT id FROM deliveries WHERE endpoint_id = $1 LIMIT $2";

/// Deletes at most `$2` attempts of the deliveries `$1`, found through
/// `delivery_attempts_delivery`.
const DELETE_ATTEMPTS: &str = "DELETE FROM delivery_attempts WHERE id IN \
     (SELECT id FROM delivery_attempts WHERE delivery_id = ANY($1) LIMIT $2)";

/// Deletes the deliveries `$1` (an attempt recorded since the last batch cascades).
const DELETE_DELIVERIES: &str = "DELETE FROM deliveries WHERE id = ANY($1)";

/// [`PgStore::delete_endpoint`] on one connection; each statement commits on its own.
async fn delete_endpoint_on(conn: &mut PgConnection, id: Uuid, batch: u32) -> anyhow::Result<bool> {
    let disabled = sqlx::query(
        "UPDATE endpoints SET enabled = false, disabled_reason = 'being deleted', \
         updated_at = $1 WHERE id = $2",
    )
    .bind(now_ms())
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if disabled == 0 {
        return Ok(false);
    }
    let batch = i64::from(batch.max(1));
    loop {
        let deliveries: Vec<Uuid> = sqlx::query_scalar(NEXT_DELIVERIES)
            .bind(id)
            .bind(batch)
            .fetch_all(&mut *conn)
            .await?;
        if deliveries.is_empty() {
            break;
        }
        loop {
            let n = sqlx::query(DELETE_ATTEMPTS)
                .bind(&deliveries)
                .bind(batch)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            // Fewer than asked for: none of the batch's attempts are left.
            if i64::try_from(n).unwrap_or(i64::MAX) < batch {
                break;
            }
        }
        sqlx::query(DELETE_DELIVERIES)
            .bind(&deliveries)
            .execute(&mut *conn)
            .await?;
    }
    let deleted = sqlx::query("DELETE FROM endpoints WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(deleted > 0)
}

impl PgStore {
    /// Ensures the endpoint configured under `config_key`; see
    /// [`crate::store::Store::ensure_config_endpoint`].
    #[tracing::instrument(skip_all, fields(config_key))]
    pub async fn ensure_config_endpoint(
        &self,
        config_key: &str,
        url: &str,
        secret: Option<&Secret>,
        event_types: &[&str],
    ) -> anyhow::Result<EnsuredEndpoint> {
        let now = now_ms();
        let grace_until = now.saturating_add(millis(DEFAULT_ROTATION_GRACE));
        let generated = Secret::generate();
        let offered = secret.unwrap_or(&generated).expose_whsec();
        let types = serde_json::to_string(event_types)?;
        // One statement, so replicas starting together cannot both insert or both rotate.
        let rotate = "($7 AND endpoints.config_secret_sha256 IS DISTINCT FROM \
                      excluded.config_secret_sha256 AND endpoints.secret <> excluded.secret)";
        // A changed URL, or a URL set again after it was unset, enables the endpoint.
        let reenable = "(endpoints.url <> excluded.url OR endpoints.disabled_reason = $10)";
        let sql = format!(
            "INSERT INTO endpoints (id, url, secret, event_types, enabled, config_key, \
             config_secret_sha256, created_at, updated_at) \
             VALUES ($1, $2, $3, $4::jsonb, true, $5, $8, $6, $6) \
             ON CONFLICT (config_key) DO UPDATE SET \
               previous_secret = CASE WHEN {rotate} THEN endpoints.secret \
                                 ELSE endpoints.previous_secret END, \
               previous_secret_expires_at = CASE WHEN {rotate} THEN $9 \
                                 ELSE endpoints.previous_secret_expires_at END, \
               secret = CASE WHEN {rotate} THEN excluded.secret ELSE endpoints.secret END, \
               config_secret_sha256 = CASE WHEN $7 THEN excluded.config_secret_sha256 \
                                 ELSE endpoints.config_secret_sha256 END, \
               enabled = CASE WHEN {reenable} THEN true ELSE endpoints.enabled END, \
               disabled_reason = CASE WHEN {reenable} THEN NULL \
                                 ELSE endpoints.disabled_reason END, \
               url = excluded.url, \
               event_types = excluded.event_types, \
               updated_at = excluded.updated_at \
             RETURNING id, secret, previous_secret_expires_at, enabled"
        );
        let mut tx = self.pool.begin().await?;
        let (id, stored, expires, enabled): (Uuid, String, Option<i64>, bool) =
            sqlx::query_as(&sql)
                .bind(Uuid::now_v7())
                .bind(url)
                .bind(&offered)
                .bind(types)
                .bind(config_key)
                .bind(now)
                .bind(secret.is_some())
                .bind(secret.map(fingerprint))
                .bind(grace_until)
                .bind(CONFIG_UNSET_REASON)
                .fetch_one(&mut *tx)
                .await?;
        let resumed = if enabled {
            resume_endpoint(&mut tx, id, now).await?
        } else {
            0
        };
        tx.commit().await?;
        if resumed > 0 {
            self.wake_dispatchers();
        }
        Ok(EnsuredEndpoint {
            id,
            secret_generated: secret.is_none() && stored == generated.expose_whsec(),
            // Only this call's rotation writes exactly `grace_until`.
            secret_rotated: expires == Some(grace_until),
            secret: Secret::parse(&stored)?,
        })
    }

    /// Disables the endpoint configured under `config_key` if it is enabled, pausing its
    /// pending deliveries; its id if it was disabled now.
    pub async fn disable_config_endpoint(&self, config_key: &str) -> anyhow::Result<Option<Uuid>> {
        let mut tx = self.pool.begin().await?;
        let id: Option<Uuid> = sqlx::query_scalar(
            "UPDATE endpoints SET enabled = false, disabled_reason = $1, updated_at = $2 \
             WHERE config_key = $3 AND enabled RETURNING id",
        )
        .bind(CONFIG_UNSET_REASON)
        .bind(now_ms())
        .bind(config_key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(id) = id {
            pause_endpoint(&mut tx, id).await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Stores a new subscription signed with `secret`.
    pub async fn create_endpoint(
        &self,
        new: &NewEndpoint,
        secret: &Secret,
    ) -> anyhow::Result<Endpoint> {
        let now = now_ms();
        let row: EndpointRow = sqlx::query_as(&format!(
            "INSERT INTO endpoints (id, url, description, secret, event_types, enabled, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5::jsonb, true, $6, $6) \
             RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(&new.url)
        .bind(&new.description)
        .bind(secret.expose_whsec())
        .bind(serde_json::to_string(&new.event_types)?)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        row.try_into()
    }

    /// How many endpoints exist.
    pub async fn count_endpoints(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM endpoints")
            .fetch_one(&self.pool)
            .await?)
    }

    /// One endpoint by id.
    pub async fn endpoint(&self, id: Uuid) -> anyhow::Result<Option<Endpoint>> {
        let row: Option<EndpointRow> = sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Endpoint::try_from).transpose()
    }

    /// Up to `limit` endpoints in creation order, after the endpoint `after` if given.
    pub async fn list_endpoints(
        &self,
        after: Option<Uuid>,
        limit: u32,
    ) -> anyhow::Result<Vec<Endpoint>> {
        // UUIDv7s compare (bytewise) in creation order, so the id is both key and cursor;
        // the nil UUID sorts before every other.
        let rows: Vec<EndpointRow> = sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Endpoint::try_from).collect()
    }

    /// Applies `patch`; `None` if there is no such endpoint. Disabling pauses its pending
    /// deliveries; enabling makes them due now and wakes every replica's dispatcher.
    pub async fn update_endpoint(
        &self,
        id: Uuid,
        patch: &EndpointPatch,
    ) -> anyhow::Result<Option<Endpoint>> {
        let types = patch
            .event_types
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        let mut tx = self.pool.begin().await?;
        let row: Option<EndpointRow> = sqlx::query_as(&format!(
            "UPDATE endpoints SET \
               url = COALESCE($1, url), \
               event_types = COALESCE($2::jsonb, event_types), \
               enabled = COALESCE($3, enabled), \
               disabled_reason = CASE WHEN $3 IS NULL THEN disabled_reason \
                                      WHEN $3 THEN NULL ELSE 'disabled through the API' END, \
               description = CASE WHEN $4 THEN $5 ELSE description END, \
               updated_at = $6 \
             WHERE id = $7 RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(&patch.url)
        .bind(types)
        .bind(patch.enabled)
        .bind(patch.description.is_some())
        .bind(patch.description.clone().flatten())
        .bind(now_ms())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let mut resumed = 0;
        match (&row, patch.enabled) {
            (Some(_), Some(false)) => {
                pause_endpoint(&mut tx, id).await?;
            }
            (Some(_), Some(true)) => {
                resumed = resume_endpoint(&mut tx, id, now_ms()).await?;
            }
            _ => {}
        }
        tx.commit().await?;
        if resumed > 0 {
            self.wake_dispatchers();
        }
        row.map(Endpoint::try_from).transpose()
    }

    /// Deletes an endpoint with its deliveries and their attempts, in batches; see
    /// [`crate::store::Store::delete_endpoint`].
    pub async fn delete_endpoint(&self, id: Uuid, batch: u32) -> anyhow::Result<bool> {
        let mut conn = self.pool.acquire().await?;
        delete_endpoint_on(&mut conn, id, batch).await
    }

    /// An endpoint's current secret. Only the secret-revealing route calls this.
    pub async fn endpoint_secret(&self, id: Uuid) -> anyhow::Result<Option<EndpointSecret>> {
        let row: Option<(String, Option<i64>)> = sqlx::query_as(
            "SELECT secret, previous_secret_expires_at FROM endpoints WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(secret, expires)| {
            Ok(EndpointSecret {
                secret: Secret::parse(&secret)?,
                previous_expires_at: expires.filter(|at| *at > now_ms()),
            })
        })
        .transpose()
    }

    /// Makes `secret` the endpoint's signing secret; the replaced one keeps signing for
    /// `grace`. `None` if there is no such endpoint.
    pub async fn rotate_secret(
        &self,
        id: Uuid,
        secret: &Secret,
        grace: Duration,
    ) -> anyhow::Result<Option<EndpointSecret>> {
        let now = now_ms();
        let grace_ms = millis(grace);
        // Right-hand sides see the row as it was, so `previous_secret = secret` keeps the old one.
        let expires: Option<Option<i64>> = sqlx::query_scalar(
            "UPDATE endpoints SET \
               previous_secret = CASE WHEN $2 > 0 THEN secret ELSE NULL END, \
               previous_secret_expires_at = CASE WHEN $2 > 0 THEN $3 ELSE NULL END, \
               secret = $1, updated_at = $4 \
             WHERE id = $5 RETURNING previous_secret_expires_at",
        )
        .bind(secret.expose_whsec())
        .bind(grace_ms)
        .bind(now.saturating_add(grace_ms))
        .bind(now)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(expires.map(|expires| EndpointSecret {
            secret: secret.clone(),
            previous_expires_at: expires,
        }))
    }
}
