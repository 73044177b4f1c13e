//! A fresh PostgreSQL database per test.
//!
//! `TEST_DATABASE_URL` names a server and a database to connect to for administration
//! (`postgres://postgres@127.0.0.1:5432/postgres`; `.ci/run` sets it). Each
//! [`TestDatabase`] is a new database on that server, named after the test, so tests run in
//! parallel without seeing each other's rows or `LISTEN/NOTIFY` channels; it is dropped
//! (`WITH (FORCE)`) when the value is.

use std::io::Write as _;
use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

/// The variable naming the PostgreSQL server the tests may use.
pub const TEST_DATABASE_URL: &str = "TEST_DATABASE_URL";

/// A database of its own for one test; dropped with the value.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    name: String,
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// A fresh, empty database for the test `test` (used in the name, to tell leftovers
    /// apart), or `None` after printing that the test was skipped when `TEST_DATABASE_URL` is
    /// not set. A set but unusable `TEST_DATABASE_URL` panics: CI must not pass by skipping.
    pub async fn create(test: &str) -> Option<TestDatabase> {
        let Ok(url) = std::env::var(TEST_DATABASE_URL) else {
            // Straight to the process's stderr, not `eprintln!`: the test harness captures
            // the latter for passing tests, and a skip must be seen.
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED {test} on PostgreSQL: {TEST_DATABASE_URL} is not set \
                 (e.g. TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres; \
                 .ci/run sets it)"
            );
            return None;
        };
        let admin = PgConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("{TEST_DATABASE_URL}={url:?} is not a PostgreSQL URL: {e}"))
            .disable_statement_logging();
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let slug: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(30)
            .collect();
        let name = format!("t_{slug}_{}", &suffix[..12]);
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .unwrap_or_else(|e| panic!("connecting to {TEST_DATABASE_URL}={url:?}: {e}"));
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("creating the test database {name}: {e}"));
        conn.close().await.ok();
        let url = admin_url_with_database(&url, &name);
        Some(TestDatabase { url, name, admin })
    }

    /// The URL of this database, for `DATABASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which must not be blocked on itself: the
        // `DROP DATABASE` runs on a thread with a runtime of its own.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async move {
                let mut conn = PgConnection::connect_with(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

/// `url` with its database (the path) replaced by `database`, keeping the query string.
fn admin_url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    // postgres://user@host:port/db: the path starts at the first '/' after the authority.
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::admin_url_with_database;

    #[test]
    fn the_database_of_a_url_is_replaced_and_its_options_kept() {
        assert_eq!(
            admin_url_with_database("postgres://postgres@127.0.0.1:5432/postgres", "t_x"),
            "postgres://postgres@127.0.0.1:5432/t_x"
        );
        assert_eq!(
            admin_url_with_database("postgres://u:p@h/postgres?sslmode=disable", "t_x"),
            "postgres://u:p@h/t_x?sslmode=disable"
        );
        assert_eq!(
            admin_url_with_database("postgres://h", "t_x"),
            "postgres://h/t_x"
        );
    }
}
