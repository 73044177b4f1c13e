//! `--postgres`: the PostgreSQL server the services run on. loadgen creates two fresh
//! databases per set of services on it (`loadgen_orders_<random>` and
//! `loadgen_notifications_<random>`), hands their URLs to the services as `DATABASE_URL`, and
//! drops them at the end (`DROP DATABASE ... WITH (FORCE)`), also after a failure or an
//! interrupt, unless `--keep` is given. It also sizes each replica's connection pool
//! (`DATABASE_MAX_CONNECTIONS`) to what the server has room for.

use std::str::FromStr as _;
use std::sync::Mutex;

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

/// Connections per replica's pool unless the server has less room (the services' own default).
pub const DEFAULT_POOL: u32 = 10;
/// Connections a replica may hold beyond its pool (a `LISTEN` connection, a writer's own).
const EXTRA_PER_PROCESS: u32 = 2;
/// Connections loadgen itself holds while measuring: the administration connection and one
/// per database read.
const LOADGEN_CONNECTIONS: u32 = 3;

/// The server, and every database loadgen created on it.
pub struct Server {
    /// `--postgres` as given.
    admin_url: String,
    admin: PgConnectOptions,
    /// Names of the databases created (or being created), to drop at the end.
    created: Mutex<Vec<String>>,
    /// Connections the server can still accept for the services (see [`connection_room`]).
    room: u32,
}

/// One set of databases: the orders-service's and the notification-service's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabasePair {
    /// `DATABASE_URL` of orders-service.
    pub orders_url: String,
    /// `DATABASE_URL` of notification-service.
    pub notifications_url: String,
}

impl Server {
    /// Connects to the server at `admin_url` once (to fail early and clearly) and reads how many
    /// connections it has room for.
    pub async fn connect(admin_url: &str) -> anyhow::Result<Server> {
        let admin = PgConnectOptions::from_str(admin_url)
            .with_context(|| format!("--postgres {} is not a PostgreSQL URL", redact(admin_url)))?
            .disable_statement_logging();
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .with_context(|| format!("connecting to --postgres {}", redact(admin_url)))?;
        let (max, reserved, in_use): (i32, i32, i64) = sqlx::query_as(
            "SELECT current_setting('max_connections')::int, \
                    current_setting('superuser_reserved_connections')::int, \
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
        )
        .fetch_one(&mut conn)
        .await
        .context("reading the server's connection limits")?;
        conn.close().await.ok();
        Ok(Server {
            admin_url: admin_url.to_owned(),
            admin,
            created: Mutex::new(Vec::new()),
            room: connection_room(max, reserved, in_use),
        })
    }

    /// `DATABASE_MAX_CONNECTIONS` for each of `processes` service processes, and a note when
    /// it is below [`DEFAULT_POOL`] for lack of room on the server.
    pub fn pool_size(&self, processes: u32) -> (u32, Option<String>) {
        let size = pool_size(self.room, processes);
        let note = (size < DEFAULT_POOL).then(|| {
            format!(
                "the PostgreSQL server has room for about {} more connections: \
                 DATABASE_MAX_CONNECTIONS={size} for each of the {processes} service processes \
                 (override with --services-env DATABASE_MAX_CONNECTIONS=N)",
                self.room
            )
        });
        (size, note)
    }

    /// Creates a fresh pair of databases and returns their URLs.
    pub async fn create_pair(&self) -> anyhow::Result<DatabasePair> {
        let (orders, notifications) = database_names(&random_suffix());
        let mut conn = PgConnection::connect_with(&self.admin)
            .await
            .with_context(|| format!("connecting to --postgres {}", redact(&self.admin_url)))?;
        for name in [&orders, &notifications] {
            // Recorded first: an interrupt during the CREATE must not leave it behind.
            self.created_names().push(name.clone());
            sqlx::query(&format!("CREATE DATABASE {}", quote_ident(name)))
                .execute(&mut conn)
                .await
                .with_context(|| format!("creating the database {name}"))?;
        }
        conn.close().await.ok();
        crate::report::progress(&format!(
            "created the PostgreSQL databases {orders} and {notifications}"
        ));
        Ok(DatabasePair {
            orders_url: url_with_database(&self.admin_url, &orders)?,
            notifications_url: url_with_database(&self.admin_url, &notifications)?,
        })
    }

    fn created_names(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The URLs of every database created, passwords hidden (for `--keep`).
    pub fn created_urls(&self) -> Vec<String> {
        self.created_names()
            .iter()
            .filter_map(|name| url_with_database(&self.admin_url, name).ok())
            .map(|url| redact(&url))
            .collect()
    }

    /// Drops every database created (`WITH (FORCE)`: connections left over are ended); returns
    /// what could not be dropped, in words.
    pub async fn drop_all(&self) -> Vec<String> {
        let names = std::mem::take(&mut *self.created_names());
        if names.is_empty() {
            return Vec::new();
        }
        let mut conn = match PgConnection::connect_with(&self.admin).await {
            Ok(conn) => conn,
            Err(e) => {
                return vec![format!(
                    "connecting to --postgres {} to drop {}: {e}",
                    redact(&self.admin_url),
                    names.join(", ")
                )]
            }
        };
        let mut failures = Vec::new();
        for name in &names {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
            if let Err(e) = sqlx::query(&sql).execute(&mut conn).await {
                failures.push(format!("dropping the database {name}: {e}"));
            }
        }
        conn.close().await.ok();
        failures
    }
}

/// 12 random lowercase hex digits.
pub fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// The names of the orders and notification databases of one set, e.g.
/// `loadgen_orders_0123456789ab` and `loadgen_notifications_0123456789ab`.
pub fn database_names(suffix: &str) -> (String, String) {
    (
        format!("loadgen_orders_{suffix}"),
        format!("loadgen_notifications_{suffix}"),
    )
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `url` (`postgres://…/db?options`) with its database (the path) replaced by `database`,
/// keeping the user, host, port and options.
pub fn url_with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .with_context(|| format!("{} is not a postgres:// or postgresql:// URL", redact(url)))?;
    let scheme = &url[..url.len() - rest.len()];
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (rest, None),
    };
    // The authority (user, host, port) ends at the first '/', which starts the database.
    let authority = base
        .split_once('/')
        .map_or(base, |(authority, _)| authority);
    Ok(match query {
        Some(query) => format!("{scheme}{authority}/{database}?{query}"),
        None => format!("{scheme}{authority}/{database}"),
    })
}

/// `url` with any `user:password@` hidden, for messages: the one redaction of the workspace.
pub use webhook_common::config::redact_url as redact;

/// Connections the services may open: the server's limit less the superuser reserve, the
/// connections already open and loadgen's own.
pub fn connection_room(max_connections: i32, superuser_reserved: i32, in_use: i64) -> u32 {
    let room = i64::from(max_connections)
        - i64::from(superuser_reserved)
        - in_use
        - i64::from(LOADGEN_CONNECTIONS);
    u32::try_from(room.max(0)).unwrap_or(u32::MAX)
}

/// Each process's pool when `processes` share `room` connections, each also holding a few of
/// its own: [`DEFAULT_POOL`] when it fits, less when not, never below 1.
pub fn pool_size(room: u32, processes: u32) -> u32 {
    let per_process = room / processes.max(1);
    per_process
        .saturating_sub(EXTRA_PER_PROCESS)
        .clamp(1, DEFAULT_POOL)
}

/// The value parser of `--postgres`: a `postgres://` or `postgresql://` URL.
pub fn parse_admin_url(text: &str) -> Result<String, String> {
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Err(format!(
            "{:?} is not a postgres:// URL, e.g. postgres://postgres@127.0.0.1:5432/postgres",
            redact(text)
        ));
    }
    PgConnectOptions::from_str(text).map_err(|e| format!("{}: {e}", redact(text)))?;
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_share_a_random_suffix() {
        let suffix = random_suffix();
        assert_eq!(suffix.len(), 12);
        assert!(suffix
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(random_suffix(), suffix);
        let (orders, notifications) = database_names(&suffix);
        assert_eq!(orders, format!("loadgen_orders_{suffix}"));
        assert_eq!(notifications, format!("loadgen_notifications_{suffix}"));
        // Unquoted-identifier safe, and within PostgreSQL's 63-byte limit.
        for name in [&orders, &notifications] {
            assert!(name.len() <= 63, "{name}");
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("loadgen_orders_ab"), "\"loadgen_orders_ab\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn the_database_of_a_url_is_replaced_and_everything_else_kept() {
        let url = |u: &str| url_with_database(u, "loadgen_x").unwrap();
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/loadgen_x"
        );
        assert_eq!(
            url("postgresql://u:p@db.example:6543/admin?sslmode=require&application_name=x"),
            "postgresql://u:p@db.example:6543/loadgen_x?sslmode=require&application_name=x"
        );
        assert_eq!(url("postgres://h"), "postgres://h/loadgen_x");
        assert_eq!(url("postgres://h/"), "postgres://h/loadgen_x");
        assert_eq!(
            url("postgres://h?sslmode=disable"),
            "postgres://h/loadgen_x?sslmode=disable"
        );
        // A Unix socket: no authority, the host in the options.
        assert_eq!(
            url("postgres:///postgres?host=/run/postgresql"),
            "postgres:///loadgen_x?host=/run/postgresql"
        );
        assert!(url_with_database("sqlite://x.db", "y").is_err());
    }

    #[test]
    fn passwords_are_hidden_in_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?sslmode=require"),
            "postgres://<redacted>@h:5432/db?sslmode=require"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://<redacted>@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact("not a url"), "not a url");
        // An '@' in the options is not the authority's.
        assert_eq!(
            redact("postgres://h/db?user=a@b"),
            "postgres://h/db?user=a@b"
        );
    }

    #[test]
    fn only_postgres_urls_are_accepted() {
        assert!(parse_admin_url("postgres://postgres@127.0.0.1:5432/postgres").is_ok());
        assert!(parse_admin_url("postgresql://h/db").is_ok());
        assert!(parse_admin_url("sqlite://data/orders.db").is_err());
        assert!(parse_admin_url("127.0.0.1:5432").is_err());
        let e = parse_admin_url("mysql://u:pw@h/db").unwrap_err();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn pools_shrink_to_fit_the_server() {
        // max_connections=100, 3 reserved, 6 in use, loadgen's 3: room for 88.
        let room = connection_room(100, 3, 6);
        assert_eq!(room, 88);
        // 2 + 2 replicas: 22 each fits the default 10 (+2).
        assert_eq!(pool_size(room, 4), DEFAULT_POOL);
        // 8 + 8 replicas: 5 each, 3 of them for the pool.
        assert_eq!(pool_size(room, 16), 3);
        // No room at all: still 1 (the server will refuse, and say so).
        assert_eq!(pool_size(connection_room(10, 3, 20), 2), 1);
        assert_eq!(pool_size(1_000, 0), DEFAULT_POOL);
    }
}
