//! All SQL of the service, behind one interface: [`Store`], whose methods take and return
//! domain types. Two backends implement it, each in its own dialect, chosen by
//! `DATABASE_URL`'s scheme ([`Store::connect`]):
//!
//! - [`sqlite`] (`sqlite:`, the default): one process on one machine. The hot writes
//!   (orders, claims, attempt outcomes, releases) go through one group-committing writer
//!   thread (`synchronous=FULL`: a commit is fsynced), reads through an sqlx pool. Writers are
//!   serialised by SQLite's write lock, which is what keeps claims, the per-endpoint cap,
//!   idempotency keys and the event history's order consistent.
//! - [`postgres`] (`postgres://` or `postgresql://`): several replicas sharing one database.
//!   Ordinary transactions with PostgreSQL's default durability (`fsync`,
//!   `synchronous_commit=on`: a 201 or 2xx means committed). The same guarantees hold across
//!   replicas: claims take rows with `FOR UPDATE SKIP LOCKED` under leases, so one delivery
//!   is never attempted by two workers at once; claims of one endpoint are serialised
//!   (an advisory lock per endpoint), so the per-endpoint cap counts every replica's leases;
//!   one `Idempotency-Key` creates one order (a unique key claimed first in the order's
//!   transaction); the event history numbers events only once they are committed, so paging
//!   never skips one that commits late; and every write that makes work due now notifies the
//!   dispatchers of every replica (`LISTEN/NOTIFY` on [`WAKE_CHANNEL`]).
//!
//! Both store times as unix milliseconds, so the domain code above is shared. Clocks: leases
//! are compared with each replica's own clock, so replicas' clocks must agree (NTP) to well
//! within the 5 s `DISPATCH_LEASE` keeps beyond `WEBHOOK_TIMEOUT`.

pub mod idempotency;
pub mod postgres;
pub mod sqlite;
mod tasks;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
pub use webhook_common::config::redact_url;
use webhook_common::readiness::Database;
use webhook_common::Secret;

use crate::domain::{
    Attempt, AttemptOutcome, Delivery, DeliveryJob, Endpoint, EndpointPatch, EventRecord,
    NewEndpoint, NewEvent, Order, Recovered, RetryOutcome,
};
use idempotency::{IdempotencyKey, KeyedOrder};
use postgres::PgStore;
use sqlite::SqliteStore;

pub use tasks::{
    OutboxStats, OUTBOX_OLDEST_PENDING_SECONDS, OUTBOX_PENDING, RETENTION_BATCH, RETENTION_EVERY,
};

/// `DATABASE_MAX_CONNECTIONS` when not set: the PostgreSQL pool's size.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// The `LISTEN/NOTIFY` channel on which PostgreSQL writes that make a delivery due now wake
/// the dispatchers of every replica.
pub const WAKE_CHANNEL: &str = "orders_dispatch";

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Defines `Store` methods that hand their arguments to the active backend's method of the
/// same name and signature.
macro_rules! delegate {
    ($(
        $(#[$attr:meta])*
        pub async fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
    )*) => {$(
        $(#[$attr])*
        pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
            match &self.backend {
                Backend::Sqlite(store) => store.$name($($arg),*).await,
                Backend::Postgres(store) => store.$name($($arg),*).await,
            }
        }
    )*};
}

/// The current time in unix milliseconds.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// `next_attempt_at` of a pending delivery whose endpoint is disabled: beyond every real due
/// time, so paused rows sit outside the due range of the open-work index and no claim or
/// next-due query walks past them. Enabling the endpoint makes them due.
pub const PAUSED_AT: i64 = i64::MAX;

/// Why the configured subscription is disabled when `NOTIFICATION_WEBHOOK_URL` is unset.
pub const CONFIG_UNSET_REASON: &str = "NOTIFICATION_WEBHOOK_URL is no longer set";

/// How many rows one statement of [`Store::delete_endpoint`] removes (attempts, or
/// deliveries): each batch is its own short transaction, so orders and attempts are not held
/// off the database for long.
pub const DELETE_BATCH: u32 = 500;

/// Longest stored `last_error` text.
const MAX_ERROR_CHARS: usize = 500;

/// What one claim took: the jobs it can attempt, under one claim token.
#[derive(Debug)]
pub struct Claimed {
    /// The token every later update of these deliveries must present.
    pub token: Uuid,
    /// When the leases expire, in unix milliseconds.
    pub lease_expires_at: i64,
    /// Everything each attempt needs.
    pub jobs: Vec<DeliveryJob>,
    /// Deliveries that were claimed but whose job could not be built (a stored secret that
    /// does not parse, say), with why; the caller records each as an attempt
    /// ([`Store::record_load_failure`]), so that one that never loads ends dead-lettered.
    pub unloadable: Vec<(Uuid, anyhow::Error)>,
}

impl Claimed {
    /// Builds the jobs of claimed rows outside the transaction (parsing secrets is not the
    /// database's work); rows whose job cannot be built are set aside as unloadable.
    fn from_rows(token: Uuid, lease_expires_at: i64, now: i64, rows: Vec<ClaimedRow>) -> Self {
        let mut claimed = Claimed {
            token,
            lease_expires_at,
            jobs: Vec::with_capacity(rows.len()),
            unloadable: Vec::new(),
        };
        // The rows of one endpoint share its `EndpointRow`: its URL and secrets are parsed
        // once per claim, not once per delivery.
        let mut parsed: Option<(Arc<EndpointRow>, Result<ParsedEndpoint, String>)> = None;
        for row in rows {
            let id = row.id.clone();
            let endpoint = match &parsed {
                Some((of, endpoint)) if Arc::ptr_eq(of, &row.endpoint) => endpoint,
                _ => {
                    let endpoint =
                        ParsedEndpoint::parse(&row.endpoint, now).map_err(|e| format!("{e:#}"));
                    &parsed.insert((row.endpoint.clone(), endpoint)).1
                }
            };
            let job = match endpoint {
                Ok(endpoint) => row.into_job(token, endpoint),
                Err(e) => Err(anyhow::anyhow!("{e}")),
            };
            match job {
                Ok(job) => claimed.jobs.push(job),
                Err(e) => match parse_uuid(&id) {
                    Ok(id) => claimed.unloadable.push((id, e)),
                    // Not even the id parses: nothing can address the row but its lease,
                    // which expires; it is then claimed (and reported) again.
                    Err(_) => {
                        tracing::error!(error = format!("{e:#}"), delivery_id = %id, "a claimed delivery has an unreadable id")
                    }
                },
            }
        }
        claimed
    }
}

/// An endpoint as a claim needs it.
struct EndpointRow {
    id: String,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    previous_secret_expires_at: Option<i64>,
}

/// A claimed delivery as read in the claim's transaction; turned into a [`DeliveryJob`]
/// outside it.
struct ClaimedRow {
    id: String,
    attempts: i64,
    retry_base: i64,
    msg_id: String,
    payload: Vec<u8>,
    endpoint_id: String,
    endpoint: Arc<EndpointRow>,
}

/// What every attempt to an endpoint needs, parsed from its [`EndpointRow`].
struct ParsedEndpoint {
    url: reqwest::Url,
    /// The current secret, then the previous one while its grace period lasts at `now`.
    secrets: Vec<Secret>,
}

impl ParsedEndpoint {
    fn parse(endpoint: &EndpointRow, now: i64) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&endpoint.url)
            .context("the endpoint's URL in the database does not parse")?;
        let mut secrets = vec![Secret::parse(&endpoint.secret)
            .context("the endpoint's signing secret in the database does not parse")?];
        if let (Some(previous), Some(expires)) = (
            &endpoint.previous_secret,
            endpoint.previous_secret_expires_at,
        ) {
            if expires > now {
                secrets.push(Secret::parse(previous).context(
                    "the endpoint's previous signing secret in the database does not parse",
                )?);
            }
        }
        Ok(ParsedEndpoint { url, secrets })
    }
}

impl ClaimedRow {
    fn into_job(self, claim_token: Uuid, endpoint: &ParsedEndpoint) -> anyhow::Result<DeliveryJob> {
        Ok(DeliveryJob {
            delivery_id: parse_uuid(&self.id)?,
            claim_token,
            attempts: u32::try_from(self.attempts)?,
            retry_base: u32::try_from(self.retry_base)?,
            msg_id: self.msg_id,
            payload: self.payload.into(),
            endpoint_id: parse_uuid(&self.endpoint_id)?,
            url: endpoint.url.clone(),
            secrets: endpoint.secrets.clone(),
        })
    }
}

/// What writing an order produced.
#[derive(Debug)]
pub struct CreatedOrder {
    /// How many deliveries were queued (one per subscribed, enabled endpoint).
    pub deliveries: usize,
    /// The delivery the order's own transaction claimed, when asked to ([`ClaimOnCreate`]).
    pub claimed: Option<Claimed>,
}

/// Asks the order's transaction to claim one of its deliveries, leased like any claim, so
/// the caller can attempt it at once instead of waiting for the dispatcher's next claim (one
/// commit, and its fsync, less between an order and its webhook). The per-endpoint cap holds:
/// an endpoint at its cap gets a plain pending delivery.
#[derive(Debug, Clone, Copy)]
pub struct ClaimOnCreate {
    /// How long the lease lasts.
    pub lease_ms: i64,
    /// Attempts in flight to one endpoint, at most.
    pub per_endpoint: u32,
}

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

/// What one retention pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Events deleted (with their deliveries and attempts).
    pub events: u64,
    /// Orders deleted with their last event.
    pub orders: u64,
    /// Old events kept because a delivery of theirs is not delivered.
    pub kept: u64,
}

/// Hex SHA-256 of a secret: enough to notice that the configured secret changed, useless for
/// signing.
fn fingerprint(secret: &Secret) -> String {
    let digest = Sha256::digest(secret.expose_whsec().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn parse_uuid(text: &str) -> anyhow::Result<Uuid> {
    Uuid::parse_str(text).with_context(|| format!("bad UUID {text:?} in the database"))
}

impl Store {
    /// Opens the database `url` with a PostgreSQL pool of [`DEFAULT_MAX_CONNECTIONS`]; see
    /// [`Store::connect_with`].
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, DEFAULT_MAX_CONNECTIONS).await
    }

    /// Opens the database `url` (`DATABASE_URL`), picking the backend from its scheme:
    /// `sqlite:` opens (creating if missing) a SQLite file; `postgres://` or `postgresql://`
    /// connects a pool of at most `max_connections` (`DATABASE_MAX_CONNECTIONS`) to
    /// PostgreSQL. SQLite ignores `max_connections`: its read pool keeps its fixed size and
    /// its writes go through one connection. Any other scheme, or a database that cannot be
    /// reached, fails with a message naming `DATABASE_URL` (its password redacted).
    pub async fn connect_with(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite(SqliteStore::connect(url).await?)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(PgStore::connect(url, max_connections).await?)
        } else {
            anyhow::bail!(
                "DATABASE_URL {:?} is not a database URL this service knows: use \
                 sqlite://path/to/orders.db (SQLite, the default) or \
                 postgres://user:password@host:5432/database (PostgreSQL; postgresql:// works too)",
                redact_url(url)
            );
        };
        Ok(Store { backend })
    }

    /// Whether this store runs on PostgreSQL (several replicas may share it).
    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The database and the migrations it should have, for the readiness probe.
    pub fn readiness(&self) -> (Database<'_>, &'static Migrator) {
        match &self.backend {
            Backend::Sqlite(store) => (Database::Sqlite(store.pool()), &sqlite::MIGRATOR),
            Backend::Postgres(store) => (Database::Postgres(store.pool()), &postgres::MIGRATOR),
        }
    }

    /// On PostgreSQL, listens on [`WAKE_CHANNEL`] until `shutdown` and pokes `wake` whenever
    /// any replica commits work that is due now (and after every reconnect); `None` on
    /// SQLite, where the only writer is this process and pokes `wake` itself.
    pub fn listen_for_work(
        &self,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        match &self.backend {
            Backend::Sqlite(_) => None,
            Backend::Postgres(store) => Some(webhook_common::pg_listen::spawn(
                store.pool(),
                WAKE_CHANNEL,
                wake,
                shutdown,
            )),
        }
    }

    /// Commits what is queued, then waits for open connections to finish and closes them.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(store) => store.close().await,
            Backend::Postgres(store) => store.close().await,
        }
    }

    /// Writes the order, its event and one pending delivery per enabled endpoint subscribed
    /// to the event's type, in ONE transaction: either all of it is stored or none. The
    /// number of endpoints is capped by the API, which bounds the fan-out here. Returns once
    /// the transaction is committed.
    #[tracing::instrument(skip_all, fields(order_id = %order.id, event_type = %event.event_type))]
    pub async fn create_order_with_event(
        &self,
        order: &Order,
        event: &NewEvent,
    ) -> anyhow::Result<CreatedOrder> {
        self.create_order_claiming(order, event, None).await
    }

    /// [`Store::create_order_with_event`], claiming one delivery in the same transaction when
    /// `claim` asks for it (see [`ClaimOnCreate`]).
    pub async fn create_order_claiming(
        &self,
        order: &Order,
        event: &NewEvent,
        claim: Option<ClaimOnCreate>,
    ) -> anyhow::Result<CreatedOrder> {
        match self.create_order_keyed(order, event, claim, None).await? {
            KeyedOrder::Created(created) => Ok(created),
            // Only a key can find an earlier request.
            other => Err(anyhow::anyhow!(
                "an order written without an idempotency key came to {other:?}"
            )),
        }
    }

    /// Claims up to `limit` due deliveries for `lease_ms` and returns everything their
    /// attempts need, under one claim token that every later update must present. At most
    /// `per_endpoint` deliveries to one endpoint are in flight at once (counting live leases
    /// held by any worker or replica), so a slow receiver cannot take every slot.
    ///
    /// Due means pending with its retry time come, or in flight with an expired lease (its
    /// worker died), for an enabled endpoint. Expired leases on disabled endpoints are paused
    /// on the way, so they end pending like the endpoint's other rows. Its cost does not grow
    /// with the backlog.
    pub async fn claim_due(
        &self,
        limit: u32,
        lease_ms: i64,
        per_endpoint: u32,
    ) -> anyhow::Result<Claimed> {
        self.claim_due_with(move || limit, lease_ms, per_endpoint)
            .await
    }

    /// The recorded attempts of a delivery, in order.
    pub async fn attempts(&self, delivery_id: Uuid) -> anyhow::Result<Vec<Attempt>> {
        self.last_attempts(delivery_id, u32::MAX).await
    }

    delegate! {
        /// Applies the backend's embedded migrations (`migrations/sqlite` or
        /// `migrations/postgres`); on PostgreSQL, replicas starting together take turns.
        pub async fn migrate(&self) -> anyhow::Result<()>;

        /// [`Store::create_order_claiming`] for a request with an `Idempotency-Key`: in the
        /// same transaction, the key decides first; a live key answers
        /// [`KeyedOrder::Replayed`] (same request hash) or [`KeyedOrder::KeyReused`]
        /// (another) and writes nothing; otherwise the order is written and the key stored
        /// with it (see [`idempotency`]). Of two requests with one key, on any replicas, at
        /// most one creates an order. Without a key this is [`Store::create_order_claiming`].
        pub async fn create_order_keyed(
            &self,
            order: &Order,
            event: &NewEvent,
            claim: Option<ClaimOnCreate>,
            key: Option<&IdempotencyKey>,
        ) -> anyhow::Result<KeyedOrder>;

        /// One order by id.
        pub async fn order(&self, id: Uuid) -> anyhow::Result<Option<Order>>;

        /// Up to `limit` orders, newest first, strictly older than the order `before` if
        /// given.
        pub async fn list_orders(&self, before: Option<Uuid>, limit: u32)
            -> anyhow::Result<Vec<Order>>;

        /// The `webhook-id` of the event of each order, for checking deliveries end to end.
        pub async fn event_msg_ids_by_order(&self) -> anyhow::Result<Vec<(Uuid, String)>>;

        /// [`Store::claim_due`] with a limit read when the claim runs, not when it is
        /// queued: a dispatcher passes its free slots, so slots freed while the claim waited
        /// are filled too.
        pub async fn claim_due_with(
            &self,
            limit: impl Fn() -> u32 + Send + 'static,
            lease_ms: i64,
            per_endpoint: u32,
        ) -> anyhow::Result<Claimed>;

        /// Records one attempt and its outcome in one transaction. Returns `false`, recording
        /// nothing, if this worker no longer owns the delivery (its lease expired and another
        /// worker claimed it).
        pub async fn finish_attempt(
            &self,
            job: &DeliveryJob,
            attempt: &Attempt,
            outcome: &AttemptOutcome,
            error: Option<&str>,
        ) -> anyhow::Result<bool>;

        /// Records that a claimed delivery could not be loaded (its job could not be built: a
        /// stored secret that does not parse, say) as an attempt that sent nothing
        /// (`error_kind` [`crate::domain::UNLOADABLE`]), so such a delivery spends its retry
        /// schedule like one whose receiver keeps failing, instead of being given back
        /// forever.
        ///
        /// `next_delay(n)` is the pause after the `n`-th attempt since the last manual retry
        /// or recover, `None` once the schedule is used up: the delivery is then
        /// dead-lettered (`failed`), with a `last_error` saying it could not be loaded and
        /// why, and can be retried by hand once the cause is fixed. A retry of a disabled
        /// endpoint's delivery is paused with its other rows.
        ///
        /// Returns what was recorded, or `None` (recording nothing) if `claim_token` no longer
        /// owns the delivery.
        pub async fn record_load_failure(
            &self,
            delivery_id: Uuid,
            claim_token: Uuid,
            error: &str,
            next_delay: impl Fn(u32) -> Option<Duration> + Send + 'static,
        ) -> anyhow::Result<Option<AttemptOutcome>>;

        /// Gives a claimed delivery back without counting an attempt (shutdown cut it short,
        /// or its lease no longer covered an attempt), due again after `delay_ms`.
        pub async fn release(&self, delivery_id: Uuid, claim_token: Uuid, delay_ms: i64)
            -> anyhow::Result<()>;

        /// When the earliest not-yet-due work falls due (a retry or an expiring lease), in
        /// unix milliseconds; `None` when there is none. One index probe per enabled
        /// endpoint, whatever the backlog; paused rows lie beyond the range searched.
        pub async fn next_due_at(&self) -> anyhow::Result<Option<i64>>;

        /// The deliveries of an order's events, oldest first.
        pub async fn deliveries_for_order(&self, order_id: Uuid) -> anyhow::Result<Vec<Delivery>>;

        /// The first `limit` deliveries of one event (one per subscribed endpoint), oldest
        /// first.
        pub async fn deliveries_for_event(&self, event_id: Uuid, limit: u32)
            -> anyhow::Result<Vec<Delivery>>;

        /// How many deliveries one event has.
        pub async fn count_deliveries_for_event(&self, event_id: Uuid) -> anyhow::Result<u64>;

        /// One delivery by id.
        pub async fn delivery(&self, id: Uuid) -> anyhow::Result<Option<Delivery>>;

        /// Makes a delivery due now with a fresh retry schedule, whatever its state (also
        /// after success or dead-lettering), except while an attempt is running: resetting a
        /// row under a live lease would let a second worker send it while the first one still
        /// does.
        ///
        /// A row in flight under an expired lease has no attempt running: its worker died
        /// (or gave up on it), as a claim would also conclude. It is requeued like any other;
        /// its old claim token no longer records anything. This is what frees a row abandoned
        /// on an endpoint disabled meanwhile, which no claim takes over.
        pub async fn retry_delivery(&self, id: Uuid) -> anyhow::Result<RetryOutcome>;

        /// Requeues up to `limit` failed deliveries to `endpoint_id` whose events were
        /// created in `[since, until)` (unix milliseconds), oldest event first, each with a
        /// fresh retry schedule. Says whether more remain, so a caller can repeat until done.
        pub async fn recover_endpoint(
            &self,
            endpoint_id: Uuid,
            since: i64,
            until: i64,
            limit: u32,
        ) -> anyhow::Result<Recovered>;

        /// The last `limit` recorded attempts of a delivery, in order.
        pub async fn last_attempts(&self, delivery_id: Uuid, limit: u32)
            -> anyhow::Result<Vec<Attempt>>;

        /// How many deliveries are in each status, as `(status, count)`.
        pub async fn delivery_counts(&self) -> anyhow::Result<Vec<(String, i64)>>;

        /// Up to `limit` events with `seq > after`, oldest first, optionally of one type.
        /// Paging on with the last `seq` seen never skips or repeats an event, however
        /// writers interleave: on SQLite, writers are serialised; on PostgreSQL, an event is
        /// only numbered after it committed, above every number already visible (see
        /// [`postgres`]'s events module).
        pub async fn list_events(&self, after: i64, event_type: Option<&str>, limit: u32)
            -> anyhow::Result<Vec<EventRecord>>;

        /// One event by id.
        pub async fn event(&self, id: Uuid) -> anyhow::Result<Option<EventRecord>>;

        /// Deletes up to `limit` idempotency keys expired at `now`, oldest first, in one
        /// write; returns how many went.
        pub async fn delete_expired_idempotency_keys(&self, now: i64, limit: u32)
            -> anyhow::Result<usize>;

        /// Ensures the endpoint configured under `config_key` exists with `url` and
        /// `event_types`.
        ///
        /// The secret follows `WEBHOOK_SECRET` without undoing API rotations: the fingerprint
        /// of the last configured secret is stored, and only a *different* configured secret
        /// is applied, as a rotation that keeps the replaced secret signing for
        /// [`crate::domain::DEFAULT_ROTATION_GRACE`]. An unchanged configured secret leaves
        /// whatever the API rotated to. Without a configured secret, the stored one is kept,
        /// or one is generated. A changed URL updates the row and enables it again. One
        /// statement, so replicas starting together cannot both insert or both rotate.
        pub async fn ensure_config_endpoint(
            &self,
            config_key: &str,
            url: &str,
            secret: Option<&Secret>,
            event_types: &[&str],
        ) -> anyhow::Result<EnsuredEndpoint>;

        /// Disables the endpoint configured under `config_key`, if there is one and it is
        /// enabled, with [`CONFIG_UNSET_REASON`], pausing its pending deliveries. Returns its
        /// id if it was disabled now. Setting the URL again
        /// ([`Store::ensure_config_endpoint`]) re-enables it.
        pub async fn disable_config_endpoint(&self, config_key: &str)
            -> anyhow::Result<Option<Uuid>>;

        /// Stores a new subscription signed with `secret`.
        pub async fn create_endpoint(&self, new: &NewEndpoint, secret: &Secret)
            -> anyhow::Result<Endpoint>;

        /// How many endpoints exist.
        pub async fn count_endpoints(&self) -> anyhow::Result<i64>;

        /// One endpoint by id.
        pub async fn endpoint(&self, id: Uuid) -> anyhow::Result<Option<Endpoint>>;

        /// Up to `limit` endpoints in creation order, after the endpoint `after` if given.
        pub async fn list_endpoints(&self, after: Option<Uuid>, limit: u32)
            -> anyhow::Result<Vec<Endpoint>>;

        /// Applies `patch` in one statement; `None` if there is no such endpoint. Enabling
        /// clears the reason it was disabled and makes its paused deliveries due; disabling
        /// through the API records that as the reason and pauses them.
        pub async fn update_endpoint(&self, id: Uuid, patch: &EndpointPatch)
            -> anyhow::Result<Option<Endpoint>>;

        /// Deletes an endpoint with its deliveries and their attempts (the events stay);
        /// `false` if there was none.
        ///
        /// One cascading DELETE would hold the database for as long as it takes to remove
        /// every delivery and attempt. So the endpoint is disabled first (nothing new is
        /// claimed or queued for it), then its deliveries go in batches of `batch`: the
        /// batch's attempts, `batch` at a time, then the batch's deliveries, each statement
        /// its own short transaction, and the endpoint row last. Each batch goes on where the
        /// previous one stopped, so the whole delete costs O(rows), not O(rows²). An
        /// interrupted delete leaves a disabled endpoint; deleting it again finishes the job.
        pub async fn delete_endpoint(&self, id: Uuid, batch: u32) -> anyhow::Result<bool>;

        /// An endpoint's current secret. Only the secret-revealing route calls this.
        pub async fn endpoint_secret(&self, id: Uuid) -> anyhow::Result<Option<EndpointSecret>>;

        /// Makes `secret` the endpoint's signing secret; the replaced one keeps signing for
        /// `grace` (not at all if zero). A secret still in the grace period of an earlier
        /// rotation is dropped: only one previous secret is kept. `None` if there is no such
        /// endpoint.
        pub async fn rotate_secret(&self, id: Uuid, secret: &Secret, grace: Duration)
            -> anyhow::Result<Option<EndpointSecret>>;

        /// Deletes the finished events created before `now - retention_ms`, oldest first,
        /// with their deliveries, attempts and (with their last event) orders, in batches of
        /// [`RETENTION_BATCH`] events, each its own write. Walks the old events once (a
        /// cursor on `seq`), so a pass costs O(old events), however many are kept.
        pub async fn purge_finished(&self, retention_ms: i64) -> anyhow::Result<Purged>;

        /// The outbox's size and oldest entry: one pass over the index of open work.
        pub async fn outbox_stats(&self) -> anyhow::Result<OutboxStats>;
    }
}

/// One row of `delivery_attempts` as both backends read it (integers as `BIGINT`).
#[derive(sqlx::FromRow)]
struct AttemptRow {
    attempt: i64,
    started_at: i64,
    duration_ms: i64,
    status_code: Option<i64>,
    error_kind: Option<String>,
    response_body: Option<String>,
    outcome: String,
}

impl TryFrom<AttemptRow> for Attempt {
    type Error = anyhow::Error;

    fn try_from(r: AttemptRow) -> anyhow::Result<Self> {
        Ok(Attempt {
            attempt: u32::try_from(r.attempt)?,
            started_at: r.started_at,
            duration_ms: r.duration_ms,
            status_code: r.status_code.map(u16::try_from).transpose()?,
            error_kind: r.error_kind,
            response_body: r.response_body,
            outcome: r.outcome,
        })
    }
}

#[cfg(test)]
mod url_tests {
    /// An unknown scheme stops startup with a message naming the setting and both accepted
    /// forms, and never the password.
    #[tokio::test]
    async fn an_unknown_scheme_is_refused_naming_database_url_and_both_forms() {
        let err = super::Store::connect("mysql://root:hunter2@localhost/orders")
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("DATABASE_URL"), "{text}");
        assert!(
            text.contains("sqlite://") && text.contains("postgres://"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
}
