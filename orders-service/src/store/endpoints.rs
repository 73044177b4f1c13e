//! Endpoints (subscriptions): the one ensured from configuration, API management, and secret
//! rotation. Secrets leave this module only through the methods whose name says so.

use std::time::Duration;

use sha2::{Digest as _, Sha256};
use uuid::Uuid;
use webhook_common::Secret;

use super::deliveries::{pause_endpoint, resume_endpoint};
use super::{now_ms, parse_uuid, Store};
use crate::domain::{Endpoint, EndpointPatch, NewEndpoint, DEFAULT_ROTATION_GRACE};

/// What ensuring the configured subscription did.
#[derive(Debug, Clone)]
pub struct EnsuredEndpoint {
    /// The endpoint's id (stable across restarts).
    pub id: Uuid,
    /// A secret was generated and stored because none was configured and none existed.
    pub secret_generated: bool,
    /// `WEBHOOK_SECRET` changed since it was last applied, so the endpoint now signs with it,
    /// and with the secret it replaced until the default grace period ends.
    pub secret_rotated: bool,
    /// The stored secret, current after this call.
    pub secret: Secret,
}

/// An endpoint's current secret, for the one route that reveals it.
#[derive(Debug, Clone)]
pub struct EndpointSecret {
    /// Signs every delivery.
    pub secret: Secret,
    /// Until when (unix milliseconds) the previous secret also signs, if a rotation is in its
    /// grace period.
    pub previous_expires_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: String,
    url: String,
    description: Option<String>,
    event_types: String,
    enabled: i64,
    disabled_reason: Option<String>,
    config_key: Option<String>,
    previous_secret_expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

const ENDPOINT_COLUMNS: &str = "id, url, description, event_types, enabled, disabled_reason, \
     config_key, previous_secret_expires_at, created_at, updated_at";

impl TryFrom<EndpointRow> for Endpoint {
    type Error = anyhow::Error;

    fn try_from(r: EndpointRow) -> anyhow::Result<Endpoint> {
        Ok(Endpoint {
            id: parse_uuid(&r.id)?,
            url: r.url,
            description: r.description,
            event_types: serde_json::from_str(&r.event_types)?,
            enabled: r.enabled != 0,
            disabled_reason: r.disabled_reason,
            from_configuration: r.config_key.is_some(),
            previous_secret_expires_at: r.previous_secret_expires_at.filter(|at| *at > now_ms()),
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// Hex SHA-256 of a secret: enough to notice that the configured secret changed, useless for
/// signing.
fn fingerprint(secret: &Secret) -> String {
    let digest = Sha256::digest(secret.expose_whsec().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why the configured subscription is disabled when `NOTIFICATION_WEBHOOK_URL` is unset.
pub const CONFIG_UNSET_REASON: &str = "NOTIFICATION_WEBHOOK_URL is no longer set";

/// How many rows one statement of [`Store::delete_endpoint`] removes: each batch is its own
/// short transaction, so orders and attempts are not held off the write lock for long.
pub const DELETE_BATCH: u32 = 500;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Ensures the endpoint configured under `config_key` exists with `url` and `event_types`.
    ///
    /// The secret follows `WEBHOOK_SECRET` without undoing API rotations: the fingerprint of
    /// the last configured secret is stored, and only a *different* configured secret is
    /// applied, as a rotation that keeps the replaced secret signing for
    /// [`DEFAULT_ROTATION_GRACE`]. An unchanged configured secret leaves whatever the API
    /// rotated to. Without a configured secret, the stored one is kept, or one is generated.
    /// A changed URL updates the row and enables it again.
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
        // `IS NOT` is SQLite's null-safe inequality (`IS DISTINCT FROM` on PostgreSQL).
        let rotate = "($7 AND endpoints.config_secret_sha256 IS NOT excluded.config_secret_sha256 \
                      AND endpoints.secret <> excluded.secret)";
        // A changed URL, or a URL set again after it was unset, enables the endpoint.
        let reenable = "(endpoints.url <> excluded.url OR endpoints.disabled_reason = $10)";
        let sql = format!(
            "INSERT INTO endpoints (id, url, secret, event_types, enabled, config_key, \
             config_secret_sha256, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $8, $6, $6) \
             ON CONFLICT (config_key) DO UPDATE SET \
               previous_secret = CASE WHEN {rotate} THEN endpoints.secret \
                                 ELSE endpoints.previous_secret END, \
               previous_secret_expires_at = CASE WHEN {rotate} THEN $9 \
                                 ELSE endpoints.previous_secret_expires_at END, \
               secret = CASE WHEN {rotate} THEN excluded.secret ELSE endpoints.secret END, \
               config_secret_sha256 = CASE WHEN $7 THEN excluded.config_secret_sha256 \
                                 ELSE endpoints.config_secret_sha256 END, \
               enabled = CASE WHEN {reenable} THEN 1 ELSE endpoints.enabled END, \
               disabled_reason = CASE WHEN {reenable} THEN NULL \
                                 ELSE endpoints.disabled_reason END, \
               url = excluded.url, \
               event_types = excluded.event_types, \
               updated_at = excluded.updated_at \
             RETURNING id, secret, previous_secret_expires_at, enabled"
        );
        let mut tx = self.pool.begin().await?;
        let (id, stored, expires, enabled): (String, String, Option<i64>, bool) =
            sqlx::query_as(&sql)
                .bind(Uuid::now_v7().to_string())
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
        if enabled {
            resume_endpoint(&mut tx, &id, now).await?;
        }
        tx.commit().await?;
        Ok(EnsuredEndpoint {
            id: parse_uuid(&id)?,
            secret_generated: secret.is_none() && stored == generated.expose_whsec(),
            // Only this call's rotation writes exactly `grace_until`.
            secret_rotated: expires == Some(grace_until),
            secret: Secret::parse(&stored)?,
        })
    }

    /// Disables the endpoint configured under `config_key`, if there is one and it is enabled,
    /// with [`CONFIG_UNSET_REASON`], pausing its pending deliveries. Returns its id if it was
    /// disabled now. Setting the URL again ([`Store::ensure_config_endpoint`]) re-enables it.
    pub async fn disable_config_endpoint(&self, config_key: &str) -> anyhow::Result<Option<Uuid>> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String,)> = sqlx::query_as(
            "UPDATE endpoints SET enabled = 0, disabled_reason = $1, updated_at = $2 \
             WHERE config_key = $3 AND enabled = 1 RETURNING id",
        )
        .bind(CONFIG_UNSET_REASON)
        .bind(now_ms())
        .bind(config_key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id,)) = &row {
            pause_endpoint(&mut tx, id).await?;
        }
        tx.commit().await?;
        row.map(|(id,)| parse_uuid(&id)).transpose()
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
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $6) \
             RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(Uuid::now_v7().to_string())
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
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM endpoints")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// One endpoint by id.
    pub async fn endpoint(&self, id: Uuid) -> anyhow::Result<Option<Endpoint>> {
        let row: Option<EndpointRow> = sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id = $1"
        ))
        .bind(id.to_string())
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
        // UUIDv7 text sorts in creation order, so the id is both key and cursor.
        let rows: Vec<EndpointRow> = sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.map(|a| a.to_string()).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Endpoint::try_from).collect()
    }

    /// Applies `patch` in one statement; `None` if there is no such endpoint. Enabling clears
    /// the reason it was disabled; disabling through the API records that as the reason.
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
               event_types = COALESCE($2, event_types), \
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
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        // Disabling pauses its pending deliveries; enabling makes them due now.
        match (&row, patch.enabled) {
            (Some(_), Some(false)) => {
                pause_endpoint(&mut tx, &id.to_string()).await?;
            }
            (Some(_), Some(true)) => {
                resume_endpoint(&mut tx, &id.to_string(), now_ms()).await?;
            }
            _ => {}
        }
        tx.commit().await?;
        row.map(Endpoint::try_from).transpose()
    }

    /// Deletes an endpoint with its deliveries and their attempts (the events stay); `false`
    /// if there was none.
    ///
    /// One cascading DELETE would hold SQLite's write lock for as long as it takes to remove
    /// every delivery and attempt, making orders and attempt records wait (or fail). So the
    /// endpoint is disabled first (nothing new is claimed or queued for it), then its attempts
    /// and deliveries go in batches of `batch`, each its own short transaction, and the
    /// endpoint row last. An interrupted delete leaves a disabled endpoint; deleting it again
    /// finishes the job.
    pub async fn delete_endpoint(&self, id: Uuid, batch: u32) -> anyhow::Result<bool> {
        let id = id.to_string();
        let disabled = sqlx::query(
            "UPDATE endpoints SET enabled = 0, disabled_reason = 'being deleted', updated_at = $1 \
             WHERE id = $2",
        )
        .bind(now_ms())
        .bind(&id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if disabled == 0 {
            return Ok(false);
        }
        let batch = i64::from(batch.max(1));
        loop {
            let n = sqlx::query(
                "DELETE FROM delivery_attempts WHERE id IN (SELECT a.id FROM delivery_attempts a \
                 JOIN deliveries d ON d.id = a.delivery_id WHERE d.endpoint_id = $1 LIMIT $2)",
            )
            .bind(&id)
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if n == 0 {
                break;
            }
        }
        loop {
            // Attempts recorded since the loop above (an attempt in flight) cascade here.
            let n = sqlx::query(
                "DELETE FROM deliveries WHERE id IN \
                 (SELECT id FROM deliveries WHERE endpoint_id = $1 LIMIT $2)",
            )
            .bind(&id)
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if n == 0 {
                break;
            }
        }
        let deleted = sqlx::query("DELETE FROM endpoints WHERE id = $1")
            .bind(&id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(deleted > 0)
    }

    /// An endpoint's current secret. Only the secret-revealing route calls this.
    pub async fn endpoint_secret(&self, id: Uuid) -> anyhow::Result<Option<EndpointSecret>> {
        let row: Option<(String, Option<i64>)> = sqlx::query_as(
            "SELECT secret, previous_secret_expires_at FROM endpoints WHERE id = $1",
        )
        .bind(id.to_string())
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
    /// `grace` (not at all if zero). A secret still in the grace period of an earlier rotation
    /// is dropped: only one previous secret is kept. `None` if there is no such endpoint.
    pub async fn rotate_secret(
        &self,
        id: Uuid,
        secret: &Secret,
        grace: Duration,
    ) -> anyhow::Result<Option<EndpointSecret>> {
        let now = now_ms();
        let grace_ms = millis(grace);
        // Right-hand sides see the row as it was, so `previous_secret = secret` keeps the old one.
        let row: Option<(Option<i64>,)> = sqlx::query_as(
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
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(expires,)| EndpointSecret {
            secret: secret.clone(),
            previous_expires_at: expires,
        }))
    }
}
